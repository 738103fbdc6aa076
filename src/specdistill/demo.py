"""`specdistill demo`: the built-in end-to-end run, offline on a CPU.

1. the teacher: the shipped built-in teacher, or retrained with `--retrain` (the three configs/builtin/teacher*.yaml
   stages that `make teacher` runs);
2. the student's warm start: SFT of the tiny student on the student view (configs/builtin/student.yaml);
3. every method, each continuing from the warm start with the same step budget: on `arith` SFT only,
   supervised KD, SeqKD, on-policy KD (GKD), ImitKD, SKD, adaptive top-K SKD and DistillSpec; on `facts`
   SFT on the answers, KD without the knowledge and LUPI-SKD;
4. for each student: test-split quality, acceptance / mean accepted length / speedup as the teacher's draft
   (greedy speculative decoding, batch size 1), and training time;
5. report.md (also printed), report.json and PNG plots.

Methods run in parallel worker processes, one torch thread each; the report's order and numbers do not depend on
which finishes first, so two runs with the same seed give the same numbers (timings aside).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from .config import DatasetConfig, load_config
from .data.records import load_records
from .data.tasks import get_task
from .data.views import encode_example
from .evaluate.quality import evaluate_records
from .evaluate.speculative import bench_pair
from .models import load_model, load_tokenizer
from .train import run_training

# (task, label, example config in configs/, overrides). Every method starts from the same warm start.
METHODS = [
    ("arith", "SFT only", "sft", []),
    ("arith", "supervised KD", "supervised_kd", []),
    ("arith", "SeqKD", "seqkd", []),
    ("arith", "on-policy KD (GKD)", "gkd", []),
    ("arith", "ImitKD", "imitkd", []),
    ("arith", "SKD", "skd", []),
    ("arith", "adaptive top-K SKD", "adaptive_topk", []),
    ("arith", "DistillSpec (on-policy TVD)", "distillspec", []),
    ("facts", "SFT on answers", "sft", ["data.train=[{task: facts}]", "data.validation={task: facts, split: validation}",
                                         "rollout.max_new_tokens=16"]),
    ("facts", "KD without knowledge", "supervised_kd", [
        "data.train=[{task: facts}]", "data.validation={task: facts, split: validation}",
        "data.views.teacher_knowledge=false", "rollout.max_new_tokens=16"]),
    ("facts", "LUPI-SKD", "lupi_skd", []),
]
# steps: per method; student_steps: warm start; eval_limit: test records per task (None = all);
# bench_prompts: test prompts for the draft benchmark. `default` (make demo) fits in 10 minutes with set-up on a
# 2-core CPU; `paper` (docs/results.md) trains longer and scores every test record; `quick` is a smoke run.
PLANS = {
    "default": {"student_steps": 300, "steps": 60, "batch_size": 32, "eval_limit": 200, "bench_prompts": 24},
    "paper": {"student_steps": 400, "steps": 120, "batch_size": 32, "eval_limit": None, "bench_prompts": 40},
    "quick": {"student_steps": 150, "steps": 30, "batch_size": 16, "eval_limit": 100, "bench_prompts": 12},
}
GAMMA = 4
MAX_NEW = {"arith": 40, "facts": 16}


def _train(config: str, out: Path, overrides: list[str], sft: bool) -> float:
    cfg = load_config(config, overrides + [f"train.output_dir={out}", "train.save_every=0", "train.progress=false",
                                          "train.threads=1", "train.eval_every=0",
                                          "train.eval_samples=32",
                                          "train.overwrite=true"])  # a demo again into --out replaces its runs
    start = time.perf_counter()
    run_training(cfg, sft=sft)
    return time.perf_counter() - start


def _prompts(records, tokenizer, views) -> tuple[list[list[int]], list[list[int]]]:
    examples = [encode_example(r, tokenizer, views) for r in records]
    return [e.teacher_prompt for e in examples], [e.student_prompt for e in examples]


def measure(student_path: str, teacher_path: str, task: str, plan: dict, seed: int) -> dict:
    """Quality on the test split (student view, closed book) and the student as the teacher's draft."""
    torch.manual_seed(seed)
    tok = load_tokenizer(teacher_path)
    teacher = load_model(teacher_path, tokenizer=tok).eval()
    student = load_model(student_path, tokenizer=tok).eval()
    views = load_config("configs/builtin/teacher.yaml").data.views  # knowledge in the teacher's view
    records = load_records(DatasetConfig(task=task, split="test"))
    quality = evaluate_records(student, tok, records[: plan["eval_limit"]], views, get_task(task).scorer, "student",
                               max_new_tokens=MAX_NEW[task], batch_size=64)
    t_prompts, s_prompts = _prompts(records[: plan["bench_prompts"]], tok, views)
    with torch.no_grad():
        bench = bench_pair(teacher, student, t_prompts, tok, gamma=GAMMA, max_new_tokens=MAX_NEW[task],
                           draft_prompts=s_prompts, batch_size=1, repeats=1)  # one timed run: the demo's budget
    return {"exact_match": quality["exact_match"], "n_eval": quality["n"],
            **{k: bench[k] for k in ("acceptance_rate", "mean_accepted_length", "per_position_acceptance",
                                     "speedup_vs_target", "cost_ratio_c", "matches_target_greedy")}}


