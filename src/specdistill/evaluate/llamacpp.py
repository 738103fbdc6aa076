"""Drafts served by llama.cpp (`specdistill bench --engine llamacpp`, DESIGN 10, docs/deploy.md).

llama.cpp's own server runs in-process through the `xllamacpp` package (an optional extra). For each GGUF pair
it runs the target alone, then the target with each draft (llama.cpp's independent-draft speculative decoding,
one server per draft and gamma), greedy, on the same prompt ids, and reads llama.cpp's own counters:

- per completion, `timings.draft_n` (drafted tokens), `timings.draft_n_accepted` (accepted drafts),
  `timings.predicted_n` and `timings.predicted_ms` (generated tokens and the generation's milliseconds);
- from the server's Prometheus metrics, `llamacpp:spec_decode_num_drafts_total` (verification steps that carried
  a draft) and `llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position=i}`.

Each formula is in docs/metrics.md. Beside them, specdistill's own engine measures the same pair on the same
prompts (the GGUFs loaded through transformers, or the Hugging Face folders given): its acceptance and the
speedup it predicts from its measured forward costs.

xllamacpp 2026.10 sets the independent draft with `params.speculative.types = [COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]`
and `params.speculative.draft.mparams.path` (`draft.n_max`, `draft.n_min`, `draft.p_min`); its README shows an
older layout. Per-request overrides of the draft size are ignored there, so each gamma gets its own server.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

from ..errors import UserError
from ..llamacpp_server import complete, require_xllamacpp, serve

# What llama.cpp compares before it accepts a draft (common_speculative_are_compatible), checked here first and
# more strictly: the same tokenizer model, special ids and BOS/EOS flags, the same size and every token's text.
VOCAB_FIELDS = ("tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token")

# Flags a file may leave out (llama.cpp then uses its default for the tokenizer type): compared when both state them.
OPTIONAL_FLAGS = ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token")


# ---------------------------------------------------------------- the vocabularies, before llama.cpp sees them
def _vocab(path: str, role: str) -> dict:
    from ..gguf_io import read_header

    metadata, _ = read_header(path, role, keep=("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"))
    if "tokenizer.ggml.tokens" not in metadata:
        raise UserError(f"{role}={path}: the file holds no vocabulary (tokenizer.ggml.tokens); llama.cpp cannot "
                        f"serve it")
    return metadata


def check_same_vocab(target: str, draft: str) -> None:
    """Refuse a draft GGUF whose vocabulary is not the target GGUF's, naming both files and the first difference:
    a token (id, text in each), the size, a token's type, or a special id / flag."""
    t, d = _vocab(target, "--target"), _vocab(draft, "--draft")
    fix = ("llama.cpp serves a draft only with its target's vocabulary: cut the draft from the target "
           "(specdistill init-draft) or export it from a folder converted from the target's GGUF")
    tokens_t, tokens_d = t["tokenizer.ggml.tokens"], d["tokenizer.ggml.tokens"]
    for i, (a, b) in enumerate(zip(tokens_t, tokens_d)):
        if a != b:
            raise UserError(f"the vocabularies of {target} and {draft} differ: id {i} is {a!r} in {target} and "
                            f"{b!r} in {draft}; {fix}")
    if len(tokens_t) != len(tokens_d):
        i = min(len(tokens_t), len(tokens_d))
        extra = (tokens_t if len(tokens_t) > i else tokens_d)[i]
        raise UserError(f"the vocabularies of {target} and {draft} differ: {target} has {len(tokens_t)} tokens and "
                        f"{draft} {len(tokens_d)}; id {i} ({extra!r}) is in one only; {fix}")
    types_t, types_d = t.get("tokenizer.ggml.token_type", []), d.get("tokenizer.ggml.token_type", [])
    for i, (a, b) in enumerate(zip(types_t, types_d)):
        if a != b:
            raise UserError(f"the vocabularies of {target} and {draft} differ: id {i} ({tokens_t[i]!r}) has token "
                            f"type {int(a)} in {target} and {int(b)} in {draft}; {fix}")
    for key in VOCAB_FIELDS:
        if key in OPTIONAL_FLAGS and (t.get(key) is None or d.get(key) is None):
            continue  # a flag one file leaves out takes llama.cpp's default for its tokenizer
        if t.get(key) != d.get(key):
            raise UserError(f"the vocabularies of {target} and {draft} differ: {key} is {t.get(key)!r} in {target} "
                            f"and {d.get(key)!r} in {draft}; {fix}")


