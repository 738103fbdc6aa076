"""The real-model study's page (docs/real.md): its settings, a table per draft depth, the verdicts, the peers and
the figures, every figure read from the run's report; nothing is typed in by hand."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from ..evaluate.plots import plt, save_figure
from .claims import CLAIMS, Claim, judge
from .plots import _err, plot_demo
from .real_plan import HUB, UNDISTILLED, WARM_LABEL
from .report import cell, claims_table, summary
from .stats import HOLDS, REVERSED, UNDECIDED, format_interval, mean_ci

ENGINES = {"specdistill": "measured_speedup", "llama.cpp": "llamacpp_speedup"}
PAPER = "this study"


def speed_claims(rows: list[dict]) -> list[Claim]:
    """Per depth and engine: the undistilled cut draft slows decoding, and each distilled draft speeds it up."""
    claims = []
    for world in dict.fromkeys(r["world"] for r in rows):
        methods = [r["method"] for r in rows if r["world"] == world and r["method"] != UNDISTILLED]
        for engine, metric in ENGINES.items():
            claims.append(Claim(PAPER, f"{world}, {engine}: the undistilled cut draft slows decoding", world, metric,
                                UNDISTILLED, threshold=1.0))
            claims += [Claim(PAPER, f"{world}, {engine}: the {m} draft speeds decoding up", world, metric, m,
                             threshold=1.0, above=True) for m in methods]
    return claims


def paper_claims(rows: list[dict]) -> list[Claim]:
    """docs/results.md's arith_styles claims that this study's methods can answer, judged at each depth."""
    worlds = dict.fromkeys(r["world"] for r in rows)
    return [replace(c, world=w, text=f"{w}: {c.text}") for w in worlds for c in CLAIMS if c.world == "arith_styles"]


def headline(rows: list[dict]) -> list[str]:
    """"Distillation turns a cut draft that slows decoding into one that speeds it up", per depth and engine:
    holds when the cut draft's interval is below 1 and some distilled draft's is above 1; reversed when the
    cut draft's is above 1 or every distilled draft's is below 1; cannot be told apart otherwise."""
    lines = ["| depth | engine | undistilled cut draft [95% CI] | best distilled draft [95% CI] | verdict |",
             "|---|---|---|---|---|"]
    for world in dict.fromkeys(r["world"] for r in rows):
        for engine, metric in ENGINES.items():
            mine = [r for r in rows if r["world"] == world and metric + "_values" in r]
            cut = next((r for r in mine if r["method"] == UNDISTILLED), None)
            rest = [r for r in mine if r["method"] != UNDISTILLED]
            if cut is None or not rest:
                continue
            cut_ci = mean_ci(cut[metric + "_values"])
            cis = {r["method"]: mean_ci(r[metric + "_values"]) for r in rest}
            best = max(cis, key=lambda m: cis[m].mean)
            if cut_ci.high < 1 and any(ci.low > 1 for ci in cis.values()):
                word = HOLDS
            elif cut_ci.low > 1 or all(ci.high < 1 for ci in cis.values()):
                word = REVERSED
            else:
                word = UNDECIDED
            lines.append(f"| {world} | {engine} | {format_interval(cut_ci, '.2f')} | {best}: "
                         f"{format_interval(cis[best], '.2f')} | **{word}** |")
    return lines


def depth_table(rows: list[dict], world: str) -> list[str]:
    lines = ["| draft | seeds | GSM8K exact match | greedy acceptance | T=1 acceptance | greedy mean accepted length | "
             "sum min(p,q), T=1 | predicted greedy speedup | measured B=1 speedup, specdistill | llama.cpp acceptance "
             "| measured speedup, llama.cpp | training s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["world"] == world):
        lines.append(f"| {r['method']} | {len(r['seeds'])} | {cell(r, 'quality')} | {cell(r, 'acceptance_rate')} | "
                     f"{cell(r, 'sampled_acceptance_rate')} | {cell(r, 'mean_accepted_length', '.2f')} | "
                     f"{cell(r, 'sampled_expected_acceptance')} | {cell(r, 'predicted_speedup', '.2f')} | "
                     f"{cell(r, 'measured_speedup', '.2f')} | {cell(r, 'llamacpp_acceptance_rate')} | "
                     f"{cell(r, 'llamacpp_speedup', '.2f')} | {r.get('train_s', 0):.0f} |")
    return lines


def gammas_line(report: dict) -> str:
    """Which gamma each engine did best with, per depth (counted over drafts and seeds)."""
    parts = []
    for world in dict.fromkeys(r["world"] for r in report["runs"]):
        runs = [r for r in report["runs"] if r["world"] == world]
        for engine, key in (("specdistill", "best_gamma"), ("llama.cpp", "llamacpp_best_gamma")):
            counts: dict = {}
            for r in runs:
                if key in r:
                    counts[r[key]] = counts.get(r[key], 0) + 1
            if counts:
                parts.append(f"{world} {engine}: " + ", ".join(f"gamma {g} x{n}" for g, n in sorted(counts.items())))
    return "; ".join(parts)


def step_line(report: dict) -> str:
    """How long a training step took per method in this run (its training seconds, model loading included, over
    its steps; mean over depths and seeds)."""
    steps, per = report["plan"]["steps"], {}
    for r in report["runs"]:
        if r.get("train_s"):
            per.setdefault(r["method"], []).append(r["train_s"] / steps)
    return "a step took " + ", ".join(f"{sum(v) / len(v):.1f} s ({m})" for m, v in per.items()) + \
        " on one core of this machine" if per else "no method was trained"


def paper_hours(report: dict) -> float:
    """Hours this run's methods would train at the SKD paper's budget (375 steps per method, seed and depth) at
    this run's step times, on its workers."""
    steps = report["plan"]["steps"]
    seconds = sum(375 * r["train_s"] / steps for r in report["runs"] if r.get("train_s"))
    return seconds / report["workers"] / 3600


