"""What a generation returns: the response tokens, who wrote them, why each row stopped, and statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from .policies import judged_positions
from .sampling import float_dtype

FINISH_REASONS = ("running", "eos", "stop", "length")  # index = the engine's reason code


@dataclass
class GenerationStats:
    """Counts over (row, block) pairs of the rows still running at the block's start.

    A block of a row is one draft/verify/decide round; `gamma` is that row's own draft length in it.
    Counts of drafts are policy decisions: drafts the policy accepted are counted even if an EOS, a stop
    sequence or max_new_tokens cut them from the response.
    """

    rows: int = 0
    new_tokens: int = 0  # committed response tokens
    steps: int = 0  # loop iterations (batch-level blocks)
    blocks: int = 0  # (row, block) pairs
    drafted: int = 0  # drafted tokens offered to the teacher (0 without a teacher)
    accepted: int = 0  # drafted tokens the teacher accepted
    replaced: int = 0  # teacher corrections after a rejection
    bonus: int = 0  # teacher bonus tokens after a fully accepted block
    first_accepted: int = 0  # blocks whose first drafted token was accepted
    full_matches: int = 0  # blocks fully accepted
    gamma_sum: float = 0.0
    gamma_sq_sum: float = 0.0
    gamma_min: float = math.inf
    gamma_max: float = -math.inf
    top_k_sum: float = 0.0  # K over judged positions (accepted drafts and the first rejection)
    top_k_count: int = 0
    position_reached: list[int] = field(default_factory=list)  # [i]: blocks that judged draft position i
    position_accepted: list[int] = field(default_factory=list)  # [i]: ... and accepted it
    target_calls: int = 0  # teacher forward passes (the first one encodes the prompt too)
    draft_calls: int = 0  # student forward passes (likewise)
    target_tokens_fed: int = 0
    draft_tokens_fed: int = 0
    model_time_s: float = 0.0  # seconds inside the models' forward calls (draft_time_s + target_time_s)
    draft_time_s: float = 0.0  # ... of the drafter (the lone model in plain decoding)
    target_time_s: float = 0.0  # ... of the teacher
    wall_time_s: float = 0.0  # seconds of the whole generate call

    @property
    def acceptance_rate(self) -> float:
        return _ratio(self.accepted, self.drafted)

    @property
    def token_acceptance(self) -> float:
        """alpha = sum_i accepted_i / sum_i reached_i over the judged draft positions of all blocks (nan if none).

        A block judges its drafts up to and including the first rejection; drafts after it are never judged.
        `acceptance_rate` (accepted / drafted) counts those as rejections: for independent acceptance it is
        alpha (1 - alpha^g) / ((1 - alpha) g), e.g. 0.59 instead of 0.8 at gamma 4. Leviathan's formula needs alpha."""
        return _ratio(sum(self.position_accepted), sum(self.position_reached))

    @property
    def first_token_acceptance(self) -> float:
        return _ratio(self.first_accepted, self.blocks if self.drafted else 0)

    @property
    def full_match_rate(self) -> float:
        return _ratio(self.full_matches, self.blocks if self.drafted else 0)

    @property
    def gamma_mean(self) -> float:
        return _ratio(self.gamma_sum, self.blocks)

    @property
    def gamma_std(self) -> float:
        if not self.blocks:
            return math.nan
        return math.sqrt(max(self.gamma_sq_sum / self.blocks - self.gamma_mean**2, 0.0))

    @property
    def skd_top_k_mean(self) -> float:
        return _ratio(self.top_k_sum, self.top_k_count)

    @property
    def per_position_acceptance(self) -> list[float]:
        return [_ratio(a, r) for a, r in zip(self.position_accepted, self.position_reached) if r]

    @property
    def mean_accepted_length(self) -> float:
        """Tokens committed per row-block, i.e. per teacher verification of a row (vLLM's mean acceptance length)."""
        return _ratio(self.new_tokens, self.blocks)

    @property
    def tokens_per_s(self) -> float:
        return _ratio(self.new_tokens, self.wall_time_s)

    @property
    def model_time_fraction(self) -> float:
        return _ratio(self.model_time_s, self.wall_time_s)

    def combine(self, other: GenerationStats) -> GenerationStats:
        """Statistics of two generations together (e.g. several batches of one training step)."""
        merged = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "gamma_min":
                merged[f.name] = min(a, b)
            elif f.name == "gamma_max":
                merged[f.name] = max(a, b)
            elif isinstance(a, list):
                n = max(len(a), len(b))
                merged[f.name] = [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]
            else:
                merged[f.name] = a + b
        return GenerationStats(**merged)

    def metrics(self) -> dict[str, float]:
        """Flat metrics with the project's names (DESIGN section 5). Rates that need drafts appear only with them."""
        out = {
            "tokens/new": float(self.new_tokens),
            "time/rollout_s": self.wall_time_s,
            "time/model_s": self.model_time_s,
            "throughput/tokens_per_s": self.tokens_per_s,
        }
        if self.drafted:
            out.update(
                {
                    "rollout/acceptance_rate": self.acceptance_rate,
                    "rollout/token_acceptance": self.token_acceptance,
                    "rollout/first_token_acceptance": self.first_token_acceptance,
                    "rollout/full_match_rate": self.full_match_rate,
                    "rollout/gamma_mean": self.gamma_mean,
                    "rollout/gamma_min": float(self.gamma_min),
                    "rollout/gamma_max": float(self.gamma_max),
                    "rollout/gamma_std": self.gamma_std,
                    "rollout/mean_accepted_length": self.mean_accepted_length,
                    "rollout/target_calls": float(self.target_calls),
                    "tokens/drafted": float(self.drafted),
                    "tokens/accepted": float(self.accepted),
                    "tokens/replaced": float(self.replaced),
                    "tokens/bonus": float(self.bonus),
                }
            )
        if self.top_k_count:
            out["rollout/skd_top_k_mean"] = self.skd_top_k_mean
        return out


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


