"""Sampling: warping logits (temperature, top-p, top-k, min-p) and drawing tokens with position-keyed noise.

Randomness is a pure function of (row seed, response position, stream): a counter-based hash gives one uniform
number per draw, and a token is drawn by inverting the cumulative distribution with it. A row therefore samples
the same tokens whatever batch it is in, and whether the teacher verifies a block in one forward or in many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Noise streams: independent draws at the same (row, position).
DRAFT = 1  # the drafter's (or a lone model's) own token
ACCEPT = 2  # the uniform of the speculative acceptance test
TARGET = 3  # a token the teacher writes: correction, replacement or bonus

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9


@dataclass(frozen=True)
class Sampling:
    """How one model turns logits into a token.

    temperature: 0 = greedy (argmax; the filters below are then unused); > 0 divides the logits.
    top_p: nucleus mass kept, in (0, 1]; 1 = off.
    top_k: tokens kept by rank; 0 = off.
    min_p: tokens below min_p * max probability are dropped, in [0, 1); 0 = off.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def __post_init__(self):
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"Sampling.temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Sampling.top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"Sampling.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"Sampling.min_p must be in [0, 1) (0 = off), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling()


def warp_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Logits of the distribution a model samples from: [..., V] -> [..., V] float32, -inf outside its support.

    Greedy gives a one-hot distribution on the (first) argmax. Otherwise the order is: temperature, then top-k,
    top-p and min-p filters. Ranks are those of the raw logits, so ranking the warped logits is the same.
    """
    logits = logits.float()
    if sampling.greedy:
        top = logits.argmax(-1, keepdim=True)
        return torch.full_like(logits, -math.inf).scatter_(-1, top, 0.0)
    z = logits / sampling.temperature
    if sampling.top_k and sampling.top_k < z.shape[-1]:
        kth = z.topk(sampling.top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, -math.inf)
    if sampling.top_p < 1:
        z = _filter_top_p(z, sampling.top_p)
    if sampling.min_p > 0:
        p = z.softmax(-1)
        z = z.masked_fill(p < sampling.min_p * p.amax(-1, keepdim=True), -math.inf)
    return z


def _filter_top_p(z: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of highest tokens whose probability reaches top_p (always at least one)."""
    sorted_z, order = z.sort(-1, descending=True)
    p = sorted_z.softmax(-1)
    mass_before = p.cumsum(-1) - p  # probability of the strictly higher-ranked tokens
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return z.masked_fill(drop, -math.inf)


def sample_tokens(warped: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """Draw one token per distribution: warped [..., V] logits, u [...] uniforms in (0, 1) -> [...] long.

    u=None means argmax. Inversion of the CDF never returns a token of probability 0.
    """
    if u is None:
        return warped.argmax(-1)
    return sample_from_weights(warped.softmax(-1), u)


def float_dtype(device: torch.device | str) -> torch.dtype:
    """The widest float type of `device`, in which the engine's noise and inverse-CDF draws are computed:
    float64, or float32 on Apple's mps, which has no float64 (its draws then differ from a CPU's or a GPU's by the
    rounding of float32; no mps machine has run the tests)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def sample_from_weights(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from unnormalised non-negative weights [..., V] with uniforms u [...] -> [...] long."""
    dtype = float_dtype(weights.device)  # float64: token order is fixed, so rounding must not move boundaries much
    cdf = weights.to(dtype).cumsum(-1)
    target = (u.to(dtype) * cdf[..., -1]).unsqueeze(-1)
    token = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return token.clamp_max(weights.shape[-1] - 1)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32), without int64 overflow (split x into 16-bit halves)."""
    high = (((x >> 16) * c) & 0xFFFF) << 16
    return (high + (x & 0xFFFF) * c) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def derive_seed(*keys: int) -> int:
    """A 31-bit seed hashed from non-negative integer keys, e.g. (run seed, step, row), by numpy's SeedSequence.

    Neighbouring keys give unrelated seeds: with `seed + row` instead, seed s at row i would reuse the noise of
    seed s + 1 at row i - 1, so runs meant to be independent would share it."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)


def row_seeds(seed: int | torch.Tensor, batch_size: int, device: torch.device | str = "cpu",
              first_row: int = 0) -> torch.Tensor:
    """Per-row seeds [B] int64. An int gives derive_seed(seed, first_row + b) for row b, a pure function of
    (seed, row index); pass a [B] tensor (e.g. seeds derived from example ids) to set each row's own seed."""
    if isinstance(seed, torch.Tensor):
        seeds = seed.to(device=device, dtype=torch.long).reshape(-1)
        if seeds.numel() != batch_size:
            raise ValueError(f"seed has {seeds.numel()} entries; pass one per row ({batch_size}) or an int")
        return seeds
    seeds = [derive_seed(seed, first_row + b) for b in range(batch_size)]
    return torch.tensor(seeds, device=device, dtype=torch.long)


def uniforms(seeds: torch.Tensor, positions: torch.Tensor, stream: int, dtype: torch.dtype | None = None
             ) -> torch.Tensor:
    """Uniform numbers in (0, 1), a pure function of (seed, position, stream).

    seeds [B] int64, positions [B, n] int64 (response index, >= 0) -> [B, n] of dtype (None: `float_dtype` of
    the seeds' device: float64, float32 on mps).
    """
    folded = (seeds ^ (seeds >> 32)) & _MASK32
    key = _mix32(folded ^ ((stream * _GOLDEN32) & _MASK32))  # [B]
    h = _mix32(_mix32(key[:, None] ^ (positions & _MASK32)) ^ _GOLDEN32)  # [B, n]
    return unit_interval(h, dtype or float_dtype(seeds.device))


def unit_interval(h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """32-bit hashes (int64 tensor of values in [0, 2**32)) -> numbers in the open interval (0, 1): (h + 0.5) / 2**32
    in float64; in float32, whose 24-bit significand would round the largest of those to 1.0, the top 23 bits:
    (h // 2**9 + 0.5) / 2**23, exact in float32 (the two agree to within 2**-23)."""
    if dtype == torch.float64:
        return (h.double() + 0.5) * 2.0**-32
    return ((h >> 9).to(dtype) + 0.5) * 2.0**-23
