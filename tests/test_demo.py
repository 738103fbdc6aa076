"""The demo end to end on a reduced plan (report structure, finite numbers, readable plots, same seeds = same
numbers), and the report's claims judged from hand-made rows."""

import json
import math

import matplotlib.image
import pytest
from specdistill.study.claims import CLAIMS, Claim, aggregate, judge
from specdistill.study.demo import run_demo
from specdistill.study.plan import METHODS, PLANS, WARM, plan_jobs
from specdistill.study.report import claims_table, preconditions
from specdistill.study.stats import HOLDS, REVERSED, UNDECIDED

TINY_PLAN = {"student_steps": 3, "steps": 2, "batch_size": 4, "eval_limit": 6, "bench_prompts": 2, "seeds": 2,
             "methods": ["SFT on gold", "SKD", "LUPI-SKD"]}
TIMINGS = ("train_s", "predicted_speedup", "sampled_predicted_speedup")  # from timings: they differ between runs


def test_report_structure_and_finite_numbers(tmp_path):
    report = run_demo(out=str(tmp_path / "run"), plan=TINY_PLAN, results=str(tmp_path / "docs" / "results.md"))
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(report["rows"]))
    expected = [("arith_styles", WARM), ("facts", WARM)] + [(m.world, m.label) for m in METHODS
                                                           if m.label in TINY_PLAN["methods"]]
    assert sorted((r["world"], r["method"]) for r in report["rows"]) == sorted(expected)
    for row in report["rows"]:
        n = 1 if row["method"] == WARM else 2
        assert row["seeds"] == list(range(n))
        for key in ("quality", "acceptance_rate", "sampled_acceptance_rate", "sampled_expected_acceptance",
                    "predicted_speedup", "sampled_predicted_speedup"):
            assert math.isfinite(row[key]) and len(row[key + "_values"]) == n, (row["method"], key)
            spread = len(set(row[key + "_values"])) > 1  # no interval from one seed, nor from equal values
            assert spread == (not math.isnan(row[key + "_low"])), (row["method"], key, row[key + "_values"])
        assert 0 <= row["quality"] <= 1 and 0 <= row["acceptance_rate"] <= 1
        assert 0 <= row["sampled_expected_acceptance"] <= 1
    for run in report["runs"]:
        assert run["matches_target_greedy"], run["method"]  # greedy speculative decoding is lossless
        assert len(run["per_position_acceptance"]) >= 1
    table = (tmp_path / "run" / "report.md").read_text()
    assert all(label in table for label in TINY_PLAN["methods"])
    assert "| SKD | SKD beats SFT | test exact match | SKD vs SFT on gold |" in table
    results = (tmp_path / "docs" / "results.md").read_text()
    assert "(img/quality_vs_acceptance.png)" in results
    for name in ("quality_vs_acceptance", "acceptance_per_position", "training_curves"):
        image = matplotlib.image.imread(tmp_path / "docs" / "img" / f"{name}.png")
        assert image.shape[0] > 300 and image.shape[1] > 500


def test_the_default_plan_runs_and_judges_lupis_claim(tmp_path):
    """`make demo` shows a LUPI result: its plan trains both sides of the LUPI claim (a teacher with the knowledge
    against one without, on facts), and on the tiny budget the claim gets a verdict in the report."""
    from specdistill.evaluate.prediction import ForwardCosts

    claim = next(c for c in CLAIMS if c.paper == "LUPI-SKD" and c.a == "KD without knowledge")
    costs = {w: ForwardCosts(c=0.5) for w in ("arith_styles", "facts")}
    jobs = plan_jobs(PLANS["default"], [0, 1, 2], "builtin-teacher", "warm", costs, tmp_path)
    trained = {(j["world"], j["label"]) for j in jobs if j.get("config")}
    assert {(claim.world, claim.a), (claim.world, claim.b)} <= trained
    assert sum(j.get("world") == "facts" and j["label"] == WARM for j in jobs) == 1  # its warm start, measured
    report = run_demo(out=str(tmp_path / "run"), plan={**TINY_PLAN, "methods": [claim.a, claim.b]})
    judged = judge(claim, report["rows"])
    assert judged is not None and judged["verdict"] in (HOLDS, REVERSED, UNDECIDED)
    table = (tmp_path / "run" / "report.md").read_text()
    assert f"| LUPI-SKD | {claim.text} | test exact match | {claim.b} vs {claim.a} |" in table


def test_same_seed_same_numbers(tmp_path):
    plan = {**TINY_PLAN, "methods": ["SFT on gold", "SKD"]}
    reports = [run_demo(out=str(tmp_path / f"run{i}"), plan=plan) for i in range(2)]
    def strip(rows):
        return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()
                 if not k.startswith(TIMINGS)} for r in rows]
    assert strip(reports[0]["rows"]) == strip(reports[1]["rows"])


