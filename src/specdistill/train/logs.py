"""What a run writes as it goes: the resolved config, metrics.jsonl, samples.jsonl, the trackers and the
progress bar. A resumed run first cuts the JSONL logs back to its checkpoint's step.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from ..config import ConfigError, save_config
from .state import TrainState

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
SAMPLES_LOGGED = 4  # sample completions written to samples.jsonl per validation


def check_trackers(trackers: list[str]) -> None:
    for name in trackers:
        try:
            importlib.import_module(TRACKER_PACKAGES[name])
        except ImportError:
            raise ConfigError(f"train.trackers: {name!r} needs the {TRACKER_PACKAGES[name]!r} package, which is not "
                              f"installed: pip install 'specdistill[tracking]', or remove {name!r} from "
                              f"train.trackers") from None


def start_logs(run: TrainState) -> None:
    """The resolved config, the JSONL logs cut back to the resumed step, and the trackers."""
    acc, cfg, out = run.accelerator, run.cfg, run.out
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        truncate_logs(out, run.step)  # rows a killed run logged after its last checkpoint
    acc.wait_for_everyone()
    if cfg.train.trackers:
        if "wandb" in cfg.train.trackers:
            os.environ.setdefault("WANDB_MODE", "offline")  # offline by default; WANDB_MODE=online to sync
        acc.init_trackers(out.name, config=_flat(cfg), init_kwargs={"wandb": {"dir": str(out)}})


def _flat(cfg) -> dict:
    flat = {}
    for section, values in dataclasses.asdict(cfg).items():
        for k, v in values.items():
            flat[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def truncate_logs(out: Path, step: int) -> None:
    """Drop the metrics and samples rows after `step`: a resumed run logs those steps again."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = out / name
        if not path.exists():
            continue
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            path.write_text("".join(kept))


def log_metrics(run: TrainState, metrics: dict) -> None:
    if run.accelerator.is_main_process:
        with open(run.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": run.step, **metrics}) + "\n")
    if run.cfg.train.trackers:
        run.accelerator.log(metrics, step=run.step)


def log_samples(run: TrainState, samples: list[dict]) -> None:
    with open(run.out / "samples.jsonl", "a") as fh:
        for sample in samples:
            fh.write(json.dumps({"step": run.step, **sample}) + "\n")
    if run.cfg.train.trackers:
        text = "\n\n".join(f"Q: {s['query']}\nA: {s['prediction']}\nref: {s['reference']}" for s in samples)
        run.accelerator.log({"val/samples": text}, step=run.step)


def bar_fields(metrics: dict) -> dict:
    fields = {"loss": f"{metrics['train/loss']:.3f}"}
    if "rollout/acceptance_rate" in metrics:
        fields["acc"] = f"{metrics['rollout/acceptance_rate']:.2f}"
    fields["tok/s"] = f"{metrics['throughput/tokens_per_s']:.0f}"
    return fields



def progress_bar(run: TrainState):
    """The run's progress bar over train.max_steps, from the resumed step (the main process, with train.progress)."""
    cfg = run.cfg.train
    return tqdm(total=cfg.max_steps, initial=run.step, disable=not (cfg.progress and run.accelerator.is_main_process))

