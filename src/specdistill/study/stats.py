"""Intervals over seeds and verdicts on pairwise claims ("method B scores higher than method A").

Runs with different seeds are independent samples of a method's score. A method's cell is its mean with a
Student-t 95% confidence interval; a claim compares two methods by Welch's t interval for the difference of their
means (unequal variances, Welch-Satterthwaite degrees of freedom). The claim holds when the whole interval is on
its side of zero, is reversed when the whole interval is on the other side, and cannot be told apart otherwise.

Samples without spread (every seed gave the same value) give no estimate of the seed-to-seed variation, and a
t interval computed from a zero standard deviation has zero width: any difference, however small, would "hold"
with two seeds each. So an interval is undefined (nan) when its samples have no spread: a constant sample's own
interval, and Welch's interval when both samples are constant, whether their means are equal or not (then
"cannot be told apart": add seeds, or check that the metric varies with the seed). Welch's interval of one
constant and one varying sample is defined: its spread is the varying one's.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t

HOLDS, REVERSED, UNDECIDED = "holds", "reversed", "cannot be told apart"


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_ci(values: list[float], level: float = 0.95) -> Interval:
    """The mean and its t interval; with one value, or values without spread, the interval is undefined (nan on
    both sides)."""
    n = len(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n >= 2 else 0.0
    if sd == 0:
        return Interval(mean, math.nan, math.nan, n)
    half = student_t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def diff_ci(a: list[float], b: list[float], level: float = 0.95) -> Interval:
    """Welch's interval for mean(b) - mean(a); undefined (nan) with fewer than two values in either sample, or
    when both samples are constant (no spread to estimate the variation from: see the module's note)."""
    diff = statistics.fmean(b) - statistics.fmean(a)
    if len(a) < 2 or len(b) < 2:
        return Interval(diff, math.nan, math.nan, min(len(a), len(b)))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, math.nan, math.nan, min(len(a), len(b)))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = student_t.ppf(0.5 + level / 2, df) * se
    return Interval(diff, diff - half, diff + half, min(len(a), len(b)))


def verdict(a: list[float], b: list[float], level: float = 0.95) -> tuple[str, Interval]:
    """Whether "b is higher than a" holds, is reversed, or cannot be told apart at this number of seeds."""
    ci = diff_ci(a, b, level)
    if ci.low > 0:
        return HOLDS, ci
    if ci.high < 0:
        return REVERSED, ci
    return UNDECIDED, ci


def format_interval(ci: Interval, fmt: str = ".3f") -> str:
    """`0.512 [0.480, 0.544]`; the mean alone when the interval is undefined."""
    if math.isnan(ci.low):
        return format(ci.mean, fmt)
    return f"{ci.mean:{fmt}} [{ci.low:{fmt}}, {ci.high:{fmt}}]"
