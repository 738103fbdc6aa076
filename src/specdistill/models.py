"""Load teacher, student and tokenizer; tiny presets; device and dtype placement; vocabulary checks.

A model spec is a local folder or hub id (anything `from_pretrained` accepts), a `.gguf` file (gguf_io.py), or a
preset name:
- `tiny-teacher`, `tiny-student`: randomly initialised Llama models with the built-in tokenizer;
- `builtin-teacher`: the trained built-in teacher shipped with the package (`specdistill sft configs/builtin/teacher.yaml`
  makes it; see docs/benchmarks.md);
- `grid-teacher`, `grid-student-1/2/3`: randomly initialised Llama models of 4 and 1/2/3 layers with the grid
  world's id tokenizer (data/grids.py);
- `builtin-grid-teacher`: the trained grid teacher shipped with the package (configs/builtin/grid_teacher.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from .data.grids import build_grid_tokenizer
from .data.tokenizer import build_tokenizer
from .errors import UserError
from .gguf_io import check_gguf_file, is_gguf_spec

ASSETS = Path(__file__).parent / "assets"
BUILTIN_TEACHER = ASSETS / "builtin-teacher"
BUILTIN_GRID_TEACHER = ASSETS / "builtin-grid-teacher"

# Sizes chosen so that drafting pays on a CPU: at batch size 1 a forward pass costs a fixed overhead plus a
# per-layer cost, so the 2-layer student costs about 0.3x the 6-layer teacher per token (docs/benchmarks.md).
PRESETS = {
    "tiny-teacher": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=6, num_attention_heads=4),
    "tiny-student": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4),
    # The grid world: one width, several depths, so depth is the only thing that differs between drafts.
    "grid-teacher": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    **{f"grid-student-{n}": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=n, num_attention_heads=4)
       for n in (1, 2, 3)},
}
PRESET_TOKENIZERS = {name: build_grid_tokenizer if name.startswith("grid-") else build_tokenizer for name in PRESETS}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# The trained models shipped in assets/: how to make each (its folder is looked up when used).
SHIPPED = {"builtin-teacher": "`make teacher` (three `specdistill sft` stages: configs/builtin/teacher.yaml, "
                              "teacher_facts.yaml, then teacher_polish.yaml) or run the demo with --retrain",
           "builtin-grid-teacher": "`make teacher` (`specdistill sft configs/builtin/grid_teacher.yaml`)"}
PRESET_NAMES = (*PRESETS, *SHIPPED)


def is_preset(spec: str) -> bool:
    return spec in PRESET_NAMES


def preset_config(name: str, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    size = PRESETS[name]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=size["num_attention_heads"],
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        **size,
    )


def _builtin_path(spec: str) -> str:
    if spec in SHIPPED:
        folder = BUILTIN_TEACHER if spec == "builtin-teacher" else BUILTIN_GRID_TEACHER
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"the shipped model {spec} is missing from {folder}; make it with {SHIPPED[spec]}")
        return str(folder)
    return spec


# What makes a missing folder: the hint for the paths the shipped configs name.
MAKE_HINTS = {
    "builtin/student/final": "it is the built-in student's warm start: make it with `specdistill sft "
                             "configs/builtin/student.yaml` (about 2 minutes on 2 CPU cores; it writes "
                             "runs/builtin/student/final), or set model.student=tiny-student to start from random "
                             "weights",
}


def _looks_local(spec: str) -> bool:
    """A spec that can only mean a local folder (a hub id is `name` or `org/name`)."""
    path = Path(spec)
    return (spec.startswith((".", "/", "~", "\\")) or spec.endswith("/") or len(path.parts) > 2 or "\\" in spec
            or (len(path.parts) == 2 and Path(path.parts[0]).is_dir()))


def check_model_spec(spec, role: str = "model", need_config: bool = True) -> None:
    """Refuse, before transformers sees it, a model spec that cannot load: not a string, a local-looking path
    that does not exist (with how to make the shipped configs' folders), a file that is not a loadable .gguf, or a
    folder without config.json.
    role: how to name the spec in the error (`model.student`, `--draft`, ...); need_config: False for a
    tokenizer-only folder. Hub ids pass unchecked."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"{role}: {spec!r} is not a model; give a model folder, a hub id or a preset "
                        f"({', '.join(PRESET_NAMES)})")
    if is_preset(spec):
        return
    path = Path(spec).expanduser()
    if is_gguf_spec(spec) and not path.is_dir():
        check_gguf_file(path, role)  # a GGUF file: missing, damaged or of an architecture transformers cannot load
        return
    if path.is_file():
        raise UserError(f"{role}={spec}: is a file; give a Hugging Face model folder (with config.json), a .gguf "
                        f"file, a hub id or a preset ({', '.join(PRESET_NAMES)})")
    if path.is_dir():
        if need_config and not (path / "config.json").exists():
            raise UserError(f"{role}={spec}: the folder holds no config.json, so it is not a Hugging Face model "
                            f"folder (a run's model is in its final/ folder, a checkpoint's in model/)")
        return
    if _looks_local(spec):
        hint = next((h for tail, h in MAKE_HINTS.items() if path.as_posix().rstrip("/").endswith(tail)), None)
        if hint is None and path.name == "final":
            hint = (f"a run writes final/ when it finishes: run the config whose train.output_dir is {path.parent} "
                    f"first")
        hint = hint or f"give a model folder, a hub id or a preset ({', '.join(PRESET_NAMES)})"
        raise UserError(f"{role}={spec}: no such folder; {hint}")


