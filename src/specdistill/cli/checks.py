"""What the inference commands check before their work (outputs, devices, models, prompt lengths) and how they
load their models."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .args import UsageError


def check_output_file(path: str | None, flag: str) -> None:
    """An output file (--json, --plot) must be writable where asked: checked before any work, so that a long run
    does not fail at its end."""
    if path is None:
        return
    target = Path(path)
    if not str(path).strip() or target.is_dir():
        raise UsageError(f"{flag} {path!r}: give a file path, not a folder")
    if not target.parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {target.parent} does not exist; create it first")
    if not os.access(target.parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{flag} {path}: cannot write there (permission denied)")


def check_models(*specs: tuple[str, str | None]) -> None:
    """(flag, model spec) pairs: each given spec must be able to load (models.check_model_spec)."""
    from ..models import check_model_spec

    for flag, spec in specs:
        if spec is not None:
            check_model_spec(spec, flag)


def check_devices(args) -> None:
    from ..models import check_device

    check_device(args.device, "--device")
    if getattr(args, "draft_device", None):
        check_device(args.draft_device, "--draft-device")


def check_prompts_fit(model, prompts: list[list[int]], max_new_tokens: int, flag: str, labels: list[str]) -> None:
    """Refuse a prompt that leaves the model fewer than --max-new-tokens positions (it would decode garbage)."""
    from ..models import max_positions

    limit = max_positions(model)
    for label, ids in zip(labels, prompts):
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise UserError(f"{label} is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} it needs "
                            f"{len(ids) + max_new_tokens} positions, but {flag} has {limit} (max_position_embeddings); "
                            f"the prompt is refused, not cut: shorten it or lower --max-new-tokens")


def load_for_inference(spec: str, device: str, dtype: str, tokenizer=None):
    """(model in eval mode, tokenizer): spec loaded on `device` in `dtype` (the flags' values)."""
    from ..models import load_model, load_tokenizer, resolve_device

    tokenizer = tokenizer or load_tokenizer(spec)
    model = load_model(spec, dtype, resolve_device(device), tokenizer).eval()
    return model, tokenizer


def load_pair(main: str, other: str | None, args, other_device: str | None = None, other_role: str = "draft"):
    """(main model, other model or None, tokenizer). The tokenizers are compared before any model is loaded (and
    before the loading phase is said): a pair that does not share one is refused, naming both and the first
    differing token. other_role: how the loading phase names the other model."""
    from ..models import check_same_tokenizer, load_tokenizer
    from ..progress import phase

    tokenizer = load_tokenizer(main)
    if other:
        check_same_tokenizer(tokenizer, load_tokenizer(other), names=(main, other))
    phase(f"loading {main}" + (f" and the {other_role} {other}" if other else ""))
    model, _ = load_for_inference(main, args.device, args.dtype, tokenizer)
    second = load_for_inference(other, other_device or args.device, args.dtype, tokenizer)[0] if other else None
    return model, second, tokenizer


def check_run_config(cfg, path: str) -> None:
    """train.check_settings before a run claims its folder, its errors naming the --config file as load_config's do."""
    from ..config import resolve_config_path
    from ..train import check_settings

    check_settings(cfg, resolve_config_path(path))
