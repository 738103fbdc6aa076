"""The image-token study on the `grids` world (data/grids.py): students of several depths as drafts of the grid
teacher under speculative sampling (T=1).

Per depth and seed, one job: hybrid CE + soft KL from random weights for `grid_steps` (configs/grid_hybrid.yaml),
then two continuations of equal length `grid_more_steps` from that model: more hybrid CE + KL, or on-policy
distillation (configs/grid_onpolicy.yaml: GKD, half the grids sampled by the draft, generalised JSD). Equal
budgets, so the comparison is not how long each student trained; it is the recipe of the last steps: their data
(dataset grids or the draft's own) and their loss (CE + KL at T=2, or JSD at T=1) both change, as between the
image-token study's recipe and on-policy distillation.
"""

from __future__ import annotations

from pathlib import Path

from ..evaluate.prediction import ForwardCosts
from .jobs import loss_curve, train_job
from .measure import measure_student, pair_costs, world_prompts
from .plan import DEPTHS, HYBRID, ONPOLICY, World, grid_label

TEACHER = "builtin-grid-teacher"
GRIDS = World("grids", 40, views="configs/grid_hybrid.yaml")  # 36 codes and <eos>, with room


def grid_costs() -> dict[int, ForwardCosts]:
    """Forward costs of the grid teacher against each student depth (random weights cost the same), timed alone."""
    prompt = world_prompts(GRIDS, 1, TEACHER)[0][0]
    return {d: pair_costs(TEACHER, f"grid-student-{d}", prompt) for d in DEPTHS}


def _train(config: str, out: Path, student: str, steps: int, seed: int) -> tuple[float, list]:
    overrides = [f"model.student={student}", f"train.max_steps={steps}", f"train.seed={seed}"]
    return train_job(config, out, overrides, sft=False), loss_curve(out)


def run_grid_job(job: dict) -> list[dict]:
    """Train one depth's students for one seed (plan.grid_jobs), then measure each."""
    out, plan, depth, seed = Path(job["out"]), job["plan"], job["depth"], job["seed"]
    base_s, base_curve = _train("configs/grid_hybrid.yaml", out / "hybrid-base", f"grid-student-{depth}",
                                plan["grid_steps"], seed)
    results = []
    for kind, config in ((HYBRID, "grid_hybrid"), (ONPOLICY, "grid_onpolicy")):
        more_s, curve = _train(f"configs/{config}.yaml", out / config, str(out / "hybrid-base" / "final"),
                               plan["grid_more_steps"], seed)
        figures = measure_student(str(out / config / "final"), TEACHER, GRIDS, plan, seed, ForwardCosts(**job["costs"]))
        results.append({"world": GRIDS.name, "method": grid_label(depth, kind), "depth": depth, "seed": seed,
                        "train_s": base_s + more_s,
                        "loss_curve": base_curve + [(s + plan["grid_steps"], v) for s, v in curve], **figures})
    return results
