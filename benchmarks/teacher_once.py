"""A LUPI-SKD training step with the teacher's work done once (shared-prefix encoding and rollout logits reused
by the loss) against done twice, and the same for SKD without knowledge. One JSON line last.

Models: random Llamas of the built-in sizes (tiny-teacher: 6 layers, d=128; tiny-student: 2 layers, d=128) with
the built-in tokenizer, saved with 4,096 positions (the built-in teacher has 1,024, too few for these views).

- lupi: the `facts` task; the teacher's view is a system persona and few-shot examples (each a knowledge paragraph,
  a question and its answer) shared by every row, then the row's own knowledge and question (at least
  --min-prefix tokens of shared prefix; the student's view is the question alone).
- skd: the same task without knowledge, persona or examples: both views are the question (SKD).

Each training step is a full `train.train_step` (SKD rollout with top_k, forward KL loss, backward, AdamW step).
The modes: `off` (rollout.share_teacher_prefix and rollout.reuse_teacher_logits both false), `on` (both true,
the defaults), and with --all-modes each option alone. Modes run in turn within each round, from fresh runs, and
the figures are medians over rounds of each run's median step time, so that the machine's load hits all alike.
`loss_teacher_forwards_per_step` counts the loss phase's teacher forwards (0 when the rollout's logits are used;
the `teacher/loss_forwards` metric of each step).

--precisions bf16 runs the shipped recipes' precision instead: the teacher's weights in bf16 (model.teacher_dtype
bfloat16) and train.mixed_precision bf16 (autocast; the student's weights stay fp32). Its settings are reported
as `lupi_bf16` and `skd_bf16`; there `off` is what every bf16 run did before the loss phase's teacher forward ran
in the teacher's own dtype (reuse and prefix sharing were then switched off under mixed precision).

    OMP_NUM_THREADS=1 python benchmarks/teacher_once.py
    OMP_NUM_THREADS=1 python benchmarks/teacher_once.py --precisions bf16
    OMP_NUM_THREADS=1 python benchmarks/teacher_once.py --steps 2 --warmup 1 --rounds 1      # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

MODES = {"off": (False, False), "on": (True, True), "prefix_only": (True, False), "reuse_only": (False, True)}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=4, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-prefix", type=int, default=1000, help="tokens of shared teacher prefix to reach (lupi)")
    p.add_argument("--all-modes", action="store_true", help="also time each option alone")
    p.add_argument("--settings", default="lupi,skd")
    p.add_argument("--precisions", default="fp32", help="fp32 and/or bf16 (bf16 teacher, bf16 autocast), comma-separated")
    return p.parse_args()


def build_pair(folder: str) -> tuple[str, str]:
    """Random tiny-teacher / tiny-student presets with 4,096 positions and the built-in tokenizer."""
    from transformers import LlamaForCausalLM

    from specdistill.data.tokenizer import build_tokenizer
    from specdistill.models import preset_config

    tok, paths = build_tokenizer(), []
    for name, seed in (("tiny-teacher", 1), ("tiny-student", 0)):
        config = preset_config(name, tok)
        config.max_position_embeddings = 4096
        torch.manual_seed(seed)
        path = os.path.join(folder, name)
        LlamaForCausalLM(config).save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def lupi_views(min_prefix: int) -> dict:
    """A persona and few-shot examples (knowledge, question, answer) from the validation split, until the shared
    part of the teacher view holds at least min_prefix characters (one token each in the built-in tokenizer)."""
    from specdistill.data import load_task

    persona = ("You are a careful archivist of a fictional world. Read the background knowledge, answer the "
               "question with the one fact it asks for, and state nothing that the knowledge does not say.")
    shots, size = [], len(persona)
    for row in load_task("facts", "validation"):
        query = f"[Background Knowledge]\n{row['knowledge']}\n\n{row['query']}"
        shots.append({"query": query, "response": row["response"]})
        size += len(query) + len(row["response"])
        if size >= min_prefix:
            break
    return {"system_prompt": persona, "few_shot": shots, "max_response_tokens": 64}


def config(setting: str, mode: str, args, teacher: str, student: str, out: str, views: dict, precision: str):
    from specdistill.config import Config, build, validate

    share, reuse = MODES[mode]
    bf16 = precision == "bf16"
    cfg = build(Config, {
        "model": {"teacher": teacher, "student": student, "teacher_dtype": "bfloat16" if bf16 else "float32"},
        "data": {"train": [{"task": "facts"}],
                 "views": views if setting == "lupi" else {"teacher_knowledge": False, "max_response_tokens": 64}},
        "rollout": {"strategy": "skd", "policy": "top_k", "skd_top_k": 5, "gamma": 4, "temperature": 1.0,
                    "max_new_tokens": args.max_new_tokens, "share_teacher_prefix": share,
                    "reuse_teacher_logits": reuse},
        "loss": {"name": "fkl"},
        "train": {"output_dir": out, "max_steps": args.warmup + args.steps, "batch_size": args.batch_size,
                  "lr": 1e-3, "warmup_steps": 1, "eval_every": 0, "save_every": 0, "progress": False,
                  "threads": args.threads, "mixed_precision": "bf16" if bf16 else "no"},
    })
    validate(cfg)
    return cfg


def run_mode(cfg, args) -> dict:
    """Median step time of warmup + steps train_step calls, and what the steps did."""
    from specdistill import train
    from specdistill.data.prompt_views import collate
    from specdistill.engine import prefix as prefix_mod

    run = train.setup(cfg)
    prefix_mod.forget(run.teacher)
    try:
        times, rollout_s, forwards = [], [], []
        for i in range(args.warmup + args.steps):
            before = run.loss_teacher_forwards
            began = time.perf_counter()
            metrics = train.train_step(run)
            run.step += 1
            if i >= args.warmup:
                times.append(time.perf_counter() - began)
                rollout_s.append(metrics["time/rollout_s"])
                forwards.append(run.loss_teacher_forwards - before)
        stored = prefix_mod._STORE.get(run.teacher)
        batch = collate(train.encode(run, run.stream.next_batch(0, 1, args.batch_size)[0]), run.tokenizer.pad_token_id)
        return {"step_s": statistics.median(times), "rollout_s": statistics.median(rollout_s),
                "loss_teacher_forwards_per_step": statistics.mean(forwards),
                "shared_prefix_tokens": stored.length if stored is not None else 0,
                "teacher_view_tokens": float(batch.teacher_mask.sum(1).float().mean()),
                "student_view_tokens": float(batch.student_mask.sum(1).float().mean()),
                "acceptance_rate": metrics.get("rollout/acceptance_rate")}
    finally:
        prefix_mod.forget(run.teacher)
        train.cleanup(run)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    modes = list(MODES) if args.all_modes else ["off", "on"]
    views = lupi_views(args.min_prefix)
    # (name in the report, setting, precision): "lupi", "skd" in fp32; "lupi_bf16", "skd_bf16" in bf16
    cases = [(s if p == "fp32" else f"{s}_{p}", s, p) for p in args.precisions.split(",") for s in args.settings.split(",")]
    results = {name: {m: [] for m in modes} for name, _, _ in cases}
    with tempfile.TemporaryDirectory() as tmp:
        teacher, student = build_pair(tmp)
        for r in range(args.rounds):
            for name, setting, precision in cases:
                for mode in modes:
                    out = os.path.join(tmp, f"{name}-{mode}-{r}")
                    res = run_mode(config(setting, mode, args, teacher, student, out, views, precision), args)
                    results[name][mode].append(res)
                    print(name, mode, json.dumps(res), flush=True)
    summary = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "steps": args.steps,
               "rounds": args.rounds, "threads": args.threads}
    for setting, _, _ in cases:
        runs = results[setting]
        med = {m: statistics.median(x["step_s"] for x in runs[m]) for m in modes}
        last = {m: runs[m][-1] for m in modes}
        entry = {f"step_s_{m}": round(med[m], 4) for m in modes}
        entry["speedup_on_vs_off"] = round(statistics.median(a["step_s"] / b["step_s"] for a, b in
                                                            zip(runs["off"], runs["on"])), 3)
        for m in modes:
            if m not in ("off", "on"):
                entry[f"speedup_{m}_vs_off"] = round(med["off"] / med[m], 3)
            entry[f"rollout_s_{m}"] = round(statistics.median(x["rollout_s"] for x in runs[m]), 4)
            entry[f"loss_teacher_forwards_per_step_{m}"] = last[m]["loss_teacher_forwards_per_step"]
        entry["shared_prefix_tokens"] = last["on"]["shared_prefix_tokens"]
        entry["teacher_view_tokens_mean"] = round(last["on"]["teacher_view_tokens"], 1)
        entry["student_view_tokens_mean"] = round(last["on"]["student_view_tokens"], 1)
        entry["acceptance_rate"] = last["on"]["acceptance_rate"]
        summary[setting] = entry
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
