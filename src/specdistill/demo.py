"""`specdistill demo`: the built-in proving ground, offline on a CPU.

Worlds (docs/results.md describes them and why):
- `arith_styles`: worked arithmetic whose gold solutions mix three step styles, of which the teacher writes only
  one; training reads a limited prompt set (`limit` records of the train split) for several epochs;
- `facts`: closed-book questions whose answers only a teacher with the knowledge paragraph can give (LUPI);
- `grids`: pre-tokenized class-conditional code grids (the image-token study): a grid teacher and students of
  several depths, trained by hybrid CE + KL, or by hybrid CE + KL and then on-policy distillation.

Steps:
1. the teacher: the shipped built-in teachers, or the text teacher retrained with `--retrain`;
2. the text student's warm start (SFT on the limited sets, configs/builtin/student.yaml), measured like a method;
3. the headroom run (the same student, trained long on the whole train split) where the plan asks for it;
4. each method from the warm start with the same step budget, for each seed, in parallel workers;
5. for each student: test-split quality, and acceptance as the teacher's draft for greedy and for sampled (T=1)
   speculative decoding, with sum(min(p, q)) over the teacher's own T=1 outputs; the speedup is predicted from
   the measured acceptance and the pair's forward costs, which are timed one at a time before any worker starts;
6. report.md (intervals over seeds and a verdict per claim; evaluate/claims.py), report.json and PNG plots.

Two runs with the same seeds give the same numbers (timings aside).
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .config import DatasetConfig, load_config
from .data.records import load_records
from .data.tasks import get_task, style_shares
from .data.views import encode_example
from .evaluate.claims import WARM_LABEL
from .evaluate.prediction import ForwardCosts
from .evaluate.quality import evaluate_records
from .evaluate.speculative import measure_forward_costs
from .models import load_model, load_tokenizer
from .runs import GAMMA, draft_figures, quiet, train_run


@dataclass(frozen=True)
class Method:
    world: str
    label: str
    config: str  # example config in configs/ (its loss and rollout); the world's data replaces its data
    overrides: tuple[str, ...] = ()


WARM = WARM_LABEL
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
    Method("arith_styles", "TVD on teacher samples", "distillspec", ("rollout.strategy=teacher",
                                                                    "rollout.teacher_temperature=1.0")),
    Method("facts", "SFT on answers", "sft"),
    Method("facts", "KD without knowledge", "supervised_kd", ("data.views.teacher_knowledge=false",)),
    Method("facts", "LUPI-SKD", "lupi_skd"),
]
WORLD_DATA = {  # what every method of a world trains and validates on
    "arith_styles": lambda limit: [f"data.train=[{{task: arith_styles, limit: {limit}}}]",
                                   "data.validation={task: arith_styles, split: validation}",
                                   "rollout.max_new_tokens=48"],
    "facts": lambda limit: ["data.train=[{task: facts}]", "data.validation={task: facts, split: validation}",
                            "rollout.max_new_tokens=16"],
}
MAX_NEW = {"arith_styles": 48, "facts": 16}
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
              "limit": 1000, "eval_limit": None,
              "bench_prompts": 40, "headroom_steps": 1500, "grids": True, "grid_steps": 300, "grid_more_steps": 150,
              "methods": None},
    "quick": {"seeds": 2, "student_steps": 150, "steps": 30, "batch_size": 16, "limit": 1000, "eval_limit": 100,
              "bench_prompts": 12, "headroom_steps": 0, "grids": False, "methods": ["SFT on gold", "SKD"]},
}



@functools.lru_cache(maxsize=None)
def text_prompts(world: str, n: int | None):
    """(test records, teacher prompts, student prompts): the teacher reads its view (facts: with knowledge).
    Encoded once per process (a worker measures many students of one world); callers only read them."""
    tok = load_tokenizer("builtin-teacher")
    views = load_config("configs/builtin/teacher.yaml").data.views
    records = load_records(DatasetConfig(task=world, split="test"))[:n]
    examples = [encode_example(r, tok, views) for r in records]
    return records, [e.teacher_prompt for e in examples], [e.student_prompt for e in examples]


def measure(student_path: str, teacher_path: str, world: str, plan: dict, seed: int, costs: ForwardCosts) -> dict:
    """Test quality (student view) and the student as the teacher's draft, greedy and sampled at T=1."""
    torch.manual_seed(seed)
    tok = load_tokenizer(teacher_path)
    teacher = load_model(teacher_path, tokenizer=tok).eval()
    student = load_model(student_path, tokenizer=tok).eval()
    views = load_config("configs/builtin/teacher.yaml").data.views
    records, _, _ = text_prompts(world, plan["eval_limit"])
    scored = evaluate_records(student, tok, records, views, get_task(world).scorer, "student",
                              max_new_tokens=MAX_NEW[world], batch_size=64)
    _, t_prompts, s_prompts = text_prompts(world, plan["bench_prompts"])
    styles = {"symbols_share": style_shares([s["prediction"] for s in scored["samples"]])["symbols"]} \
        if world == "arith_styles" else {}
    return {"quality": scored["exact_match"], **styles,
            **draft_figures(teacher, student, t_prompts, s_prompts, tok, MAX_NEW[world], seed, costs)}


