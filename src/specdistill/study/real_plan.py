"""The real-model study's plan (docs/real.md): its settings, its methods, its jobs, their resume keys, and the
estimate of its wall time.

The setting: a real teacher (SmolLM2-135M-Instruct), drafts cut from it at two depths (`init-draft`: its first
N-1 layers and its last), GSM8K training questions and gold answers, GSM8K test questions, the model's own chat
template. Every trained method starts from one shared warm start per depth: SeqKD on the teacher's own T=1
answers to the training questions, generated once and cached, then a short SeqKD (cross-entropy) run from the cut
draft; every method then runs the same number of steps at the same batch size and learning rate, for each seed.

A job's folder is named by a hash of the settings that decide its result (resume_key), so a stopped study
resumes where it stopped: a finished job's result file is read back, an unfinished job is rerun, and a changed
setting gives a new folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

UNDISTILLED = "undistilled cut draft"
WARM_LABEL = "warm start (cached SeqKD)"


@dataclass(frozen=True)
class RealMethod:
    label: str
    config: str  # example config in configs/ (its loss and rollout); the study's data replaces its data
    overrides: tuple[str, ...] = ()
    step_s: float = 6.5  # one step's seconds on one thread with a 2-layer draft (batch 8, 64 new tokens): the estimate


# The eight methods of issue 23. Dataset methods read the gold GSM8K answers; GKD and ImitKD mix student samples
# and gold answers (lambda 0.5); SeqKD samples the teacher each step; SKD and DistillSpec learn on the draft's own
# samples. step_s: measured on this machine (docs/real.md states them).
METHODS = [
    RealMethod("SFT on gold", "sft"),
    RealMethod("supervised KD", "supervised_kd"),
    RealMethod("SeqKD", "seqkd", step_s=8.0),
    RealMethod("on-policy KD (GKD)", "gkd", step_s=8.0),
    RealMethod("ImitKD", "imitkd", step_s=8.0),
    RealMethod("SKD", "skd", step_s=23.0),
    RealMethod("DistillSpec (on-policy TVD)", "distillspec", step_s=8.0),
]

# depths: draft layers cut from the teacher; seeds; train_limit: GSM8K training questions the methods draw their
# batches from; answer_limit: the first of them whose teacher answers the warm start learns (several epochs);
# test_limit: GSM8K test questions scored; warm_steps: the shared SeqKD warm start; steps, batch_size, lr: each
# method's budget; max_new_tokens: rollouts, teacher answers and acceptance runs; quality_new_tokens: GSM8K answers;
# bench_prompts: test prompts per acceptance run (greedy and T=1); timing_prompts x timing_new_tokens: each timed
# B=1 run; gammas / llamacpp_gammas: the draft lengths tried per engine on each depth's warm start (training
# prompts), the best then used for every draft of that depth; cost_repeats: pair_costs' timed rounds; methods: the
# labels run (None = all); peers: run the peer comparisons (peer_steps: TRL's and specdistill's timed GKD steps;
# rollout_prompts: the SKD rollout's prompts, batch sizes that many and 1; compile: its batch compiled too).
PLANS = {
    "full": {"depths": [2, 6], "seeds": 3, "train_limit": 1000, "answer_limit": 192, "test_limit": 64,
             "warm_steps": 48, "steps": 6, "batch_size": 8, "lr": 3.0e-4, "max_new_tokens": 64,
             "quality_new_tokens": 128, "bench_prompts": 6, "timing_prompts": 4, "timing_new_tokens": 32,
             "gammas": [1, 2, 3, 4], "llamacpp_gammas": [1, 2, 3, 4], "cost_repeats": 5, "methods": None,
             "peers": True, "llamacpp": True, "peer_steps": 3, "rollout_prompts": 16, "compile": True},
    "quick": {"depths": [6], "seeds": 2, "train_limit": 64, "answer_limit": 32, "test_limit": 32, "warm_steps": 8,
              "steps": 3, "batch_size": 8, "lr": 3.0e-4, "max_new_tokens": 32, "quality_new_tokens": 128,
              "bench_prompts": 4, "timing_prompts": 3, "timing_new_tokens": 32, "gammas": [2],
              "llamacpp_gammas": [2], "cost_repeats": 3, "methods": ["SFT on gold", "SKD"], "peers": True,
              "llamacpp": True, "peer_steps": 1, "rollout_prompts": 4, "compile": False},
}
TEACHER = "smollm2-135m-instruct"  # under the models folder (make real-models)
TEACHER_GGUF = "gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
HUB = "hub: openai/gsm8k"  # what a user loads where the hub is reachable


def chosen(plan: dict) -> list[RealMethod]:
    return [m for m in METHODS if plan["methods"] is None or m.label in plan["methods"]]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def resume_key(settings: dict) -> str:
    """12 hex digits of the SHA-256 of the settings as sorted JSON: equal settings, equal key."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def job_folder(root: Path, name: str, settings: dict) -> Path:
    """The folder of a job: its readable name, then its settings' key."""
    return root / "jobs" / f"{slug(name)}-{resume_key(settings)}"


