"""The demo's report: each method's figures with 95% intervals over seeds, and a verdict per paper claim.

A claim says one method scores higher than another on one metric ("b > a"); its verdict comes from Welch's
interval for the difference (evaluate/stats.py). A threshold claim says a metric is below (or above) a value,
e.g. a draft's predicted speedup below 1; its verdict comes from the metric's own interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .stats import HOLDS, REVERSED, UNDECIDED, format_interval, mean_ci, verdict

METRICS = ("quality", "acceptance_rate", "mean_accepted_length", "sampled_acceptance_rate",
           "sampled_mean_accepted_length", "sampled_expected_acceptance", "predicted_speedup",
           "sampled_predicted_speedup", "symbols_share", "train_s")
METRIC_NAMES = {
    "quality": "test exact match", "acceptance_rate": "greedy acceptance",
    "sampled_acceptance_rate": "T=1 acceptance", "sampled_expected_acceptance": "sum min(p,q)",
    "sampled_predicted_speedup": "predicted T=1 speedup", "predicted_speedup": "predicted greedy speedup",
    "mean_accepted_length": "greedy mean accepted length", "sampled_mean_accepted_length": "T=1 mean accepted length",
}


@dataclass(frozen=True)
class Claim:
    paper: str
    text: str
    world: str
    metric: str
    a: str  # the method the claim says is lower (or, with threshold, the method measured)
    b: str | None = None  # the method the claim says is higher
    threshold: float | None = None  # threshold claim: the metric of `a` is below this value


ARITH, FACTS = "arith_styles", "facts"
WARM_LABEL = "warm start (no distillation)"  # the demo's row for the warm start, measured without training
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


def aggregate(results: list[dict]) -> list[dict]:
    """One row per (world, method) in the order first seen: each metric's per-seed values, mean and interval."""
    rows: dict[tuple[str, str], dict] = {}
    for r in results:
        row = rows.setdefault((r["world"], r["method"]), {"world": r["world"], "method": r["method"], "seeds": []})
        row["seeds"].append(r["seed"])
        for key in METRICS:
            if key in r:
                row.setdefault(key + "_values", []).append(r[key])
    for row in rows.values():
        for key in METRICS:
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
        word = HOLDS if ci.high < claim.threshold else REVERSED if ci.low > claim.threshold else UNDECIDED
        return {"claim": claim, "verdict": word, "interval": ci}
    b = by.get((claim.world, claim.b))
    if b is None:
        return None
    word, ci = verdict(a[claim.metric + "_values"], b[claim.metric + "_values"])
    return {"claim": claim, "verdict": word, "interval": ci}


def cell(row: dict, key: str, fmt: str = ".3f") -> str:
    if key not in row:
        return ""
    low = row.get(key + "_low", math.nan)
    return format(row[key], fmt) if math.isnan(low) else f"{row[key]:{fmt}} [{low:{fmt}}, {row[key + '_high']:{fmt}}]"


def summary(claims: list[Claim], rows: list[dict]) -> list[str]:
    """One line per paper: which of its claims hold, are reversed, or cannot be told apart at this budget."""
    by_paper: dict[str, dict[str, list[str]]] = {}
    for claim in claims:
        judged = judge(claim, rows)
        if judged is not None:
            by_paper.setdefault(claim.paper, {}).setdefault(judged["verdict"], []).append(claim.text)
    lines = []
    for paper, verdicts in by_paper.items():
        parts = [f"{word} ({len(texts)}): " + "; ".join(texts) for word, texts in
                 sorted(verdicts.items(), key=lambda kv: (HOLDS, REVERSED, UNDECIDED).index(kv[0]))]
        lines.append(f"- **{paper}**: " + ". ".join(parts) + ".")
    return lines


def claims_table(claims: list[Claim], rows: list[dict]) -> list[str]:
    lines = ["| paper | claim | metric | compared | difference or value [95% CI] | verdict |", "|---|---|---|---|---|---|"]
    for claim in claims:
        judged = judge(claim, rows)
        if judged is None:
            continue
        compared = f"{claim.a} < {claim.threshold:g}" if claim.threshold is not None else f"{claim.b} vs {claim.a}"
        lines.append(f"| {claim.paper} | {claim.text} | {METRIC_NAMES.get(claim.metric, claim.metric)} | {compared} | "
                     f"{format_interval(judged['interval'])} | **{judged['verdict']}** |")
    return lines


