"""The real-model study's measurements: the teacher's cached answers, GSM8K exact match, a draft's acceptance
figures (measure.draft_figures), its measured speedup at batch size 1 in specdistill's engine, and its measured
speedup in llama.cpp after `export`. Every stage's result is a JSON file in its job folder (`cached`), so a
stopped study resumes without redoing it."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch

from ..config import DatasetConfig, ViewConfig
from ..data.records import load_records
from ..data.prompt_views import encode_example
from ..evaluate.prediction import ForwardCosts
from ..evaluate.quality import evaluate_records, generate_ids
from ..evaluate.speculative import count_tokens, run_speculative, run_target_alone
from ..models import load_model, load_tokenizer
from .measure import draft_figures

VIEWS = ViewConfig()  # training's views: the model's own chat template, no system prompt of ours


def cached(path: Path, fn):
    """fn()'s JSON result, kept in `path`: read back when the file exists (a finished stage), else computed and
    written atomically (a stage stopped half way leaves no file, so it reruns)."""
    if path.is_file():
        return json.loads(path.read_text())
    value = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
    return value


@functools.lru_cache(maxsize=None)
def records(path: str, limit: int) -> list:
    """The first `limit` GSM8K records of a JSONL file (question, answer), read once per process."""
    return load_records(DatasetConfig(path=path, limit=limit))


@functools.lru_cache(maxsize=None)
def test_prompts(path: str, limit: int, tokenizer: str) -> tuple[tuple[int, ...], ...]:
    """The test questions' prompt ids as training renders them (the model's chat template); read-only."""
    tok = load_tokenizer(tokenizer)
    return tuple(tuple(encode_example(r, tok, VIEWS).student_prompt) for r in records(path, limit))


def teacher_answers(teacher: str, train: str, limit: int, max_new_tokens: int, out: Path) -> str:
    """The teacher's T=1 answers to the first `limit` training questions, generated once (batch 8, seed 0) and
    written as pre-tokenized records {id, prompt_ids, response_ids}: a response cut at max_new_tokens keeps no
    end id, so SeqKD on it does not teach the draft to stop mid-answer. Returns the file."""
    if out.is_file():
        return str(out)
    tok = load_tokenizer(teacher)
    model = load_model(teacher, tokenizer=tok).eval()
    prompts = [encode_example(r, tok, VIEWS).student_prompt for r in records(train, limit)]
    answers = generate_ids(model, tok, prompts, max_new_tokens, batch_size=8, temperature=1.0, seed=0)
    lines = [json.dumps({"id": str(i), "prompt_ids": p, "response_ids": a})
             for i, (p, a) in enumerate(zip(prompts, answers)) if a]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    return str(out)


def gsm8k_quality(model, tok, test: str, limit: int, max_new_tokens: int) -> dict:
    """GSM8K exact match (the number after the answer's last `####` equals the gold one), greedy, zero-shot, on
    the first `limit` test questions; and the share of answers that reach a `####` at all."""
    scored = evaluate_records(model, tok, records(test, limit), VIEWS, None, "student", max_new_tokens, 32)
    reached = sum("####" in s["prediction"] for s in scored["samples"]) / max(len(scored["samples"]), 1)
    return {"quality": scored["exact_match"], "answers_with_final_line": reached}


def measure_draft(student: str, teacher: str, plan: dict, data: dict, seed: int, costs: ForwardCosts) -> dict:
    """A draft's quality (GSM8K exact match) and its figures as the teacher's draft on the plan's bench prompts,
    greedy and at T=1 (acceptance, mean accepted length, per-position acceptance, sum(min(p, q)) over the
    teacher's own T=1 outputs, predicted speedup from `costs`)."""
    torch.manual_seed(seed)
    tok = load_tokenizer(teacher)
    target = load_model(teacher, tokenizer=tok).eval()
    draft = load_model(student, tokenizer=tok).eval()
    quality = gsm8k_quality(draft, tok, data["test"], plan["test_limit"], plan["quality_new_tokens"])
    prompts = [list(p) for p in test_prompts(data["test"], plan["test_limit"], teacher)[: plan["bench_prompts"]]]
    figures = draft_figures(target, draft, prompts, prompts, tok, plan["max_new_tokens"], seed, costs)
    return {**quality, **figures}


def timed_b1(target, draft, tok, prompts: list[list[int]], gammas: list[int], max_new_tokens: int) -> dict:
    """Measured speedup at batch size 1, greedy: the target alone and speculative decoding at each gamma on the
    same prompts, one right after the other (a paired ratio: the machine's load moves both alike); the best
    gamma kept. Outputs must equal the target's own (greedy speculative decoding is lossless)."""
    run_target_alone(target, prompts[:1], tok, max_new_tokens=8)  # warm-up: first-call allocations
    alone, _, alone_s = run_target_alone(target, prompts, tok, max_new_tokens=max_new_tokens)
    per_gamma = {}
    for gamma in gammas:
        out, stats, seconds = run_speculative(target, draft, prompts, tok, gamma=gamma, max_new_tokens=max_new_tokens)
        per_gamma[gamma] = {"speedup": (count_tokens(out) / seconds) / (count_tokens(alone) / alone_s),
                            "tokens_per_s": count_tokens(out) / seconds, "lossless": out == alone,
                            "acceptance_rate": stats.acceptance_rate}
    best = max(per_gamma, key=lambda g: per_gamma[g]["speedup"])
    return {"measured_speedup": per_gamma[best]["speedup"], "best_gamma": best, "lossless": all(
        v["lossless"] for v in per_gamma.values()), "target_tokens_per_s": count_tokens(alone) / alone_s,
        "per_gamma": {str(g): v for g, v in per_gamma.items()}}


def llamacpp_speedup(target_gguf: str, draft_folder: str, gguf: Path, prompts: list[list[int]], gammas: list[int],
                     max_new_tokens: int, threads: int) -> dict:
    """The draft exported (q8_0; the target file's own vocabulary) and served by llama.cpp beside the target GGUF:
    the target alone, then with the draft at each gamma, greedy; llama.cpp's own counters and eval speed
    (evaluate/llamacpp.py); the best gamma kept."""
    from ..evaluate.llamacpp import serve_prompts
    from ..gguf_export import export_gguf

    if not gguf.is_file():
        export_gguf(draft_folder, str(gguf), "q8_0")
    alone = serve_prompts(target_gguf, prompts, max_new_tokens, threads=threads)
    per_gamma = {}
    for gamma in gammas:
        run = serve_prompts(target_gguf, prompts, max_new_tokens, draft=str(gguf), gamma=gamma, threads=threads)
        per_gamma[gamma] = {"speedup": run["tokens_per_s"] / alone["tokens_per_s"],
                            "tokens_per_s": run["tokens_per_s"], "lossless": run["outputs"] == alone["outputs"],
                            **{k: run.get(k, math.nan) for k in ("drafted", "accepted", "acceptance_rate",
                                                                  "mean_acceptance_length")}}
    best = max(per_gamma, key=lambda g: per_gamma[g]["speedup"])
    return {"llamacpp_speedup": per_gamma[best]["speedup"], "llamacpp_best_gamma": best,
            "llamacpp_acceptance_rate": per_gamma[best]["acceptance_rate"],
            "llamacpp_mean_acceptance_length": per_gamma[best]["mean_acceptance_length"],
            "llamacpp_lossless": all(v["lossless"] for v in per_gamma.values()),
            "llamacpp_target_tokens_per_s": alone["tokens_per_s"], "llamacpp_per_gamma": {str(g): v for g, v in
                                                                                          per_gamma.items()}}