def warm_settings(plan: dict, depth: int, data: dict) -> dict:
    """What decides a depth's warm start (and so every method's start)."""
    keep = ("answer_limit", "warm_steps", "batch_size", "lr", "max_new_tokens")
    return {"stage": "warm", "depth": depth, "data": data, **{k: plan[k] for k in keep}}


def method_settings(plan: dict, method: RealMethod, depth: int, seed: int, warm: dict) -> dict:
    """What decides a trained draft: its method, seed, budget and warm start (whose settings nest here)."""
    keep = ("steps", "batch_size", "lr", "max_new_tokens", "train_limit")
    return {"stage": "method", "label": method.label, "config": method.config, "overrides": list(method.overrides),
            "depth": depth, "seed": seed, "warm": warm, **{k: plan[k] for k in keep}}


def method_overrides(plan: dict, data: dict, student: str, teacher: str | None, seed: int) -> list[str]:
    """A method's training run: the GSM8K training questions, the plan's budget (the same for every method);
    teacher None: SFT, which reads no teacher."""
    return [f"data.train=[{{path: {data['train']}, limit: {plan['train_limit']}}}]", "data.validation=null",
            f"model.student={student}", f"model.teacher={teacher or 'null'}",
            f"rollout.max_new_tokens={plan['max_new_tokens']}",
            f"train.max_steps={plan['steps']}", f"train.batch_size={plan['batch_size']}", f"train.lr={plan['lr']}",
            f"train.seed={seed}", "train.warmup_steps=0"]


def plan_jobs(plan: dict, data: dict, root: Path, teacher: str, warm: dict[int, tuple[str, dict]],
              cut: dict[int, str]) -> list[dict]:
    """Every worker job: per depth, the undistilled cut draft and the warm start measured per seed (T=1 figures
    vary with the seed), then each method and seed trained from the warm start. warm[depth]: (its folder, its
    settings); cut[depth]: the cut draft's folder. A job is a plain dict (it crosses into a spawned worker)."""
    jobs = []
    for depth in plan["depths"]:
        path, settings = warm[depth]
        for seed in range(plan["seeds"]):
            for label, student in ((UNDISTILLED, cut[depth]), (WARM_LABEL, path)):
                jobs.append({"label": label, "depth": depth, "seed": seed, "student": student, "config": None,
                             "settings": {"stage": "measured", "label": label, "depth": depth, "seed": seed,
                                          "warm": settings}})
            for m in chosen(plan):
                s = method_settings(plan, m, depth, seed, settings)
                jobs.append({"label": m.label, "depth": depth, "seed": seed, "config": m.config, "settings": s,
                             "overrides": [*m.overrides, *method_overrides(plan, data, path, None if m.config == "sft" else teacher, seed)]})
    for job in jobs:
        job.update(plan=plan, data=data, teacher=teacher,
                   out=str(job_folder(root, f"{job['label']}-{job['depth']}l-s{job['seed']}", job["settings"])))
    return jobs


# Seconds per unit on this machine, one torch thread, fp32, measured on the real pair by
# benchmarks/real_stage_costs.py (docs/benchmarks.md): the teacher decodes 26 tokens/s at batch size 8 and 8 at
# batch size 1 (10 inside a timed run: one token reads its 540 MB of weights); speculative decoding at batch size
# 8 about as fast as the teacher alone there; a 2-layer draft answers GSM8K (batch 32) at 300 tokens/s, a 6-layer
# one at 180; llama.cpp serves the Q4_1 teacher at 25 tokens/s inside a timed run with a draft, its server start
# and the draft's q8_0 export take about 4 s each; pair_costs' rounds
# take 5 s each; a worker job loads its models in about 10 s; the SKD rollout runs at 5 tokens/s at batch size 1
# and its compiled batch first compiles for about 8 minutes (inductor, a cold cache, one thread); the quick plan's
# run (docs/benchmarks.md) checks these.
UNIT = {"teacher_tok_b8": 1 / 26, "teacher_tok_b1": 1 / 10, "spec_tok_b8": 1 / 26, "draft_tok_b32": 1 / 300,
        "teacher_forcing": 5.0, "llamacpp_tok": 1 / 25, "server_start": 4.0, "export": 4.0, "cost_round": 5.0,
        "load": 10.0, "assisted_per_depth": 120.0, "skd_tok_b1": 1 / 5, "compile": 480.0, "peer_step": 20.0,
        "trl_gkd": 60.0}
