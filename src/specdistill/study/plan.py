"""What a study runs: its worlds, its methods, its plans (budgets), and the worker jobs they make.

A world is a task the methods train, validate and are tested on; a method is an example config (its loss and
rollout) with overrides, trained on its world's data; a plan sets the budgets (seeds, steps, test sizes). A job is
a plain dict, so that it crosses into a spawned worker process (jobs.run_all).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..evaluate.prediction import ForwardCosts


@dataclass(frozen=True)
class World:
    """A task of the study (data/tasks.py) and how it is generated and measured."""

    name: str
    max_new_tokens: int  # rollouts, test answers and draft benchmarks
    limited: bool = False  # training reads the first `limit` train records of the plan, for several epochs
    styled: bool = False  # gold step lines in several styles: the share written in the teacher's style is measured
    views: str = "configs/builtin/teacher.yaml"  # the config whose data.views the measurement reads

    def data_overrides(self, limit: int | None = None) -> list[str]:
        """What a run on this world trains on (the train split, its first `limit` records) and validates on."""
        cap = "" if limit is None else f", limit: {limit}"
        return [f"data.train=[{{task: {self.name}{cap}}}]", *self.validation_overrides()]

    def validation_overrides(self) -> list[str]:
        return [f"data.validation={{task: {self.name}, split: validation}}",
                f"rollout.max_new_tokens={self.max_new_tokens}"]


WORLDS = {w.name: w for w in (World("arith_styles", 48, limited=True, styled=True), World("facts", 16))}


@dataclass(frozen=True)
class Method:
    world: str
    label: str
    config: str  # example config in configs/ (its loss and rollout); the world's data replaces its data
    overrides: tuple[str, ...] = ()


WARM = "warm start (no distillation)"  # the row of the warm start, measured without training
METHODS = [
    Method("arith_styles", "SFT on gold", "sft"),
    Method("arith_styles", "supervised KD", "supervised_kd"),
    Method("arith_styles", "SeqKD", "seqkd"),
    Method("arith_styles", "on-policy KD (GKD)", "gkd"),
    Method("arith_styles", "ImitKD", "imitkd"),
    Method("arith_styles", "SKD", "skd"),
    Method("arith_styles", "DistillSpec (on-policy TVD)", "distillspec"),
    # DistillSpec's loss on the other two data sources: the data-source claims then change the data alone
    Method("arith_styles", "TVD on the dataset", "distillspec", ("rollout.strategy=dataset",)),
    Method("arith_styles", "TVD on teacher samples", "distillspec",
           ("rollout.strategy=teacher", "rollout.teacher_temperature=1.0")),
    Method("facts", "SFT on answers", "sft"),
    Method("facts", "KD without knowledge", "supervised_kd", ("data.views.teacher_knowledge=false",)),
    Method("facts", "LUPI-SKD", "lupi_skd"),
]
# student_steps: warm start; steps, batch_size: per method; world_steps: a world's steps where they differ
# (facts has 300 train prompts: fewer steps are as many epochs); limit: the arith_styles prompt set; eval_limit:
# test records per world (None = all); bench_prompts: test prompts per draft benchmark; headroom_steps: 0 = no
# headroom run; methods: labels run (None = all); grids: run the grid study (grid_steps of hybrid CE + KL, then
# grid_more_steps of each continuation). `default` (make demo) fits in 10 minutes with set-up on a 2-core CPU;
# `paper` (docs/results.md, `make results`) is the whole study; `quick` (make demo-quick) is a smoke run.
PLANS = {
    "default": {"seeds": 3, "student_steps": 300, "steps": 100, "batch_size": 32, "limit": 1000, "eval_limit": 200,
                "bench_prompts": 24, "headroom_steps": 0, "grids": False,
                "methods": ["SFT on gold", "supervised KD", "SKD", "DistillSpec (on-policy TVD)",
                            "KD without knowledge", "LUPI-SKD"]},  # the last two: LUPI's claim on facts
    "paper": {"seeds": 5, "student_steps": 300, "steps": 200, "world_steps": {"facts": 120}, "batch_size": 32,
              "limit": 1000, "eval_limit": None, "bench_prompts": 40, "headroom_steps": 1500, "grids": True,
              "grid_steps": 300, "grid_more_steps": 150, "methods": None},
    "quick": {"seeds": 2, "student_steps": 150, "steps": 30, "batch_size": 16, "limit": 1000, "eval_limit": 100,
              "bench_prompts": 12, "headroom_steps": 0, "grids": False, "methods": ["SFT on gold", "SKD"]},
}

# The image-token study's drafts (grids.py): each depth trained by hybrid CE + KL, then by one of two recipes.
DEPTHS = (1, 2, 3)
HYBRID, ONPOLICY = "hybrid CE+KL", "hybrid, then on-policy"


def grid_label(depth: int, kind: str) -> str:
    return f"{depth}-layer, {kind}"


def method_steps(plan: dict, world: str) -> int:
    """Each method's steps on a world: the plan's `steps`, unless `world_steps` names the world."""
    return plan.get("world_steps", {}).get(world, plan["steps"])


def method_overrides(job: dict, world: World) -> list[str]:
    """A method job's training: its world's data, the method's own overrides, the plan's budget, from the warm
    start."""
    plan = job["plan"]
    return [*world.data_overrides(plan["limit"] if world.limited else None), *job["overrides"],
            f"model.student={job['student']}", f"model.teacher={job['teacher']}",
            f"train.max_steps={method_steps(plan, world.name)}", f"train.batch_size={plan['batch_size']}",
            f"train.seed={job['seed']}", "train.lr=1.0e-3", "train.warmup_steps=10"]


def folder(m: Method) -> str:
    """A method's run folder name: its config, and its overrides' values when it has any."""
    return "-".join([m.config] + [o.split("=", 1)[1] for o in m.overrides]).replace(".", "_")


def chosen_methods(plan: dict, methods: list[Method] = METHODS) -> list[Method]:
    return [m for m in methods if plan["methods"] is None or m.label in plan["methods"]]


def plan_jobs(plan: dict, seeds: list[int], teacher: str, warm: str, costs: dict[str, ForwardCosts],
              out_dir: Path, grid_costs: dict[int, ForwardCosts] | None = None) -> list[dict]:
    """Every worker job: the headroom run first (the longest), then the warm start measured once per world, then
    each method and seed; the grid study's jobs last. costs: each world's pair costs; grid_costs: each draft
    depth's (the plan's `grids`)."""
    chosen = chosen_methods(plan)
    base = {"plan": plan, "teacher": teacher, "student": warm}
    jobs = [{**base, "kind": "headroom", "seed": seeds[0], "out": str(out_dir / "headroom")}] \
        if plan["headroom_steps"] else []
    jobs += [{**base, "world": w, "label": WARM, "config": None, "overrides": [], "seed": seeds[0], "out": "",
              "costs": asdict(costs[w])} for w in dict.fromkeys(m.world for m in chosen)]
    jobs += [{**base, "world": m.world, "label": m.label, "costs": asdict(costs[m.world]), "config": m.config,
              "overrides": list(m.overrides), "seed": s, "out": str(out_dir / f"seed{s}" / f"{m.world}-{folder(m)}")}
             for s in seeds for m in chosen]
    if plan["grids"]:
        jobs += grid_jobs(plan, seeds, out_dir, grid_costs)
    return jobs


def grid_jobs(plan: dict, seeds: list[int], out_dir: Path, costs: dict[int, ForwardCosts]) -> list[dict]:
    """One job per seed and draft depth (grids.run_grid_job), with that depth's pair costs."""
    return [{"kind": "grids", "depth": d, "seed": s, "plan": plan, "costs": asdict(costs[d]),
             "out": str(out_dir / f"seed{s}" / f"grids-{d}layer")} for s in seeds for d in DEPTHS]