@dataclass
class Generation:
    """Responses of a batch.

    tokens: [B, T] long, right-padded with the pad id; T = max(lengths) (EOS and stop tokens are included).
    lengths: [B] long.
    teacher_written: [B, T] bool, tokens the teacher wrote (corrections, replacements, bonus tokens).
    finish_reasons: per row, "eos", "stop" or "length" (max_new_tokens reached).
    trace: with trace=True, one dict per block (see docs/engine.md), tensors on the CPU.
    target_logits: with keep_target_logits, the teacher's logits predicting each response position [B, T, V]
        (or what the keep function made of them: a tensor or a tuple of tensors [B, T, ...]), on the teacher's
        device; columns at or past a row's length hold no meaning.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    teacher_written: torch.Tensor
    finish_reasons: list[str]
    stats: GenerationStats
    trace: list[dict] | None = None
    target_logits: torch.Tensor | tuple | None = None

    def metrics(self) -> dict[str, float]:
        return self.stats.metrics()

    def rows(self) -> list[list[int]]:
        """Each row's response as a list of token ids (without padding)."""
        return [self.tokens[b, : int(n)].tolist() for b, n in enumerate(self.lengths)]


class KeptLogits:
    """The teacher's logits at each committed response position, gathered block by block during a generation.

    The verify forward of a block scores its pending token and drafts d_1 .. d_g: its logits at block column i
    predict response position start + i, conditioned on the pending token and d_1 .. d_i. Every committed token
    of the block sits at a column i <= n (n accepted drafts, then the correction or bonus), so those logits are
    conditioned on exactly the committed prefix: they are the teacher-forced logits of the finished response.
    Columns past the committed ones are written too and overwritten by the next block, or lie past the row's end.

    keep: maps logits [B, n, V] to what is kept (a tensor or a tuple of tensors [B, n, ...]); None keeps them as
    they are (the teacher's dtype). Buffers [B, width, ...] are allocated at the first block, on its device.
    """

    def __init__(self, keep, batch_size: int, width: int):
        self.keep, self.batch_size, self.width = keep, batch_size, width
        self.buffers: tuple[torch.Tensor, ...] | None = None
        self.is_tuple = False

    def write(self, logits: torch.Tensor, at: torch.Tensor) -> None:
        """logits [B, g+1, V] of one verify block; at [B, g+1] the response position each column predicts."""
        parts = logits if self.keep is None else self.keep(logits)
        self.is_tuple, self.kind = isinstance(parts, tuple), type(parts)  # a NamedTuple comes back as one
        parts = parts if self.is_tuple else (parts,)
        if self.buffers is None:
            self.buffers = tuple(p.new_zeros(self.batch_size, self.width, *p.shape[2:]) for p in parts)
        rows = torch.arange(self.batch_size, device=logits.device)[:, None]
        for buffer, part in zip(self.buffers, parts):
            buffer[rows, at.to(logits.device)] = part

    def result(self, length: int):
        """The kept form [B, length, ...] (None if no block was verified); a tuple keeps its type."""
        if self.buffers is None:
            return None
        cut = [b[:, :length] for b in self.buffers]
        return self.kind(*cut) if self.is_tuple else cut[0]


