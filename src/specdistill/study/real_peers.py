"""The real-model study's peers, measured in the same run on the same pair and prompts, each as a ratio of two
runs side by side: transformers' assisted generation (batch size 1, its only option) against specdistill's engine
at batch sizes 1 and 8; TRL's GKDTrainer against specdistill's GKD step (benchmarks/train_step.py, where the
repository's benchmarks/ is present); the SKD rollout with its prompts in one batch against one prompt at a time (how the
seeds' SKD code runs), and with the engine's `compile` on and off."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..data.templates import end_token_ids
from ..data.prompt_views import left_pad
from ..engine import Sampling, TopKPolicy, generate, make_schedule
from ..evaluate.prediction import ForwardCosts
from ..evaluate.speculative import bench_pair

REPO = Path(__file__).resolve().parents[3]  # src/specdistill/study/ -> the repository (benchmarks/ beside src/)


def hf_assisted(target, draft, tok, prompts: list[list[int]], gamma: int, max_new_tokens: int,
                costs: ForwardCosts) -> dict:
    """bench_pair with transformers' assisted generation: specdistill at batch size 8 and at batch size 1 against
    transformers one prompt at a time, greedy, the same gamma and end ids; whether the outputs are identical.
    costs: the pair's, measured before (bench_pair would time them again for its predicted figures)."""
    b = bench_pair(target, draft, prompts, tok, gamma=gamma, max_new_tokens=max_new_tokens, batch_size=8,
                   compare_hf=True, warmup=1, repeats=1, costs=costs)
    return {"gamma": gamma, "prompts": len(prompts), "hf_assisted_tokens_per_s": b["hf_assisted_tokens_per_s"],
            "specdistill_b1_tokens_per_s": b["tokens_per_s_b1"], "specdistill_b8_tokens_per_s": b["tokens_per_s"],
            "b1_over_hf": b["speedup_vs_hf_assisted"],
            "b8_over_hf": b["tokens_per_s"] / b["hf_assisted_tokens_per_s"], "identical": b["matches_hf_assisted"],
            "hf_mode": b["hf_assisted_mode"]}


def skd_rollout_seconds(target, draft, tok, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
                        compile: bool) -> tuple[int, float]:
    """(tokens, seconds) of SKD rollouts (the draft samples at T=1, the teacher keeps its top-5; gamma 4) over
    every prompt at `batch_size`, after one untimed batch (which compiles the graphs with `compile`)."""
    hot = Sampling(temperature=1.0)

    def run(chunk):
        ids, mask = left_pad(chunk, tok.pad_token_id)
        return generate(draft, ids, mask, target, ids, mask, policy=TopKPolicy(k=5, target=hot),
                        gamma=make_schedule("constant", 4), draft_sampling=hot, max_new_tokens=max_new_tokens,
                        eos_token_id=end_token_ids(tok, target), pad_token_id=tok.pad_token_id, compile=compile,
                        vocab_size=len(tok))

    run(prompts[:batch_size])
    tokens, start = 0, time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        tokens += sum(len(r) for r in run(prompts[i : i + batch_size]).rows())
    return tokens, time.perf_counter() - start


@torch.no_grad()
def skd_rollout(target, draft, tok, prompts: list[list[int]], max_new_tokens: int, compile: bool) -> dict:
    """SKD rollout tokens/s with every prompt in one batch against one prompt at a time (eager), and the batch
    compiled against eager."""
    rates, bs = {}, len(prompts)
    for name, size, comp in (("batched", bs, False), ("b1", 1, False), *((("batched_compiled", bs, True),) if compile
                                                                         else ())):
        tokens, seconds = skd_rollout_seconds(target, draft, tok, prompts, size, max_new_tokens, comp)
        rates[name] = tokens / seconds
    out = {"prompts": bs, "batch_size": bs, **{f"{k}_tokens_per_s": v for k, v in rates.items()},
           "batched_over_b1": rates["batched"] / rates["b1"]}
    if compile:
        out["compiled_over_eager"] = rates["batched_compiled"] / rates["batched"]
    return out


def trl_gkd(teacher: str, student: str, steps: int, batch_size: int, max_new_tokens: int) -> dict:
    """benchmarks/train_step.py (TRL's GKDTrainer against specdistill's GKD step, the same prompts, lambda 1,
    beta 0.5, T=1, new tokens and batch; both eager) as a subprocess; its JSON line, or why it did not run."""
    script = REPO / "benchmarks" / "train_step.py"
    if not script.is_file():
        return {"skipped": f"{script} is absent (a repository checkout has it)"}
    argv = [sys.executable, str(script), "--teacher", teacher, "--student", student, "--steps", str(steps),
            "--warmup", "1", "--rounds", "1", "--no-compile", "--batch-size", str(batch_size),
            "--max-new-tokens", str(max_new_tokens)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env={**_env(), "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"benchmarks/train_step.py exited {done.returncode}: {tail[:200]}"}
    return {"command": " ".join(argv[1:]), **json.loads(lines[-1])}


def _env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