def _quiet() -> None:
    """No per-model loading/saving progress bars: the demo prints its own table."""
    import transformers

    transformers.utils.logging.disable_progress_bar()


def run_method(job: dict) -> dict:
    """One worker job: train a method from the warm start, then measure it."""
    torch.set_num_threads(1)
    _quiet()
    out = Path(job["out"])
    overrides = job["overrides"] + [f"model.student={job['student']}", f"model.teacher={job['teacher']}",
                                    f"train.max_steps={job['plan']['steps']}", f"train.batch_size={job['plan']['batch_size']}",
                                    f"train.seed={job['seed']}", "train.lr=1.0e-3",
                                    "train.warmup_steps=10"]
    train_s = _train(f"configs/{job['config']}.yaml", out, overrides, sft=job["config"] == "sft")
    curve = [(r["step"], r["train/loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    result = measure(str(out / "final"), job["teacher"], job["task"], job["plan"], job["seed"])
    return {"task": job["task"], "method": job["label"], "seed": job["seed"], "train_s": train_s, "loss_curve": curve,
            **result}


def _workers() -> int:
    return max(1, min(len(METHODS), (multiprocessing.cpu_count() or 1)))


def run_all(jobs: list[dict]) -> list[dict]:
    """Jobs in worker processes (spawned: no inherited thread pools); results in the jobs' order."""
    from concurrent.futures import as_completed

    with ProcessPoolExecutor(_workers(), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_method, job): i for i, job in enumerate(jobs)}
        results: list[dict | None] = [None] * len(jobs)
        for n, future in enumerate(as_completed(futures), 1):
            r = results[futures[future]] = future.result()
            print(f"[{n}/{len(jobs)}] {r['task']} / {r['method']} (seed {r['seed']}): exact match {r['exact_match']:.3f}, "
                  f"acceptance {r['acceptance_rate']:.3f}, {r['train_s']:.0f} s", flush=True)
    return results


def aggregate(results: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per (task, method), in METHODS order."""
    rows = []
    for task, label, _, _ in METHODS:
        runs = [r for r in results if r["task"] == task and r["method"] == label]
        row = {"task": task, "method": label, "seeds": [r["seed"] for r in runs]}
        for key in ("exact_match", "acceptance_rate", "mean_accepted_length", "speedup_vs_target", "train_s"):
            values = [r[key] for r in runs]
            row[key] = statistics.fmean(values)
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def _cell(row: dict, key: str, fmt: str) -> str:
    text = format(row[key], fmt)
    return text + (" ± " + format(row[key + "_std"], fmt) if len(row["seeds"]) > 1 else "")


def render_report(report: dict) -> str:
    lines = [f"# specdistill demo ({report['plan_name']} plan, seeds {report['seeds']})", "",
             f"Teacher `{report['teacher']['path']}`: arith exact match {report['teacher']['arith']:.3f}; facts exact "
             f"match {report['teacher']['facts']:.3f} with the knowledge in view, "
             f"{report['teacher']['facts_closed_book']:.3f} closed book. Warm-start student (SFT, "
             f"{report['warm_start']['train_s']:.0f} s): arith {report['warm_start']['arith']:.3f}, facts "
             f"{report['warm_start']['facts']:.3f}. Each method then trains {report['plan']['steps']} steps.", "",
             "| task | method | test exact match | acceptance rate | mean accepted length | speedup vs teacher | "
             "training time (s) |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['task']} | {r['method']} | {_cell(r, 'exact_match', '.3f')} | "
                     f"{_cell(r, 'acceptance_rate', '.3f')} | {_cell(r, 'mean_accepted_length', '.2f')} | "
                     f"{_cell(r, 'speedup_vs_target', '.2f')} | {_cell(r, 'train_s', '.0f')} |")
    lines += ["", f"Draft benchmark: greedy speculative decoding, gamma={GAMMA}, batch size 1, "
              f"{report['plan']['bench_prompts']} test prompts per task; the teacher verifies on its own view "
              "(facts: with the knowledge), the student drafts from its view. Speedups are wall-clock on this machine "
              "with one thread per worker."]
    return "\n".join(lines)


def _baselines(out: Path, teacher: str, plan: dict, seed: int) -> tuple[dict, dict]:
    torch.set_num_threads(max(1, multiprocessing.cpu_count() or 1))
    warm_s = _train("configs/builtin/student.yaml", out / "student",
                    [f"train.max_steps={plan['student_steps']}", f"train.seed={seed}"], sft=True)
    tok = load_tokenizer(teacher)
    views = load_config("configs/builtin/teacher.yaml").data.views

    def score(path: str, task: str, view: str) -> float:
        model = load_model(path, tokenizer=tok).eval()
        records = load_records(DatasetConfig(task=task, split="test"))[: plan["eval_limit"]]
        return evaluate_records(model, tok, records, views, get_task(task).scorer, view, MAX_NEW[task], 64)["exact_match"]

    warm = str(out / "student" / "final")
    teacher_row = {"path": teacher, "arith": score(teacher, "arith", "teacher"), "facts": score(teacher, "facts", "teacher"),
                   "facts_closed_book": score(teacher, "facts", "student")}
    warm_row = {"path": warm, "train_s": warm_s, "arith": score(warm, "arith", "student"),
                "facts": score(warm, "facts", "student")}
    return teacher_row, warm_row


def run_demo(out: str = "runs/demo", quick: bool = False, retrain: bool = False, seed: int = 0, seeds: int = 1,
             plan: dict | None = None, plan_name: str = "default") -> dict:
    """The whole demo on PLANS[plan_name] (quick=True: the quick plan); `plan` overrides entries of it (e.g. fewer
    steps in tests)."""
    _quiet()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_name = "quick" if quick else plan_name
    if plan_name not in PLANS:
        raise ValueError(f"demo: unknown plan {plan_name!r}; allowed: {', '.join(PLANS)}")
    plan = {**PLANS[plan_name], **(plan or {})}
    teacher = "builtin-teacher"
    if retrain:
        previous = None
        for stage in ("teacher", "teacher_facts", "teacher_polish"):  # what `make teacher` runs
            init = [f"model.student={previous}"] if previous else []
            _train(f"configs/builtin/{stage}.yaml", out_dir / stage, init + [f"train.seed={seed}"], sft=True)
            previous = out_dir / stage / "final"
        teacher = str(previous)
    print(f"demo: warm-starting the student ({plan['student_steps']} SFT steps), then {len(METHODS) * seeds} "
          f"distillation runs of {plan['steps']} steps on {_workers()} workers", flush=True)
    teacher_row, warm_row = _baselines(out_dir, teacher, plan, seed)
    jobs = [{"task": task, "label": label, "config": config, "overrides": overrides, "plan": plan, "seed": s,
             "student": warm_row["path"], "teacher": teacher, "out": str(out_dir / f"seed{s}" / f"{task}-{config}")}
            for s in range(seed, seed + seeds) for task, label, config, overrides in METHODS]
    results = run_all(jobs)
    report = {"plan_name": plan_name, "quick": plan_name == "quick", "seeds": list(range(seed, seed + seeds)),
              "plan": plan, "gamma": GAMMA,
              "teacher": teacher_row, "warm_start": warm_row, "rows": aggregate(results), "runs": results}
    _check_finite(report["rows"])
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    from .evaluate.plots import plot_demo

    plot_demo(report, out_dir)
    table = render_report(report)
    (out_dir / "report.md").write_text(table + "\n\n![quality vs acceptance](quality_vs_acceptance.png)\n"
                                       "![acceptance per position](acceptance_per_position.png)\n"
                                       "![training curves](training_curves.png)\n")
    print(table)
    return report


def _check_finite(rows: list[dict]) -> None:
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise RuntimeError(f"demo: {row['task']} / {row['method']}: {key} is {value}")
