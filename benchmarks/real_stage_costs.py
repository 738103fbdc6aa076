"""What each stage of the real-model study (docs/real.md) costs on this machine, for real_plan.UNIT and PLANS:
one JSON line of seconds and tokens/s, measured on the pair of `make real-models` with the study's own functions.

- the teacher decoding alone: batch size 1 and batch size 8 at T=1 (the path of the teacher's cached answers to
  the training questions); its reference outputs on the bench prompts (target_reference, once per study); the
  timed target-alone runs that each group of drafts is divided by, in the engine and in llama.cpp;
- per depth: pair_costs (c and the verify costs), one undistilled cut draft's GSM8K score, its acceptance
  figures (measure_draft, greedy and T=1), its timed batch-size-1 run (timed_b1) and its llama.cpp run
  (export to q8_0 and serving; skipped without xllamacpp), at --gamma.

Every stage runs in this one process, one after the other, with --threads torch threads, as the study's workers do.

    python benchmarks/real_stage_costs.py                                   # the full plan's sizes
    python benchmarks/real_stage_costs.py --depths 2 --prompts 2 --new-tokens 16 --test-limit 4   # a quick look
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from specdistill.evaluate.quality import generate_ids
from specdistill.models import load_model, load_tokenizer
from specdistill.study.measure import pair_costs
from specdistill.study.real import cut_drafts, find_data
from specdistill.study.real_measure import (gsm8k_quality, llamacpp_speedup, measure_draft, pace_probe,
                                            target_reference, test_prompts, timed_alone, timed_b1)
from specdistill.study.real_plan import PLANS, TEACHER, TEACHER_GGUF


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def teacher_rates(model, tok, prompts: list[list[int]], new_tokens: int) -> dict:
    """Tokens/s of the teacher alone at batch size 1 (greedy; the study's pace probe) and 8 (T=1)."""
    out = {"teacher_b1_tokens_per_s": pace_probe(model, tok, prompts, new_tokens)}
    answers, seconds = timed(lambda: generate_ids(model, tok, prompts[:8], new_tokens, batch_size=8,
                                                  temperature=1.0, seed=0))
    out["teacher_b8_t1_tokens_per_s"] = sum(len(a) for a in answers) / seconds
    return out


def depth_costs(depth: int, draft: str, teacher: str, target, tok, plan: dict, data: dict, args, work: Path,
                refs: dict) -> dict:
    prompts = [list(p) for p in test_prompts(data["test"], plan["test_limit"], teacher)]
    costs, costs_s = timed(lambda: pair_costs(teacher, draft, prompts[0], plan["cost_repeats"]))
    model = load_model(draft, tokenizer=tok).eval()
    _, quality_s = timed(lambda: gsm8k_quality(model, tok, data["test"], plan["test_limit"],
                                               plan["quality_new_tokens"]))
    small = {**plan, "test_limit": 1}  # the acceptance figures alone: measure_draft's quality on one question
    _, figures_s = timed(lambda: measure_draft(draft, teacher, small, data, 0, costs, refs["reference"]))
    with torch.no_grad():
        b1, b1_s = timed(lambda: timed_b1(target, model, tok, prompts[: args.prompts], args.gamma, args.timing_tokens,
                                          refs["alone"]))
    out = {"c": costs.c, "pair_costs_s": costs_s, "quality_s": quality_s, "figures_s": figures_s,
           "timed_b1_s": b1_s, "timed_b1_speedup": b1["measured_speedup"]}
    if "llamacpp_alone" not in refs:
        return {**out, "llamacpp": "skipped: xllamacpp is not installed"}
    run, llama_s = timed(lambda: llamacpp_speedup(str(Path(args.models) / TEACHER_GGUF), draft,
                                                  work / f"cut-{depth}.gguf", prompts[: args.prompts], args.gamma,
                                                  args.timing_tokens, args.threads, refs["llamacpp_alone"]))
    return {**out, "llamacpp_s": llama_s, "llamacpp_speedup": run["llamacpp_speedup"]}


def references(target, tok, teacher: str, prompts: list[list[int]], plan: dict, args) -> tuple[dict, dict]:
    """What a study computes once and every draft shares, with its seconds: the target's reference outputs, and
    the target alone timed in the engine and in llama.cpp (where xllamacpp is installed)."""
    refs, seconds = {}, {}
    refs["reference"], seconds["reference_s"] = timed(lambda: target_reference(
        teacher, prompts[: plan["bench_prompts"]], plan["max_new_tokens"], plan["seeds"]))
    with torch.no_grad():
        refs["alone"], seconds["alone_s"] = timed(lambda: timed_alone(target, tok, prompts[: args.prompts],
                                                                      args.timing_tokens))
    seconds["timed_target_tokens_per_s"] = refs["alone"]["tokens_per_s"]
    try:
        from specdistill.evaluate.llamacpp import serve_prompts
        import xllamacpp  # noqa: F401
    except ImportError:
        return refs, seconds
    refs["llamacpp_alone"], seconds["llamacpp_alone_s"] = timed(lambda: serve_prompts(
        str(Path(args.models) / TEACHER_GGUF), prompts[: args.prompts], args.timing_tokens, threads=args.threads))
    seconds["llamacpp_target_tokens_per_s"] = refs["llamacpp_alone"]["tokens_per_s"]
    return refs, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="models")
    p.add_argument("--data", help="GSM8K's train.jsonl and test.jsonl (default ../shared/data/gsm8k)")
    p.add_argument("--depths", default="2,6")
    p.add_argument("--prompts", type=int, default=PLANS["full"]["timing_prompts"], help="timed prompts")
    p.add_argument("--new-tokens", type=int, default=PLANS["full"]["max_new_tokens"], help="acceptance runs")
    p.add_argument("--timing-tokens", type=int, default=PLANS["full"]["timing_new_tokens"], help="timed runs")
    p.add_argument("--gamma", type=int, default=2, help="the timed runs' draft length")
    p.add_argument("--test-limit", type=int, default=PLANS["full"]["test_limit"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    plan = {**PLANS["full"], "max_new_tokens": args.new_tokens, "test_limit": args.test_limit,
            "bench_prompts": min(PLANS["full"]["bench_prompts"], args.test_limit)}
    data, teacher = find_data(args.data), str(Path(args.models) / TEACHER)
    tok = load_tokenizer(teacher)
    target = load_model(teacher, tokenizer=tok).eval()
    prompts = [list(x) for x in test_prompts(data["test"], max(args.test_limit, 8), teacher)]
    result = {"threads": args.threads, "new_tokens": args.new_tokens, "prompts": args.prompts,
              "timing_tokens": args.timing_tokens, "gamma": args.gamma,
              **teacher_rates(target, tok, prompts, args.new_tokens)}
    refs, seconds = references(target, tok, teacher, prompts, plan, args)
    result.update(seconds)
    with tempfile.TemporaryDirectory() as tmp:
        depths = [int(d) for d in args.depths.split(",")]
        cut = cut_drafts(teacher, depths, Path(tmp))
        for depth in depths:
            result[f"{depth}_layers"] = depth_costs(depth, cut[depth], teacher, target, tok, plan, data, args,
                                                    Path(tmp), refs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
