"""Atomic checkpoints and exact resume.

A checkpoint is a folder `checkpoints/step-00000042/` holding:
- `model/`: the student as a Hugging Face folder (safetensors), usable as-is with `from_pretrained`;
- `optimizer.pt`, `scheduler.pt`: state dicts (loaded with weights_only=True);
- `rng-rank{r}.pt`: python, numpy and torch (CPU and CUDA) RNG states of each rank;
- `state.json`: step, data cursor and counters.
It is written to a temporary folder and renamed into place, so a kill during a save leaves the previous
checkpoint intact and no half-written one under a real name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

PREFIX = "step-"


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
    """`train.resume` (or $RESUME_CHECKPOINT): None, "auto" (latest checkpoint, if any) or a path."""
    resume = os.environ.get("RESUME_CHECKPOINT") or resume
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").exists():
        raise FileNotFoundError(f"cannot resume from {path}: no complete checkpoint there (state.json missing)")
    return path


def rng_state() -> dict:
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
                  for k, v in zip(("kind", "keys", "pos", "has_gauss", "cached"), np.random.get_state())},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir, step: int, save_model, optimizer, scheduler, state: dict, rank: int,
                    is_main: bool, barrier=lambda: None, keep_last: int = 2) -> Path:
    """Write a checkpoint atomically. `save_model(path)` writes the student folder (main process only).

    Every rank writes its RNG state into the temporary folder; the main process renames it into place after a
    barrier, then deletes all but the newest `keep_last` checkpoints.
    """
    root = checkpoint_dir(output_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    if is_main:
        save_model(tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    barrier()
    if is_main:
        _fsync_tree(tmp)
        if final.exists():  # the same step saved twice (e.g. stop after a save): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def load_checkpoint(path: Path, optimizer, scheduler, rank: int) -> dict:
    """Restore optimizer, scheduler and this rank's RNG states; return state.json (step, cursor, ...).
    The model weights are loaded by the caller from `path / "model"`."""
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((path / "state.json").read_text())
