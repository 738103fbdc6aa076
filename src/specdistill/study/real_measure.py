"""The real-model study's measurements: the teacher's cached answers, GSM8K exact match, a draft's acceptance
figures (measure.draft_figures), its measured speedup at batch size 1 in specdistill's engine, and its measured
speedup in llama.cpp after `export`. Every stage's result is a JSON file in its job folder (`cached`), so a
stopped study resumes without redoing it."""

from __future__ import annotations

import functools
import json
import math
import time
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


def pace_probe(model, tok, prompts: list[list[int]], new_tokens: int = 16) -> float:
    """Tokens/s of the teacher alone at batch size 1, greedy, on the first two prompts after a short untimed
    call: the probe that real_plan.PACE_TOKENS_S was measured with (and benchmarks/real_stage_costs.py's b1)."""
    generate_ids(model, tok, prompts[:1], 2, batch_size=1)
    start = time.perf_counter()
    answers = generate_ids(model, tok, prompts[:2], new_tokens, batch_size=1, temperature=0.0, seed=0)
    return sum(len(a) for a in answers) / (time.perf_counter() - start)


def machine_pace(teacher: str, prompts: list[list[int]], reference_tokens_per_s: float) -> dict:
    """How this machine runs now against the pace the plan's estimate was measured at, on one torch thread
    (the workers' setting): pace 1.7 means every stage takes about 1.7x its estimate, since decoding and training
    this model on a CPU are both limited by memory bandwidth."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = load_tokenizer(teacher)
        rate = pace_probe(load_model(teacher, tokenizer=tok).eval(), tok, prompts)
    finally:
        torch.set_num_threads(threads)
    return {"tokens_per_s": rate, "reference_tokens_per_s": reference_tokens_per_s,
            "pace": reference_tokens_per_s / rate}


def teacher_answers(teacher: str, train: str, rows: tuple[int, int], max_new_tokens: int, seed: int) -> list[dict]:
    """The teacher's T=1 answers to training questions rows[0]..rows[1]-1 (batch 8; a worker job generates one
    slice, noise from `seed`), as pre-tokenized records {id, prompt_ids, response_ids}: a response cut at
    max_new_tokens keeps no end id, so SeqKD on it does not teach the draft to stop mid-answer."""
    tok = load_tokenizer(teacher)
    model = load_model(teacher, tokenizer=tok).eval()
    prompts = [encode_example(r, tok, VIEWS).student_prompt for r in records(train, rows[1])[rows[0]:]]
    answers = generate_ids(model, tok, prompts, max_new_tokens, batch_size=8, temperature=1.0, seed=seed)
    return [{"id": str(rows[0] + i), "prompt_ids": p, "response_ids": a}
            for i, (p, a) in enumerate(zip(prompts, answers)) if a]


def write_records(lines: list[dict], out: Path) -> str:
    """Records as JSONL, written atomically; returns the file."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tmp.replace(out)
    return str(out)


def target_reference(teacher: str, prompts: list[list[int]], max_new_tokens: int, seeds: int) -> dict:
    """The target's own outputs on the bench prompts, computed once for every draft (batch 8): greedy, and at
    T=1 for each seed. Greedy speculative decoding must reproduce the first; sum(min(p, q)) is averaged over
    both (the teacher's own outputs, teacher-forced)."""
    tok = load_tokenizer(teacher)
    model = load_model(teacher, tokenizer=tok).eval()
    run = functools.partial(generate_ids, model, tok, prompts, max_new_tokens, batch_size=8)
    return {"greedy": run(), "sampled": {str(s): run(temperature=1.0, seed=s) for s in range(seeds)}}


def gsm8k_quality(model, tok, test: str, limit: int, max_new_tokens: int) -> dict:
    """GSM8K exact match (the number after the answer's last `####` equals the gold one), greedy, zero-shot, on
    the first `limit` test questions; and the share of answers that reach a `####` at all."""
    scored = evaluate_records(model, tok, records(test, limit), VIEWS, None, "student", max_new_tokens, 32)
    reached = sum("####" in s["prediction"] for s in scored["samples"]) / max(len(scored["samples"]), 1)
    return {"quality": scored["exact_match"], "answers_with_final_line": reached}


