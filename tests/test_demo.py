"""The demo end to end on a reduced plan: report structure, finite numbers, readable plots, same seed = same numbers."""

import json
import math

import matplotlib.image
from specdistill.demo import METHODS, run_demo

TINY_PLAN = {"student_steps": 3, "steps": 2, "batch_size": 4, "eval_limit": 6, "bench_prompts": 2}
TIMINGS = ("train_s", "train_s_std", "speedup_vs_target", "speedup_vs_target_std")


def test_report_structure_and_finite_numbers(tmp_path):
    report = run_demo(out=str(tmp_path), plan=TINY_PLAN)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(report["rows"]))
    assert [(r["task"], r["method"]) for r in report["rows"]] == [(t, m) for t, m, _, _ in METHODS]
    for row in report["rows"]:
        for key in ("exact_match", "acceptance_rate", "mean_accepted_length", "speedup_vs_target", "train_s"):
            assert math.isfinite(row[key]), (row["method"], key)
        assert 0 <= row["exact_match"] <= 1 and 0 <= row["acceptance_rate"] <= 1
        assert row["train_s"] > 0 and row["speedup_vs_target"] > 0
    for run in report["runs"]:
        assert run["matches_target_greedy"], run["method"]  # greedy speculative decoding is lossless
        assert len(run["loss_curve"]) >= 1 and len(run["per_position_acceptance"]) >= 1
    table = (tmp_path / "report.md").read_text()
    assert all(m in table for _, m, _, _ in METHODS)
    for name in ("quality_vs_acceptance", "acceptance_per_position", "training_curves"):
        image = matplotlib.image.imread(tmp_path / f"{name}.png")
        assert image.shape[0] > 300 and image.shape[1] > 500


def test_same_seed_same_numbers(tmp_path):
    reports = [run_demo(out=str(tmp_path / f"run{i}"), plan=TINY_PLAN) for i in range(2)]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]  # noqa: E731
    assert strip(reports[0]["rows"]) == strip(reports[1]["rows"])
    curves = [[r["loss_curve"] for r in rep["runs"]] for rep in reports]
    assert curves[0] == curves[1]
