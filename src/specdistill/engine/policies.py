"""Acceptance policies: which drafted tokens the teacher keeps, and which token it writes next.

A policy judges every drafted position of a block at once (no loop over positions, no host sync):

    judge(block, state) -> Verdict   accept [B, g]: the drafted token at i passes on its own
                                     correction [B, g]: what the teacher writes if i is the first rejection
                                     bonus [B, g+1]: what the teacher writes after i accepted drafts if the row's
                                                     block ends there fully accepted
    update(state, verdict, n, gamma_rows, active) -> state   (only `adaptive_top_k` keeps state)

`settle` then turns a verdict into per-row results: n accepted drafts and the next token. Acceptance is decided
on the drafted token that is kept, never on a fresh sample.

| policy           | accept draft x at i if                       | first rejection          | all accepted (bonus) |
|------------------|----------------------------------------------|--------------------------|----------------------|
| speculative      | u < min(1, p_i(x) / q_i(x))                  | sample norm(max(0, p-q)) | sample p_{g+1}       |
| greedy           | x == argmax p_i                              | argmax p_i               | argmax p_{g+1}       |
| top_k            | rank_i(x) < K and p_i(x) >= min_prob         | sample p_i               | off (option: p_{g+1}) |
| adaptive_top_k   | as top_k with K_eff per position             | sample p_i               | as top_k             |

p is the teacher's distribution warped by the policy's `target` sampling (for the top-K tests of a greedy teacher,
its distribution at temperature 1: `judged_logits`); q the student's drafting distribution.
rank_i(x) counts the tokens before x in p_i's order, ties broken by token id (`top_k_rank`): exactly K pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .sampling import GREEDY, Sampling, sample_from_weights, sample_tokens, warp_logits


@dataclass
class Block:
    """What a policy sees of one block (B rows, g drafted positions, V vocabulary)."""

    draft_tokens: torch.Tensor  # [B, g] long
    draft_logits: torch.Tensor | None  # [B, g, V] the student's warped logits (log q + const); None if not needed
    target_logits: torch.Tensor  # [B, g+1, V] the teacher's raw logits
    u_accept: torch.Tensor  # [B, g] uniforms of stream ACCEPT at each drafted position
    u_target: torch.Tensor  # [B, g+1] uniforms of stream TARGET at each verified position


@dataclass
class Verdict:
    accept: torch.Tensor  # [B, g] bool
    correction: torch.Tensor  # [B, g] long
    bonus: torch.Tensor  # [B, g+1] long
    skd_top_k: torch.Tensor | None = None  # [B, g+1] K used at each position (top-K policies: rollout.skd_top_k)


def _teacher_samples(warped: torch.Tensor, block: Block, sampling: Sampling) -> torch.Tensor:
    """One teacher token per verified position: [B, g+1, V] -> [B, g+1], noise stream TARGET."""
    return sample_tokens(warped, None if sampling.greedy else block.u_target)


def top_k_rank(scores: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Rank of token x among scores [B, g, V] (x [B, g] long) -> [B, g] long, 0 = best.

    Tie rule: tokens with a higher score rank before x, and so do tokens with an equal score and a smaller id.
    Ranks are then a strict order, so exactly K tokens have rank < K even where logits tie (frequent in bf16)."""
    x = x.unsqueeze(-1)  # [B, g, 1]
    s_x = scores.gather(-1, x)  # [B, g, 1]
    ids = torch.arange(scores.shape[-1], device=scores.device)  # [V]
    return ((scores > s_x) | ((scores == s_x) & (ids < x))).sum(-1)


def judged_logits(block: Block, warped: torch.Tensor, target: Sampling) -> torch.Tensor:
    """The teacher logits [B, g+1, V] that the top-K test (ranks, p(x) for min_prob) and the adaptive K's entropy
    read: the warped ones, or under a greedy teacher its raw logits at temperature 1. A greedy teacher's warped p
    is one-hot, so ranks would tie every other token, any min_prob > 0 would accept only the argmax and the
    entropy would always be 0."""
    return block.target_logits.float() if target.greedy else warped


def _top_k_test(block: Block, warped: torch.Tensor, target: Sampling, k: torch.Tensor, min_prob: float):
    """accept [B, g]: x is in the top-k [B, g+1] of the teacher's p [B, g+1, V] (`top_k_rank`) and p(x) >=
    min_prob, p from `judged_logits` (the warped teacher; a greedy one at temperature 1)."""
    g = block.draft_tokens.shape[1]
    scores = judged_logits(block, warped, target)[:, :g]  # [B, g, V], sliced first
    x = block.draft_tokens.unsqueeze(-1)  # [B, g, 1]
    p_x = scores.softmax(-1).gather(-1, x).squeeze(-1)  # [B, g]
    # Outside the teacher's support (top-p / top-k / min-p filters) a token is never in its top-K.
    supported = True if target.greedy else warped[:, :g].gather(-1, x).squeeze(-1) > -math.inf
    return (top_k_rank(scores, block.draft_tokens) < k[:, :g]) & supported & (p_x >= min_prob)