def measure_draft(student: str, teacher: str, plan: dict, data: dict, seed: int, costs: ForwardCosts,
                  reference: dict) -> dict:
    """A draft's quality (GSM8K exact match) and its figures as the teacher's draft on the plan's bench prompts
    (measure.draft_figures: batch 8, gamma 4), greedy and at T=1 (`seed`): acceptance, mean accepted length, per-position
    acceptance, sum(min(p, q)) over the target's own outputs (`reference`, target_reference), the speedup
    predicted from the acceptance and `costs` (timed alone, so parallel workers cannot skew it)."""
    torch.manual_seed(seed)
    tok = load_tokenizer(teacher)
    target = load_model(teacher, tokenizer=tok).eval()
    draft = load_model(student, tokenizer=tok).eval()
    out = gsm8k_quality(draft, tok, data["test"], plan["test_limit"], plan["quality_new_tokens"])
    prompts = [list(p) for p in test_prompts(data["test"], plan["bench_prompts"], teacher)]
    return {**out, **draft_figures(target, draft, prompts, prompts, tok, plan["max_new_tokens"], seed, costs,
                                   reference)}


def timed_alone(target, tok, prompts: list[list[int]], max_new_tokens: int) -> dict:
    """The target alone at batch size 1, greedy, after an untimed warm-up: its outputs and seconds, the
    reference that every draft's timed run in a group is divided by (timed_b1)."""
    run_target_alone(target, prompts[:1], tok, max_new_tokens=8)  # first-call allocations
    outputs, _, seconds = run_target_alone(target, prompts, tok, max_new_tokens=max_new_tokens)
    return {"outputs": outputs, "seconds": seconds, "tokens_per_s": count_tokens(outputs) / seconds}


def timed_b1(target, draft, tok, prompts: list[list[int]], gamma: int, max_new_tokens: int, alone: dict) -> dict:
    """Measured speedup at batch size 1, greedy, at `gamma`: speculative decoding against the target alone on the
    same prompts (`alone`, timed_alone, timed just before this group of drafts on a machine running nothing else
    of the study). Outputs must equal the target's own (greedy speculative decoding is lossless)."""
    run_speculative(target, draft, prompts[:1], tok, gamma=gamma, max_new_tokens=8)  # first-call allocations
    out, stats, seconds = run_speculative(target, draft, prompts, tok, gamma=gamma, max_new_tokens=max_new_tokens)
    return {"measured_speedup": (count_tokens(out) / seconds) / alone["tokens_per_s"], "best_gamma": gamma,
            "lossless": out == alone["outputs"], "tokens_per_s": count_tokens(out) / seconds,
            "target_tokens_per_s": alone["tokens_per_s"], "timed_acceptance_rate": stats.acceptance_rate}


def llamacpp_speedup(target_gguf: str, draft_folder: str, gguf: Path, prompts: list[list[int]], gamma: int,
                     max_new_tokens: int, threads: int, alone: dict) -> dict:
    """The draft exported (q8_0; the target file's own vocabulary) and served by llama.cpp beside the target GGUF
    at `gamma`, greedy, against the target alone (`alone`: serve_prompts without a draft, run just before this
    group of drafts): llama.cpp's own counters and eval speed (evaluate/llamacpp.py)."""
    from ..evaluate.llamacpp import serve_prompts
    from ..gguf_export import export_gguf

    if not gguf.is_file():
        export_gguf(draft_folder, str(gguf), "q8_0")
    run = serve_prompts(target_gguf, prompts, max_new_tokens, draft=str(gguf), gamma=gamma, threads=threads)
    return {"llamacpp_speedup": run["tokens_per_s"] / alone["tokens_per_s"], "llamacpp_best_gamma": gamma,
            "llamacpp_tokens_per_s": run["tokens_per_s"], "llamacpp_lossless": run["outputs"] == alone["outputs"],
            "llamacpp_target_tokens_per_s": alone["tokens_per_s"],
            **{f"llamacpp_{k}": run.get(k, math.nan) for k in ("drafted", "accepted", "acceptance_rate",
                                                                 "mean_acceptance_length")}}
