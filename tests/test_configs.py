"""Every example config in configs/ runs two steps on tiny models."""

import json
import math
from pathlib import Path

import pytest

from specdistill.config import load_config
from specdistill.train import TEACHER_LOSSES, train_student

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_every_method_has_a_config():
    names = {p.stem for p in CONFIGS}
    assert {"sft", "supervised_kd", "seqkd", "onpolicy_kd", "gkd", "imitkd", "skd", "lupi_skd", "adaptive_topk",
            "distillspec", "hybrid", "lupi_curriculum", "rank", "mixed_train", "mixed_skd"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_config_runs_two_steps(path, tmp_path):
    cfg = load_config(path)
    grid = any(d.task == "grids" for d in cfg.data.train)  # the grid world has its own id tokenizer and presets
    overrides = [f"model.student={'grid-student-1' if grid else 'tiny-student'}", "train.max_steps=2", "train.batch_size=2", "train.eval_every=0",
                 "train.eval_samples=2", "rollout.max_new_tokens=6", f"train.output_dir={tmp_path}", "train.progress=false",
                 "train.warmup_steps=1"]
    if cfg.model.teacher:
        overrides.append(f"model.teacher={'grid-teacher' if grid else 'tiny-teacher'}")
    train_student(load_config(path, overrides))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["train/loss"]) for r in steps)
    if cfg.rollout.strategy == "skd":
        assert "rollout/acceptance_rate" in steps[0]
    if cfg.rollout.schedule:  # mixed_train: the second of the 2 steps is in the second stage
        assert [r["rollout/stage"] for r in steps] == [0, 1]
    if cfg.loss.name in TEACHER_LOSSES:
        assert all(0 <= r["train/top1_agreement"] <= 1 for r in steps)
    assert (tmp_path / "final" / "config.json").exists()