def settings(report: dict) -> list[str]:
    """The title, how the page was made, the setting and the budget as run."""
    plan, t, name = report["plan"], report["teacher"], report["plan_name"]
    epochs = plan["steps"] * plan["batch_size"] / plan["train_limit"]
    warm_epochs = plan["warm_steps"] * plan["batch_size"] / plan["answer_limit"]
    costs = ", ".join(f"{d} layers: c = {c['c']:.3f}" for d, c in report["costs"].items())
    quick = (["**This page comes from the quick plan (`--quick`): one look at the pipeline with a tiny budget, not "
              "the study. `make real` runs the full plan and rewrites it.**", ""] if name == "quick" else [])
    return [f"# Real-model proving ground: {name} plan", "", *quick,
            f"Written by `python -m specdistill.study.real{' --quick' if name == 'quick' else ''}` "
            f"(`make real{'-quick' if name == 'quick' else ''}`) in {report['wall_s'] / 60:.1f} minutes on "
            f"{report['machine']} (estimated beforehand: {report['estimate']['total'] / 60:.0f} minutes). Every "
            "figure is measured by that run.", "", "## Setting", "",
            f"- Teacher `{Path(t['path']).name}` (SmolLM2-135M-Instruct, 30 layers, its own ChatML template); in "
            f"llama.cpp its own GGUF `{Path(t['gguf']).name}`.",
            f"- Drafts cut from it with `specdistill init-draft --layers N` (its first N-1 layers and its last) at "
            f"{', '.join(map(str, plan['depths']))} layers; cost ratio c (one draft forward / one teacher forward, "
            f"B=1, timed alone): {costs}.",
            f"- Data: GSM8K, the copy in `{report['data']['folder']}` (users load `{HUB}`, config `main`): the first "
            f"{plan['train_limit']} training questions, the first {plan['test_limit']} test questions.",
            f"- Shared warm start, the same for every method at a depth: SeqKD, i.e. cross-entropy on the teacher's "
            f"own T=1 answers ({plan['max_new_tokens']} new tokens) to the first {plan['answer_limit']} training "
            f"questions, generated once and cached, {plan['warm_steps']} steps of batch {plan['batch_size']} "
            f"({warm_epochs:.2f} epochs) from the cut draft.",
            f"- Each method then trains {plan['steps']} steps of batch {plan['batch_size']} at learning rate "
            f"{plan['lr']:g} ({epochs:.2f} epochs of the training questions), for each of {plan['seeds']} seeds. This "
            f"budget is small: {step_line(report)}, so the page shows what a few steps do, not what each method "
            f"reaches; the SKD paper's budget (about 1,000 questions, 3 epochs: 375 steps of batch 8 per method and "
            f"seed) would take about {paper_hours(report):.0f} hours here.",
            f"- Drafts judged as served: acceptance on {plan['bench_prompts']} test prompts, gamma {report['gamma']}, "
            f"greedy and T=1; sum min(p,q) over the teacher's own T=1 outputs; the predicted speedup from the measured "
            f"acceptance and costs; measured speedups at B=1, greedy, on {plan['timing_prompts']} test prompts x "
            f"{plan['timing_new_tokens']} new tokens, one draft at a time with no other study work running, each "
            f"against the target alone timed just before its depth and seed's drafts, in specdistill's engine and in "
            f"llama.cpp (the draft exported to q8_0 GGUF). Each engine's gamma per depth: the best of "
            f"{plan['gammas']} (specdistill) and {plan['llamacpp_gammas']} (llama.cpp) for the warm start on "
            f"{plan['timing_prompts']} training prompts, then used for every draft of that depth: "
            f"{gammas_line(report)}.",
            f"- Teacher: GSM8K exact match {t['quality']:.3f} zero-shot, greedy, {plan['quality_new_tokens']} new "
            f"tokens ({t['answers_with_final_line']:.0%} of its answers reach a `####` line). At 135M parameters "
            "GSM8K is mostly beyond the model: exact match here says whether a draft keeps the teacher's answer "
            "format and its few right answers, not whether it reasons.", ""]


