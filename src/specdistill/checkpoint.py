"""Atomic checkpoints and exact resume.

A checkpoint is a folder `checkpoints/step-00000042/` holding:
- `model/`: the student as a Hugging Face folder (safetensors), usable as-is with `from_pretrained`
  (with LoRA: the merged model);
- `adapter/`: with LoRA only, the adapter (a PEFT folder); resuming loads it onto the base model;
- `optimizer.pt` (or `optimizer-rank{r}.pt` when FSDP/DeepSpeed shard the optimizer), `scheduler.pt`;
- `rng-rank{r}.pt`: python, numpy and torch (CPU and CUDA) RNG states of each rank;
- `state.json`: step, data cursor and counters.
It is written to a temporary folder and renamed into place, so a kill during a save leaves the previous
checkpoint intact and no half-written one under a real name. Loading never unpickles: state files are read
with `torch.load(weights_only=True)`, weights with safetensors, the rest is JSON.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import UserError

class CheckpointError(UserError):
    """A checkpoint cannot be resumed from: damaged, or saved by a run whose config differs. The message names the
    checkpoint and what to do (an intact earlier checkpoint, or the differing keys)."""


PREFIX = "step-"
TMP_PREFIX = ".tmp-"  # a save in progress (or killed): never listed, removed by the next save
OLD_PREFIX = ".old-"  # a checkpoint being replaced by a new save of the same step


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    root = checkpoint_dir(output_dir)
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start.

    resume: `train.resume`, overridden by $RESUME_CHECKPOINT when set: None; "auto" (the latest checkpoint in
    output_dir, or None when there is none); a checkpoint folder; or a run's output folder (its latest checkpoint).
    """
    resume = os.environ.get("RESUME_CHECKPOINT") or resume
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").exists() and list_checkpoints(path):
        return list_checkpoints(path)[-1]
    if not (path / "state.json").exists():
        raise FileNotFoundError(f"cannot resume from {path}: no complete checkpoint there (state.json missing); "
                                f"give a checkpoints/step-NNNNNNNN folder, a run's output_dir, or 'auto'")
    return path


# ---------------------------------------------------------------- damage: found without loading anything
def damage(path: str | Path) -> str | None:
    """Why checkpoint `path` cannot be resumed from, or None when it looks intact. Nothing is unpickled and no
    tensor is loaded: state.json must parse, each .pt file must be a whole zip archive whose CRCs match (what
    torch.save writes), each safetensors file must be as long as its header says, and the files a resume reads
    must be there."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"state.json cannot be read ({type(exc).__name__}: truncated or overwritten?)"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "cursor" not in state:
        return "state.json lacks the step or the data cursor"
    if not (path / "scheduler.pt").exists() or not list(path.glob("optimizer*.pt")):
        return "the optimizer or scheduler state is missing"
    for f in sorted(path.glob("*.pt")):
        reason = _torch_file_damage(f)
        if reason:
            return f"{f.name} {reason}"
    for folder in [path / "model"] + ([path / "adapter"] if (path / "adapter").exists() else []):
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            return f"{folder.name}/ holds no safetensors weights"
        for f in files:
            reason = safetensors_damage(f)
            if reason:
                return f"{folder.name}/{f.name} {reason}"
    return None


def _torch_file_damage(f: Path) -> str | None:
    try:
        with zipfile.ZipFile(f) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        return "is not a whole torch file (truncated or overwritten)"
    return f"is damaged (its entry {bad} fails its checksum)" if bad else None


def safetensors_damage(f: Path) -> str | None:
    """Why a safetensors file is not whole (its header must parse and its size must match the header), or None."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size:
                return "is truncated (its header runs past the end of the file)"
            header = json.loads(fh.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError):
        return "has a broken header (truncated or overwritten)"
    if size != 8 + n + end:
        return f"is {size} bytes, but its header says {8 + n + end} (truncated?)"
    return None


