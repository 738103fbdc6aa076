"""rollout.schedule: the stages of rollout settings, and the one in force at a step (a pure function of the step
and train.max_steps, so checkpoints store nothing for it)."""

from __future__ import annotations

import dataclasses
import math

from .building import RENAMED, build, convert, require
from .schema import ConfigError, RolloutConfig


def stage_step(start: float, max_steps: int) -> int:
    """The first optimizer step (counted from 0) of a stage that starts at fraction `start` of max_steps: the
    stage is in force from the step that has start * max_steps steps behind it (rounding noise such as
    0.3 * 10 = 3.0000000000000004 aside)."""
    return math.ceil(round(start * max_steps, 9))


def rollout_stages(r: RolloutConfig, max_steps: int) -> list[tuple[int, RolloutConfig]]:
    """rollout.schedule laid out over max_steps: [(first step, settings in force)] for the top-level settings
    (from step 0) and then each stage, whose settings are the top-level ones with the stage's keys replaced.
    Steps count optimizer steps from 0, so `step: N` (or start N / max_steps) trains its first step after N steps.
    A later stage that starts at the same step replaces an earlier one. Errors name the stage's key."""
    stages = [(0, r)]
    base = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "schedule"}
    for i, stage in enumerate(r.schedule):
        where = f"rollout.schedule[{i}]"
        settings = dict(stage)
        start, step = settings.pop("start", None), settings.pop("step", None)
        require((start is None) != (step is None),
               f"{where}: give exactly one of 'start' (a fraction of train.max_steps in [0, 1)) or 'step' (a step "
               f"count in [0, train.max_steps))")
        if start is not None:
            start = convert(start, float, f"{where}.start")
            require(0 <= start < 1, f"{where}.start: {start}; allowed range [0, 1)")
            first = stage_step(start, max_steps)
        else:
            first = convert(step, int, f"{where}.step")
            require(0 <= first < max_steps, f"{where}.step: {first}; allowed range [0, train.max_steps={max_steps})")
        require("schedule" not in settings, f"{where}: a stage cannot have a schedule of its own")
        renamed = [k for k in settings if f"rollout.{k}" in RENAMED]
        if renamed:
            new_key, meaning = RENAMED[f"rollout.{renamed[0]}"]
            raise ConfigError(f"config key '{where}.{renamed[0]}' was renamed: use {new_key.split('.')[-1]!r} "
                              f"({meaning})")
        require(first >= stages[-1][0], f"{where}: starts at step {first}, before the stage listed above it (step "
               f"{stages[-1][0]}); list the stages in the order they start")
        stages.append((first, build(RolloutConfig, {**base, **settings}, where)))
    return stages


def rollout_at(r: RolloutConfig, step: int, max_steps: int) -> tuple[int, RolloutConfig]:
    """(stage index, settings) in force at optimizer step `step` (from 0): index 0 is the top-level settings,
    i the i-th stage of rollout.schedule. A pure function of the step, so a resumed run is in the right stage."""
    if not r.schedule:
        return 0, r
    index, settings = 0, r
    for i, (first, stage) in enumerate(rollout_stages(r, max_steps)):
        if step >= first:
            index, settings = i, stage
    return index, settings