def method_table(rows: list[dict], world: str) -> list[str]:
    """One line per method; the teacher-style column (share of step lines in the teacher's style) on arith_styles."""
    style = world == "arith_styles"
    lines = ["| method | seeds | test exact match | greedy acceptance | greedy mean accepted length | T=1 acceptance | "
             "sum min(p,q), T=1 | predicted speedup, greedy / T=1 | " + ("teacher-style lines | " if style else "")
             + "training time (s), indicative |", "|---|---|---|---|---|---|---|---|" + ("---|" if style else "") + "---|"]
    for r in (r for r in rows if r["world"] == world):
        lines.append(f"| {r['method']} | {len(r['seeds'])} | {cell(r, 'quality')} | {cell(r, 'acceptance_rate')} | "
                     f"{cell(r, 'mean_accepted_length', '.2f')} | {cell(r, 'sampled_acceptance_rate')} | "
                     f"{cell(r, 'sampled_expected_acceptance')} | {r['predicted_speedup']:.2f} / "
                     f"{r['sampled_predicted_speedup']:.2f} | " + (f"{r['symbols_share']:.2f} | " if style else "")
                     + f"{r['train_s']:.0f} |")
    return lines


def preconditions(report: dict) -> list[str]:
    """The arith_styles world's preconditions, as measured (docs/results.md, "The worlds")."""
    rows = {(r["world"], r["method"]): r for r in report["rows"]}
    warm = rows.get(("arith_styles", WARM_LABEL))
    if warm is None:
        return []
    teacher, plan = report["teacher"], report["plan"]
    lines = ["| precondition | required | measured | met |", "|---|---|---|---|"]

    def add(name: str, required: str, measured: str, met: bool) -> None:
        lines.append(f"| {name} | {required} | {measured} | {'yes' if met else '**no**'} |")

    gap = teacher["arith_styles"] - warm["quality"]
    add("teacher exact match minus the warm start's", ">= 0.30",
        f"{teacher['arith_styles']:.3f} - {warm['quality']:.3f} = {gap:.3f}", gap >= 0.3)
    add("warm start's greedy acceptance as the teacher's draft", "<= 0.80", f"{warm['acceptance_rate']:.3f}",
        warm["acceptance_rate"] <= 0.8)
    head = rows.get(("arith_styles", "headroom"))
    if head is not None:
        add(f"headroom run ({plan['headroom_steps']} steps on the whole train split) over the warm start",
            ">= 2x", f"{head['quality']:.3f} / {warm['quality']:.3f} = {head['quality'] / max(warm['quality'], 1e-9):.1f}x",
            head["quality"] >= 2 * warm["quality"])
    epochs = plan.get("world_steps", {}).get("arith_styles", plan["steps"]) * plan["batch_size"] / plan["limit"]
    add("limited prompt set, several epochs", "about 1,000 prompts",
        f"{plan['limit']} prompts, {epochs:.1f} epochs per method", plan["limit"] <= 1500 and epochs >= 2)
    share = teacher.get("symbols_share")
    if share is not None:
        add("gold style is not the teacher's: share of step lines in the teacher's style", "gold << teacher",
            f"gold {teacher['gold_symbols_share']:.2f}, teacher {share:.2f}", share - teacher["gold_symbols_share"] >= 0.3)
    return lines


WORLDS_TEXT = """\
Worlds (all built in, generated offline; `src/specdistill/data/tasks.py`, `data/grids.py`):

- **arith_styles**: two-step arithmetic (`What is 3+7*8?`). Each step line of a gold solution is written in one of
  three styles, drawn per line: `7*8=56` (20%), `7 times 8 is 56` (45%) or `56=7*8` (35%). The built-in teacher
  was trained on the symbols style only, so it writes that style: matching the data and matching the teacher are
  different goals, as when a draft's training data differs from what the target writes (DistillSpec). Training
  reads a limited set of prompts (the first `limit` train records) for several epochs, as in the SKD paper's
  about 1,000 prompts per task. Quality is exact match of the final `#### N`, whatever the style.
- **facts** (LUPI): questions about invented people. The teacher reads a knowledge paragraph (privileged); the
  student and every test answer closed book.
- **grids** (the image-token study): pre-tokenized class-conditional 6x6 grids of 32 codes, prompt
  `[<bos>, <class_c>]`; each class has a palette, a successor map and a column shift, plus 5% noise. A 4-layer
  grid teacher; drafts of 1, 2 and 3 layers trained from random weights. Quality is the share of cells that
  follow the class's rule. The first row is uniform over the class's 6 palette codes, later cells are 95%
  determined: real image codes carry far more entropy per token, so this world is easier for a draft than the
  image-token study's (docs/grids.md).

Acceptance is accepted / drafted tokens; `sum min(p,q)` is the expected acceptance of speculative sampling at T=1,
averaged over the positions of the teacher's own T=1 outputs. Speedups are predictions, labelled as such:
tau(gamma) / (gamma c + c_v(gamma)) from the measured per-token acceptance and the pair's forward costs (c: one
draft forward over one teacher forward; c_v: the teacher's forward over gamma + 1 tokens), timed one at a time at
batch size 1 with one thread before any training worker starts (docs/metrics.md). Verdicts: a claim "B beats A"
holds when Welch's 95% interval for mean(B) - mean(A) over seeds is above zero, is reversed when it is below
zero, and cannot be told apart otherwise; "speedup below 1" uses the 95% interval of the speedup itself.
"""


