"""The draft / verify / decide / commit loop (DESIGN section 1).

    repeat until every row is finished:
        draft   the student proposes g tokens from its own view, continuing its KV cache
        verify  the teacher scores the g drafts plus one more position in ONE forward over its own view
                (or one forward per token with verify="sequential", the reference mode)
        decide  the policy accepts n drafts per row and writes the next token (a correction or a bonus)
        commit  append them, stop rows at EOS / stop sequences / the budget, roll both caches back to the
                committed tokens, update the gamma schedule and the statistics

Without a teacher the same loop is plain decoding: every drafted token is committed (`sample`).
One host sync per block reads the few integers the next block needs (its length, cache crops).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

from .compiling import maybe_compile
from .output import FINISH_REASONS, Generation, GenerationStats, KeptLogits, StatsAccumulator
from .policies import Block, Settled, make_policy, settle
from .prefix import split_views
from .sampling import ACCEPT, DRAFT, GREEDY, TARGET, Sampling, row_seeds, sample_tokens, uniforms, warp_logits
from .schedules import ConstantGamma
from .stopping import LENGTH, RUNNING, Stopping, make_stopping, stop_codes
from .cached_model import ForwardClock, ModelView


def pick_token(logits: torch.Tensor, sampling: Sampling, u: torch.Tensor | None, keep_warped: bool):
    """One drafted token per row: logits [B, V] -> token [B], and the warped logits [B, V] if keep_warped."""
    if sampling.greedy and not keep_warped:
        return logits.argmax(-1), None
    warped = warp_logits(logits, sampling)
    return sample_tokens(warped, u), warped


def draft_block(view: ModelView, pending, pending_valid, gamma: int, sampling: Sampling, u, keep_warped: bool):
    """The student proposes gamma tokens per row, feeding its pending token(s) and then its own drafts.

    pending [B, w] (holes marked False in pending_valid [B, w], or None); u [B, gamma] uniforms of stream DRAFT
    at the drafted positions (None when greedy). Returns drafts [B, gamma] and, with keep_warped, the warped
    logits [B, gamma, V] they came from. The last draft is not fed: the cache only holds judged, kept tokens.
    """
    tokens, warped_all = [], []
    x, x_valid = pending, pending_valid
    for i in range(gamma):
        logits = view.feed(x, x_valid, keep=1)[:, -1]  # [B, V]
        token, warped = pick_token(logits, sampling, None if u is None else u[:, i], keep_warped)
        tokens.append(token)
        warped_all.append(warped)
        x, x_valid = token[:, None], None
    drafts = torch.stack(tokens, 1)  # [B, gamma]
    return drafts, (torch.stack(warped_all, 1) if keep_warped else None)


def verify_block(view: ModelView, pending: torch.Tensor, drafts: torch.Tensor, sequential: bool,
                 pending_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher logits [B, g+1, V] for pending [B, w] followed by drafts [B, g]: one forward, or g+1 forwards.

    w is 1, or in the first block of a parallel run the whole left-padded prompt (pending_valid [B, w] marks its
    padding), so that the prompt is encoded in the same forward that verifies the first drafts. Only the last
    g+1 positions' logits are computed. Token ids move to the teacher's device (it may live on another one than
    the student); the logits stay there, where the policy judges them."""
    tokens = torch.cat([pending.to(view.device), drafts.to(view.device)], 1)  # [B, w+g]
    if not sequential:
        valid = None
        if pending_valid is not None:
            valid = torch.cat([pending_valid.to(view.device), torch.ones_like(tokens[:, pending.shape[1]:], dtype=torch.bool)], 1)
        return view.feed(tokens, valid, keep=drafts.shape[1] + 1)
    return torch.cat([view.feed(tokens[:, i : i + 1]) for i in range(tokens.shape[1])], 1)


