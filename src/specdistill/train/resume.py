"""A resume: the checkpoint's optimizer, schedule, data cursor and counters back into the run, and a changed
train.lr or train.max_steps applied from the resumed step on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .. import checkpoint
from ..config import Config, rollout_at, stage_step
from .distributed import optimizer_sharded
from .state import TrainState


def restore_state(run: TrainState, path: Path) -> None:
    """The checkpoint at `path` into the run: optimizer, schedule, step, counters, data cursor, max_steps history."""
    state = checkpoint.load_checkpoint(path, run.optimizer, run.scheduler, run.accelerator.process_index,
                                       optimizer_sharded(run.accelerator))
    run.step, run.bad_steps, run.skipped_steps = state["step"], state["bad_steps"], state["skipped_steps"]
    run.stream.load_state_dict(state)
    run.accelerator.print(f"resumed from {path} at step {run.step}")
    saved = (state.get("config") or {}).get("train", {})
    _apply_resumed_schedule(run, saved.get("lr"), saved.get("max_steps"))
    history = state.get("max_steps_history") or ([[0, saved["max_steps"]]] if "max_steps" in saved else [])
    if not history or history[-1][1] != run.cfg.train.max_steps:
        history.append([run.step, run.cfg.train.max_steps])
    run.max_steps_history = history


def _apply_resumed_schedule(run: TrainState, saved_lr: float | None, saved_max_steps: int | None) -> None:
    """A train.lr or train.max_steps other than the checkpoint run's applies from the resumed step on, never
    silently overridden by the restored schedule. train.lr (to go on after a divergence, say): the schedule keeps
    its shape and scales to the new peak rate. train.max_steps (to train longer): the schedule is a function of
    the step and max_steps, so it goes on as laid out over the new max_steps (the warmup, a step count, as it was;
    the cosine stretched to end at the new last step), as in a run started with that max_steps. Said, and
    recorded in config.yaml and in the next checkpoints (state.json's max_steps_history)."""
    t, scheduler, acc = run.cfg.train, run.scheduler, run.accelerator
    lr_changed = saved_lr is not None and saved_lr != t.lr
    steps_changed = saved_max_steps is not None and saved_max_steps != t.max_steps
    if not (lr_changed or steps_changed):
        return
    before = run.optimizer.param_groups[0]["lr"]
    scheduler.base_lrs = [t.lr] * len(scheduler.base_lrs)
    for group, factor in zip(run.optimizer.param_groups, scheduler.lr_lambdas):  # the lambdas use the new max_steps
        group["initial_lr"] = t.lr
        group["lr"] = t.lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in run.optimizer.param_groups]
    nxt = run.step + 1
    if lr_changed:
        acc.print(f"train.lr: {saved_lr} in the checkpoint's run, {t.lr} from step {nxt} on (the rest of the "
                  f"schedule scales to it)")
    if steps_changed:
        acc.print(f"train.max_steps: {saved_max_steps} in the checkpoint's run, {t.max_steps} from step {nxt} on: "
                  f"the schedule is laid out over {t.max_steps} steps (step {nxt}'s lr {before:.4g} -> "
                  f"{run.optimizer.param_groups[0]['lr']:.4g})")
        for moved in moved_stages(run.cfg, run.step, saved_max_steps):
            warnings.warn(f"train.max_steps {saved_max_steps} -> {t.max_steps}: {moved}")


def moved_stages(cfg: Config, step: int, old_max_steps: int) -> list[str]:
    """The schedules (rollout.schedule, data.schedule) whose stage in force at `step` changes when their `start`
    fractions are laid out over the new train.max_steps instead of `old_max_steps`."""
    new, moved = cfg.train.max_steps, []
    if cfg.rollout.schedule:
        was, now = rollout_at(cfg.rollout, step, old_max_steps)[0], rollout_at(cfg.rollout, step, new)[0]
        if was != now:
            moved.append(f"rollout.schedule's stage {now} is in force from step {step + 1} on, where the checkpoint's "
                         f"run was in stage {was} (a `start` fraction moves with max_steps; `step: N` does not)")
    if cfg.data.schedule:
        was, now = (sum(step >= stage_step(s.start, m) for s in cfg.data.schedule) for m in (old_max_steps, new))
        if was != now:
            moved.append(f"data.schedule: {now} of its stages have started at step {step + 1}, {was} in the "
                         f"checkpoint's run (their `start` fractions move with max_steps)")
    return moved

