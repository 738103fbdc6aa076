"""How well a draft serves its target: speculative decoding through the engine, timed against the target alone
and against transformers' assisted generation. Every figure is defined in docs/metrics.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time

import torch
from transformers import GenerationConfig

from ..data.templates import end_token_ids
from ..data.prompt_views import left_pad
from ..engine import Decoding, GenerationStats, Sampling, generate, make_policy, make_schedule, sample
from ..engine.sampling import row_seeds
from ..engine.cached_model import ForwardClock, ModelView
from ..progress import bar, phase
from .prediction import (MAX_GAMMA, ForwardCosts, best_gamma, expected_acceptance, fit_verify_costs,
                         prediction_figures)


def spec_policy(temperature: float, top_p: float = 1.0):
    """Lossless policy: greedy (argmax match) at T=0, Leviathan's speculative sampling at T>0; bonus on."""
    if temperature == 0:
        return make_policy("greedy")
    return make_policy("speculative", target=Sampling(temperature, top_p), bonus_token=True)


def _batches(prompts: list[list[int]], batch_size: int):
    for i in range(0, len(prompts), batch_size):
        yield i, prompts[i : i + batch_size]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_speculative(target, draft, prompts, tokenizer, *, gamma=4, schedule="constant", temperature=0.0, top_p=1.0,
                    max_new_tokens=64, batch_size=1, seed=0, draft_prompts=None, verify="parallel", compile=False):
    """Speculative decoding of every prompt; returns (list of token-id lists, merged GenerationStats, seconds).

    draft_prompts: the draft's own view of each prompt (default: the target's prompt).
    compile: the engine's compile option (both models' forwards through torch.compile; same tokens).
    """
    tdev, ddev = _device(target), _device(draft)
    draft_prompts = draft_prompts or prompts
    decoding = Decoding(policy=spec_policy(temperature, top_p), gamma=make_schedule(schedule, gamma),
                        draft_sampling=Sampling(temperature, top_p), max_new_tokens=max_new_tokens,
                        eos_token_id=end_token_ids(tokenizer, target), pad_token_id=tokenizer.pad_token_id,
                        verify=verify, compile=compile, vocab_size=len(tokenizer))

    def decode(i, chunk):
        t_ids, t_mask = left_pad(chunk, tokenizer.pad_token_id)
        d_ids, d_mask = left_pad(draft_prompts[i : i + batch_size], tokenizer.pad_token_id)
        return lambda: generate(draft, d_ids.to(ddev), d_mask.to(ddev), target, t_ids.to(tdev), t_mask.to(tdev),
                                dataclasses.replace(decoding, seed=row_seeds(seed, len(chunk), first_row=i)))

    return _timed_batches(prompts, batch_size, "speculative", tdev, decode)


def run_target_alone(target, prompts, tokenizer, *, temperature=0.0, top_p=1.0, max_new_tokens=64, batch_size=1, seed=0,
                     compile=False):
    """The target decoding on its own through the same engine (its draft path, one token per forward); returns
    (token-id lists, merged GenerationStats, seconds)."""
    dev = _device(target)
    decoding = Decoding(draft_sampling=Sampling(temperature, top_p), max_new_tokens=max_new_tokens,
                        eos_token_id=end_token_ids(tokenizer, target), pad_token_id=tokenizer.pad_token_id,
                        compile=compile, vocab_size=len(tokenizer))

    def decode(i, chunk):
        ids, mask = left_pad(chunk, tokenizer.pad_token_id)
        return lambda: sample(target, ids.to(dev), mask.to(dev), decoding, chunk=1,
                              seed=row_seeds(seed, len(chunk), first_row=i))

    return _timed_batches(prompts, batch_size, "target alone", dev, decode)


