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
from .real_measure import (cached, gsm8k_quality, llamacpp_speedup, machine_pace, measure_draft, target_reference,
                           teacher_answers, test_prompts, timed_alone, timed_b1, write_records)
from .real_peers import REPO, hf_assisted, skd_rollout, trl_gkd
from .real_plan import (PACE_TOKENS_S, PLANS, TEACHER, TEACHER_GGUF, UNDISTILLED, WARM_LABEL, chosen, estimate,
                        job_folder, plan_jobs, resume_key, warm_settings)

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


def run_teacher(job: dict) -> list[dict]:
    """A worker job of the first stage, with the teacher: a slice of its answers to the training questions, its
    GSM8K score, or its reference outputs on the bench prompts (target_reference)."""
    torch.set_num_threads(1)
    quiet()
    plan, data, teacher = job["plan"], job["data"], job["teacher"]
    if job["kind"] == "answers":
        value = teacher_answers(teacher, data["train"], tuple(job["rows"]), plan["max_new_tokens"], job["seed"])
    elif job["kind"] == "quality":
        tok = load_tokenizer(teacher)
        value = gsm8k_quality(load_model(teacher, tokenizer=tok).eval(), tok, data["test"], plan["test_limit"],
                              plan["quality_new_tokens"])
    else:
        prompts = [list(p) for p in test_prompts(data["test"], plan["bench_prompts"], teacher)]
        value = target_reference(teacher, prompts, plan["max_new_tokens"], plan["seeds"])
    return [{"world": "teacher", "method": job["kind"], "seed": job.get("seed", 0), "value": value}]


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
    keep = ("test_limit", "bench_prompts", "quality_new_tokens", "max_new_tokens", "seeds")
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
        student, job["teacher"], plan, job["data"], job["seed"], ForwardCosts(**job["costs"]), job["reference"]))
    return [{"world": f"{job['depth']}-layer", "depth": job["depth"], "method": job["label"], "seed": job["seed"],
             "student": student, "out": str(out), **trained, **measured}]


def timing_settings(plan: dict, data: dict, engine: str, gamma: int | None = None) -> dict:
    return {"engine": engine, "test": data["test"], "prompts": plan["timing_prompts"], "gamma": gamma,
            "max_new_tokens": plan["timing_new_tokens"], "threads": plan.get("threads", 1)}


class Timer:
    """The timed runs of one engine, one at a time: the target alone (reference) and each draft against it."""

    def __init__(self, engine: str, plan: dict, teacher: str, target_gguf: str):
        self.engine, self.plan, self.gguf, self.threads = engine, plan, target_gguf, plan.get("threads", 1)
        if engine == "specdistill":
            self.tok = load_tokenizer(teacher)
            self.target = load_model(teacher, tokenizer=self.tok).eval()

    def alone(self, prompts: list[list[int]]) -> dict:
        from ..evaluate.llamacpp import serve_prompts

        n = self.plan["timing_new_tokens"]
        if self.engine == "llamacpp":
            return serve_prompts(self.gguf, prompts, n, threads=self.threads)
        with torch.no_grad():
            return timed_alone(self.target, self.tok, prompts, n)

    def draft(self, run: dict, prompts: list[list[int]], gamma: int, alone: dict) -> dict:
        n = self.plan["timing_new_tokens"]
        if self.engine == "llamacpp":
            return llamacpp_speedup(self.gguf, run["student"], Path(run["out"]) / "draft-q8_0.gguf", prompts, gamma,
                                    n, self.threads, alone)
        with torch.no_grad():
            return timed_b1(self.target, load_model(run["student"], tokenizer=self.tok).eval(), self.tok, prompts,
                            gamma, n, alone)


SPEEDUP = {"specdistill": "measured_speedup", "llamacpp": "llamacpp_speedup"}


def pick_gamma(timer: Timer, warm: dict, prompts: list[list[int]], gammas: list[int]) -> dict:
    """The gamma an engine does best with for a depth: its warm start timed at each gamma on training prompts
    (not the test split) against the target alone just before; {gamma, by_gamma: {gamma: speedup}}."""
    if len(gammas) == 1:
        return {"gamma": gammas[0], "by_gamma": {}}
    alone = timer.alone(prompts)
    by_gamma = {str(g): timer.draft(warm, prompts, g, alone)[SPEEDUP[timer.engine]] for g in gammas}
    return {"gamma": int(max(by_gamma, key=by_gamma.get)), "by_gamma": by_gamma}