# The pace UNIT was measured at: real_measure.pace_probe (the teacher alone, B=1, greedy, 2 test prompts x 16
# tokens, one thread) on the same quiet machine (docs/benchmarks.md). run_real probes the machine at each start and
# scales the estimate by the ratio: a shared host runs some days 1.6x slower than that.
PACE_TOKENS_S = 15.1


def depth_factor(depth: int) -> float:
    """A step's cost relative to a 2-layer draft's: the teacher's share stays, the draft's grows with its layers."""
    return 1 + 0.06 * (depth - 2)


def draft_factor(depth: int) -> float:
    """A draft's own decoding cost relative to a 2-layer draft's (measured: 6 layers take 1.68x as long)."""
    return 1 + 0.17 * (depth - 2)


def estimate(plan: dict, workers: int) -> dict:
    """The plan's wall time in seconds by stage, in run_real's order: the teacher's answers, GSM8K score and
    reference outputs, then the warm starts, in `workers` parallel workers; pair_costs alone; training and
    acceptance in parallel workers; timing, llama.cpp and peers one at a time."""
    u, n, seeds, depths = UNIT, plan["max_new_tokens"], plan["seeds"], plan["depths"]
    per_depth = seeds * (len(chosen(plan)) + 2)  # + the undistilled cut draft and the warm start, per seed
    teacher = (plan["answer_limit"] * n + plan["test_limit"] * plan["quality_new_tokens"]
               + (1 + seeds) * plan["bench_prompts"] * n) * u["teacher_tok_b8"] / workers
    warm = max(plan["warm_steps"] * 6.5 * depth_factor(d) for d in depths)
    costs = len(depths) * (3 + plan["cost_repeats"]) * u["cost_round"]
    train = sum(m.step_s * depth_factor(d) * plan["steps"] + u["load"] for d in depths for m in chosen(plan)) * seeds
    # one draft's measurement: its GSM8K answers, then greedy and T=1 speculative runs and sum min(p, q)
    measure = sum(per_depth * (u["load"] + plan["test_limit"] * plan["quality_new_tokens"] * u["draft_tok_b32"] * draft_factor(d)
                               + 2 * (plan["bench_prompts"] * n * u["spec_tok_b8"] + u["teacher_forcing"]))
                  for d in depths)
    tokens = plan["timing_prompts"] * plan["timing_new_tokens"]
    # timed runs: per depth the gamma pick on the warm start (the target alone, then each gamma), then per seed
    # the target alone and each draft at the chosen gamma (a draft's run costs about the target's: speedup ~1)
    def pick(gammas: list[int]) -> int:  # the target alone and each gamma; one gamma: no pick
        return 1 + len(gammas) if len(gammas) > 1 else 0

    runs = len(depths) * (pick(plan["gammas"]) + seeds + per_depth)
    timing = runs * (tokens * u["teacher_tok_b1"] + 2.0)
    servers = len(depths) * (pick(plan["llamacpp_gammas"]) + seeds + per_depth)
    llama = (len(depths) * per_depth * u["export"] + servers * (u["server_start"] + tokens * u["llamacpp_tok"])
             if plan["llamacpp"] else 0)
    # the SKD rollout: one prompt at a time, then the batch (eager; compiled too with `compile`), each after an
    # untimed batch; TRL's and specdistill's GKD steps, each with a warm-up step, and TRL's set-up
    batched = 2 * plan["rollout_prompts"] * plan["timing_new_tokens"] * u["spec_tok_b8"]
    rollout = plan["rollout_prompts"] * plan["timing_new_tokens"] * u["skd_tok_b1"] + batched * (1 + plan["compile"]) \
        + plan["compile"] * u["compile"]
    peers = (len(depths) * u["assisted_per_depth"] + rollout + 2 * (plan["peer_steps"] + 1) * u["peer_step"]
             + u["trl_gkd"] if plan["peers"] else 0)
    stages = {"teacher answers, score and reference outputs (parallel)": teacher, "warm starts (parallel)": warm,
              "pair costs (alone)": costs, "training and acceptance (parallel)": (train + measure) / workers,
              "timed B=1 runs (alone)": timing, "llama.cpp (alone)": llama, "peers (alone)": peers}
    return {**{k: round(v) for k, v in stages.items()}, "total": round(sum(stages.values()))}