def _timed_batches(prompts, batch_size, label, device, decode):
    """decode(i, chunk) for each batch of prompts, from row i: the (untimed) inputs on their devices and a call
    that decodes them; only that call is timed, synchronised on `device`. Returns (token-id lists, merged
    GenerationStats, seconds)."""
    outputs, stats, seconds = [], GenerationStats(), 0.0
    progress = bar(len(prompts), label)
    for i, chunk in _batches(prompts, batch_size):
        run = decode(i, chunk)
        _sync(device)
        start = time.perf_counter()
        gen = run()
        _sync(device)
        seconds += time.perf_counter() - start
        outputs += gen.rows()
        stats = stats.combine(gen.stats)
        progress.update(len(chunk))
    progress.close()
    return outputs, stats, seconds


@torch.no_grad()
def hf_generate(model, ids: torch.Tensor, assistant=None, gamma: int = 4, universal_tokenizer=None,
                **fields) -> torch.Tensor:
    """`model.generate` on ids [1, L] with only `fields` set (do_sample, max_new_tokens, eos/pad ids, ...), whatever
    the checkpoints' generation_config.json say; returns [1, L + new]. With an assistant: transformers' assisted
    generation with `gamma` drafted tokens a block, the constant schedule and its confidence threshold off;
    universal_tokenizer: the tokenizer both share, given as both of transformers' universal-mode tokenizers (what
    it requires of a draft whose config vocab_size differs).

    A fresh GenerationConfig passed as generation_config= is not enough: transformers fills each field it leaves
    None from model.generation_config (Qwen2.5-Instruct ships repetition_penalty 1.05 to 1.1, and some checkpoints
    no_repeat_ngram_size or min_new_tokens), and its assistant, drafting with that config, fills its own from the
    draft's. So each model's generation_config is replaced by a fresh one for the call, then restored."""
    config = GenerationConfig(**fields)
    drafting = GenerationConfig(num_assistant_tokens=gamma, num_assistant_tokens_schedule="constant",
                                assistant_confidence_threshold=0.0)
    models = [(model, config)] + ([(assistant, drafting)] if assistant is not None else [])
    saved = [m.generation_config for m, _ in models]
    try:
        for m, fresh in models:
            m.generation_config = fresh
        kw = {} if assistant is None else {"assistant_model": assistant}
        if universal_tokenizer is not None:
            kw.update(tokenizer=universal_tokenizer, assistant_tokenizer=universal_tokenizer)
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, **kw)
    finally:
        for (m, _), old in zip(models, saved):
            m.generation_config = old


@torch.no_grad()
def run_hf_assisted(target, draft, prompts, tokenizer, *, gamma=4, max_new_tokens=64):
    """transformers' assisted generation, greedy, batch size 1 (all it supports): constant schedule with
    `gamma` assistant tokens and the confidence threshold off, the same end ids as the engine, and, where the
    target's embedding is padded past the tokenizer, those ids suppressed (the engine never emits them either).
    No other generation setting of either checkpoint applies (hf_generate). Returns (token-id lists, seconds)."""
    dev = _device(target)
    rows = target.get_output_embeddings().weight.shape[0]
    suppress = list(range(len(tokenizer), rows)) or None
    # transformers refuses a draft whose vocab_size differs (different padding) unless given both tokenizers,
    # which switches it to its universal (text-level) assisted decoding: what a transformers user must do.
    universal = None if hf_same_vocab(target, draft) else tokenizer
    outputs, seconds = [], 0.0
    progress = bar(len(prompts), "transformers assisted")
    try:
        for p in prompts:
            ids = torch.tensor([p], device=dev)
            _sync(dev)
            start = time.perf_counter()
            out = hf_generate(target, ids, draft, gamma, universal, do_sample=False, max_new_tokens=max_new_tokens,
                              eos_token_id=end_token_ids(tokenizer, target), pad_token_id=tokenizer.pad_token_id,
                              suppress_tokens=suppress)
            _sync(dev)
            seconds += time.perf_counter() - start
            outputs.append(out[0, len(p):].tolist())
            progress.update(1)
    finally:
        progress.close()
    return outputs, seconds


def hf_same_vocab(target, draft) -> bool:
    """Whether transformers' assisted generation takes this draft as is (equal config vocab sizes)."""
    return target.config.get_text_config().vocab_size == draft.config.get_text_config().vocab_size