# ---------------------------------------------------------------- a Hugging Face model folder's weights
# The weights transformers reads from a folder, in its order of preference (a sharded index names its shards).
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def model_weight_files(folder: Path) -> tuple[list[Path], str | None]:
    """(the weight files transformers would read from model folder `folder`, why they cannot be listed or None):
    the first of MODEL_WEIGHTS present, or a sharded index's shards. A folder with none of them gives ([], None)."""
    found = next((folder / name for name in MODEL_WEIGHTS if (folder / name).is_file()), None)
    if found is None or not found.name.endswith(".index.json"):
        return ([found] if found else []), None
    try:
        shards = sorted(set(json.loads(found.read_text())["weight_map"].values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return [found], f"{found.name} cannot be read (truncated or overwritten: no weight_map of shard files)"
    missing = [name for name in shards if not (folder / name).is_file()]
    if missing:
        return [found], (f"{found.name} lists {len(shards)} shard(s), of which {len(missing)} are missing "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    return [folder / name for name in shards], None


def model_weights_damage(folder: Path) -> str | None:
    """Why model folder `folder`'s weights cannot load, found cheaply before transformers reads them, or None: a
    shard its index lists is missing, or a file is empty, shorter than its safetensors header says, not a whole
    torch zip archive, or a pickle that torch.load(weights_only=True) refuses (it holds more than tensors; only
    its small pickle part is read, with the tensors left on the meta device). A folder without weights is left
    to transformers' own error."""
    files, reason = model_weight_files(folder)
    if reason:
        return reason
    for f in files:
        if f.stat().st_size == 0:
            return f"{f.name} is empty"
        reason = safetensors_damage(f) if f.suffix == ".safetensors" else _pickled_weights_damage(f)
        if reason:
            return f"{f.name} {reason}"
    return None


def _pickled_weights_damage(f: Path) -> str | None:
    """A pytorch_model.bin: a whole zip archive (torch.save's format; an old non-zip one is read as it is) whose
    pickle torch.load(weights_only=True) accepts."""
    with open(f, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if is_zip:
        try:
            zipfile.ZipFile(f).close()  # reads the central directory, at the end: a truncated file has none
        except (zipfile.BadZipFile, OSError):
            return "is not a whole torch file (truncated?)"
    try:
        torch.load(f, weights_only=True, mmap=is_zip, map_location="meta")
    except pickle.UnpicklingError:
        return "holds objects other than tensors, which torch.load(weights_only=True) refuses to unpickle (it could run code)"
    except (RuntimeError, EOFError, ValueError, OSError):
        return "cannot be read as torch weights (truncated or overwritten?)"
    return None


def intact_before(path: Path) -> Path | None:
    """The newest intact checkpoint older than `path` in the same checkpoints folder, or None."""
    root = path.parent
    older = [p for p in list_checkpoints(root.parent) if int(p.name[len(PREFIX):]) < _step_of(path)]
    return next((p for p in reversed(older) if damage(p) is None), None)


def _step_of(path: Path) -> int:
    tail = path.name[len(PREFIX):]
    return int(tail) if path.name.startswith(PREFIX) and tail.isdigit() else 1 << 62


def check_intact(path: Path) -> None:
    """Refuse a damaged checkpoint before anything is loaded: a CheckpointError naming it, the reason, and the
    newest intact checkpoint before it (or that there is none)."""
    reason = damage(path)
    if reason is None:
        return
    previous = intact_before(path)
    offer = (f"the previous intact checkpoint is {previous}: resume from it with train.resume={previous} (later "
             f"saves replace the damaged one)" if previous else
             "no earlier intact checkpoint is left: start afresh in another train.output_dir")
    raise CheckpointError(f"checkpoint {path} is damaged: {reason}; nothing was loaded or changed; {offer}")


# ---------------------------------------------------------------- the run a checkpoint belongs to
# Keys a resume may change. The first ones do not change what a run computes; train.lr, train.max_grad_norm and
# train.max_steps do, and a resume applies them from its first step on (train/resume.py: the rest of the schedule
# follows the new lr and is laid out over the new max_steps), so that a diverged run can go on at a lower rate and a
# run can be extended. train.max_steps may not go below the checkpoint's step. Every other key must match.
RESUME_APPLIED = ("train.lr", "train.max_grad_norm", "train.max_steps")
RESUME_FREE = RESUME_APPLIED + (
    "train.output_dir", "train.resume", "train.overwrite", "train.progress", "train.trackers", "train.threads",
    "train.log_every", "train.eval_every", "train.eval_samples", "train.save_every", "train.keep_last",
    "train.max_bad_steps", "train.compile", "rollout.compile", "rollout.trace", "model.student_device",
    "model.teacher_device", "model.gradient_checkpointing", "data.validation")


def flatten(config: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; lists of mappings by index: data.train[0].task."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{name}[{i}]."))
            flat[f"{name}.length"] = len(value)
        else:
            flat[name] = value
    return flat


def config_differences(saved: dict, current: dict, free: tuple[str, ...] = RESUME_FREE) -> list[str]:
    """'key: saved -> current' for every key that changes the run and differs (keys in `free` may differ)."""
    a, b = flatten(saved), flatten(current)
    keys = [k for k in dict.fromkeys([*a, *b]) if not any(k == f or k.startswith(f + ".") for f in free)]
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in keys if a.get(k) != b.get(k)]


def check_same_run(path: Path, current: dict) -> None:
    """Refuse to resume from checkpoint `path` when its run's saved config differs from `current` on a key that
    changes the run (the learning rate, the batch size, the data, ...), naming each difference."""
    state = json.loads((path / "state.json").read_text())
    saved = state.get("config")
    if saved is None:
        warnings.warn(f"{path} holds no saved config (written by an older version): resuming without checking that "
                      f"its run's config matches this one")
        return
    diffs = config_differences(saved, current)
    old, new = saved.get("train", {}).get("max_steps"), current.get("train", {}).get("max_steps")
    if isinstance(new, int) and new < state["step"]:  # raising (or lowering to no less than the step) is applied
        diffs.insert(0, f"train.max_steps: {old!r} -> {new!r} (below the checkpoint's step {state['step']}: "
                        f"give at least {state['step']}; a larger value extends the run)")
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: its run's config differs on {len(diffs)} key(s) that change the run: "
            f"{'; '.join(diffs)}. Set them back to resume, or start a new run from its weights "
            f"(model.student={path / 'model'}) in another train.output_dir")


# ---------------------------------------------------------------- run folders
RUN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl", "checkpoints", "final")  # what a run writes


def check_run_folder(out: str | Path, resume: Path | None, config: dict, auto: bool = False,
                     overwrite: bool = False) -> list[Path]:
    """Refuse a run that would overwrite or adopt another run's files; return the files that train.overwrite
    replaces (the caller removes them). Checked before anything is loaded or written.

    resume: the checkpoint to resume from (resolve_resume); it must be intact and its run's config must match
    `config` (the resolved config as a dict). A fresh run needs an empty or absent output folder (or one that holds
    only the config of a run that stopped before its first step), except with `overwrite`, or with resume=auto
    (`auto`) when the folder holds this same run from before its first checkpoint.
    """
    if resume is not None:
        check_intact(resume)
        check_same_run(resume, config)
        return []
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"train.output_dir={out} is a file; give a folder")
    existing = next(p for p in [out, *out.absolute().parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"train.output_dir={out}: cannot write in {existing} (permission denied); choose another "
                        f"folder")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        return []
    if overwrite:
        return [p for p in entries if p.name in RUN_FILES or p.name.startswith((TMP_PREFIX, OLD_PREFIX))]
    if all(p.name in ("config.yaml", "metrics.jsonl", "samples.jsonl") and (p.name == "config.yaml" or not
           p.stat().st_size) for p in entries):
        return []  # a run that stopped before its first step left its config only: nothing to lose
    if auto and (out / "config.yaml").is_file() and not list_checkpoints(out):
        import yaml

        try:
            saved = yaml.safe_load((out / "config.yaml").read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            saved = None
        if isinstance(saved, dict) and not config_differences(saved, config):
            return []  # this run again, killed before its first checkpoint: start it over
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise UserError(f"train.output_dir={out} already holds files ({names}); a fresh run there would overwrite or "
                    f"adopt them. Resume that run with train.resume=auto, choose another train.output_dir, or set "
                    f"train.overwrite=true to replace that run")


def remove_run_files(paths: list[Path]) -> None:
    for p in paths:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


# ---------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """This process's python, numpy and torch RNG states, as tensors and plain values (weights_only-loadable)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": list(mt), "python_version": version, "python_gauss": gauss,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- saving
def save_checkpoint(output_dir, step: int, write_model: Callable[[Path], None], optimizer, scheduler, state: dict,
                    rank: int, is_main: bool, barrier: Callable[[], None] = lambda: None, keep_last: int = 2,
                    sharded_optimizer: bool = False) -> Path:
    """Write checkpoint `step` atomically and keep the newest `keep_last`; every rank calls this.

    write_model(folder): writes the student into the temporary checkpoint folder; called on every rank (gathering
    sharded weights is a collective), it writes files on the main process only. sharded_optimizer: each rank
    saves its own optimizer shard (FSDP, DeepSpeed). The main process renames the folder into place after a
    barrier, so the checkpoint appears complete or not at all.
    """
    root = checkpoint_dir(output_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{PREFIX}{step:08d}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{TMP_PREFIX}*"):  # left by a killed save
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    write_model(tmp)
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    if sharded_optimizer:
        torch.save(optimizer.state_dict(), tmp / f"optimizer-rank{rank}.pt")
    if is_main:
        if not sharded_optimizer:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    barrier()  # every rank's files are in tmp
    if is_main:
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
        _fsync_tree(tmp)
        replace_dir(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def replace_dir(src: Path, dst: Path) -> None:
    """Rename folder src to dst atomically. An existing dst (the same step saved twice, or a model folder written
    again) is moved aside first and deleted only after the new one is in place."""
    old = dst.with_name(f"{OLD_PREFIX}{dst.name}")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- loading
def load_checkpoint(path: Path, optimizer, scheduler, rank: int, sharded_optimizer: bool = False) -> dict:
    """Restore optimizer, scheduler and this rank's RNG states; return state.json (step, cursor, ...).

    The student's weights are loaded by the caller (`load_model_weights`, or the LoRA adapter)."""
    opt_file = path / (f"optimizer-rank{rank}.pt" if sharded_optimizer else "optimizer.pt")
    if not opt_file.exists():
        raise FileNotFoundError(f"cannot resume from {path}: {opt_file.name} is missing (was the checkpoint written "
                                f"with another distributed backend or number of processes?)")
    optimizer.load_state_dict(load_tensors(opt_file))
    scheduler.load_state_dict(load_tensors(path / "scheduler.pt"))
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(load_tensors(rng_file))
    else:
        warnings.warn(f"{path} has no RNG state for rank {rank} (saved with fewer processes?): this rank keeps its "
                      f"seeded RNG, so the resumed run is not bit-exact")
    return json.loads((path / "state.json").read_text())


def load_tensors(f: Path):
    """torch.load(weights_only=True): a file that is damaged or holds anything but tensors and plain values is a
    CheckpointError naming it. torch's own advice to retry with weights_only=False is not passed on: that would
    run whatever code the file holds."""
    try:
        return torch.load(f, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types; none is the user's to debug
        raise CheckpointError(f"{f}: cannot be loaded safely ({type(exc).__name__}): it is damaged, or it was not "
                              f"written by specdistill; resume from another checkpoint") from None


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the *.safetensors files in `folder` (sharded or not)."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {folder}")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        reason = safetensors_damage(f)
        if reason:
            raise CheckpointError(f"{f}: {reason}; it cannot be loaded")
        weights.update(load_file(str(f)))
    return weights


def load_model_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a Hugging Face folder's safetensors weights into `model` in place.

    A key may be missing only when it is tied to a loaded one (save_pretrained drops tied copies such as lm_head
    when the embeddings are tied); anything else missing or unexpected is an error that names the keys. A matrix
    with more rows than the model's whose extra rows are all zero (a checkpoint that an earlier version padded to
    the teacher's embedding row count) is cut back to the model's rows: that padding held nothing."""
    weights, current = read_safetensors(folder), model.state_dict()
    for k, v in weights.items():
        if k in current and v.ndim == 2 and v.shape[1:] == current[k].shape[1:] and v.shape[0] > current[k].shape[0] \
                and not v[current[k].shape[0]:].any():
            weights[k] = v[: current[k].shape[0]]
    loaded = {current[k].data_ptr() for k in weights if k in current}
    missing = [k for k in current if k not in weights and current[k].data_ptr() not in loaded]
    unexpected = [k for k in weights if k not in current]
    reshaped = [f"{k} {tuple(v.shape)} vs {tuple(current[k].shape)}" for k, v in weights.items()
                if k in current and v.shape != current[k].shape]
    if missing or unexpected or reshaped:
        raise CheckpointError(f"the weights in {folder} do not match the student: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, other shapes {reshaped[:3]} (was it saved from another model.student?)")
    model.load_state_dict(weights, strict=False)