def time_drafts(runs: list[dict], plan: dict, data: dict, teacher: str, target_gguf: str, root: Path) -> dict:
    """Each draft's measured speedup, one at a time (the workers have finished), in specdistill's engine at batch
    size 1, then in llama.cpp after export: per depth the engine's gamma picked on the warm start, then per seed
    the target alone timed once and every draft of that depth and seed against it (a paired ratio: the machine's
    load moves both alike within a few minutes). Results added to each run and kept in its folder; returns the
    picked gammas per engine and depth."""
    torch.set_num_threads(plan.get("threads", 1))
    test = [list(p) for p in test_prompts(data["test"], plan["test_limit"], teacher)[: plan["timing_prompts"]]]
    train = [list(p) for p in test_prompts(data["train"], plan["timing_prompts"], teacher)]
    picked: dict = {}
    for engine in ("specdistill", "llamacpp") if plan["llamacpp"] else ("specdistill",):
        timer, gammas = Timer(engine, plan, teacher, target_gguf), plan["gammas" if engine == "specdistill" else
                                                                          "llamacpp_gammas"]
        for depth in plan["depths"]:
            warm = next(r for r in runs if r["depth"] == depth and r["method"] == WARM_LABEL)
            key = resume_key({**timing_settings(plan, data, engine), "gammas": gammas, "warm": warm["out"]})
            print(f"[timing] {engine}: picking gamma among {gammas} for {depth} layers on its warm start", flush=True)
            pick = picked.setdefault(engine, {})[str(depth)] = cached(
                root / f"gamma-{engine}-{depth}l-{key}.json", lambda: pick_gamma(timer, warm, train, gammas))
            settings = timing_settings(plan, data, engine, pick["gamma"])
            for seed in range(plan["seeds"]):
                group = [r for r in runs if (r["depth"], r["seed"]) == (depth, seed)]
                alone = None
                for run in group:
                    print(f"[timing] {engine}: {run['world']} / {run['method']} (seed {seed}), gamma {pick['gamma']}",
                          flush=True)

                    def measure() -> dict:
                        nonlocal alone
                        alone = alone or timer.alone(test)  # once per group, just before its first draft
                        return timer.draft(run, test, pick["gamma"], alone)

                    run.update(cached(Path(run["out"]) / f"{engine}-{resume_key(settings)}.json", measure))
    return picked


def best_drafts(rows: list[dict]) -> dict[str, dict]:
    """Per depth, the distilled row (trained or the warm start) with the highest mean measured B=1 speedup."""
    best = {}
    for row in rows:
        if row["method"] != UNDISTILLED and "measured_speedup" in row and row["measured_speedup"] > best.get(
                row["world"], {}).get("measured_speedup", -1):
            best[row["world"]] = row
    return best


def run_peers(runs: list[dict], rows: list[dict], plan: dict, data: dict, teacher: str, costs: dict) -> dict:
    """The peers, one at a time: transformers' assisted generation with each depth's best draft (its first seed),
    TRL's GKDTrainer against specdistill's GKD step on the first depth's warm start, and the SKD rollout with its
    prompts in one batch against one at a time (and compiled, where the plan compiles). costs: the pairs' by depth."""
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
            target, draft, tok, prompts[: plan["timing_prompts"]], gamma, plan["timing_new_tokens"],
            ForwardCosts(**costs[str(run["depth"])]))}
    warm = next(r for r in runs if r["method"].startswith("warm start"))
    draft = load_model(warm["student"], tokenizer=tok).eval()
    print(f"[peers] SKD rollout at batch size {plan['rollout_prompts']} and 1{', compile on and off' * plan['compile']}",
          flush=True)
    out["skd_rollout"] = {"draft": warm["world"], **skd_rollout(target, draft, tok, prompts[: plan["rollout_prompts"]],
                                                                plan["timing_new_tokens"], plan["compile"])}
    print("[peers] TRL's GKDTrainer against specdistill's GKD step (benchmarks/train_step.py)", flush=True)
    out["trl_gkd"] = {"draft": warm["world"], **trl_gkd(teacher, warm["student"], plan["peer_steps"],
                                                        plan["batch_size"], plan["max_new_tokens"])}
    return out