class Responses:
    """The batch's response buffer and per-row progress (all on the device)."""

    def __init__(self, batch_size: int, max_new_tokens: int, pad_token_id: int, device):
        self.width = max_new_tokens + 1  # the last column is scratch for writes past the budget
        self.tokens = torch.full((batch_size, self.width), pad_token_id, dtype=torch.long, device=device)
        self.written = torch.zeros(batch_size, self.width, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.reason = torch.zeros(batch_size, dtype=torch.long, device=device)  # stopping.RUNNING, EOS, ...
        self.pad_token_id = pad_token_id

    def last(self, count: int) -> torch.Tensor:
        """The last `count` committed tokens of each row: [B, count] (clamped at the response start)."""
        idx = self.lengths[:, None] + torch.arange(-count, 0, device=self.lengths.device)
        return self.tokens.gather(1, idx.clamp_min(0))


def commit(resp: Responses, drafts: torch.Tensor, settled: Settled, active: torch.Tensor, stopping: Stopping):
    """Append each running row's n accepted drafts and its next token, then stop rows at an EOS, a stop sequence
    or the budget. Returns k [B]: tokens committed per row (0 for rows not running)."""
    g = drafts.shape[1]
    slot = torch.arange(g + 1, device=drafts.device)
    n = settled.n[:, None]
    new = torch.cat([drafts, drafts[:, :1]], 1).scatter_(1, n, settled.next_token[:, None])  # [B, g+1]
    k = torch.where(active, settled.n + settled.has_next, 0)
    at = resp.lengths[:, None] + slot  # [B, g+1] response index of each new slot
    column = at.clamp_max(resp.width - 1)  # past the budget: the scratch column
    resp.tokens.scatter_(1, column, new)
    resp.written.scatter_(1, column, (slot == n) & settled.has_next[:, None])
    room = stopping.max_new_tokens - resp.lengths
    reason = torch.where(k >= room, LENGTH, RUNNING)
    if stopping.eos is not None or stopping.sequences:
        code = stop_codes(resp.tokens, new, at, stopping)  # [B, g+1]
        hit = (code != RUNNING) & (slot < k[:, None])
        first = hit.long().argmax(1)
        stopped = hit.any(1)
        k = torch.where(stopped, first + 1, k)
        early = stopped & (k <= room)  # an EOS or stop sequence within the budget wins over the budget
        reason = torch.where(early, code.gather(1, first[:, None]).squeeze(1), torch.where(k >= room, LENGTH, RUNNING))
    k = torch.minimum(k, room)
    resp.reason = torch.where(active, reason, resp.reason)
    resp.lengths = resp.lengths + k
    return k


@dataclass(frozen=True)
class Decoding:
    """How generate decodes a batch: every setting but the models and their prompt views.

    policy: "speculative" | "greedy" | "top_k" | "adaptive_top_k" or a policy object (policies.py).
    gamma: drafts per block, an int (constant) or a schedule object (schedules.py).
    draft_sampling: the student's own temperature / top-p for drafting (the teacher's is in the policy).
    max_new_tokens: the response budget per row (tokens).
    eos_token_id: id(s) that end a row (included in the response); None = never.
    stop: token-id sequences, or strings with `tokenizer`, that end a row (included in the response).
    tokenizer: the models' tokenizer, if known: stop strings, and the defaults of vocab_size (its len, where it
        has one: an object with only `encode` serves stop strings) and pad_token_id.
    pad_token_id: the id after each row's end in Generation.tokens; None: the tokenizer's pad id (its EOS when it
        has none), else the draft config's pad id, else 0 (a real token in Llama-3 and Qwen: read `lengths`).
    seed: int (row b's seed is hashed from (seed, b): sampling.row_seeds) or [B] per-row seeds; noise is keyed
        by (row seed, response position).
    verify: "parallel" (one teacher forward per block) or "sequential" (one per drafted token; the reference).
    compile: torch.compile both models' forward calls and, with a teacher, the policy's per-block functions
        (True = inductor, or a backend name); anything that fails to compile runs eagerly. pick_token, a few
        small ops per drafted token, stays eager: compiled, it ran slower on a CPU.
    trace: record every block (drafts, teacher top-K ids, decisions, gamma) in Generation.trace.
    vocab_size: the tokenizer's size V. Both models' logits are cut to [..., :V], so ids a padded embedding
        matrix has beyond the tokenizer are never drafted, sampled, accepted or written, and the two models'
        distributions are compared over the same ids. None: len(tokenizer) when a tokenizer is given, else the
        smaller of the two models' output sizes.
    keep_target_logits: keep the teacher's logits at every committed response position (Generation.target_logits,
        [B, T, V] on the teacher's device): they equal a teacher-forced forward over the view and the response,
        which a distillation loss then need not run again. True keeps them as they are; a function maps each
        block's logits [B, n, V] to the form kept (e.g. a sparse top-k form). False (default): nothing is kept.
    target_prefix: a prefix.SharedPrefix that every row of the target's view starts with (prefix.shared_prefix
        detects and encodes one): the target's cache starts from its keys and values, so only each row's rest of
        the view is encoded. None: each row's whole view is encoded.
    """

    policy: Any = "greedy"
    gamma: Any = 4
    draft_sampling: Sampling = GREEDY
    max_new_tokens: int = 64
    eos_token_id: int | list[int] | None = None
    stop: list | None = None
    tokenizer: Any = None
    pad_token_id: int | None = None
    seed: int | torch.Tensor = 0
    verify: str = "parallel"
    compile: bool | str = False
    trace: bool = False
    vocab_size: int | None = None
    keep_target_logits: Any = False
    target_prefix: Any = None


def generate(draft, draft_ids: torch.Tensor, draft_mask: torch.Tensor, target=None,
             target_ids: torch.Tensor | None = None, target_mask: torch.Tensor | None = None,
             decoding: Decoding = Decoding(), **changes) -> Generation:
    """Generate responses with a drafter and (optionally) a teacher that verifies it.

    draft, target: causal LMs called as model(input_ids, attention_mask, position_ids, cache or past_key_values,
        use_cache) returning .logits and .cache or .past_key_values (any Hugging Face causal LM).
        target=None: plain decoding of draft.
    draft_ids/draft_mask [B, Ls], target_ids/target_mask [B, Lt]: each model's own LEFT-padded prompt view;
        the teacher's may hold privileged text. Both continue with the same response tokens.
    decoding: the settings (Decoding); changes: fields of it replaced for this call (e.g. max_new_tokens=8).
    """
    began = time.perf_counter()
    decoding = dataclasses.replace(decoding, **changes) if changes else decoding
    with torch.no_grad():
        decoder = BlockDecoder(draft, draft_ids, draft_mask, target, target_ids, target_mask, decoding)
        decoder.loop()
        return decoder.result(time.perf_counter() - began)


def sample(model, ids: torch.Tensor, mask: torch.Tensor, decoding: Decoding = Decoding(), *,
           sampling: Sampling | None = None, chunk: int = 8, **changes) -> Generation:
    """Plain decoding of one model (no teacher): the engine's draft path, committing every token.

    sampling: the model's temperature / top-p (Decoding.draft_sampling; None: decoding's own, greedy by default).
    chunk: tokens decoded per block (one host sync per block; up to chunk-1 tokens are wasted after a row ends).
    changes: other fields of decoding replaced for this call (max_new_tokens, eos_token_id, seed, ...).
    """
    if sampling is not None:
        changes["draft_sampling"] = sampling
    return generate(model, ids, mask, decoding=decoding, policy="greedy", gamma=ConstantGamma(chunk), **changes)


def noise_tables(seeds: torch.Tensor, width: int) -> dict[int, torch.Tensor]:
    """Uniforms for every (row, response position < width) of each stream: {stream: [B, width] float64}."""
    positions = torch.arange(width, device=seeds.device).expand(seeds.shape[0], -1)
    return {stream: uniforms(seeds, positions, stream) for stream in (DRAFT, ACCEPT, TARGET)}


def shared_vocab(draft, target=None) -> int:
    """The ids both models can score when no tokenizer size is given: the smaller output size."""
    sizes = [m.get_output_embeddings().weight.shape[0] for m in (draft, target)
             if m is not None and hasattr(m, "get_output_embeddings") and m.get_output_embeddings() is not None]
    return min(sizes) if sizes else None


def default_pad_id(draft, tokenizer=None) -> int:
    """The pad id when none is given: the tokenizer's pad (else its EOS), else the draft config's, else 0."""
    for pad in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None),
                getattr(getattr(draft, "config", None), "pad_token_id", None)):
        if isinstance(pad, int):
            return pad
    return 0