def pair_costs(teacher_path: str, student_path: str, prompt: list[int]) -> ForwardCosts:
    """The pair's forward costs at batch size 1 and one thread, timed while nothing else runs."""
    torch.set_num_threads(1)
    tok = load_tokenizer(teacher_path)
    teacher, student = (load_model(p, tokenizer=tok).eval() for p in (teacher_path, student_path))
    return measure_forward_costs(teacher, student, prompt, batch_size=1, repeats=20)


def run_method(job: dict) -> list[dict]:
    """One worker job: train a method from the warm start (none for the warm start itself), then measure it."""
    torch.set_num_threads(1)
    quiet()
    if job.get("kind") == "grids":
        from .grid_study import run_grid_job

        return run_grid_job(job)
    out, plan, costs = Path(job["out"]), job["plan"], ForwardCosts(**job["costs"])
    train_s, curve, student = 0.0, [], job["student"]
    if job["config"] is not None:
        overrides = [*WORLD_DATA[job["world"]](plan["limit"]), *job["overrides"], f"model.student={job['student']}",
                     f"model.teacher={job['teacher']}", f"train.max_steps={method_steps(plan, job['world'])}",
                     f"train.batch_size={plan['batch_size']}", f"train.seed={job['seed']}", "train.lr=1.0e-3",
                     "train.warmup_steps=10"]
        train_s = train_run(f"configs/{job['config']}.yaml", out, overrides, sft=job["config"] == "sft")
        curve = [(r["step"], r["train/loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
        student = str(out / "final")
    result = measure(student, job["teacher"], job["world"], plan, job["seed"], costs)
    return [{"world": job["world"], "method": job["label"], "seed": job["seed"], "train_s": train_s,
             "loss_curve": curve, **result}]


def method_steps(plan: dict, world: str) -> int:
    """Each method's steps on a world: the plan's `steps`, unless `world_steps` names the world."""
    return plan.get("world_steps", {}).get(world, plan["steps"])


def run_headroom(job: dict) -> list[dict]:
    """The same student from random weights, trained long on the whole arith_styles train split."""
    torch.set_num_threads(1)
    quiet()
    out, plan = Path(job["out"]), job["plan"]
    overrides = ["data.train=[{task: arith_styles}]", "data.validation={task: arith_styles, split: validation}",
                 "rollout.max_new_tokens=48", f"train.max_steps={plan['headroom_steps']}", f"train.seed={job['seed']}"]
    train_s = train_run("configs/builtin/student.yaml", out, overrides, sft=True)
    tok = load_tokenizer(job["teacher"])
    records, _, _ = text_prompts("arith_styles", plan["eval_limit"])
    quality = evaluate_records(load_model(str(out / "final"), tokenizer=tok).eval(), tok, records,
                               load_config("configs/builtin/teacher.yaml").data.views, get_task("arith_styles").scorer,
                               "student", MAX_NEW["arith_styles"], 64)["exact_match"]
    return [{"world": "arith_styles", "method": "headroom", "seed": job["seed"], "train_s": train_s, "quality": quality}]


def _workers(n_jobs: int) -> int:
    return max(1, min(n_jobs, multiprocessing.cpu_count() or 1))


def run_all(jobs: list[dict]) -> list[dict]:
    """Jobs in worker processes (spawned: no inherited thread pools); results in the jobs' order."""
    results: list[list[dict] | None] = [None] * len(jobs)
    with ProcessPoolExecutor(_workers(len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_headroom if job.get("kind") == "headroom" else run_method, job): i
                   for i, job in enumerate(jobs)}
        for n, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            for r in results[futures[future]]:
                extra = f", acceptance {r['acceptance_rate']:.3f} greedy" if "acceptance_rate" in r else ""
                print(f"[{n}/{len(jobs)}] {r['world']} / {r['method']} (seed {r['seed']}): quality "
                      f"{r['quality']:.3f}{extra}", flush=True)
    return [r for rs in results for r in rs]


def teacher_quality(teacher: str, plan: dict) -> dict:
    """The teacher on each text world's test split: its own view, and facts closed book."""
    tok = load_tokenizer(teacher)
    model = load_model(teacher, tokenizer=tok).eval()
    views = load_config("configs/builtin/teacher.yaml").data.views

    def score(world: str, view: str) -> dict:
        records, _, _ = text_prompts(world, plan["eval_limit"])
        return evaluate_records(model, tok, records, views, get_task(world).scorer, view, MAX_NEW[world], 64)

    arith = score("arith_styles", "teacher")
    gold = [r.response for r in text_prompts("arith_styles", plan["eval_limit"])[0]]
    return {"arith_styles": arith["exact_match"], "facts": score("facts", "teacher")["exact_match"],
            "facts_closed_book": score("facts", "student")["exact_match"],
            "symbols_share": style_shares([s["prediction"] for s in arith["samples"]])["symbols"],
            "gold_symbols_share": style_shares(gold)["symbols"]}


def warm_start(out: Path, plan: dict, seed: int) -> tuple[str, float]:
    torch.set_num_threads(max(1, multiprocessing.cpu_count() or 1))
    overrides = [f"data.train=[{{task: arith_styles, limit: {plan['limit']}, weight: 0.75}}, {{task: facts, weight: 0.25}}]",
                 "data.validation={task: arith_styles, split: validation}", "rollout.max_new_tokens=48",
                 f"train.max_steps={plan['student_steps']}", f"train.seed={seed}"]
    seconds = train_run("configs/builtin/student.yaml", out / "student", overrides, sft=True)
    return str(out / "student" / "final"), seconds


def _retrain_teacher(out_dir: Path, seed: int) -> str:
    previous = None
    for stage in ("teacher", "teacher_facts", "teacher_polish"):  # what `make teacher` runs
        init = [f"model.student={previous}"] if previous else []
        train_run(f"configs/builtin/{stage}.yaml", out_dir / stage, init + [f"train.seed={seed}"], sft=True)
        previous = out_dir / stage / "final"
    return str(previous)


def folder(m: Method) -> str:
    """A method's run folder name: its config, and its overrides' values when it has any."""
    return "-".join([m.config] + [o.split("=", 1)[1] for o in m.overrides]).replace(".", "_")


def chosen_methods(plan: dict) -> list[Method]:
    return [m for m in METHODS if plan["methods"] is None or m.label in plan["methods"]]


def plan_jobs(plan: dict, seeds: list[int], teacher: str, warm: str, costs: dict[str, ForwardCosts],
              out_dir: Path) -> list[dict]:
    """Every worker job: the headroom run first (the longest), then the warm start measured once per world, then
    each method and seed; the grid study's jobs last. costs: each world's pair costs."""
    chosen = chosen_methods(plan)
    base = {"plan": plan, "teacher": teacher, "student": warm}
    jobs = [{**base, "kind": "headroom", "seed": seeds[0], "out": str(out_dir / "headroom")}] if plan["headroom_steps"] else []
    jobs += [{**base, "world": w, "label": WARM, "config": None, "overrides": [], "seed": seeds[0], "out": "",
              "costs": asdict(costs[w])} for w in dict.fromkeys(m.world for m in chosen)]
    jobs += [{**base, "world": m.world, "label": m.label, "costs": asdict(costs[m.world]), "config": m.config,
              "overrides": list(m.overrides), "seed": s, "out": str(out_dir / f"seed{s}" / f"{m.world}-{folder(m)}")}
             for s in seeds for m in chosen]
    if plan["grids"]:
        from .grid_study import grid_jobs

        jobs += grid_jobs(plan, seeds, out_dir)
    return jobs


def run_demo(out: str = "runs/demo", quick: bool = False, retrain: bool = False, seed: int = 0,
             seeds: int | None = None, plan: dict | None = None, plan_name: str = "default",
             results: str | None = None) -> dict:
    """The demo on PLANS[plan_name] (quick=True: the quick plan); `plan` overrides entries of it (e.g. fewer steps
    in tests); `seeds` overrides the plan's number of seeds; `results`: also write the report there, its figures
    in img/ beside it (docs/results.md)."""
    quiet()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_name = "quick" if quick else plan_name
    if plan_name not in PLANS:
        raise ValueError(f"demo: unknown plan {plan_name!r}; allowed: {', '.join(PLANS)}")
    plan = {**PLANS[plan_name], **(plan or {})}
    seed_list = list(range(seed, seed + (seeds or plan["seeds"])))
    teacher = _retrain_teacher(out_dir, seed) if retrain else "builtin-teacher"
    print(f"demo ({plan_name} plan): warm-starting the student ({plan['student_steps']} SFT steps), then "
          f"{len(seed_list)} seeds of each method, {plan['steps']} steps each", flush=True)
    warm, warm_s = warm_start(out_dir, plan, seed)
    # each world's pair costs, from its first test prompt in the teacher's view (facts: with the knowledge)
    costs = {w: pair_costs(teacher, warm, text_prompts(w, 1)[1][0]) for w in dict.fromkeys(
        m.world for m in chosen_methods(plan))}
    teacher_row = {"path": teacher, **teacher_quality(teacher, plan)}
    grid = {}
    if plan["grids"]:
        from .grid_study import grid_costs

        grid = grid_costs(plan)
    jobs = plan_jobs(plan, seed_list, teacher, warm, costs, out_dir)
    for job in (j for j in jobs if j.get("kind") == "grids"):
        job["costs"] = asdict(grid[job["depth"]])  # each depth's own cost ratio
    runs = run_all(jobs)
    from .evaluate.claims import aggregate, render_report

    report = {"plan_name": plan_name, "seeds": seed_list, "plan": plan, "gamma": GAMMA, "teacher": teacher_row,
              "warm_start": {"path": warm, "train_s": warm_s}, "workers": _workers(len(jobs)),
              "costs": {w: asdict(c) for w, c in costs.items()},
              "grid_costs": {str(k): asdict(v) for k, v in grid.items()}, "rows": aggregate(runs), "runs": runs}
    _check_finite(report["rows"])
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    from .evaluate.plots import plot_demo

    plot_demo(report, out_dir)
    text = render_report(report)
    (out_dir / "report.md").write_text(text + FIGURES.format(img=""))
    print(text)
    if results:
        write_results(Path(results), text, out_dir)
    return report


FIGURES = ("\n## Figures\n\n![test quality against greedy acceptance, mean and 95% interval over seeds]"
           "({img}quality_vs_acceptance.png)\n\n![acceptance per draft position, first seed]"
           "({img}acceptance_per_position.png)\n\n![training loss per step, first seed]({img}training_curves.png)\n")


def write_results(path: Path, text: str, out_dir: Path) -> None:
    """The report as a docs page: its text, then the figures, copied into img/ beside it."""
    import shutil

    (path.parent / "img").mkdir(parents=True, exist_ok=True)
    for name in ("quality_vs_acceptance", "acceptance_per_position", "training_curves"):
        shutil.copyfile(out_dir / f"{name}.png", path.parent / "img" / f"{name}.png")
    path.write_text(text + FIGURES.format(img="img/"))


def _check_finite(rows: list[dict]) -> None:
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value) and not key.endswith(("_low", "_high")):
                raise RuntimeError(f"demo: {row['world']} / {row['method']}: {key} is {value}")