def peers_section(peers: dict) -> list[str]:
    if not peers:
        return []
    lines = ["## Peers, measured side by side in this run", "",
             "| comparison | draft | figure | ratio |", "|---|---|---|---|"]
    for world, a in peers.get("assisted", {}).items():
        lines.append(f"| specdistill B=1 / transformers assisted (B=1), gamma {a['gamma']} | {world} {a['method']} | "
                     f"{a['specdistill_b1_tokens_per_s']:.1f} / {a['hf_assisted_tokens_per_s']:.1f} tokens/s, "
                     f"identical outputs: {a['identical']} | {a['b1_over_hf']:.2f}x |")
        lines.append(f"| specdistill B=8 / transformers assisted one prompt at a time | {world} {a['method']} | "
                     f"{a['specdistill_b8_tokens_per_s']:.1f} / {a['hf_assisted_tokens_per_s']:.1f} tokens/s | "
                     f"{a['b8_over_hf']:.2f}x |")
    s = peers.get("skd_rollout")
    if s:
        b = s["batch_size"]
        lines.append(f"| SKD rollout B={b} / B=1 (eager) | {s['draft']} warm start | {s['batched_tokens_per_s']:.1f} / "
                     f"{s['b1_tokens_per_s']:.1f} tokens/s | {s['batched_over_b1']:.2f}x |")
        if "compiled_over_eager" in s:
            lines.append(f"| SKD rollout B={b}, compile on / off | {s['draft']} warm start | "
                         f"{s['batched_compiled_tokens_per_s']:.1f} / {s['batched_tokens_per_s']:.1f} tokens/s | "
                         f"{s['compiled_over_eager']:.2f}x |")
    g = peers.get("trl_gkd", {})
    if "speedup" in g:
        lines.append(f"| specdistill GKD step / TRL GKDTrainer step (lambda 1, beta 0.5, T=1, batch {g['batch_size']}, "
                     f"{g['max_new_tokens']} new tokens, {g['steps']} timed steps, eager) | {g['draft']} warm start | "
                     f"{g['specdistill_steps_per_s']:.3f} / {g['trl_steps_per_s']:.3f} steps/s | {g['speedup']:.2f}x |")
    elif g:
        lines.append(f"| TRL GKDTrainer | - | not run: {g.get('skipped')} | - |")
    return lines + [""]


FIGURES = (["quality_vs_acceptance", "test exact match against greedy acceptance, mean and 95% interval over seeds"],
           ["acceptance_per_position", "acceptance per draft position, first seed"],
           ["speedup_per_method", "measured speedup per draft in both engines, mean and 95% interval over seeds"],
           ["training_curves", "training loss per step, first seed"])


