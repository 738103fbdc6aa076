"""Training one job of a study, and the pool of worker processes that runs a study's jobs."""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from ..config import load_config
from ..train import train_student

JOB_FIXED = ["train.save_every=0", "train.progress=false", "train.threads=1", "train.eval_every=0",
             "train.eval_samples=32", "train.overwrite=true"]  # a study again into its folder replaces its runs


def train_job(config: str, out: Path, overrides: list[str], sft: bool) -> float:
    """Train the config with the overrides into `out` (quietly, one thread, no checkpoints); its seconds."""
    cfg = load_config(config, list(overrides) + [f"train.output_dir={out}"] + JOB_FIXED)
    start = time.perf_counter()
    train_student(cfg, sft=sft)
    return time.perf_counter() - start


def loss_curve(out: Path) -> list[tuple[int, float]]:
    """(step, training loss) of a finished run, from its metrics.jsonl."""
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["train/loss"]) for r in rows]


def quiet() -> None:
    """No per-model loading/saving progress bars: a study prints its own lines."""
    import transformers

    transformers.utils.logging.disable_progress_bar()


def workers(n_jobs: int) -> int:
    return max(1, min(n_jobs, multiprocessing.cpu_count() or 1))


def run_all(jobs: list[dict], worker: Callable[[dict], list[dict]]) -> list[dict]:
    """worker(job) for each job in worker processes (spawned: no inherited thread pools; worker must be a module's
    function); each job gives a list of result rows, all returned in the jobs' order, a line printed per row."""
    results: list[list[dict] | None] = [None] * len(jobs)
    with ProcessPoolExecutor(workers(len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(worker, job): i for i, job in enumerate(jobs)}
        for n, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            for r in results[futures[future]]:
                extra = f", acceptance {r['acceptance_rate']:.3f} greedy" if "acceptance_rate" in r else ""
                quality = f"quality {r['quality']:.3f}" if "quality" in r else "trained"
                print(f"[{n}/{len(jobs)}] {r['world']} / {r['method']} (seed {r['seed']}): {quality}{extra}",
                      flush=True)
    return [r for rs in results for r in rs]