def prepare(plan: dict, data: dict, models: Path, root: Path) -> dict:
    """Stages 1-2 (each kept): the cut drafts; in parallel workers the teacher's T=1 answers to the first
    answer_limit training questions (two slices), its GSM8K score and its reference outputs on the bench prompts;
    then the warm starts, one per depth, in parallel."""
    teacher = str(models / TEACHER)
    cut = cut_drafts(teacher, plan["depths"], root)
    n, half = plan["answer_limit"], plan["answer_limit"] // 2
    keys = {"answers": {"train": data["train"], "limit": n, "n": plan["max_new_tokens"]},
            "quality": {"test": data["test"], "n": plan["test_limit"], "new": plan["quality_new_tokens"]},
            "reference": {"test": data["test"], "prompts": plan["bench_prompts"], "n": plan["max_new_tokens"],
                          "seeds": plan["seeds"]}}
    files = {kind: root / f"teacher-{kind}-{resume_key(k)}.{'jsonl' if kind == 'answers' else 'json'}"
             for kind, k in keys.items()}
    base = {"plan": plan, "data": data, "teacher": teacher}
    jobs = ([{**base, "kind": "answers", "rows": rows, "seed": i} for i, rows in enumerate(((0, half), (half, n)))]
            if not files["answers"].is_file() else [])
    jobs += [{**base, "kind": kind} for kind in ("quality", "reference") if not files[kind].is_file()]
    if jobs:
        print(f"real: the teacher's T=1 answers to {n} training questions, its GSM8K score and its reference "
              f"outputs (once)", flush=True)
        done = run_all(jobs, run_teacher)
        if any(j["kind"] == "answers" for j in jobs):
            write_records([a for r in done if r["method"] == "answers" for a in r["value"]], files["answers"])
        for r in done:
            if r["method"] != "answers":
                cached(files[r["method"]], lambda: r["value"])
    score, reference = (json.loads(files[k].read_text()) for k in ("quality", "reference"))
    warm = {d: warm_settings(plan, d, data) for d in plan["depths"]}
    warm_jobs = [{"depth": d, "plan": plan, "answers": str(files["answers"]), "student": cut[d],
                  "out": str(job_folder(root, f"warm-{d}l", warm[d]))} for d in plan["depths"]]
    print(f"real: the warm starts ({plan['warm_steps']} SeqKD steps on the cached answers per depth)", flush=True)
    warm_runs = run_all(warm_jobs, run_warm)
    return {"teacher": teacher, "cut": cut, "answers": str(files["answers"]), "teacher_quality": score,
            "reference": reference, "warm_runs": warm_runs,
            "warm": {d: (str(Path(j["out"]) / "train" / "final"), warm[d]) for d, j in zip(plan["depths"], warm_jobs)}}


def announce(plan_name: str, plan: dict, n_workers: int, teacher: str, test: str) -> tuple[dict, dict]:
    """The plan's estimate at the pace it was measured at, and scaled by this machine's pace now (printed)."""
    guess = estimate(plan, n_workers)
    pace = machine_pace(teacher, [list(p) for p in test_prompts(test, 2, teacher)], PACE_TOKENS_S)
    pace["expected_s"] = guess["total"] * pace["pace"]
    print(f"real ({plan_name} plan): estimated {guess['total'] / 60:.0f} min on {n_workers} workers at the pace it "
          "was measured at: " + ", ".join(f"{k} {v / 60:.1f}" for k, v in guess.items() if k != "total")
          + f"; this machine decodes the teacher at {pace['tokens_per_s']:.1f} tokens/s now against "
          f"{PACE_TOKENS_S}, so about {pace['expected_s'] / 60:.0f} min (a resumed run: less)",
          flush=True)
    return guess, pace


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
    guess, pace = announce(plan_name, plan, n_workers, str(models_dir / TEACHER), data_paths["test"])
    stages, clock = {}, time.perf_counter()

    def stage(name: str) -> None:  # the wall time of the stage just ended, beside the estimate
        nonlocal clock
        stages[name], clock = time.perf_counter() - clock, time.perf_counter()

    ready = prepare(plan, data_paths, models_dir, root)
    stage("teacher and warm starts")
    teacher = ready["teacher"]
    prompt = list(test_prompts(data_paths["test"], plan["test_limit"], teacher)[0])
    costs = {d: cached(root / f"costs-{d}l-{resume_key({'prompt': prompt, 'repeats': plan['cost_repeats']})}.json",
                       lambda: asdict(pair_costs(teacher, ready["cut"][d], prompt, plan["cost_repeats"])))
             for d in plan["depths"]}  # timed alone
    stage("pair costs (alone)")
    torch.set_num_threads(1)
    jobs = plan_jobs(plan, data_paths, root, teacher, ready["warm"], ready["cut"])
    for job in jobs:
        job.update(costs=costs[job["depth"]], reference=ready["reference"])
    runs = run_all(jobs, run_job)
    stage("training and acceptance (parallel)")
    target_gguf = str(models_dir / TEACHER_GGUF)
    gammas = time_drafts(runs, plan, data_paths, teacher, target_gguf, root)
    stage("timed runs, both engines (alone)")
    rows = aggregate(runs, REAL_METRICS)
    peers = (cached(root / f"peers-{resume_key({'plan': plan, 'data': data_paths})}.json",
                   lambda: run_peers(runs, rows, plan, data_paths, teacher, {str(d): c for d, c in costs.items()}))
             if plan["peers"] else {})
    stage("peers (alone)")
    report = {"plan_name": plan_name, "plan": plan, "data": data_paths, "seeds": list(range(plan["seeds"])),
              "gamma": GAMMA, "teacher": {"path": teacher, "gguf": target_gguf, **ready["teacher_quality"]},
              "costs": {str(d): c for d, c in costs.items()}, "workers": n_workers, "estimate": guess,
              "pace": pace, "stages_s": stages, "gammas": gammas,
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