# ---- claims from hand-made rows: five seeds per method
def _runs(world, method, values, key="quality"):
    return [{"world": world, "method": method, "seed": s, key: v} for s, v in enumerate(values)]


def test_aggregate_gives_the_t_interval_of_each_method():
    rows = aggregate(_runs("arith_styles", "SFT on gold", [1.0, 2.0, 3.0, 4.0, 5.0]))
    # mean 3, half width t(0.975, 4) * sqrt(2.5) / sqrt(5) = 2.7764 * 0.7071 = 1.9632
    assert rows[0]["quality"] == pytest.approx(3.0)
    assert (rows[0]["quality_low"], rows[0]["quality_high"]) == pytest.approx((1.0368, 4.9632), abs=1e-3)


@pytest.mark.parametrize("skd, expected", [([6.0, 7.0, 8.0, 9.0, 10.0], HOLDS), ([3.0, 4.0, 5.0, 6.0, 7.0], UNDECIDED),
                                           ([-4.0, -3.0, -2.0, -1.0, 0.0], REVERSED)])
def test_a_pairwise_claim_is_judged_by_welchs_interval(skd, expected):
    rows = aggregate(_runs("arith_styles", "SFT on gold", [1.0, 2.0, 3.0, 4.0, 5.0]) + _runs("arith_styles", "SKD", skd))
    claim = next(c for c in CLAIMS if c.text == "SKD beats SFT")
    judged = judge(claim, rows)
    assert judged["verdict"] == expected
    # equal variances 2.5, n = 5: se = 1, df = 8, half width t(0.975, 8) = 2.3060
    assert judged["interval"].half_width == pytest.approx(2.3060, abs=1e-3)


def test_a_threshold_claim_is_judged_by_the_metrics_own_interval():
    claim = Claim("image-token GPT", "slows decoding", "grids", "sampled_predicted_speedup", "1-layer", threshold=1.0)
    speedups = {HOLDS: [0.40, 0.42, 0.41, 0.39, 0.43], REVERSED: [1.3, 1.4, 1.2, 1.35, 1.25],
                UNDECIDED: [0.8, 1.2, 0.9, 1.1, 1.0]}
    for expected, values in speedups.items():
        rows = aggregate(_runs("grids", "1-layer", values, "sampled_predicted_speedup"))
        assert judge(claim, rows)["verdict"] == expected


def test_a_claim_whose_methods_did_not_run_is_left_out_of_the_table():
    rows = aggregate(_runs("arith_styles", "SFT on gold", [0.1, 0.2]))
    assert claims_table(CLAIMS, rows) == claims_table([], rows)


def test_preconditions_are_checked_against_their_thresholds():
    runs = (_runs("arith_styles", WARM, [0.10]) + _runs("arith_styles", "headroom", [0.25]))
    runs[0]["acceptance_rate"] = 0.85
    report = {"rows": aggregate(runs), "teacher": {"arith_styles": 0.45, "symbols_share": 1.0, "gold_symbols_share": 0.2},
              "plan": {"headroom_steps": 1500, "steps": 150, "batch_size": 32, "limit": 1000}}
    met = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").endswith("yes") for line in preconditions(report)[2:]}
    assert met == {"teacher exact match minus the warm start's": True,  # 0.45 - 0.10 = 0.35 >= 0.3
                   "warm start's greedy acceptance as the teacher's draft": False,  # 0.85 > 0.8
                   "headroom run (1500 steps on the whole train split) over the warm start": True,  # 2.5x
                   "limited prompt set, several epochs": True,  # 4.8 epochs
                   "gold style is not the teacher's: share of step lines in the teacher's style": True}


def test_the_grid_study_reports_every_depth_and_its_claims(tmp_path):
    plan = {**TINY_PLAN, "seeds": 2, "methods": [], "grids": True, "grid_steps": 2, "grid_more_steps": 2}
    report = run_demo(out=str(tmp_path), plan=plan)
    grid_rows = {r["method"]: r for r in report["rows"] if r["world"] == "grids"}
    assert sorted(grid_rows) == sorted(f"{d}-layer, {k}" for d in (1, 2, 3)
                                       for k in ("hybrid CE+KL", "hybrid, then on-policy"))
    for row in grid_rows.values():
        assert row["seeds"] == [0, 1] and 0 <= row["quality"] <= 1
        assert 0 <= row["sampled_expected_acceptance"] <= 1 and row["sampled_predicted_speedup"] > 0
    assert all(0 < report["grid_costs"][str(d)]["c"] < 10 for d in (1, 2, 3))  # timed: no order asserted
    table = (tmp_path / "report.md").read_text()
    assert "| image-token GPT | on-policy distillation (GKD: draft samples, JSD) raises the 2-layer draft's T=1 " \
           "acceptance over more hybrid CE+KL |" in table
