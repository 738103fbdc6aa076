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
import random
import shutil
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

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
    optimizer.load_state_dict(torch.load(opt_file, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        warnings.warn(f"{path} has no RNG state for rank {rank} (saved with fewer processes?): this rank keeps its "
                      f"seeded RNG, so the resumed run is not bit-exact")
    return json.loads((path / "state.json").read_text())


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the *.safetensors files in `folder` (sharded or not)."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {folder}")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(str(f)))
    return weights


def load_model_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a Hugging Face folder's safetensors weights into `model` in place.

    A key may be missing only when it is tied to a loaded one (save_pretrained drops tied copies such as lm_head
    when the embeddings are tied); anything else missing or unexpected is an error that names the keys."""
    weights, current = read_safetensors(folder), model.state_dict()
    loaded = {current[k].data_ptr() for k in weights if k in current}
    missing = [k for k in current if k not in weights and current[k].data_ptr() not in loaded]
    unexpected = [k for k in weights if k not in current]
    reshaped = [f"{k} {tuple(v.shape)} vs {tuple(current[k].shape)}" for k, v in weights.items()
                if k in current and v.shape != current[k].shape]
    if missing or unexpected or reshaped:
        raise ValueError(f"the weights in {folder} do not match the student: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, other shapes {reshaped[:3]} (was it saved from another model.student?)")
    model.load_state_dict(weights, strict=False)