# ---------------------------------------------------------------- the server
def spec_counters(server) -> dict:
    """llama.cpp's cumulative speculative counters from its Prometheus metrics: drafts (verification steps with a
    draft), draft_tokens, accepted, accepted_per_position (list by position)."""
    text = server.handle_metrics()
    text = text if isinstance(text, str) else str(text)

    def total(name: str) -> float:
        found = re.search(rf"^llamacpp:{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    per_pos = {int(p): float(v) for p, v in re.findall(
        r'^llamacpp:spec_decode_num_accepted_tokens_per_pos_total\{position="(\d+)"\} (\S+)$', text, re.M)}
    return {"drafts": total("spec_decode_num_drafts_total"), "draft_tokens": total("spec_decode_num_draft_tokens_total"),
            "accepted": total("spec_decode_num_accepted_tokens_total"),
            "accepted_per_position": [per_pos[i] for i in sorted(per_pos)]}


def serve_prompts(target: str, prompts: list[list[int]], max_new_tokens: int, draft: str | None = None,
                  gamma: int = 4, threads: int = 2, repeats: int = 1, progress=None) -> dict:
    """Run every prompt through one llama.cpp server (the target alone, or with `draft` at `gamma`): one untimed
    warm-up completion, then `repeats` rounds; returns llama.cpp's figures (llamacpp_figures) of the median round
    by generation speed, and the outputs of the first. progress(i, n): called after each completion."""
    n_ctx = max(len(p) for p in prompts) + max_new_tokens + gamma + 16
    rounds = []
    with serve(target, draft, gamma, n_ctx, threads) as server:  # its models freed before the next server loads
        complete(server, prompts[0], min(max_new_tokens, 8))  # warm-up: graphs and buffers allocated
        for _ in range(repeats):
            before, start = spec_counters(server), time.perf_counter()
            answers = []
            for i, p in enumerate(prompts):
                answers.append(complete(server, p, max_new_tokens))
                if progress:
                    progress(i + 1, len(prompts))
            after = spec_counters(server)
            rounds.append(llamacpp_figures(answers, before, after, time.perf_counter() - start))
    best = sorted(rounds, key=lambda r: r["tokens_per_s"])[len(rounds) // 2]
    return {**best, "outputs": rounds[0]["outputs"]}


def llamacpp_figures(answers: list[dict], before: dict, after: dict, wall_s: float) -> dict:
    """llama.cpp's figures for one round of completions (docs/metrics.md): its eval speed from its own timings,
    its drafted/accepted counts (summed per completion, timings.draft_n / draft_n_accepted), its verification
    steps and per-position acceptance from the metrics counters (after - before)."""
    timings = [a.get("timings", {}) for a in answers]
    outputs = [list(a.get("tokens", [])) for a in answers]
    new_tokens = sum(int(t.get("predicted_n", 0)) for t in timings)
    generation_ms = sum(float(t.get("predicted_ms", 0.0)) for t in timings)
    figures = {"outputs": outputs, "new_tokens": new_tokens, "tokens_per_s": 1000 * new_tokens / generation_ms
               if generation_ms else math.nan, "wall_tokens_per_s": sum(map(len, outputs)) / wall_s}
    if not any("draft_n" in t for t in timings):
        return figures
    drafted = sum(int(t.get("draft_n", 0)) for t in timings)
    accepted = sum(int(t.get("draft_n_accepted", 0)) for t in timings)
    drafts = after["drafts"] - before["drafts"]
    per_pos = [a - b for a, b in zip(after["accepted_per_position"],
                                     before["accepted_per_position"] + [0.0] * len(after["accepted_per_position"]))]
    figures.update({
        "drafted": drafted, "accepted": accepted, "acceptance_rate": accepted / drafted if drafted else math.nan,
        "drafts": int(drafts), "mean_acceptance_length": 1 + accepted / drafts if drafts else math.nan,
        "per_position_acceptance": [p / drafts for p in per_pos] if drafts else [],
        # the two sources of llama.cpp's counts agree (per-completion timings vs the server's metrics)
        "counters_agree": (after["draft_tokens"] - before["draft_tokens"], after["accepted"] - before["accepted"])
        == (drafted, accepted),
    })
    return figures


# ---------------------------------------------------------------- specdistill's side of the table
def engine_figures(target, draft, prompts: list[list[int]], tokenizer, gamma: int, max_new_tokens: int) -> dict:
    """specdistill's engine on the same pair and prompts, greedy, batch size 1, constant gamma: its acceptance
    (acceptance_rate = accepted / drafted, as llama.cpp's; token_acceptance = alpha), vLLM's mean acceptance length
    (1 + accepted / drafts, as llama.cpp's `mean_acceptance_length`) and
    the speedup it predicts from its forward costs, measured for gamma 1..`gamma` (prediction.prediction_figures)."""
    from ..progress import phase
    from .prediction import prediction_figures
    from .speculative import count_tokens, measure_forward_costs, run_speculative

    phase(f"specdistill engine, gamma {gamma}: {len(prompts)} prompt(s)")
    outputs, stats, seconds = run_speculative(target, draft, prompts, tokenizer, gamma=gamma,
                                              max_new_tokens=max_new_tokens)
    phase(f"specdistill engine, gamma {gamma}: forward costs (c, c_v)")
    # c_v for gamma 1..gamma only, 5 rounds: what this row's prediction needs (a 262,144-id head makes each
    # target forward dear; bench's own table measures 1..16 in 10 rounds)
    costs = measure_forward_costs(target, draft, prompts[0], 1, max_gamma=gamma, repeats=5)
    figures = prediction_figures(stats, costs, max_gamma=gamma)
    return {"acceptance_rate": stats.acceptance_rate, "token_acceptance": figures["token_acceptance"],
            "vllm_mean_acceptance_length": figures["vllm_mean_acceptance_length"], "cost_ratio_c": costs.c,
            "verify_cost": figures["verify_cost"], "predicted_speedup": figures["predicted_speedup"],
            "tokens_per_s": count_tokens(outputs) / seconds, "outputs": outputs}


# ---------------------------------------------------------------- the benchmark
def check_llamacpp_args(target: str, drafts: list[str], hf_target: str | None, hf_draft: str | None,
                        temperature: float, compare_hf: bool) -> list[str] | None:
    """Everything `bench --engine llamacpp` checks before loading a model: the package, GGUF files, greedy, the
    Hugging Face folders (one per draft), and that every draft shares the target's vocabulary. Returns the
    drafts' folders (or None)."""
    from ..gguf_io import is_gguf_spec
    from ..models import check_model_spec

    require_xllamacpp()
    for flag, path in (("--target", target), *(("--draft", d) for d in drafts)):
        if not is_gguf_spec(path) or not Path(path).expanduser().is_file():
            raise UserError(f"{flag}={path}: --engine llamacpp serves GGUF files; give a .gguf file (specdistill "
                            f"export MODEL_DIR OUT.gguf writes one from a model folder)")
    if temperature != 0:
        raise UserError(f"--temperature {temperature}: --engine llamacpp runs greedy (temperature 0), where its "
                        f"output must equal the target's own")
    if compare_hf:
        raise UserError("--compare-hf: transformers' assisted generation is compared by the default engine "
                        "(--engine specdistill), not by --engine llamacpp")
    folders = [f.strip() for f in hf_draft.split(",") if f.strip()] if hf_draft else None
    if folders is not None and len(folders) != len(drafts):
        raise UserError(f"--hf-draft {hf_draft!r}: {len(folders)} folder(s) for {len(drafts)} draft(s); give one "
                        f"per --draft, in the same order")
    for flag, spec in (("--hf-target", hf_target), *(("--hf-draft", f) for f in folders or [])):
        if spec is not None:
            check_model_spec(spec, flag)
    for draft in drafts:
        check_same_vocab(target, draft)
    return folders


def _served(target, prompts, max_new_tokens, what: str, **kw) -> dict:
    from ..progress import bar, phase

    rounds = kw.get("repeats", 1)
    phase(f"llama.cpp: {what}, {len(prompts)} prompt(s) x {rounds} round(s)")
    with bar(len(prompts) * rounds, f"llama.cpp {what}") as progress:
        return serve_prompts(target, prompts, max_new_tokens, progress=lambda i, n: progress.update(1), **kw)


def bench_llamacpp(target: str, drafts: list[str], prompts: list[list[int]], tokenizer, gammas: list[int],
                   max_new_tokens: int, threads: int = 2, repeats: int = 1, hf_target: str | None = None,
                   hf_drafts: list[str] | None = None, dtype: str = "float32", device: str = "cpu") -> dict:
    """llama.cpp's server on the target alone, then on the target with each draft at each gamma, on the same
    prompt ids; then specdistill's engine on the same pairs (hf_target/hf_drafts, or the GGUFs through
    transformers). Returns the report: {engine, target, drafts, prompts, max_new_tokens, threads, repeats,
    target_alone: {tokens_per_s, wall_tokens_per_s, new_tokens}, results: [one row per (draft, gamma)]}."""
    from ..models import load_model
    from ..progress import phase
    from .speculative import _json_safe

    alone = _served(target, prompts, max_new_tokens, "the target alone", threads=threads, repeats=repeats)
    rows = []
    for i, draft in enumerate(drafts, 1):
        for gamma in gammas:
            run = _served(target, prompts, max_new_tokens, f"draft {i}/{len(drafts)} {draft}, gamma {gamma}",
                          draft=draft, gamma=gamma, threads=threads, repeats=repeats)
            if "drafted" not in run:  # llama.cpp found the pair incompatible and decoded without the draft
                raise UserError(f"llama.cpp served {target} without the draft {draft} (no drafted tokens): it "
                                f"found the two incompatible; check that both come from the same tokenizer")
            same = [a == b for a, b in zip(run.pop("outputs"), alone["outputs"])]
            rows.append({"draft": draft, "gamma": gamma, "llamacpp": {
                **run, "target_tokens_per_s": alone["tokens_per_s"],
                "speedup": run["tokens_per_s"] / alone["tokens_per_s"], "outputs_identical": all(same),
                "identical_prompts": sum(same)}})
    phase(f"specdistill engine: loading the target {hf_target or target}")
    target_model = load_model(hf_target or target, dtype, device).eval()
    for i, draft in enumerate(drafts):
        phase(f"specdistill engine: loading draft {i + 1}/{len(drafts)} {hf_drafts[i] if hf_drafts else draft}")
        draft_model = load_model(hf_drafts[i] if hf_drafts else draft, dtype, device).eval()
        for row in (r for r in rows if r["draft"] == draft):
            figures = engine_figures(target_model, draft_model, prompts, tokenizer, row["gamma"], max_new_tokens)
            figures.pop("outputs")
            row["specdistill"] = figures
        del draft_model
    return _json_safe({"engine": "llamacpp", "target": target, "drafts": drafts, "prompts": len(prompts),
                       "max_new_tokens": max_new_tokens, "threads": threads, "repeats": repeats,
                       "target_alone": {k: v for k, v in alone.items() if k != "outputs"}, "results": rows})


TABLE = (("draft", None, "draft"), ("gamma", None, "gamma"), ("drafted", "llamacpp", "drafted"),
         ("accepted", "llamacpp", "accepted"), ("acceptance (llama.cpp)", "llamacpp", "acceptance_rate"),
         ("mean acc. length (llama.cpp)", "llamacpp", "mean_acceptance_length"),
         ("target tok/s", "llamacpp", "target_tokens_per_s"), ("tok/s with draft", "llamacpp", "tokens_per_s"),
         ("speedup", "llamacpp", "speedup"), ("identical", "llamacpp", "outputs_identical"),
         ("acceptance (specdistill)", "specdistill", "acceptance_rate"),
         ("mean acc. length (specdistill)", "specdistill", "vllm_mean_acceptance_length"),
         ("predicted speedup (specdistill)", "specdistill", "predicted_speedup"))


def format_llamacpp_table(rows: list[dict]) -> str:
    """The report's rows as a Markdown table: llama.cpp's counts and speeds, then specdistill's figures."""
    def cell(row, group, key) -> str:
        value = (row.get(group) or {}).get(key) if group else row.get(key)
        return f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value))

    lines = ["| " + " | ".join(t[0] for t in TABLE) + " |", "|" + "---|" * len(TABLE)]
    return "\n".join(lines + ["| " + " | ".join(cell(r, g, k) for _, g, k in TABLE) + " |" for r in rows])