def _top_k_verdict(block: Block, warped: torch.Tensor, target: Sampling, k: torch.Tensor, min_prob: float) -> Verdict:
    """The verdict of both top-K policies, given the warped teacher logits [B, g+1, V] and K [B, g+1]: the top-K
    test on each draft, and a teacher sample (stream TARGET) as correction and bonus at every position."""
    accept = _top_k_test(block, warped, target, k, min_prob)  # [B, g]
    teacher = _teacher_samples(warped, block, target)  # [B, g+1]
    return Verdict(accept=accept, correction=teacher[:, : accept.shape[1]], bonus=teacher, skd_top_k=k)


class Stateless:
    """A policy that carries nothing from one block to the next: no state, nothing to update."""

    def init_state(self, batch_size: int, device) -> None:
        return None

    def update(self, state, verdict, n, gamma_rows, active):
        return state


@dataclass(frozen=True)
class GreedyPolicy(Stateless):
    """Accept x if it is the teacher's argmax; lossless at temperature 0."""

    bonus_token: bool = True
    name: ClassVar[str] = "greedy"
    needs_draft_logits: ClassVar[bool] = False

    def judge(self, block: Block, state=None) -> Verdict:
        g = block.draft_tokens.shape[1]
        best = block.target_logits.argmax(-1)  # [B, g+1]
        return Verdict(accept=block.draft_tokens == best[:, :g], correction=best[:, :g], bonus=best)


@dataclass(frozen=True)
class SpeculativePolicy(Stateless):
    """Leviathan et al. speculative sampling: output tokens follow the teacher's warped distribution exactly."""

    target: Sampling = GREEDY
    bonus_token: bool = True
    name: ClassVar[str] = "speculative"
    needs_draft_logits: ClassVar[bool] = True

    def judge(self, block: Block, state=None) -> Verdict:
        g = block.draft_tokens.shape[1]
        x = block.draft_tokens.unsqueeze(-1)  # [B, g, 1]
        p = warp_logits(block.target_logits, self.target).softmax(-1)  # [B, g+1, V]
        q = block.draft_logits.float().softmax(-1)  # [B, g, V]
        p_x = p[:, :g].gather(-1, x).squeeze(-1)  # [B, g]
        q_x = q.gather(-1, x).squeeze(-1)
        accept = block.u_accept * q_x < p_x  # u < p/q without dividing by a zero q
        residual = (p[:, :g] - q).clamp_min(0)  # [B, g, V]
        empty = residual.sum(-1, keepdim=True) <= 0  # p == q: a rejection cannot happen, keep a valid fallback
        residual = torch.where(empty, p[:, :g], residual)
        if self.target.greedy:
            correction = residual.argmax(-1)
            bonus = p.argmax(-1)
        else:
            correction = sample_from_weights(residual, block.u_target[:, :g])
            bonus = sample_from_weights(p, block.u_target)
        return Verdict(accept=accept, correction=correction, bonus=bonus)


@dataclass(frozen=True)
class TopKPolicy(Stateless):
    """SKD: accept x if it is in the teacher's top-K and has teacher probability >= min_prob; else the teacher
    samples the token. `target` warps the teacher (temperature, top-p) before the test and before sampling."""

    k: int = 25
    min_prob: float = 0.0
    target: Sampling = Sampling(temperature=1.0)
    bonus_token: bool = False
    name: ClassVar[str] = "top_k"
    needs_draft_logits: ClassVar[bool] = False

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"top_k policy: k must be >= 1, got {self.k}")
        if self.min_prob < 0:
            raise ValueError(f"top_k policy: min_prob must be >= 0 (0 = off), got {self.min_prob}")

    def judge(self, block: Block, state=None) -> Verdict:
        warped = warp_logits(block.target_logits, self.target)  # [B, g+1, V]
        k = torch.full(warped.shape[:2], self.k, dtype=torch.long, device=warped.device)  # [B, g+1]
        return _top_k_verdict(block, warped, self.target, k, self.min_prob)


@dataclass
class AdaptiveState:
    k_base: torch.Tensor  # [B] float, the baseline K of each row
    success: torch.Tensor  # [B] float, EMA of per-token acceptance