@torch.no_grad()
def measure_forward_costs(target, draft, prompt: list[int], batch_size: int = 1, max_gamma: int = MAX_GAMMA,
                          repeats: int = 20, compile=False) -> ForwardCosts:
    """c = (one draft forward of one token) / (one target forward of one token), and c_v(gamma) = (one target
    forward of gamma + 1 tokens) / (one target forward of one token) for gamma = 1..max_gamma: each forward after
    the prompt's cache, `batch_size` copies of the prompt, fed the way the engine feeds it (a ModelView; compiled
    with `compile`). The calls of all widths take turns, `repeats` timed rounds after 3 untimed ones (graphs
    compile there), each timed call after an untimed one of the same model and width (in decoding a model runs
    several forwards in a row, its weights in the processor's caches). Each width keeps its fastest time:
    a busy machine only adds time to a call (timeit's rule), so the minimum is the steadiest estimate of its
    cost. The c_v used is a line fitted to the measured ratios (fit_verify_costs)."""
    views = {}
    for role, model in (("target", target), ("draft", draft)):
        dev = _device(model)
        view = ModelView(model, ForwardClock(), batch_size, len(prompt) + max_gamma + 4, dev, compile, role)
        ids = torch.tensor([prompt] * batch_size, device=dev)
        views[role] = (view, view.prefill(ids, torch.ones_like(ids)))
    calls = [("draft", 1)] + [("target", width) for width in range(1, max_gamma + 2)]
    times = {call: [] for call in calls}
    for i in range(3 + repeats):
        for role, width in calls:
            _timed_forward(*views[role], width)  # warms the caches for this model
            seconds = _timed_forward(*views[role], width)
            if i >= 3:
                times[(role, width)].append(seconds)
    fastest = {call: min(t) for call, t in times.items()}
    one = fastest[("target", 1)]
    measured = [fastest[("target", g + 1)] / one for g in range(1, max_gamma + 1)]
    return ForwardCosts(c=fastest[("draft", 1)] / one, verify=fit_verify_costs(measured), measured=measured)


def _timed_forward(view: ModelView, last: torch.Tensor, width: int) -> float:
    """Seconds of one forward over `width` tokens [B, width] after the view's cache, which is then rolled back,
    so every call sees the same cache length."""
    tokens = last.expand(-1, width).contiguous()  # [B, width]; the ids do not change the time
    keep = torch.zeros(tokens.shape[0], dtype=torch.long, device=view.device)
    _sync(view.device)
    start = time.perf_counter()
    view.mark()
    view.feed(tokens, keep=width)
    _sync(view.device)
    seconds = time.perf_counter() - start
    view.roll_back(keep, 0)
    return seconds


def median_costs(rounds: list[ForwardCosts]) -> ForwardCosts:
    """The median of each cost (c, and c_v at each gamma, fitted and raw) over several measurements."""
    verify = [statistics.median(v) for v in zip(*(r.verify for r in rounds))]
    measured = [statistics.median(v) for v in zip(*(r.measured for r in rounds))]
    return ForwardCosts(c=statistics.median(r.c for r in rounds), verify=verify, measured=measured)


def choose_gamma(target, draft, prompts, tokenizer, costs: ForwardCosts, *, probe_gamma: int = 4,
                 max_gamma: int = MAX_GAMMA, **kw) -> dict:
    """`bench --gamma auto`: alpha (accepted / judged positions) from one untimed run at `probe_gamma`, then the
    gamma in 1..max_gamma with the best predicted speedup for `costs`. kw: run_speculative's options.
    Returns {probe_gamma, probe_token_acceptance, cost_ratio_c, verify_costs (c_v at gamma 1..), gamma}."""
    phase(f"gamma auto: untimed probe at gamma {probe_gamma}")
    _, stats, _ = run_speculative(target, draft, prompts, tokenizer, gamma=probe_gamma, **kw)
    alpha = stats.token_acceptance
    gamma = probe_gamma if math.isnan(alpha) else best_gamma(alpha, costs, max_gamma)
    return {"probe_gamma": probe_gamma, "probe_token_acceptance": alpha, "cost_ratio_c": costs.c,
            "verify_costs": costs.verify, "gamma": gamma}


