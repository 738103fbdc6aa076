"""llama.cpp's own server, in-process through the `xllamacpp` package (an optional extra): its settings, and the
two endpoints specdistill calls, /completion and /tokenize, over the server's local HTTP address.

Two users: gguf_check (llama.cpp as the independent reference for a GGUF file's tokenizer and greedy output) and
evaluate/llamacpp.py (`bench --engine llamacpp`: drafts served by llama.cpp).

xllamacpp 2026.10 sets the independent draft with `params.speculative.types = [COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]`
and `params.speculative.draft.mparams.path` (`draft.n_max`, `draft.n_min`, `draft.p_min`); its README shows an
older layout.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request

from .errors import UserError

LLAMACPP_EXTRA = "pip install 'specdistill[llamacpp]'"


def require_xllamacpp(what: str = "--engine llamacpp"):
    """The xllamacpp package, or a UserError naming the extra that installs it."""
    try:
        import xllamacpp
    except ImportError:
        raise UserError(f"{what} needs llama.cpp's Python package xllamacpp, an optional extra: "
                        f"{LLAMACPP_EXTRA}") from None
    return xllamacpp


def server_params(target: str, draft: str | None = None, gamma: int = 4, n_ctx: int = 2048, threads: int = 2):
    """xllamacpp's CommonParams for the target GGUF, greedy, one slot, quiet, with its metrics endpoint; with a
    draft, llama.cpp's independent-draft speculative decoding drafting exactly `gamma` tokens per step
    (`--draft-max gamma --draft-min 0 --draft-p-min 0`: the draft never stops early on low confidence, as
    specdistill's constant-gamma engine)."""
    xllamacpp = require_xllamacpp()
    params = xllamacpp.CommonParams()
    params.model.path = str(target)
    params.n_ctx, params.n_parallel = n_ctx, 1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    params.sampling.temp, params.sampling.top_k = 0.0, 1
    params.endpoint_metrics = True
    params.verbosity = -1  # llama.cpp's per-request log lines off (errors still print)
    if draft is not None:
        spec = params.speculative
        spec.types = [xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
        spec.draft.mparams.path = str(draft)
        spec.draft.n_max, spec.draft.n_min, spec.draft.p_min = gamma, 0, 0.0
        spec.draft.cpuparams.n_threads = spec.draft.cpuparams_batch.n_threads = threads
    return params


@contextlib.contextmanager
def serve(target, draft: str | None = None, gamma: int = 4, n_ctx: int = 2048, threads: int = 2,
          what: str = "--engine llamacpp"):
    """A llama.cpp server on GGUF file `target` (with `draft`: speculative, see server_params); yields it and
    frees its models on exit. what: what needs the server, for the missing-package error."""
    require_xllamacpp(what)
    server = require_xllamacpp(what).Server(server_params(target, draft, gamma, n_ctx, threads))
    try:
        yield server
    finally:
        del server


def post(server, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(server.listening_address + endpoint, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=3600) as response:
        return json.loads(response.read())


def complete(server, prompt_ids: list[int], max_new_tokens: int) -> dict:
    """One greedy completion of token ids (no BOS added: the ids are the prompt as given) through llama.cpp's
    /completion; returns its JSON: `tokens` (the generated ids, up to and including an end-of-generation id),
    `timings` (predicted_n, predicted_ms, and with a draft draft_n, draft_n_accepted)."""
    return post(server, "/completion", {"prompt": list(prompt_ids), "n_predict": max_new_tokens, "temperature": 0,
                                        "top_k": 1, "return_tokens": True, "cache_prompt": False})


def tokenize(server, text: str, special: bool = True) -> list[int]:
    """llama.cpp's ids for `text` (no BOS added; special-token text parsed as special tokens when `special`)."""
    found = post(server, "/tokenize", {"content": text, "add_special": False, "parse_special": special})
    return [t if isinstance(t, int) else t["id"] for t in found["tokens"]]