@dataclass(frozen=True)
class AdaptiveTopKPolicy:
    """top_k with a per-row, per-position K:

        K_eff = clip(round(K_base + g * (2 * H_norm - 1)), k_min, k_max)

    H_norm is the entropy of the teacher's warped p_i over log V (a greedy teacher's at temperature 1:
    `judged_logits`). After each block the success EMA of the row is
    updated over its judged positions (the accepted drafts and the first rejection, in order), then K_base moves
    down by `step` if the EMA is above r_plus, up by `step` if below r_minus, clipped to [k_min, k_max].
    """

    k_init: float = 25
    k_min: int = 1
    k_max: int = 100
    r_plus: float = 0.8
    r_minus: float = 0.5
    ema: float = 0.1  # weight of the newest token in the success EMA
    entropy_gain: float = 5.0
    step: float = 1.0
    min_prob: float = 0.0
    target: Sampling = Sampling(temperature=1.0)
    bonus_token: bool = False
    name: ClassVar[str] = "adaptive_top_k"
    needs_draft_logits: ClassVar[bool] = False

    def __post_init__(self):
        if not 1 <= self.k_min <= self.k_init <= self.k_max:
            raise ValueError(
                f"adaptive_top_k: need 1 <= k_min <= k_init <= k_max, got {self.k_min}, {self.k_init}, {self.k_max}"
            )
        if not 0 <= self.r_minus <= self.r_plus <= 1:
            raise ValueError(f"adaptive_top_k: need 0 <= r_minus <= r_plus <= 1, got {self.r_minus}, {self.r_plus}")
        if not 0 < self.ema <= 1:
            raise ValueError(f"adaptive_top_k: ema must be in (0, 1], got {self.ema}")

    def init_state(self, batch_size: int, device) -> AdaptiveState:
        k = torch.full((batch_size,), float(self.k_init), device=device)
        ema = torch.full((batch_size,), (self.r_plus + self.r_minus) / 2, device=device)
        return AdaptiveState(k_base=k, success=ema)

    def effective_k(self, warped: torch.Tensor, k_base: torch.Tensor) -> torch.Tensor:
        """K_eff [B, g+1] from the teacher logits [B, g+1, V] the test reads (`judged_logits`) and K_base [B]."""
        logp = warped.log_softmax(-1)
        entropy = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)  # [B, g+1] nats
        h_norm = entropy / math.log(warped.shape[-1])
        k = k_base[:, None] + self.entropy_gain * (2 * h_norm - 1)
        return k.round().clamp(self.k_min, self.k_max).long()

    def judge(self, block: Block, state: AdaptiveState) -> Verdict:
        warped = warp_logits(block.target_logits, self.target)  # [B, g+1, V]
        k = self.effective_k(judged_logits(block, warped, self.target), state.k_base)
        return _top_k_verdict(block, warped, self.target, k, self.min_prob)

    def update(self, state: AdaptiveState, verdict: Verdict, n, gamma_rows, active) -> AdaptiveState:
        g = verdict.accept.shape[1]
        judged = judged_positions(n, gamma_rows, active)  # [B]
        i = torch.arange(g, device=n.device)
        age = (judged[:, None] - 1 - i).clamp_min(0)  # [B, g] tokens judged after position i
        weight = self.ema * (1 - self.ema) ** age * (i < judged[:, None])
        success = (1 - self.ema) ** judged * state.success + (weight * verdict.accept.float()).sum(-1)
        move = (success < self.r_minus).float() - (success > self.r_plus).float()
        k_base = torch.where(active, (state.k_base + self.step * move).clamp(self.k_min, self.k_max), state.k_base)
        return AdaptiveState(k_base=k_base, success=success)


POLICIES = {
    "speculative": SpeculativePolicy,
    "greedy": GreedyPolicy,
    "top_k": TopKPolicy,
    "adaptive_top_k": AdaptiveTopKPolicy,
}


def make_policy(name: str, **options):
    """Build a policy by name; options are its dataclass fields (e.g. k=10, min_prob=0.01, target=Sampling(1.0))."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name](**options)


@dataclass
class Settled:
    n: torch.Tensor  # [B] accepted drafts (0 <= n <= gamma_rows)
    full: torch.Tensor  # [B] bool, n == gamma_rows
    next_token: torch.Tensor  # [B] the teacher's correction or bonus (meaningless where has_next is False)
    has_next: torch.Tensor  # [B] bool


def judged_positions(n: torch.Tensor, gamma_rows: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Draft positions a block judged per row [B]: the n accepted drafts and the first rejection (n + 1), at most
    the row's own block length gamma_rows; 0 for rows not running. n, gamma_rows [B] long, active [B] bool."""
    return torch.where(active, torch.minimum(n + 1, gamma_rows), 0)


def settle(verdict: Verdict, gamma_rows: torch.Tensor, bonus_token: bool) -> Settled:
    """Per-row outcome of a verdict. gamma_rows [B]: each row's own block length (<= g; 0 for finished rows)."""
    g = verdict.accept.shape[1]
    inside = torch.arange(g, device=gamma_rows.device) < gamma_rows[:, None]  # [B, g]
    n = (verdict.accept & inside).long().cumprod(-1).sum(-1)  # [B] leading accepted drafts
    full = n == gamma_rows
    correction = verdict.correction.gather(1, n.clamp_max(g - 1)[:, None]).squeeze(1)
    bonus = verdict.bonus.gather(1, n[:, None]).squeeze(1)
    has_next = torch.ones_like(full) if bonus_token else ~full
    return Settled(n=n, full=full, next_token=torch.where(full, bonus, correction), has_next=has_next)


__all__ = [
    "AdaptiveState",
    "AdaptiveTopKPolicy",
    "Block",
    "GreedyPolicy",
    "POLICIES",
    "Settled",
    "SpeculativePolicy",
    "TopKPolicy",
    "Verdict",
    "judged_positions",
    "make_policy",
    "settle",
    "top_k_rank",
]