def count_tokens(outputs: list[list[int]]) -> int:
    return sum(len(o) for o in outputs)


def bench_pair(target, draft, prompts, tokenizer, *, gamma=4, schedule="constant", temperature=0.0, top_p=1.0,
               max_new_tokens=64, batch_size=1, seed=0, draft_prompts=None, compare_hf=False, warmup=2,
               compile=False, repeats=3, costs: ForwardCosts | None = None) -> dict:
    """One benchmark point: speculative decoding vs the target alone (and vs HF assisted generation).

    Each timed run is repeated `repeats` times, the runs interleaved (speculative, target alone, HF, ...) so that
    a change in the machine's load hits them alike; each keeps its median time. Outputs do not change between
    repeats (seeded). compile: run the engine, for speculative decoding and for the target alone, with
    torch.compile'd forwards (the warmup compiles the graphs); transformers' assisted generation runs as
    shipped, eagerly. transformers' assistant reads the target's prompt, so the engine run it is compared with
    (`tokens_per_s_b1`) does too, at batch size 1, whatever `draft_prompts` the other figures use.
    costs: the pair's forward costs at this batch size; None: measured in each round of runs, each figure's
    median kept. The predicted figures use them with the run's per-token acceptance (prediction_figures)."""
    kw = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, compile=compile)
    spec = functools.partial(run_speculative, target, draft, tokenizer=tokenizer, gamma=gamma, schedule=schedule, **kw)
    # name -> run(prompts, draft prompts); each returns (outputs, ..., seconds)
    runs = {"spec": lambda p, d: spec(p, batch_size=batch_size, draft_prompts=d),
            "base": lambda p, d: run_target_alone(target, p, tokenizer, batch_size=batch_size, **kw)}
    if compare_hf:
        runs["hf"] = lambda p, d: run_hf_assisted(target, draft, p, tokenizer, gamma=gamma, max_new_tokens=max_new_tokens)
        if batch_size != 1 or (draft_prompts is not None and draft_prompts != prompts):
            runs["b1"] = lambda p, d: spec(p, batch_size=1, draft_prompts=None)  # on equal terms: the target's view
    measure = None if costs else lambda: measure_forward_costs(target, draft, prompts[0], batch_size, repeats=10,
                                                                 compile=compile)
    out, measured = _interleaved_runs(runs, prompts, draft_prompts, warmup, repeats, measure)
    (spec_out, stats, spec_s), (base_out, base_stats, base_s) = out["spec"], out["base"]
    costs = costs or median_costs(measured)
    phase("expected acceptance (teacher forcing)")
    result = {
        "gamma": gamma, "schedule": schedule, "temperature": temperature, "top_p": top_p, "batch_size": batch_size,
        "compile": compile, "repeats": repeats, "prompts": len(prompts), "new_tokens": count_tokens(spec_out),
        "acceptance_rate": stats.acceptance_rate, "mean_accepted_length": stats.mean_accepted_length,
        "per_position_acceptance": stats.per_position_acceptance, "target_calls": stats.target_calls,
        "tokens_per_s": count_tokens(spec_out) / spec_s, "target_tokens_per_s": count_tokens(base_out) / base_s,
        **prediction_figures(stats, costs),
        "expected_acceptance": expected_acceptance(target, draft, prompts, draft_prompts or prompts, base_out,
                                                   Sampling(temperature, top_p), tokenizer.pad_token_id, len(tokenizer)),
        "time_split": time_split(stats, base_stats),
    }
    result["speedup_vs_target"] = result["tokens_per_s"] / result["target_tokens_per_s"]
    if temperature == 0:
        result["matches_target_greedy"] = spec_out == base_out
    if compare_hf:
        (hf_out, hf_s), (b1_out, _, b1_s) = out["hf"], out.get("b1", out["spec"])
        result["hf_assisted_tokens_per_s"] = count_tokens(hf_out) / hf_s
        result["hf_assisted_mode"] = "same_vocab" if hf_same_vocab(target, draft) else "universal"
        result["tokens_per_s_b1"] = count_tokens(b1_out) / b1_s
        result["speedup_vs_hf_assisted"] = result["tokens_per_s_b1"] / result["hf_assisted_tokens_per_s"]
        ends = end_token_ids(tokenizer, target)
        result["matches_hf_assisted"] = [_strip(o, ends) for o in hf_out] == [_strip(o, ends) for o in b1_out]
    return _json_safe(result)


