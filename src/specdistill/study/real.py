"""The real-model proving ground (docs/real.md): do distilled drafts speed up a real pretrained model, measured in
two engines beside the peers?

    python -m specdistill.study.real --models models --out runs/real --results docs/real.md [--quick]

Steps (real_plan.py has the settings and the budget):
1. drafts cut from the teacher at each depth (`init-draft`); the teacher's T=1 answers to the training questions,
   generated once and cached; the teacher's GSM8K exact match;
2. per depth, the shared warm start: SeqKD (cross-entropy) on those cached answers, from the cut draft;
3. the pair's forward costs per depth, timed alone; then in parallel workers each method and seed trained from
   the warm start with the same budget, and every draft (the undistilled cut draft and the warm start too)
   measured: GSM8K exact match, greedy and T=1 acceptance, sum(min(p, q)), predicted speedup;
4. one at a time, nothing else of the study running: each draft's measured speedup at batch size 1 in
   specdistill's engine, then exported and served by llama.cpp, each at its best gamma;
5. the peers (real_peers.py), then report.json, the figures and the page (real_report.py).
Every stage's result is kept in a job folder named by its settings' hash: a stopped study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import UserError
from ..evaluate.prediction import ForwardCosts
from ..models import load_model, load_tokenizer
from .claims import METRICS, aggregate
from .jobs import loss_curve, quiet, run_all, train_job, workers
from .measure import GAMMA, pair_costs
from .real_measure import (cached, gsm8k_quality, llamacpp_speedup, measure_draft, teacher_answers, test_prompts,
                           timed_b1)
from .real_peers import REPO, hf_assisted, skd_rollout, trl_gkd
from .real_plan import (PLANS, TEACHER, TEACHER_GGUF, UNDISTILLED, chosen, estimate, job_folder, plan_jobs,
                        resume_key, warm_settings)

REAL_METRICS = METRICS + ("measured_speedup", "llamacpp_speedup", "llamacpp_acceptance_rate",
                          "llamacpp_mean_acceptance_length", "answers_with_final_line")
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gsm8k"  # ../shared/data/gsm8k beside the repository


def config_path(name: str) -> str:
    """An example config: the repository's configs/ where present (the working directory's otherwise)."""
    path = REPO / "configs" / f"{name}.yaml"
    return str(path) if path.is_file() else f"configs/{name}.yaml"


def find_data(folder: str | None) -> dict:
    """The GSM8K copy: train.jsonl and test.jsonl in `folder` (default ../shared/data/gsm8k)."""
    root = Path(folder) if folder else DEFAULT_DATA
    paths = {split: root / f"{split}.jsonl" for split in ("train", "test")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"real: no GSM8K copy at {root} ({', '.join(missing)} missing); give --data DIR holding "
                        f"train.jsonl and test.jsonl (GSM8K's JSONL, as `hub: openai/gsm8k`, config main, has them)")
    return {"train": str(paths["train"]), "test": str(paths["test"]), "folder": str(root)}


def cut_drafts(teacher: str, depths: list[int], root: Path) -> dict[int, str]:
    """`init-draft --layers N` for each depth, once (kept in the study's folder)."""
    from ..drafts import init_draft

    out = {}
    for depth in depths:
        folder = root / "drafts" / f"cut-{depth}"
        if not (folder / "config.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            init_draft(teacher, str(depth), str(folder))
        out[depth] = str(folder)
    return out


def run_warm(job: dict) -> list[dict]:
    """A worker job: a depth's warm start, SeqKD on the teacher's cached answers (pre-tokenized), from the cut
    draft; its loss curve kept."""
    torch.set_num_threads(1)
    quiet()
    out, plan = Path(job["out"]), job["plan"]
    overrides = [f"data.train=[{{path: {job['answers']}, format: tokens}}]", "data.validation=null",
                 f"model.student={job['student']}", f"data.views.max_response_tokens={plan['max_new_tokens']}",
                 f"train.max_steps={plan['warm_steps']}", f"train.batch_size={plan['batch_size']}",
                 f"train.lr={plan['lr']}", "train.seed=0", "train.warmup_steps=0"]

    def train() -> dict:
        seconds = train_job(config_path("sft"), out / "train", overrides, sft=True)
        return {"train_s": seconds, "loss_curve": loss_curve(out / "train")}

    done = cached(out / "trained.json", train)
    return [{"world": f"{job['depth']}-layer", "method": "warm start", "seed": 0, **done}]


def measure_settings(plan: dict, data: dict) -> dict:
    keep = ("test_limit", "bench_prompts", "quality_new_tokens", "max_new_tokens")
    return {"test": data["test"], **{k: plan[k] for k in keep}}


def run_job(job: dict) -> list[dict]:
    """A worker job: train a method from the warm start (none for the undistilled cut draft and the warm start
    itself), then measure the draft; both stages kept in the job's folder."""
    torch.set_num_threads(1)
    quiet()
    out, plan, student = Path(job["out"]), job["plan"], job["student"] if job["config"] is None else None
    trained = {"train_s": 0.0, "loss_curve": []}
    if job["config"] is not None:
        def train() -> dict:
            seconds = train_job(config_path(job["config"]), out / "train", job["overrides"],
                                sft=job["config"] == "sft")
            return {"train_s": seconds, "loss_curve": loss_curve(out / "train")}

        trained, student = cached(out / "trained.json", train), str(out / "train" / "final")
    key = resume_key(measure_settings(plan, job["data"]))
    measured = cached(out / f"measured-{key}.json", lambda: measure_draft(
        student, job["teacher"], plan, job["data"], job["seed"], ForwardCosts(**job["costs"])))
    return [{"world": f"{job['depth']}-layer", "depth": job["depth"], "method": job["label"], "seed": job["seed"],
             "student": student, "out": str(out), **trained, **measured}]


def timing_settings(plan: dict, data: dict, engine: str) -> dict:
    gammas = plan["gammas"] if engine == "specdistill" else plan["llamacpp_gammas"]
    return {"engine": engine, "test": data["test"], "prompts": plan["timing_prompts"], "gammas": gammas,
            "max_new_tokens": plan["max_new_tokens"], "threads": plan.get("threads", 1)}


def time_drafts(runs: list[dict], plan: dict, data: dict, teacher: str, target_gguf: str) -> None:
    """Each draft's measured speedups, one at a time (the workers have finished): specdistill's engine at batch
    size 1, then llama.cpp after export; results added to each run and kept in its folder."""
    torch.set_num_threads(plan.get("threads", 1))
    tok = load_tokenizer(teacher)
    target = load_model(teacher, tokenizer=tok).eval()
    prompts = [list(p) for p in test_prompts(data["test"], plan["test_limit"], teacher)[: plan["timing_prompts"]]]
    for i, run in enumerate(runs, 1):
        print(f"[timing {i}/{len(runs)}] {run['world']} / {run['method']} (seed {run['seed']})", flush=True)
        out = Path(run["out"])
        key = resume_key(timing_settings(plan, data, "specdistill"))

        def engine() -> dict:
            draft = load_model(run["student"], tokenizer=tok).eval()
            with torch.no_grad():
                return timed_b1(target, draft, tok, prompts, plan["gammas"], plan["max_new_tokens"])

        run.update(cached(out / f"timed-{key}.json", engine))
        if plan["llamacpp"]:
            key = resume_key(timing_settings(plan, data, "llamacpp"))
            run.update(cached(out / f"llamacpp-{key}.json", lambda: llamacpp_speedup(
                target_gguf, run["student"], out / "draft-q8_0.gguf", prompts, plan["llamacpp_gammas"],
                plan["max_new_tokens"], plan.get("threads", 1))))


def best_drafts(rows: list[dict]) -> dict[str, dict]:
    """Per depth, the distilled row (trained or the warm start) with the highest mean measured B=1 speedup."""
    best = {}
    for row in rows:
        if row["method"] != UNDISTILLED and "measured_speedup" in row and row["measured_speedup"] > best.get(
                row["world"], {}).get("measured_speedup", -1):
            best[row["world"]] = row
    return best


def run_peers(runs: list[dict], rows: list[dict], plan: dict, data: dict, teacher: str, root: Path) -> dict:
    """The peers, one at a time: transformers' assisted generation with each depth's best draft (its first seed),
    TRL's GKDTrainer against specdistill's GKD step on the first depth's warm start, and the SKD rollout at
    batch sizes 16 and 1 (compile on and off)."""
    torch.set_num_threads(plan.get("threads", 1))
    tok = load_tokenizer(teacher)
    target = load_model(teacher, tokenizer=tok).eval()
    prompts = [list(p) for p in test_prompts(data["test"], plan["test_limit"], teacher)]
    out = {"assisted": {}}
    for world, row in best_drafts(rows).items():
        run = next(r for r in runs if r["world"] == world and r["method"] == row["method"])
        draft = load_model(run["student"], tokenizer=tok).eval()
        print(f"[peers] transformers' assisted generation with {world} / {row['method']}", flush=True)
        gamma = run.get("best_gamma", GAMMA)
        out["assisted"][world] = {"method": row["method"], **hf_assisted(
            target, draft, tok, prompts[: plan["timing_prompts"]], gamma, plan["max_new_tokens"])}
    warm = next(r for r in runs if r["method"].startswith("warm start"))
    draft = load_model(warm["student"], tokenizer=tok).eval()
    print("[peers] SKD rollout at batch size 16 and 1, compile on and off", flush=True)
    out["skd_rollout"] = {"draft": warm["world"], **skd_rollout(target, draft, tok, prompts[:16],
                                                                plan["max_new_tokens"], plan.get("compile", True))}
    print("[peers] TRL's GKDTrainer against specdistill's GKD step (benchmarks/train_step.py)", flush=True)
    out["trl_gkd"] = {"draft": warm["world"], **trl_gkd(teacher, warm["student"], plan["peer_steps"],
                                                        plan["batch_size"], plan["max_new_tokens"])}
    return out


def prepare(plan: dict, data: dict, models: Path, root: Path) -> dict:
    """Stages 1-2: the cut drafts, the teacher's cached answers and GSM8K score, the warm starts (in parallel)."""
    teacher = str(models / TEACHER)
    cut = cut_drafts(teacher, plan["depths"], root)
    answers_key = resume_key({"train": data["train"], "limit": plan["train_limit"], "n": plan["max_new_tokens"]})
    print(f"real: the teacher's T=1 answers to {plan['train_limit']} training questions (once)", flush=True)
    answers = teacher_answers(teacher, data["train"], plan["train_limit"], plan["max_new_tokens"],
                              root / f"teacher-answers-{answers_key}.jsonl")

    def teacher_score() -> dict:
        tok = load_tokenizer(teacher)
        return gsm8k_quality(load_model(teacher, tokenizer=tok).eval(), tok, data["test"], plan["test_limit"],
                             plan["quality_new_tokens"])

    quality_key = resume_key({"test": data["test"], "n": plan["test_limit"], "new": plan["quality_new_tokens"]})
    score = cached(root / f"teacher-quality-{quality_key}.json", teacher_score)
    warm = {d: warm_settings(plan, d, data) for d in plan["depths"]}
    warm_jobs = [{"depth": d, "plan": plan, "answers": answers, "student": cut[d],
                  "out": str(job_folder(root, f"warm-{d}l", warm[d]))} for d in plan["depths"]]
    print(f"real: the warm starts ({plan['warm_steps']} SeqKD steps on the cached answers per depth)", flush=True)
    warm_runs = run_all(warm_jobs, run_warm)
    return {"teacher": teacher, "cut": cut, "answers": answers, "teacher_quality": score, "warm_runs": warm_runs,
            "warm": {d: (str(Path(j["out"]) / "train" / "final"), warm[d]) for d, j in zip(plan["depths"], warm_jobs)}}


def run_real(models: str = "models", out: str = "runs/real", results: str | None = None, quick: bool = False,
             plan: dict | None = None, data: str | None = None) -> dict:
    """The study on PLANS['quick' or 'full'] (`plan` overrides entries); returns the report, also written to
    out/report.json, out/report.md with the figures, and `results` (with img/ beside it)."""
    from .real_report import write_real_report

    quiet()
    start = time.perf_counter()
    plan_name = "quick" if quick else "full"
    plan, data_paths, root = {**PLANS[plan_name], **(plan or {})}, find_data(data), Path(out)
    models_dir = Path(models)
    if not (models_dir / TEACHER / "config.json").is_file():
        raise UserError(f"real: no teacher at {models_dir / TEACHER}; run `make real-models` (or give --models)")
    root.mkdir(parents=True, exist_ok=True)
    n_workers = workers(len(plan["depths"]) * plan["seeds"] * (len(chosen(plan)) + 2))
    guess = estimate(plan, n_workers)
    print(f"real ({plan_name} plan): estimated {guess['total'] / 60:.0f} min on {n_workers} workers: "
          + ", ".join(f"{k} {v / 60:.1f}" for k, v in guess.items() if k != "total"), flush=True)
    ready = prepare(plan, data_paths, models_dir, root)
    teacher = ready["teacher"]
    prompt = list(test_prompts(data_paths["test"], plan["test_limit"], teacher)[0])
    costs = {d: pair_costs(teacher, ready["cut"][d], prompt) for d in plan["depths"]}  # timed alone
    torch.set_num_threads(1)
    jobs = plan_jobs(plan, data_paths, root, teacher, ready["warm"], ready["cut"])
    for job in jobs:
        job["costs"] = asdict(costs[job["depth"]])
    runs = run_all(jobs, run_job)
    target_gguf = str(models_dir / TEACHER_GGUF)
    time_drafts(runs, plan, data_paths, teacher, target_gguf)
    rows = aggregate(runs, REAL_METRICS)
    peers = cached(root / f"peers-{resume_key({'plan': plan, 'data': data_paths})}.json",
                   lambda: run_peers(runs, rows, plan, data_paths, teacher, root)) if plan["peers"] else {}
    report = {"plan_name": plan_name, "plan": plan, "data": data_paths, "seeds": list(range(plan["seeds"])),
              "gamma": GAMMA, "teacher": {"path": teacher, "gguf": target_gguf, **ready["teacher_quality"]},
              "costs": {str(d): asdict(c) for d, c in costs.items()}, "workers": n_workers, "estimate": guess,
              "warm_runs": ready["warm_runs"], "rows": rows, "runs": runs, "peers": peers,
              "machine": machine(), "wall_s": time.perf_counter() - start}
    (root / "report.json").write_text(json.dumps(report, indent=1, default=str))
    text = write_real_report(report, root, Path(results) if results else None)
    print(text)
    return report


def machine() -> str:
    import os
    import platform

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{platform.machine()}, {multiprocessing.cpu_count()} CPU cores, torch {torch.__version__}, load "
            f"average at the end {load}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m specdistill.study.real", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="models", help="the folder `make real-models` wrote")
    p.add_argument("--out", default="runs/real", help="the study's folder (job folders kept there: it resumes)")
    p.add_argument("--results", help="also write the page here (docs/real.md), its figures in img/ beside it")
    p.add_argument("--data", help=f"a folder with GSM8K's train.jsonl and test.jsonl (default {DEFAULT_DATA})")
    p.add_argument("--quick", action="store_true", help="the quick plan (one depth, two methods, two seeds)")
    args = p.parse_args(argv)
    try:
        run_real(args.models, args.out, args.results, args.quick, data=args.data)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