def plot_speedups(report: dict, path: Path) -> Path:
    """One panel per depth: each draft's measured speedup in both engines (bars, 95% interval), the line at 1."""
    worlds = list(dict.fromkeys(r["world"] for r in report["rows"]))
    fig, axes = plt.subplots(1, len(worlds), figsize=(7 * len(worlds), 4.6), squeeze=False)
    for ax, world in zip(axes[0], worlds):
        rows = [r for r in report["rows"] if r["world"] == world]
        for k, (engine, metric) in enumerate(ENGINES.items()):
            have = [(i, r) for i, r in enumerate(rows) if metric in r]
            errs = [_err(r, metric) for _, r in have]
            yerr = None if any(e is None for e in errs) or not errs else [[e[0][0] for e in errs], [e[1][0] for e in errs]]
            ax.bar([i + 0.4 * k for i, _ in have], [r[metric] for _, r in have], 0.4, yerr=yerr, capsize=3,
                   label=engine)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([i + 0.2 for i in range(len(rows))], [r["method"] for r in rows], rotation=30, ha="right",
                      fontsize=8)
        ax.set(ylabel="tokens/s with the draft / target alone (B=1, greedy)", title=f"{world}: measured speedup")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def time_table(report: dict) -> list[str]:
    """Where the wall time went: each stage as run, beside real_plan.estimate's total (its stages differ in cut)."""
    est = report["estimate"]
    lines = ["## Wall time", "", "| stage (as run) | minutes |", "|---|---:|"]
    lines += [f"| {name} | {s / 60:.1f} |" for name, s in report.get("stages_s", {}).items()]
    lines += [f"| **total** (estimated {est['total'] / 60:.0f}) | **{report['wall_s'] / 60:.1f}** |", "",
              "The estimate's stages (minutes): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in est.items()
                                                              if k != "total") + ".", ""]
    if "pace" in report:  # the machine's speed at this sitting's start against the estimate's
        p = report["pace"]
        lines += [f"At this sitting's start the machine decoded the teacher alone at {p['tokens_per_s']:.1f} "
                  f"tokens/s (batch size 1, one thread) against {p['reference_tokens_per_s']} when the estimate "
                  f"was measured: pace {p['pace']:.2f}, so about {p['expected_s'] / 60:.0f} minutes "
                  "expected. A resumed study's table holds its last sitting's stages only.", ""]
    return lines


def render(report: dict) -> str:
    rows = report["rows"]
    out = settings(report) + time_table(report)
    for world in dict.fromkeys(r["world"] for r in rows):
        out += [f"## {world} drafts", "", *depth_table(rows, world), ""]
    claims = speed_claims(rows) + paper_claims(rows)
    out += ["## Verdicts", "", "Distillation turns a cut draft that slows decoding into one that speeds it up "
            "(measured B=1 speedup; 95% intervals over seeds):", "", *headline(rows), "",
            "In short, as measured:", "", *summary(claims, rows), "", *claims_table(claims, rows), "",
            "A claim holds when its whole 95% interval is on its side (of 1, or of zero for a difference), is "
            "reversed when it is wholly on the other side, and cannot be told apart otherwise (also when the seeds "
            "gave identical values: greedy figures of one training run do not vary with the measuring seed).", ""]
    out += peers_section(report.get("peers", {}))
    return "\n".join(out) + "\n"


def write_real_report(report: dict, out_dir: Path, results: Path | None = None) -> str:
    """report.md and the figures in out_dir; with `results`, the page there too, its figures in img/real_*.png."""
    plot_demo({**report, "runs": report["runs"] + report.get("warm_runs", [])}, out_dir)
    plot_speedups(report, out_dir / "speedup_per_method.png")
    text = render(report)
    figures = "\n## Figures\n\n" + "\n\n".join(f"![{alt}]({{img}}{name}.png)" for name, alt in FIGURES) + "\n"
    (out_dir / "report.md").write_text(text + figures.format(img=""))
    if results is not None:
        (results.parent / "img").mkdir(parents=True, exist_ok=True)
        for name, _ in FIGURES:
            shutil.copyfile(out_dir / f"{name}.png", results.parent / "img" / f"real_{name}.png")
        results.write_text(text + figures.format(img="img/real_"))
    return text