def _from_pretrained(load, spec: str, what: str, **kwargs):
    """transformers' from_pretrained, whose can't-find/can't-connect errors become one UserError naming the spec."""
    from huggingface_hub.errors import HFValidationError

    path = _builtin_path(spec)  # outside the try: a missing built-in teacher says how to make it
    try:
        return load(path, **kwargs)
    except (OSError, HFValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load the {what} of {spec!r}: it is not a model folder, a preset "
                        f"({', '.join(PRESET_NAMES)}) or a hub id that can be reached ({first})") from exc


def load_tokenizer(spec: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a folder/hub id, or the built-in one for presets. Padding is always on the left."""
    if spec in PRESETS:
        return PRESET_TOKENIZERS[spec]()
    check_model_spec(spec, need_config=False)
    if is_gguf_spec(spec) and Path(spec).expanduser().is_file():
        from .gguf_io import load_gguf_tokenizer

        tok = load_gguf_tokenizer(spec)
    else:
        tok = _from_pretrained(AutoTokenizer.from_pretrained, spec, "tokenizer", trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:  # many base models ship without one; the pad id is masked out everywhere
        tok.pad_token = tok.eos_token
    return tok


def check_device(spec: str, role: str = "device") -> None:
    """Refuse a device spec torch cannot parse, or a CUDA device on a machine without CUDA (auto and paired are
    resolved later: `resolve_device`)."""
    if spec in ("auto", "paired"):
        return
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise UserError(f"{role}: {spec!r} is not a device; use auto, cpu, cuda, cuda:N (or paired for the "
                        f"teacher/student pair)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{role}: {spec!r} needs CUDA, which this machine does not have; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"{role}: {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def resolve_device(spec: str, role: str = "student", local_rank: int | None = None) -> torch.device:
    """Map a device spec to a device. "auto": cuda:<local rank> if CUDA is available, else cpu.
    "paired": rank r puts the student on cuda:2r and the teacher on cuda:2r+1."""
    rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    if spec == "paired":
        if not torch.cuda.is_available():
            raise UserError("device 'paired' needs CUDA: rank r uses cuda:2r (student) and cuda:2r+1 (teacher)")
        return torch.device(f"cuda:{2 * rank + (role == 'teacher')}")
    if spec == "auto":
        return torch.device(f"cuda:{rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def load_model(
    spec: str,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    tokenizer: PreTrainedTokenizerBase | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> torch.nn.Module:
    """A causal LM from a preset (seeded random init), a .gguf file (gguf_io.load_gguf_model) or through
    `AutoModelForCausalLM.from_pretrained`."""
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
    if spec in PRESETS:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(preset_config(spec, tokenizer or PRESET_TOKENIZERS[spec]()))
        model = model.to(dtype=DTYPES[dtype])
    elif is_gguf_spec(spec) and Path(spec).expanduser().is_file():
        from .gguf_io import load_gguf_model

        check_model_spec(spec)
        model = load_gguf_model(spec, DTYPES[dtype])  # dequantized into dtype
    else:
        check_model_spec(spec)
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, spec, "model", dtype=DTYPES[dtype],
                                 trust_remote_code=trust_remote_code)
    return model.to(device)


def max_positions(model: torch.nn.Module) -> int | None:
    """The positions a model was built for (its text config's max_position_embeddings), or None when unknown."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def embedding_rows(model: torch.nn.Module) -> int:
    return model.get_input_embeddings().weight.shape[0]


def check_vocab(tokenizer: PreTrainedTokenizerBase, **models: torch.nn.Module) -> int:
    """Check that every model can score every real token of the shared tokenizer; return that vocab size V.

    Embedding matrices may be padded past the tokenizer (Qwen: 151936 vs 152064 rows): only ids < V are used,
    so callers slice logits to [..., :V]. A model with fewer rows than the tokenizer has tokens is an error.
    """
    real = len(tokenizer)
    for name, model in models.items():
        rows = embedding_rows(model)
        if rows < real:
            raise UserError(
                f"the {name} has {rows} embedding rows but the tokenizer has {real} tokens: the models must share "
                f"the tokenizer (an embedding may be larger, padded, but never smaller)"
            )
    return real


def check_same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase, names=("teacher", "student")) -> None:
    """Refuse two tokenizers that would give a token id different meanings: every id must map to the same token
    string, and the added tokens must agree on which are special. Padding of the models' embeddings may differ.

    names: how to call the two in the error, e.g. the model paths. Raises UserError naming the first differing id.
    """
    size_a, size_b = len(a), len(b)
    tokens_a = a.convert_ids_to_tokens(list(range(size_a)))
    tokens_b = b.convert_ids_to_tokens(list(range(size_b)))
    for i, (x, y) in enumerate(zip(tokens_a, tokens_b)):
        if x != y:
            raise UserError(f"the tokenizers of {names[0]} and {names[1]} differ: id {i} is {x!r} in {names[0]} and "
                            f"{y!r} in {names[1]}; teacher and student (target and draft) must share one tokenizer")
    if size_a != size_b:
        i = min(size_a, size_b)
        extra = tokens_a[i] if size_a > size_b else tokens_b[i]
        raise UserError(f"the tokenizers of {names[0]} and {names[1]} differ: {names[0]} has {size_a} tokens and "
                        f"{names[1]} {size_b}; id {i} ({extra!r}) is missing from one; they must share one tokenizer")
    special_a = {i: t.content for i, t in a.added_tokens_decoder.items() if t.special}
    special_b = {i: t.content for i, t in b.added_tokens_decoder.items() if t.special}
    if special_a != special_b:
        i = min(set(special_a.items()) ^ set(special_b.items()))[0]
        raise UserError(f"the tokenizers of {names[0]} and {names[1]} differ in their special tokens: id {i} "
                        f"({tokens_a[i]!r}) is special in {'one' if (i in special_a) != (i in special_b) else 'both'} "
                        f"of them ({names[0]}: {i in special_a}, {names[1]}: {i in special_b})")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: [B, L] mask -> [B, L] ids (0 at each row's first real token)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