class StatsAccumulator:
    """Keeps each block's per-row outcome (a few [B] tensors, no host sync) and computes the statistics once,
    vectorised over all blocks, in `finish`."""

    def __init__(self, max_gamma: int):
        self.max_gamma = max_gamma
        self.blocks: list[tuple[torch.Tensor, ...]] = []  # (active, gamma_rows, n, full, has_next) per block
        self.skd_top_k: list[torch.Tensor] = []  # [2] (sum of K over judged positions, their count) per block
        self.steps = 0

    def record(self, active, gamma_rows, n, full, has_next, skd_top_k, verified: bool) -> None:
        """One block. active [B] bool, gamma_rows/n [B] long, full/has_next [B] bool, skd_top_k [B, g+1] or None."""
        self.steps += 1
        if not verified:
            return
        self.blocks.append((active, gamma_rows, n, full, has_next))
        if skd_top_k is not None:
            judged = judged_positions(n, gamma_rows, active)  # [B]
            on = torch.arange(skd_top_k.shape[1], device=n.device) < judged[:, None]  # [B, g+1]
            self.skd_top_k.append(torch.stack([(skd_top_k * on).sum(), on.sum()]))

    def finish(self, stats: GenerationStats) -> GenerationStats:
        stats.steps = self.steps
        if not self.blocks:
            return stats
        active, gamma, n, full, has_next = (torch.stack(x).flatten() for x in zip(*self.blocks))  # [S*B] each
        gamma, n, full, has_next = gamma[active], n[active], full[active], has_next[active]
        g = gamma.to(float_dtype(gamma.device))
        stats.blocks = int(active.sum())
        stats.drafted, stats.accepted = int(gamma.sum()), int(n.sum())
        stats.replaced, stats.bonus = int((~full).sum()), int((full & has_next).sum())
        stats.first_accepted, stats.full_matches = int((n > 0).sum()), int(full.sum())
        stats.gamma_sum, stats.gamma_sq_sum = float(g.sum()), float((g * g).sum())
        stats.gamma_min, stats.gamma_max = float(g.min()), float(g.max())
        if self.skd_top_k:
            k_sum, k_count = torch.stack(self.skd_top_k).sum(0).tolist()
            stats.top_k_sum, stats.top_k_count = float(k_sum), int(k_count)
        i = torch.arange(self.max_gamma, device=n.device)
        inside = i < gamma[:, None]  # [blocks, G]
        reached = (inside & (i <= n[:, None])).sum(0).tolist()
        accepted = (inside & (i < n[:, None])).sum(0).tolist()
        last = max((j + 1 for j, r in enumerate(reached) if r), default=0)
        stats.position_reached, stats.position_accepted = reached[:last], accepted[:last]
        return stats
