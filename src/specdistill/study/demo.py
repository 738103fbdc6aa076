"""`specdistill demo`: the built-in proving ground, offline on a CPU.

Worlds (docs/results.md describes them and why; plan.py defines them):
- `arith_styles`: worked arithmetic whose gold solutions mix three step styles, of which the teacher writes only
  one; training reads a limited prompt set (`limit` records of the train split) for several epochs;
- `facts`: closed-book questions whose answers only a teacher with the knowledge paragraph can give (LUPI);
- `grids`: pre-tokenized class-conditional code grids (the image-token study, grids.py): a grid teacher and
  students of several depths, trained by hybrid CE + KL, or by hybrid CE + KL and then on-policy distillation.

Steps:
1. the teacher: the shipped built-in teachers, or the text teacher retrained with `--retrain`;
2. the text student's warm start (SFT on the limited sets, configs/builtin/student.yaml), measured like a method;
3. the headroom run (the same student, trained long on the whole train split) where the plan asks for it;
4. each method from the warm start with the same step budget, for each seed, in parallel workers (jobs.py);
5. for each student: test-split quality, and acceptance as the teacher's draft for greedy and for sampled (T=1)
   speculative decoding, with sum(min(p, q)) over the teacher's own T=1 outputs; the speedup is predicted from
   the measured acceptance and the pair's forward costs, which are timed one at a time before any worker starts
   (measure.py);
6. report.md (intervals over seeds and a verdict per claim; claims.py, report.py), report.json and PNG plots.

Two runs with the same seeds give the same numbers (timings aside).
"""

from __future__ import annotations

import json
import math
import multiprocessing
from dataclasses import asdict
from pathlib import Path

import torch

from ..evaluate.prediction import ForwardCosts
from ..models import load_model, load_tokenizer
from .claims import aggregate
from .grids import grid_costs, run_grid_job
from .jobs import loss_curve, quiet, run_all, train_job, workers
from .measure import (GAMMA, measure_student, pair_costs, teacher_style_share, world_prompts, world_quality,
                      world_records)
from .plan import PLANS, WORLDS, chosen_methods, method_overrides, plan_jobs
from .plots import plot_demo
from .report import render_report, write_report

ARITH, FACTS = WORLDS["arith_styles"], WORLDS["facts"]


def run_job(job: dict) -> list[dict]:
    """One worker job: a method (or the warm start, untrained), the headroom run, or one grid depth and seed."""
    torch.set_num_threads(1)
    quiet()
    if job.get("kind") == "grids":
        return run_grid_job(job)
    if job.get("kind") == "headroom":
        return run_headroom(job)
    return run_method(job)


def run_method(job: dict) -> list[dict]:
    """Train a method from the warm start (none for the warm start itself), then measure it."""
    out, world = Path(job["out"]), WORLDS[job["world"]]
    train_s, curve, student = 0.0, [], job["student"]
    if job["config"] is not None:
        train_s = train_job(f"configs/{job['config']}.yaml", out, method_overrides(job, world),
                            sft=job["config"] == "sft")
        curve, student = loss_curve(out), str(out / "final")
    result = measure_student(student, job["teacher"], world, job["plan"], job["seed"], ForwardCosts(**job["costs"]))
    return [{"world": world.name, "method": job["label"], "seed": job["seed"], "train_s": train_s,
             "loss_curve": curve, **result}]


def run_headroom(job: dict) -> list[dict]:
    """The same student from random weights, trained long on the whole arith_styles train split."""
    out, plan = Path(job["out"]), job["plan"]
    overrides = [*ARITH.data_overrides(), f"train.max_steps={plan['headroom_steps']}", f"train.seed={job['seed']}"]
    train_s = train_job("configs/builtin/student.yaml", out, overrides, sft=True)
    tok = load_tokenizer(job["teacher"])
    model = load_model(str(out / "final"), tokenizer=tok).eval()
    quality = world_quality(model, tok, ARITH, plan["eval_limit"])["exact_match"]
    return [{"world": ARITH.name, "method": "headroom", "seed": job["seed"], "train_s": train_s, "quality": quality}]


