"""The papers' claims that the built-in study tests, and how rows over seeds are judged against them.

A claim says one method scores higher than another on one metric ("b > a"); its verdict comes from Welch's
interval for the difference (stats.py). A threshold claim says a metric is below (or above) a value, e.g. a
draft's predicted speedup below 1; its verdict comes from the metric's own interval.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import DEPTHS, HYBRID, ONPOLICY, grid_label
from .stats import HOLDS, REVERSED, UNDECIDED, mean_ci, verdict

METRICS = ("quality", "acceptance_rate", "mean_accepted_length", "sampled_acceptance_rate",
           "sampled_mean_accepted_length", "sampled_expected_acceptance", "predicted_speedup",
           "sampled_predicted_speedup", "symbols_share", "train_s")


@dataclass(frozen=True)
class Claim:
    paper: str
    text: str
    world: str
    metric: str
    a: str  # the method the claim says is lower (or, with threshold, the method measured)
    b: str | None = None  # the method the claim says is higher
    threshold: float | None = None  # threshold claim: the metric of `a` is below this value
    above: bool = False  # a threshold claim that the metric of `a` is above the threshold instead


ARITH, FACTS = "arith_styles", "facts"
CLAIMS = [
    Claim("SKD", "supervised KD beats SFT", ARITH, "quality", "SFT on gold", "supervised KD"),
    Claim("SKD", "on-policy KD beats supervised KD", ARITH, "quality", "supervised KD", "on-policy KD (GKD)"),
    Claim("SKD", "ImitKD beats on-policy KD", ARITH, "quality", "on-policy KD (GKD)", "ImitKD"),
    Claim("SKD", "SKD beats ImitKD", ARITH, "quality", "ImitKD", "SKD"),
    Claim("SKD", "SKD beats SFT", ARITH, "quality", "SFT on gold", "SKD"),
    Claim("SKD", "SKD's student is accepted more often than SFT's", ARITH, "acceptance_rate", "SFT on gold", "SKD"),
    Claim("DistillSpec", "distillation raises greedy acceptance over an undistilled draft", ARITH, "acceptance_rate",
          "SFT on gold", "DistillSpec (on-policy TVD)"),
    Claim("DistillSpec", "distillation raises sampled (T=1) acceptance over an undistilled draft", ARITH,
          "sampled_acceptance_rate", "SFT on gold", "DistillSpec (on-policy TVD)"),
    Claim("DistillSpec", "with its TVD loss, student-generated data beats the fixed dataset", ARITH,
          "sampled_acceptance_rate", "TVD on the dataset", "DistillSpec (on-policy TVD)"),
    Claim("DistillSpec", "with its TVD loss, student-generated data beats teacher-generated data", ARITH,
          "sampled_acceptance_rate", "TVD on teacher samples", "DistillSpec (on-policy TVD)"),
    Claim("DistillSpec", "DistillSpec beats supervised KD (dataset, forward KL; data and loss both differ)", ARITH,
          "sampled_acceptance_rate", "supervised KD", "DistillSpec (on-policy TVD)"),
    Claim("DistillSpec", "DistillSpec beats SeqKD (teacher samples, CE; data and loss both differ)", ARITH,
          "sampled_acceptance_rate", "SeqKD", "DistillSpec (on-policy TVD)"),
    Claim("LUPI-SKD", "a teacher with the knowledge teaches a closed-book student more than one without", FACTS,
          "quality", "KD without knowledge", "LUPI-SKD"),
    Claim("LUPI-SKD", "LUPI-SKD beats SFT on the gold answers", FACTS, "quality", "SFT on answers", "LUPI-SKD"),
]


def _grid_claims(depth: int) -> list[Claim]:
    """The image-token study's claims at one depth: its hybrid draft slows sampled decoding; on-policy
    distillation raises its acceptance; and whether the on-policy draft still slows decoding."""
    hybrid, onpolicy, paper = grid_label(depth, HYBRID), grid_label(depth, ONPOLICY), "image-token GPT"
    return [
        Claim(paper, f"a {depth}-layer hybrid-trained draft slows T=1 decoding (speedup below 1)", "grids",
              "sampled_predicted_speedup", hybrid, threshold=1.0),
        Claim(paper, f"on-policy distillation (GKD: draft samples, JSD) raises the {depth}-layer draft's T=1 "
              "acceptance over more hybrid CE+KL", "grids", "sampled_acceptance_rate", hybrid, onpolicy),
        Claim(paper, f"after on-policy distillation the {depth}-layer draft still slows T=1 decoding", "grids",
              "sampled_predicted_speedup", onpolicy, threshold=1.0),
    ]


GRID_CLAIMS = [c for d in DEPTHS for c in _grid_claims(d)]


def aggregate(results: list[dict], metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """One row per (world, method) in the order first seen: each metric's per-seed values, mean and interval."""
    rows: dict[tuple[str, str], dict] = {}
    for r in results:
        row = rows.setdefault((r["world"], r["method"]), {"world": r["world"], "method": r["method"], "seeds": []})
        row["seeds"].append(r["seed"])
        for key in metrics:
            if key in r:
                row.setdefault(key + "_values", []).append(r[key])
    for row in rows.values():
        for key in metrics:
            if key + "_values" in row:
                ci = mean_ci(row[key + "_values"])
                row[key], row[key + "_low"], row[key + "_high"] = ci.mean, ci.low, ci.high
    return list(rows.values())


def judge(claim: Claim, rows: list[dict]) -> dict | None:
    """{claim, verdict, interval} from the rows; None when the rows lack a method the claim needs."""
    by = {(r["world"], r["method"]): r for r in rows}
    a = by.get((claim.world, claim.a))
    if a is None or claim.metric + "_values" not in a:
        return None
    if claim.threshold is not None:
        ci = mean_ci(a[claim.metric + "_values"])
        below, over = ci.high < claim.threshold, ci.low > claim.threshold  # False when the interval is undefined
        if claim.above:
            below, over = over, below
        word = HOLDS if below else REVERSED if over else UNDECIDED
        return {"claim": claim, "verdict": word, "interval": ci}
    b = by.get((claim.world, claim.b))
    if b is None:
        return None
    word, ci = verdict(a[claim.metric + "_values"], b[claim.metric + "_values"])
    return {"claim": claim, "verdict": word, "interval": ci}