def render_report(report: dict) -> str:
    """report.md: the preconditions, each world's table, and the claims with verdicts."""
    rows, plan, t = report["rows"], report["plan"], report["teacher"]
    out = [f"# specdistill demo: {report['plan_name']} plan, seeds {report['seeds'][0]}..{report['seeds'][-1]}", "",
           f"Written by `specdistill demo --plan {report['plan_name']}`; `make results` runs the paper plan and "
           "writes docs/results.md (docs/benchmarks.md has its wall time). Every figure below is measured by that "
           "run; nothing is copied in by hand.", "",
           f"Each method trains {plan['steps']} steps of batch {plan['batch_size']}"
           + "".join(f" ({w}: {n})" for w, n in plan.get("world_steps", {}).items()) + " from one warm start "
           f"({plan['student_steps']} SFT steps); cells are the mean over seeds and its 95% t interval. Draft figures: "
           f"speculative decoding with gamma {report['gamma']} on {plan['bench_prompts']} test prompts per world, the "
           f"teacher verifying on its own view; predicted speedups use the measured acceptance and the pair's forward "
           f"costs, timed alone before the parallel workers start (cost ratio c: "
           + ", ".join(f"{w} {c['c']:.2f}" for w, c in report["costs"].items()) + "). Training times are wall "
           f"clocks of {report['workers']} parallel workers sharing the machine: indicative only.", "",
           f"Teacher `{t['path']}`: arith_styles {t['arith_styles']:.3f}, facts {t['facts']:.3f} with the knowledge, "
           f"{t['facts_closed_book']:.3f} closed book.", "", WORLDS_TEXT]
    pre = preconditions(report)
    if pre:
        out += ["## The arith_styles world: preconditions", "", *pre, ""]
    for world in dict.fromkeys(r["world"] for r in rows if r["world"] != "grids"):
        out += [f"## {world}", "", *method_table([r for r in rows if r["method"] != "headroom"], world), ""]
    if any(r["world"] == "grids" for r in rows):
        out += ["## grids (the image-token study)", "", *grid_table(report), ""]
    claims = list(CLAIMS)
    if any(r["world"] == "grids" for r in rows):
        claims += grid_claims(report)
    out += ["## Claims", "", "In short, as measured:", "", *summary(claims, rows), "", *claims_table(claims, rows), ""]
    return "\n".join(out) + "\n"


# ---- the grid study (grid_study.py runs it)
DEPTHS = (1, 2, 3)
HYBRID, ONPOLICY = "hybrid CE+KL", "hybrid, then on-policy"


def grid_label(depth: int, kind: str) -> str:
    return f"{depth}-layer, {kind}"


def grid_table(report: dict) -> list[str]:
    """One line per (depth, training): rule score, T=1 draft figures, and the cost ratio c behind the prediction."""
    costs = report.get("grid_costs", {})
    lines = ["| draft | seeds | rule score (greedy) | T=1 acceptance | sum min(p,q), T=1 | T=1 mean accepted length | "
             "c | predicted T=1 speedup | greedy acceptance |", "|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in report["rows"] if r["world"] == "grids"):
        c = costs.get(r["method"].split("-")[0], {}).get("c", float("nan"))
        lines.append(f"| {r['method']} | {len(r['seeds'])} | {cell(r, 'quality')} | {cell(r, 'sampled_acceptance_rate')} | "
                     f"{cell(r, 'sampled_expected_acceptance')} | {cell(r, 'sampled_mean_accepted_length', '.2f')} | "
                     f"{c:.2f} | {cell(r, 'sampled_predicted_speedup', '.2f')} | {cell(r, 'acceptance_rate')} |")
    return lines


def grid_claims(report: dict) -> list[Claim]:
    """The image-token study's claims, per depth: its hybrid drafts slow sampled decoding; on-policy distillation
    raises their acceptance; and whether the on-policy draft still slows decoding."""
    claims = []
    for d in DEPTHS:
        hybrid, onpolicy = grid_label(d, HYBRID), grid_label(d, ONPOLICY)
        claims += [
            Claim("image-token GPT", f"a {d}-layer hybrid-trained draft slows T=1 decoding (speedup below 1)", "grids",
                  "sampled_predicted_speedup", hybrid, threshold=1.0),
            Claim("image-token GPT", f"on-policy distillation (GKD: draft samples, JSD) raises the {d}-layer "
                  "draft's T=1 acceptance over more hybrid CE+KL", "grids", "sampled_acceptance_rate", hybrid, onpolicy),
            Claim("image-token GPT", f"after on-policy distillation the {d}-layer draft still slows T=1 decoding",
                  "grids", "sampled_predicted_speedup", onpolicy, threshold=1.0),
        ]
    return claims