def teacher_quality(teacher: str, plan: dict) -> dict:
    """The teacher on each text world's test split: its own view, and facts closed book."""
    tok = load_tokenizer(teacher)
    model = load_model(teacher, tokenizer=tok).eval()
    n = plan["eval_limit"]
    arith = world_quality(model, tok, ARITH, n, "teacher")
    return {"arith_styles": arith["exact_match"],
            "facts": world_quality(model, tok, FACTS, n, "teacher")["exact_match"],
            "facts_closed_book": world_quality(model, tok, FACTS, n, "student")["exact_match"],
            "symbols_share": teacher_style_share([s["prediction"] for s in arith["samples"]]),
            "gold_symbols_share": teacher_style_share([r.response for r in world_records(ARITH, n)])}


def warm_start(out: Path, plan: dict, seed: int) -> tuple[str, float]:
    """The text student's SFT on both worlds' train sets (arith_styles limited), from random weights."""
    torch.set_num_threads(max(1, multiprocessing.cpu_count() or 1))
    overrides = [f"data.train=[{{task: arith_styles, limit: {plan['limit']}, weight: 0.75}}, "
                 "{task: facts, weight: 0.25}]", *ARITH.validation_overrides(),
                 f"train.max_steps={plan['student_steps']}", f"train.seed={seed}"]
    seconds = train_job("configs/builtin/student.yaml", out / "student", overrides, sft=True)
    return str(out / "student" / "final"), seconds


def retrain_teacher(out_dir: Path, seed: int) -> str:
    """The built-in text teacher trained again, in the stages `make teacher` runs."""
    previous = None
    for stage in ("teacher", "teacher_facts", "teacher_polish"):
        init = [f"model.student={previous}"] if previous else []
        train_job(f"configs/builtin/{stage}.yaml", out_dir / stage, init + [f"train.seed={seed}"], sft=True)
        previous = out_dir / stage / "final"
    return str(previous)


def resolve_plan(quick: bool, plan_name: str, plan: dict | None) -> tuple[str, dict]:
    """The plan's name and entries: PLANS[plan_name] (quick: the quick plan), `plan` overriding entries of it."""
    plan_name = "quick" if quick else plan_name
    if plan_name not in PLANS:
        raise ValueError(f"demo: unknown plan {plan_name!r}; allowed: {', '.join(PLANS)}")
    return plan_name, {**PLANS[plan_name], **(plan or {})}


def run_demo(out: str = "runs/demo", quick: bool = False, retrain: bool = False, seed: int = 0,
             seeds: int | None = None, plan: dict | None = None, plan_name: str = "default",
             results: str | None = None) -> dict:
    """The demo on PLANS[plan_name] (quick=True: the quick plan); `plan` overrides entries of it (e.g. fewer steps
    in tests); `seeds` overrides the plan's number of seeds; `results`: also write the report there, its figures
    in img/ beside it (docs/results.md)."""
    quiet()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_name, plan = resolve_plan(quick, plan_name, plan)
    seed_list = list(range(seed, seed + (seeds or plan["seeds"])))
    teacher = retrain_teacher(out_dir, seed) if retrain else "builtin-teacher"
    print(f"demo ({plan_name} plan): warm-starting the student ({plan['student_steps']} SFT steps), then "
          f"{len(seed_list)} seeds of each method, {plan['steps']} steps each", flush=True)
    warm, warm_s = warm_start(out_dir, plan, seed)
    # each world's pair costs, from its first test prompt in the teacher's view (facts: with the knowledge)
    costs = {w: pair_costs(teacher, warm, world_prompts(WORLDS[w], 1, teacher)[0][0])
             for w in dict.fromkeys(m.world for m in chosen_methods(plan))}
    teacher_row = {"path": teacher, **teacher_quality(teacher, plan)}
    grid = grid_costs() if plan["grids"] else {}
    jobs = plan_jobs(plan, seed_list, teacher, warm, costs, out_dir, grid)
    runs = run_all(jobs, run_job)
    report = {"plan_name": plan_name, "seeds": seed_list, "plan": plan, "gamma": GAMMA, "teacher": teacher_row,
              "warm_start": {"path": warm, "train_s": warm_s}, "workers": workers(len(jobs)),
              "costs": {w: asdict(c) for w, c in costs.items()},
              "grid_costs": {str(k): asdict(v) for k, v in grid.items()}, "rows": aggregate(runs), "runs": runs}
    _check_finite(report["rows"])
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    plot_demo(report, out_dir)
    text = render_report(report)
    write_report(text, out_dir, Path(results) if results else None)
    print(text)
    return report


def _check_finite(rows: list[dict]) -> None:
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value) and not key.endswith(("_low", "_high")):
                raise RuntimeError(f"demo: {row['world']} / {row['method']}: {key} is {value}")
