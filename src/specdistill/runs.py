"""What the demo's studies share: one training run from a config, and a student's figures as a draft."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .config import load_config
from .evaluate.prediction import ForwardCosts
from .evaluate.speculative import bench_pair
from .train import run_training

GAMMA = 4
RUN_FIXED = ["train.save_every=0", "train.progress=false", "train.threads=1", "train.eval_every=0",
             "train.eval_samples=32", "train.overwrite=true"]  # a demo again into --out replaces its runs


def train_run(config: str, out: Path, overrides: list[str], sft: bool) -> float:
    cfg = load_config(config, list(overrides) + [f"train.output_dir={out}"] + RUN_FIXED)
    start = time.perf_counter()
    run_training(cfg, sft=sft)
    return time.perf_counter() - start


def quiet() -> None:
    """No per-model loading/saving progress bars: the demo prints its own table."""
    import transformers

    transformers.utils.logging.disable_progress_bar()


def draft_figures(teacher, student, t_prompts, s_prompts, tok, max_new: int, seed: int, costs: ForwardCosts) -> dict:
    """Greedy and T=1 speculative decoding (gamma GAMMA): acceptance, mean accepted length, per-position
    acceptance, sum(min(p, q)) over the teacher's own outputs, and the speedup predicted from the measured
    acceptance and `costs` (timed alone, so parallel workers cannot skew it)."""
    out = {}
    for prefix, temperature in (("", 0.0), ("sampled_", 1.0)):
        with torch.no_grad():
            b = bench_pair(teacher, student, t_prompts, tok, gamma=GAMMA, temperature=temperature,
                           max_new_tokens=max_new, draft_prompts=s_prompts, batch_size=8, seed=seed, warmup=0,
                           repeats=1, costs=costs)
        for key in ("acceptance_rate", "mean_accepted_length", "per_position_acceptance", "expected_acceptance",
                    "predicted_speedup", "token_acceptance"):
            out[prefix + key] = b[key]
        if temperature == 0:
            out["matches_target_greedy"] = b["matches_target_greedy"]
    return out
