"""The demo's image-token study on the `grids` world (data/grids.py): students of several depths as drafts of the
grid teacher under speculative sampling (T=1).

Per depth and seed, one job: hybrid CE + soft KL from random weights for `grid_steps` (configs/grid_hybrid.yaml),
then two continuations of equal length `grid_more_steps` from that model: more hybrid CE + KL, or on-policy
distillation (configs/grid_onpolicy.yaml: GKD, half the grids sampled by the draft, generalised JSD). Equal
budgets, so the comparison is not how long each student trained; it is the recipe of the last steps: their data
(dataset grids or the draft's own) and their loss (CE + KL at T=2, or JSD at T=1) both change, as between the
image-token study's recipe and on-policy distillation.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from .config import DatasetConfig, load_config
from .data.records import load_records
from .data.tasks import get_task
from .data.views import encode_example
from .evaluate.claims import DEPTHS, HYBRID, ONPOLICY, grid_label
from .evaluate.prediction import ForwardCosts
from .evaluate.quality import evaluate_records
from .evaluate.speculative import measure_forward_costs
from .models import load_model, load_tokenizer
from .runs import draft_figures, train_run

TEACHER = "builtin-grid-teacher"
MAX_NEW = 40  # 36 codes and <eos>, with room


def grid_jobs(plan: dict, seeds: list[int], out_dir: Path) -> list[dict]:
    return [{"kind": "grids", "depth": d, "seed": s, "plan": plan, "out": str(out_dir / f"seed{s}" / f"grids-{d}layer")}
            for s in seeds for d in DEPTHS]


@functools.lru_cache(maxsize=None)
def grid_prompts(n: int | None) -> tuple[list, list[list[int]]]:
    """(the first n test records, their prompt ids), encoded once per process; callers only read them."""
    views, tok = load_config("configs/grid_hybrid.yaml").data.views, load_tokenizer(TEACHER)
    records = load_records(DatasetConfig(task="grids", split="test"))[:n]
    return records, [encode_example(r, tok, views).teacher_prompt for r in records]


def grid_costs(plan: dict) -> dict[int, ForwardCosts]:
    """Forward costs of the grid teacher against each student depth (random weights cost the same), timed alone."""
    torch.set_num_threads(1)
    tok = load_tokenizer(TEACHER)
    teacher = load_model(TEACHER, tokenizer=tok).eval()
    prompt = grid_prompts(1)[1][0]
    return {d: measure_forward_costs(teacher, load_model(f"grid-student-{d}", tokenizer=tok).eval(), prompt,
                                     batch_size=1, repeats=20) for d in DEPTHS}


def _train(config: str, out: Path, student: str, steps: int, seed: int) -> tuple[float, list]:
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
        results.append({"world": "grids", "method": grid_label(depth, kind), "depth": depth, "seed": seed,
                        "train_s": base_s + more_s, "loss_curve": base_curve + [(s + plan["grid_steps"], v) for s, v in curve],
                        **measure_grid(str(out / config / "final"), plan, seed, ForwardCosts(**job["costs"]))})
    return results


def measure_grid(student_path: str, plan: dict, seed: int, costs: ForwardCosts) -> dict:
    """Rule score of greedy grids on the test split, and the draft figures (demo.draft_figures)."""
    torch.manual_seed(seed)
    tok = load_tokenizer(TEACHER)
    teacher = load_model(TEACHER, tokenizer=tok).eval()
    student = load_model(student_path, tokenizer=tok).eval()
    records, _ = grid_prompts(plan["eval_limit"])
    views = load_config("configs/grid_hybrid.yaml").data.views
    quality = evaluate_records(student, tok, records, views, get_task("grids").scorer, "student", MAX_NEW, 64)
    _, prompts = grid_prompts(plan["bench_prompts"])
    return {"quality": quality["exact_match"], **draft_figures(teacher, student, prompts, prompts, tok, MAX_NEW, seed, costs)}
