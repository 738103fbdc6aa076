"""Gamma schedules: how many tokens each row drafts in its next block.

Gamma is kept per row ([B] long tensor) and updated on the device after every block from that row's own outcome,
so a row's schedule does not depend on the batch it is in. A block drafts max(gamma_rows) tokens for the batch;
positions beyond a row's own gamma are ignored for that row (see docs/engine.md).

| schedule    | after a fully accepted block       | otherwise (n accepted)    |
|-------------|------------------------------------|---------------------------|
| constant    | gamma                              | gamma                     |
| lupi        | min(max_gamma, gamma + 2)          | max(1, n + 1)             |
| heuristic   | min(max_gamma, gamma + 2)          | max(1, gamma - 1)         |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class ConstantGamma:
    gamma: int = 4
    name: ClassVar[str] = "constant"

    def __post_init__(self):
        if self.gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {self.gamma}")

    @property
    def max_gamma(self) -> int:
        return self.gamma

    def update(self, gamma: torch.Tensor, n: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        return gamma


class _Capped:
    """A schedule that moves gamma within [1, max_gamma]: both are checked when it is built."""

    def __post_init__(self):
        if not 1 <= self.gamma <= self.max_gamma:
            raise ValueError(f"{self.name} schedule: need 1 <= gamma <= max_gamma, got {self.gamma}, {self.max_gamma}")


@dataclass(frozen=True)
class LupiGamma(_Capped):
    """LUPI-SKD's rule: grow by 2 on a full accept, else restart just past the accepted prefix."""

    gamma: int = 4
    max_gamma: int = 16
    name: ClassVar[str] = "lupi"

    def update(self, gamma: torch.Tensor, n: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        return torch.where(full, (gamma + 2).clamp_max(self.max_gamma), (n + 1).clamp_min(1))


@dataclass(frozen=True)
class HeuristicGamma(_Capped):
    """Hugging Face assisted generation's rule: +2 on a full accept, -1 otherwise, floor 1 (cap max_gamma)."""

    gamma: int = 4
    max_gamma: int = 32
    name: ClassVar[str] = "heuristic"

    def update(self, gamma: torch.Tensor, n: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        return torch.where(full, (gamma + 2).clamp_max(self.max_gamma), (gamma - 1).clamp_min(1))


SCHEDULES = {"constant": ConstantGamma, "lupi": LupiGamma, "heuristic": HeuristicGamma}


def make_schedule(name: str = "constant", gamma: int = 4, max_gamma: int | None = None):
    """Build a schedule by name. max_gamma is ignored by `constant`; its default is 16 (lupi) or 32 (heuristic)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown gamma schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    if name == "constant":
        return ConstantGamma(gamma)
    return SCHEDULES[name](gamma) if max_gamma is None else SCHEDULES[name](gamma, max_gamma)