# How the phase lines name bench_pair's runs: the target alone is the reference the speedup divides by.
RUN_NAMES = {"spec": "speculative (engine)", "base": "reference (target alone)", "hf": "transformers assisted",
             "b1": "speculative, batch size 1"}


def _interleaved_runs(runs: dict, prompts, draft_prompts, warmup: int, repeats: int, measure=None):
    """Each run once on the first `warmup` prompts, untimed; then `repeats` rounds of every run in turn, each
    round followed by measure() when given (a shared machine's load moves the costs as it moves the runs).
    Returns ({name: the result of its median-time round}, [measure() of each round]); results end in seconds."""
    w = max(warmup, 1)
    phase(f"warm-up on {w} prompt(s): {', '.join(RUN_NAMES.get(n, n) for n in runs)}")
    for run in runs.values():
        run(prompts[:w], draft_prompts and draft_prompts[:w])
    timed, measured = {name: [] for name in runs}, []
    for r in range(repeats):
        for name, run in runs.items():
            phase(f"timed run {r + 1}/{repeats}: {RUN_NAMES.get(name, name)}")
            timed[name].append(run(prompts, draft_prompts))
        if measure is not None:
            phase(f"timed run {r + 1}/{repeats}: forward costs (c, c_v)")
            measured.append(measure())
    return {name: sorted(results, key=lambda r: r[-1])[len(results) // 2] for name, results in timed.items()}, measured


COMPARED = ("gamma", "token_acceptance", "mean_accepted_length", "cost_ratio_c", "predicted_speedup",
            "speedup_vs_target", "best_gamma", "break_even_acceptance")


def draft_comparison(results: list[dict], sizes: dict[str, dict]) -> list[dict]:
    """`bench --draft A,B,C`: one row per (draft, batch size), from its measured point with the best predicted
    speedup (with --gamma auto, its one point at its best gamma): the draft's size (sizes[draft]: layers,
    parameters), acceptance, c, predicted and measured speedup."""
    rows = []
    for draft, bs in dict.fromkeys((r["draft"], r["batch_size"]) for r in results):
        points = [r for r in results if (r["draft"], r["batch_size"]) == (draft, bs)]
        best = max(points, key=lambda r: r["predicted_speedup"] if r["predicted_speedup"] is not None else -1)
        rows.append({"draft": draft, **sizes.get(draft, {}), "batch_size": bs, **{k: best[k] for k in COMPARED}})
    return rows


def format_comparison(rows: list[dict]) -> str:
    """draft_comparison's rows as a Markdown table."""
    keys = list(rows[0])

    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows])


def time_split(spec: GenerationStats, alone: GenerationStats) -> dict:
    """Where the time goes, in milliseconds per step of the engine's loop (a block of the batch: one target call
    in speculative decoding, one token per row for the target alone): inside the draft's forwards, inside the
    target's, and the rest (`engine`: sampling, acceptance, cache bookkeeping, host syncs)."""
    per_block = 1000 / max(spec.steps, 1)
    per_token = 1000 / max(alone.steps, 1)
    return {"draft_ms": spec.draft_time_s * per_block, "target_ms": spec.target_time_s * per_block,
            "engine_ms": (spec.wall_time_s - spec.model_time_s) * per_block,
            "target_alone_forward_ms": alone.model_time_s * per_token,
            "target_alone_engine_ms": (alone.wall_time_s - alone.model_time_s) * per_token}


def _json_safe(value):
    """nan -> None (JSON has no nan), in nested dicts and lists too."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _strip(ids: list[int], ends: list[int]) -> list[int]:
    """A response up to and including its first end id (transformers pads a finished row with the pad id, which
    may itself be an end id)."""
    cut = next((j for j, i in enumerate(ids) if i in ends), None)
    return ids if cut is None else ids[: cut + 1]
