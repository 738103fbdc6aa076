"""A study's report (report.md, and docs/results.md with `--results`): each method's figures with 95% intervals
over seeds, the worlds and their preconditions as measured, and a verdict per paper claim."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from ..data import grids
from ..data.tasks import STYLE_WEIGHTS, restyle_step
from ..models import PRESETS
from .claims import CLAIMS, GRID_CLAIMS, Claim, judge
from .measure import TEACHER_STYLE
from .plan import DEPTHS, WARM, method_steps
from .stats import HOLDS, REVERSED, UNDECIDED, format_interval

METRIC_NAMES = {
    "quality": "test exact match", "acceptance_rate": "greedy acceptance",
    "sampled_acceptance_rate": "T=1 acceptance", "sampled_expected_acceptance": "sum min(p,q)",
    "sampled_predicted_speedup": "predicted T=1 speedup", "predicted_speedup": "predicted greedy speedup",
    "mean_accepted_length": "greedy mean accepted length", "sampled_mean_accepted_length": "T=1 mean accepted length",
    "measured_speedup": "measured B=1 speedup (specdistill)", "llamacpp_speedup": "measured speedup (llama.cpp)",
}
FIGURE_NAMES = ("quality_vs_acceptance", "acceptance_per_position", "training_curves")
FIGURES = ("\n## Figures\n\n![test quality against greedy acceptance, mean and 95% interval over seeds]"
           "({img}quality_vs_acceptance.png)\n\n![acceptance per draft position, first seed]"
           "({img}acceptance_per_position.png)\n\n![training loss per step, first seed]({img}training_curves.png)\n")
# The arith_styles world's preconditions (docs/results.md, "The worlds"): the teacher's lead over the warm start,
# the warm start's greedy acceptance, the headroom run's quality over the warm start's.
MIN_GAP, MAX_WARM_ACCEPTANCE, MIN_HEADROOM = 0.30, 0.80, 2


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
    lines = ["| paper | claim | metric | compared | difference or value [95% CI] | verdict |",
             "|---|---|---|---|---|---|"]
    for claim in claims:
        judged = judge(claim, rows)
        if judged is None:
            continue
        sign = ">" if claim.above else "<"
        compared = f"{claim.a} {sign} {claim.threshold:g}" if claim.threshold is not None else f"{claim.b} vs {claim.a}"
        lines.append(f"| {claim.paper} | {claim.text} | {METRIC_NAMES.get(claim.metric, claim.metric)} | {compared} | "
                     f"{format_interval(judged['interval'])} | **{judged['verdict']}** |")
    return lines


def method_table(rows: list[dict], world: str) -> list[str]:
    """One line per method; the teacher-style column (share of step lines in the teacher's style) where the rows
    have it."""
    rows = [r for r in rows if r["world"] == world]
    style = any("symbols_share" in r for r in rows)
    lines = ["| method | seeds | test exact match | greedy acceptance | greedy mean accepted length | T=1 acceptance | "
             "sum min(p,q), T=1 | predicted speedup, greedy / T=1 | " + ("teacher-style lines | " if style else "")
             + "training time (s), indicative |", "|---|---|---|---|---|---|---|---|" + ("---|" if style else "") + "---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {len(r['seeds'])} | {cell(r, 'quality')} | {cell(r, 'acceptance_rate')} | "
                     f"{cell(r, 'mean_accepted_length', '.2f')} | {cell(r, 'sampled_acceptance_rate')} | "
                     f"{cell(r, 'sampled_expected_acceptance')} | {r['predicted_speedup']:.2f} / "
                     f"{r['sampled_predicted_speedup']:.2f} | " + (f"{r['symbols_share']:.2f} | " if style else "")
                     + f"{r['train_s']:.0f} |")
    return lines


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


def preconditions(report: dict) -> list[str]:
    """The arith_styles world's preconditions, as measured (docs/results.md, "The worlds")."""
    rows = {(r["world"], r["method"]): r for r in report["rows"]}
    warm = rows.get(("arith_styles", WARM))
    if warm is None:
        return []
    teacher, plan = report["teacher"], report["plan"]
    lines = ["| precondition | required | measured | met |", "|---|---|---|---|"]

    def add(name: str, required: str, measured: str, met: bool) -> None:
        lines.append(f"| {name} | {required} | {measured} | {'yes' if met else '**no**'} |")

    gap = teacher["arith_styles"] - warm["quality"]
    add("teacher exact match minus the warm start's", f">= {MIN_GAP:.2f}",
        f"{teacher['arith_styles']:.3f} - {warm['quality']:.3f} = {gap:.3f}", gap >= MIN_GAP)
    add("warm start's greedy acceptance as the teacher's draft", f"<= {MAX_WARM_ACCEPTANCE:.2f}",
        f"{warm['acceptance_rate']:.3f}", warm["acceptance_rate"] <= MAX_WARM_ACCEPTANCE)
    head = rows.get(("arith_styles", "headroom"))
    if head is not None:
        ratio = head["quality"] / max(warm["quality"], 1e-9)
        add(f"headroom run ({plan['headroom_steps']} steps on the whole train split) over the warm start",
            f">= {MIN_HEADROOM}x", f"{head['quality']:.3f} / {warm['quality']:.3f} = {ratio:.1f}x",
            head["quality"] >= MIN_HEADROOM * warm["quality"])
    epochs = method_steps(plan, "arith_styles") * plan["batch_size"] / plan["limit"]
    add("limited prompt set, several epochs", "about 1,000 prompts",
        f"{plan['limit']} prompts, {epochs:.1f} epochs per method", plan["limit"] <= 1500 and epochs >= 2)
    share = teacher.get("symbols_share")
    if share is not None:
        add("gold style is not the teacher's: share of step lines in the teacher's style", "gold << teacher",
            f"gold {teacher['gold_symbols_share']:.2f}, teacher {share:.2f}",
            share - teacher["gold_symbols_share"] >= 0.3)
    return lines


WORLDS_TEXT = """\
Worlds (all built in, generated offline; `src/specdistill/data/tasks.py`, `data/grids.py`):

- **arith_styles**: two-step arithmetic (`What is 3+7*8?`). Each step line of a gold solution is written in a
  style drawn per line: {styles}.
  The built-in teacher was trained on the {teacher_style} style only, so it writes that style: matching the data
  and matching the teacher are different goals, as when a draft's training data differs from what the target
  writes (DistillSpec). Training reads a limited set of prompts (the first `limit` train records) for several
  epochs, as in the SKD paper's about 1,000 prompts per task. Quality is exact match of the final `#### N`,
  whatever the style.
- **facts** (LUPI): questions about invented people. The teacher reads a knowledge paragraph (privileged); the
  student and every test answer closed book.
- **grids** (the image-token study): pre-tokenized class-conditional {side}x{side} grids of {codes} codes, prompt
  `[<bos>, <class_c>]`; each class has a palette, a successor map and a column shift, plus {noise:.0%} noise.
  A {teacher_layers}-layer grid teacher; drafts of {depths} layers trained from random weights. Quality is the
  share of cells that follow the class's rule. The first row is uniform over the class's {palette} palette codes,
  later cells are {rule:.0%} determined: real image codes carry far more entropy per token, so this world is
  easier for a draft than the image-token study's (docs/grids.md).

Acceptance is accepted / drafted tokens; `sum min(p,q)` is the expected acceptance of speculative sampling at T=1,
averaged over the positions of the teacher's own T=1 outputs. Speedups are predictions, labelled as such:
tau(gamma) / (gamma c + c_v(gamma)) from the measured per-token acceptance and the pair's forward costs (c: one
draft forward over one teacher forward; c_v: the teacher's forward over gamma + 1 tokens), timed one at a time at
batch size 1 with one thread before any training worker starts (docs/metrics.md). Verdicts: a claim "B beats A"
holds when Welch's 95% interval for mean(B) - mean(A) over seeds is above zero, is reversed when it is below
zero, and cannot be told apart otherwise; "speedup below 1" uses the 95% interval of the speedup itself.
"""


def worlds_text() -> str:
    """The worlds' description, its figures read from the worlds' own definitions."""
    styles = [f"`{restyle_step('7*8=56', s)}` ({w:.0%})" for s, w in STYLE_WEIGHTS.items()]
    depths = [str(d) for d in DEPTHS]
    return WORLDS_TEXT.format(
        styles=", ".join(styles[:-1]) + " or " + styles[-1], teacher_style=TEACHER_STYLE, side=grids.SIDE,
        codes=grids.CODES, noise=grids.NOISE, teacher_layers=PRESETS["grid-teacher"]["num_hidden_layers"],
        depths=", ".join(depths[:-1]) + " and " + depths[-1], palette=grids.PALETTE, rule=1 - grids.NOISE)


def header(report: dict) -> list[str]:
    """The report's title, how it was made, the budgets and the teacher's scores."""
    plan, t = report["plan"], report["teacher"]
    steps = "".join(f" ({w}: {n})" for w, n in plan.get("world_steps", {}).items())
    costs = ", ".join(f"{w} {c['c']:.2f}" for w, c in report["costs"].items())
    return [f"# specdistill demo: {report['plan_name']} plan, seeds {report['seeds'][0]}..{report['seeds'][-1]}", "",
            f"Written by `specdistill demo --plan {report['plan_name']}`; `make results` runs the paper plan and "
            "writes docs/results.md (docs/benchmarks.md has its wall time). Every figure below is measured by that "
            "run; nothing is copied in by hand.", "",
            f"Each method trains {plan['steps']} steps of batch {plan['batch_size']}{steps} from one warm start "
            f"({plan['student_steps']} SFT steps); cells are the mean over seeds and its 95% t interval. Draft figures: "
            f"speculative decoding with gamma {report['gamma']} on {plan['bench_prompts']} test prompts per world, the "
            f"teacher verifying on its own view; predicted speedups use the measured acceptance and the pair's forward "
            f"costs, timed alone before the parallel workers start (cost ratio c: {costs}). Training times are wall "
            f"clocks of {report['workers']} parallel workers sharing the machine: indicative only.", "",
            f"Teacher `{t['path']}`: arith_styles {t['arith_styles']:.3f}, facts {t['facts']:.3f} with the knowledge, "
            f"{t['facts_closed_book']:.3f} closed book.", ""]


def claims_section(claims: list[Claim], rows: list[dict]) -> list[str]:
    return ["## Claims", "", "In short, as measured:", "", *summary(claims, rows), "", *claims_table(claims, rows), ""]


def render_report(report: dict) -> str:
    """report.md: the preconditions, each world's table, and the claims with verdicts."""
    rows = report["rows"]
    out = [*header(report), worlds_text()]
    pre = preconditions(report)
    if pre:
        out += ["## The arith_styles world: preconditions", "", *pre, ""]
    for world in dict.fromkeys(r["world"] for r in rows if r["world"] != "grids"):
        out += [f"## {world}", "", *method_table([r for r in rows if r["method"] != "headroom"], world), ""]
    has_grids = any(r["world"] == "grids" for r in rows)
    if has_grids:
        out += ["## grids (the image-token study)", "", *grid_table(report), ""]
    out += claims_section(CLAIMS + (GRID_CLAIMS if has_grids else []), rows)
    return "\n".join(out) + "\n"


def write_report(text: str, out_dir: Path, results: Path | None = None) -> None:
    """report.md beside the figures in out_dir; with `results`, the same text as a docs page there too, its
    figures copied into img/ beside it."""
    (out_dir / "report.md").write_text(text + FIGURES.format(img=""))
    if results is None:
        return
    (results.parent / "img").mkdir(parents=True, exist_ok=True)
    for name in FIGURE_NAMES:
        shutil.copyfile(out_dir / f"{name}.png", results.parent / "img" / f"{name}.png")
    results.write_text(text + FIGURES.format(img="img/"))
