"""The demo's image-token study on the `grids` world (data/grids.py): students of several depths as drafts of the
grid teacher under speculative sampling (T=1).

Per depth and seed, one job: hybrid CE + soft KL from random weights for `grid_steps` (configs/grid_hybrid.yaml),
then two continuations of equal length `grid_more_steps` from that model: more hybrid CE + KL, or on-policy
distillation (configs/grid_onpolicy.yaml: GKD, half the grids sampled by the draft). Equal budgets, so the
comparison is the data the last steps see, not how long each student trained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .config import DatasetConfig, load_config
from .data.records import load_records
from .data.tasks import get_task
from .data.views import encode_example
from .evaluate.claims import Claim, cell
from .evaluate.prediction import ForwardCosts
from .evaluate.quality import evaluate_records
from .evaluate.speculative import measure_forward_costs
from .models import load_model, load_tokenizer

TEACHER = "builtin-grid-teacher"
DEPTHS = (1, 2, 3)
MAX_NEW = 40  # 36 codes and <eos>, with room
HYBRID, ONPOLICY = "hybrid CE+KL", "hybrid, then on-policy"


def label(depth: int, kind: str) -> str:
    return f"{depth}-layer, {kind}"


def grid_jobs(plan: dict, seeds: list[int], out_dir: Path) -> list[dict]:
    return [{"kind": "grids", "depth": d, "seed": s, "plan": plan, "out": str(out_dir / f"seed{s}" / f"grids-{d}layer")}
            for s in seeds for d in DEPTHS]


def grid_prompts(n: int | None) -> tuple[list, list[list[int]]]:
    views = load_config("configs/grid_hybrid.yaml").data.views
    records = load_records(DatasetConfig(task="grids", split="test"))[:n]
    return records, [encode_example(r, load_tokenizer(TEACHER), views).teacher_prompt for r in records]


def grid_costs(plan: dict) -> dict[int, ForwardCosts]:
    """Forward costs of the grid teacher against each student depth (random weights cost the same), timed alone."""
    torch.set_num_threads(1)
    tok = load_tokenizer(TEACHER)
    teacher = load_model(TEACHER, tokenizer=tok).eval()
    prompt = grid_prompts(1)[1][0]
    return {d: measure_forward_costs(teacher, load_model(f"grid-student-{d}", tokenizer=tok).eval(), prompt,
                                     batch_size=1, repeats=20) for d in DEPTHS}


def _train(config: str, out: Path, student: str, steps: int, seed: int) -> tuple[float, list]:
    from .demo import _train as train_run

    overrides = [f"model.student={student}", f"train.max_steps={steps}", f"train.seed={seed}"]
    seconds = train_run(config, out, overrides, sft=False)
    curve = [(r["step"], r["train/loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    return seconds, curve


def run_grid_job(job: dict) -> list[dict]:
    """Train one depth's students for one seed, then measure each (demo.run_method's grid branch)."""
    out, plan, depth, seed = Path(job["out"]), job["plan"], job["depth"], job["seed"]
    base_s, base_curve = _train("configs/grid_hybrid.yaml", out / "hybrid-base", f"grid-student-{depth}",
                                plan["grid_steps"], seed)
    results = []
    for kind, config in ((HYBRID, "grid_hybrid"), (ONPOLICY, "grid_onpolicy")):
        more_s, curve = _train(f"configs/{config}.yaml", out / config, str(out / "hybrid-base" / "final"),
                               plan["grid_more_steps"], seed)
        results.append({"world": "grids", "method": label(depth, kind), "depth": depth, "seed": seed,
                        "train_s": base_s + more_s, "loss_curve": base_curve + [(s + plan["grid_steps"], v) for s, v in curve],
                        **measure_grid(str(out / config / "final"), plan, seed, ForwardCosts(**job["costs"]))})
    return results


def measure_grid(student_path: str, plan: dict, seed: int, costs: ForwardCosts) -> dict:
    """Rule score of greedy grids on the test split, and the draft figures (demo.draft_figures)."""
    from .demo import draft_figures  # demo imports this module

    torch.manual_seed(seed)
    tok = load_tokenizer(TEACHER)
    teacher = load_model(TEACHER, tokenizer=tok).eval()
    student = load_model(student_path, tokenizer=tok).eval()
    records, _ = grid_prompts(plan["eval_limit"])
    views = load_config("configs/grid_hybrid.yaml").data.views
    quality = evaluate_records(student, tok, records, views, get_task("grids").scorer, "student", MAX_NEW, 64)
    _, prompts = grid_prompts(plan["bench_prompts"])
    return {"quality": quality["exact_match"], **draft_figures(teacher, student, prompts, prompts, tok, MAX_NEW, seed, costs)}


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
        hybrid, onpolicy = label(d, HYBRID), label(d, ONPOLICY)
        claims += [
            Claim("image-token GPT", f"a {d}-layer hybrid-trained draft slows T=1 decoding (speedup below 1)", "grids",
                  "sampled_predicted_speedup", hybrid, threshold=1.0),
            Claim("image-token GPT", f"on-policy distillation raises the {d}-layer draft's T=1 acceptance", "grids",
                  "sampled_acceptance_rate", hybrid, onpolicy),
            Claim("image-token GPT", f"after on-policy distillation the {d}-layer draft still slows T=1 decoding",
                  "grids", "sampled_predicted_speedup", onpolicy, threshold=1.0),
        ]
    return claims