def _check_inputs(draft_ids, draft_mask, target, target_ids, target_mask, verify: str) -> None:
    _check_view("draft", draft_ids, draft_mask)
    if target is not None:
        _check_view("target", target_ids, target_mask)
        if target_ids.shape[0] != draft_ids.shape[0]:
            raise ValueError(f"batch sizes differ: draft {draft_ids.shape[0]}, target {target_ids.shape[0]}")
    if verify not in ("parallel", "sequential"):
        raise ValueError(f"verify must be 'parallel' or 'sequential', got {verify!r}")


def _check_view(name: str, ids, mask):
    if ids is None or mask is None:
        raise ValueError(f"{name}_ids and {name}_mask are required")
    if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[1] == 0:
        raise ValueError(f"{name}_ids and {name}_mask must both be [B, L] with L >= 1; got {tuple(ids.shape)}, "
                         f"{tuple(mask.shape)}")
    if not bool(mask[:, -1].all()):
        rows = (~mask[:, -1].bool()).nonzero().flatten().tolist()
        raise ValueError(f"{name}_mask: prompts must be left-padded with a real last token; rows {rows} end in padding")


class BlockDecoder:
    """The state of one generate call: both models' views and caches, the responses, noise, policy state and
    statistics; `loop` decodes blocks until every row is finished."""

    def __init__(self, draft, draft_ids, draft_mask, target, target_ids, target_mask, decoding: Decoding):
        d = decoding
        _check_inputs(draft_ids, draft_mask, target, target_ids, target_mask, d.verify)
        self.policy = make_policy(d.policy) if isinstance(d.policy, str) else d.policy
        self.schedule = ConstantGamma(d.gamma) if isinstance(d.gamma, int) else d.gamma
        self.sampling = d.draft_sampling
        self.sequential = d.verify == "sequential"
        self.trace = [] if d.trace else None
        device, batch = draft_ids.device, draft_ids.shape[0]
        pad_token_id = default_pad_id(draft, d.tokenizer) if d.pad_token_id is None else d.pad_token_id
        self.stopping = make_stopping(d.max_new_tokens, d.eos_token_id, d.stop, d.tokenizer, device)
        self.resp = Responses(batch, d.max_new_tokens, pad_token_id, device)
        self.noise = noise_tables(row_seeds(d.seed, batch, device), self.resp.width)
        self._open_views(draft, draft_ids, target, target_ids, d)
        self.kept = None
        if target is not None and d.keep_target_logits is not False:
            keep = d.keep_target_logits
            self.kept = KeptLogits(None if keep is True else keep, batch, self.resp.width)
        self.stats = StatsAccumulator(min(self.schedule.max_gamma, d.max_new_tokens))
        self.gamma_rows = torch.full((batch,), self.schedule.gamma, dtype=torch.long, device=device)
        self.policy_state = self.policy.init_state(batch, self.t_device)  # judged on the teacher's device
        self._first_pending(draft_ids, draft_mask, target_ids, target_mask, d.target_prefix)
        self.block_gamma = min(self.schedule.gamma, d.max_new_tokens)
        self.active = torch.ones(batch, dtype=torch.bool, device=device)
        self.block_rows = torch.full((batch,), self.block_gamma, dtype=torch.long, device=device)  # [B] row gammas

    def _open_views(self, draft, draft_ids, target, target_ids, d: Decoding) -> None:
        """Each model's cached view, sized for its prompt, the budget and the largest block; with a teacher, the
        policy's per-block functions (compiled when asked)."""
        batch, device = draft_ids.shape[0], draft_ids.device
        self.draft_clock, self.target_clock = ForwardClock(), ForwardClock()  # each model's forward time
        spare = d.max_new_tokens + 2 * self.schedule.max_gamma + 4
        tokenizer = d.tokenizer
        vocab = d.vocab_size or (len(tokenizer) if hasattr(tokenizer, "__len__") else shared_vocab(draft, target))
        self.student = ModelView(draft, self.draft_clock, batch, draft_ids.shape[1] + spare, device, d.compile,
                                 "draft", vocab)
        self.teacher, self.judge, self.settle = None, self.policy.judge, settle
        self.t_device = device
        if target is not None:
            self.t_device = target_ids.device
            self.teacher = ModelView(target, self.target_clock, batch, target_ids.shape[1] + spare, self.t_device,
                                     d.compile, "target", vocab)
            self.judge = maybe_compile(self.policy.judge, d.compile, f"{self.policy.name}.judge")
            self.settle = maybe_compile(settle, d.compile, "settle")

    def _first_pending(self, draft_ids, draft_mask, target_ids, target_mask, target_prefix) -> None:
        """The first block's pending inputs. The whole prompt is the first block's pending input: the student's
        first forward encodes it and gives its first draft, and (parallel verification) the teacher's first forward
        encodes its prompt and scores the first drafts, as transformers' assisted generation does: no separate
        prefill forward. Sequential verification, the one-token-per-forward reference, prefills the teacher
        instead."""
        self.s_pending, self.s_valid = draft_ids, draft_mask.bool()
        self.t_pending, self.t_valid = None, None
        if self.teacher is not None:
            self.t_pending, self.t_valid = target_ids, target_mask.bool()
            if target_prefix is not None:  # the cache starts from the shared prefix; each row feeds its rest
                self.teacher.start_from(target_prefix)
                self.t_pending, self.t_valid = split_views(target_ids, target_mask, target_prefix.length)
            if self.sequential:
                self.t_pending, self.t_valid = self.teacher.prefill(self.t_pending, self.t_valid), None

    def loop(self) -> None:
        while self.block_gamma > 0:
            self.step(self.block_gamma)

    def step(self, g: int) -> None:
        """One block of length g for the whole batch: draft, verify, decide, commit."""
        active, gamma_rows, start = self.active, self.block_rows, self.resp.lengths  # [B] each
        at = (start[:, None] + torch.arange(g + 1, device=start.device)).clamp_max(self.resp.width - 1)  # [B, g+1]
        self.student.mark()
        u_draft = None if self.sampling.greedy else self.noise[DRAFT].gather(1, at[:, :g])
        keep_warped = self.teacher is not None and self.policy.needs_draft_logits
        drafts, warped = draft_block(self.student, self.s_pending, self.s_valid, g, self.sampling, u_draft, keep_warped)
        if self.teacher is None:  # plain decoding: every draft is committed
            verdict, target_logits = None, None
            settled = Settled(n=gamma_rows, full=torch.ones_like(active), next_token=drafts[:, 0],
                              has_next=torch.zeros_like(active))
        else:
            verdict, target_logits, settled = self._verify_and_judge(drafts, warped, at, gamma_rows, active)
            if self.kept is not None:
                self.kept.write(target_logits, at)
        k = commit(self.resp, drafts, settled, active, self.stopping)
        skd_top_k = None if verdict is None or verdict.skd_top_k is None else verdict.skd_top_k.to(drafts.device)
        self.stats.record(active, gamma_rows, settled.n, settled.full, settled.has_next, skd_top_k, verdict is not None)
        schedule = self.schedule.update(self.gamma_rows, settled.n, settled.full)
        self.gamma_rows = torch.where(active, schedule, self.gamma_rows)
        if self.trace is not None:
            self._record(start, gamma_rows, drafts, target_logits, settled, k, skd_top_k)
        self._roll_back(g, k)

    def _verify_and_judge(self, drafts, warped, at, gamma_rows, active):
        """The teacher scores the block and the policy judges and settles it, on the teacher's device (only ids,
        noise and per-row integers cross devices; the student's logits too for speculative sampling). Returns
        the verdict, the teacher logits [B, g+1, V] and the settled outcome on the student's device."""
        g, dev = drafts.shape[1], self.t_device
        self.teacher.mark()
        target_logits = verify_block(self.teacher, self.t_pending, drafts, self.sequential, self.t_valid)
        u_accept, u_target = self.noise[ACCEPT].gather(1, at[:, :g]), self.noise[TARGET].gather(1, at)
        block = Block(drafts.to(dev), None if warped is None else warped.to(dev), target_logits, u_accept.to(dev),
                      u_target.to(dev))
        verdict = self.judge(block, self.policy_state)
        rows, running = gamma_rows.to(dev), active.to(dev)
        settled = self.settle(verdict, rows, self.policy.bonus_token)
        self.policy_state = self.policy.update(self.policy_state, verdict, settled.n, rows, running)
        if dev != drafts.device:
            settled = Settled(*(t.to(drafts.device) for t in (settled.n, settled.full, settled.next_token,
                                                               settled.has_next)))
        return verdict, target_logits, settled

    def _roll_back(self, g: int, k: torch.Tensor) -> None:
        """Keep each model's cache to the committed tokens minus the new pending ones; read the next block length."""
        resp = self.resp
        running = resp.reason == RUNNING
        kept = (k - 1).clamp(0, g - 1)  # drafts the student fed and keeps
        width = self.s_pending.shape[1]
        s_keep = torch.where(running, kept + width, 0)
        t_width = self.t_pending.shape[1] if self.teacher is not None else 1
        t_keep = torch.where(running, k + t_width - 1, 0)  # the teacher's pending input (a token, or the first
        # block's whole prompt) plus k - 1 drafts
        s_count = torch.where(running, k - kept, 0)  # student tokens pending: 2 after a full block with a bonus
        rows = torch.where(running, torch.minimum(self.gamma_rows, self.stopping.max_new_tokens - resp.lengths), 0)
        s_max, t_max, s_width, g_next = torch.stack([s_keep, t_keep, s_count, rows]).amax(1).tolist()  # the sync
        self.student.roll_back(s_keep, s_max)
        s_width = max(s_width, 1)
        self.s_pending = resp.last(s_width)  # [B, s_width]
        self.s_valid = None
        if s_width > 1:
            self.s_valid = torch.arange(s_width, device=k.device) >= s_width - s_count[:, None]
        if self.teacher is not None:
            self.teacher.roll_back(t_keep, t_max)
            self.t_pending, self.t_valid = self.s_pending[:, -1:], None
        self.active, self.block_rows, self.block_gamma = running, rows, g_next

    def _record(self, start, gamma_rows, drafts, target_logits, settled, k, skd_top_k) -> None:
        entry = {
            "start": start.cpu(),  # [B] response index of the block's first draft
            "gamma": gamma_rows.cpu(),  # [B] each row's draft length (0 = finished)
            "draft": drafts.cpu(),  # [B, g]
            "accepted": settled.n.cpu(),  # [B]
            "next_token": torch.where(settled.has_next, settled.next_token, -1).cpu(),  # [B], -1 = none
            "committed": k.cpu(),  # [B]
        }
        if target_logits is not None:
            width = min(int(skd_top_k.max()) if skd_top_k is not None else 5, target_logits.shape[-1])
            entry["teacher_top"] = target_logits.topk(width, dim=-1).indices.cpu()  # [B, g+1, K]
            entry["skd_top_k"] = None if skd_top_k is None else skd_top_k.cpu()  # [B, g+1]
        self.trace.append(entry)

    def result(self, wall_s: float) -> Generation:
        resp = self.resp
        length = int(resp.lengths.max())
        inside = torch.arange(length, device=resp.lengths.device) < resp.lengths[:, None]
        tokens = resp.tokens[:, :length].masked_fill(~inside, resp.pad_token_id)
        written = resp.written[:, :length] & inside
        stats = GenerationStats(rows=resp.lengths.shape[0], new_tokens=int(resp.lengths.sum()))
        self.stats.finish(stats)
        stats.draft_calls, stats.draft_tokens_fed = self.student.calls, self.student.tokens_fed
        if self.teacher is not None:
            stats.target_calls, stats.target_tokens_fed = self.teacher.calls, self.teacher.tokens_fed
        stats.draft_time_s, stats.target_time_s = self.draft_clock.seconds, self.target_clock.seconds
        stats.model_time_s, stats.wall_time_s = stats.draft_time_s + stats.target_time_s, wall_s
        reasons = [FINISH_REASONS[c] for c in resp.reason.tolist()]
        kept = None if self.kept is None else self.kept.result(length)
        return Generation(tokens, resp.lengths.clone(), written, reasons, stats, self.trace, kept)
