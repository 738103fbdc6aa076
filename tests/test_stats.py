"""Intervals and verdicts, against values computed by hand from t tables."""

import math

import pytest

from specdistill.study.stats import HOLDS, REVERSED, UNDECIDED, diff_ci, format_interval, mean_ci, verdict

# Two-sided 95% Student-t quantiles from a printed table: t(0.975, df).
T975 = {4: 2.7764, 8: 2.3060}


def test_mean_interval_of_five_seeds_matches_the_t_table():
    # mean 3, sample sd sqrt(2.5) = 1.5811, se = 0.7071, half width = 2.7764 * 0.7071 = 1.9632
    ci = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert ci.mean == pytest.approx(3.0)
    assert ci.half_width == pytest.approx(T975[4] * math.sqrt(2.5) / math.sqrt(5), abs=1e-3)
    assert (ci.low, ci.high) == pytest.approx((3 - 1.9632, 3 + 1.9632), abs=1e-3)


def test_a_normal_quantile_would_be_too_narrow_for_five_seeds():
    # 1.96 instead of t(0.975, 4) would give 1.386: the t interval must be wider.
    assert mean_ci([1.0, 2.0, 3.0, 4.0, 5.0]).half_width > 1.9


def test_welch_difference_with_equal_variances_has_pooled_degrees_of_freedom():
    # var 2.5 each, n 5 each: se = sqrt(0.5 + 0.5) = 1; Welch df = 1 / (2 * 0.25 / 4) = 8; half = 2.3060
    ci = diff_ci([1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.0])
    assert ci.mean == pytest.approx(2.0)
    assert (ci.low, ci.high) == pytest.approx((2 - T975[8], 2 + T975[8]), abs=1e-3)


def test_welch_difference_with_unequal_variances():
    # a: var 2.5, n 5 -> 0.5; b: var 10 (sd of 1,3,5,7,9 is sqrt 10), n 5 -> 2.0; se = sqrt 2.5 = 1.5811
    # df = 2.5^2 / (0.5^2/4 + 2^2/4) = 6.25 / 1.0625 = 5.882; t(0.975, 5.882) = 2.4587 (interpolated: between
    # t(0.975, 5) = 2.5706 and t(0.975, 6) = 2.4469, closer to 6); half = 3.888
    ci = diff_ci([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 3.0, 5.0, 7.0, 9.0])
    assert ci.mean == pytest.approx(2.0)
    assert ci.half_width == pytest.approx(3.888, abs=0.02)


@pytest.mark.parametrize("b, expected", [
    ([6.0, 7.0, 8.0, 9.0, 10.0], HOLDS),        # difference 5, interval [2.69, 7.31]
    ([3.0, 4.0, 5.0, 6.0, 7.0], UNDECIDED),     # difference 2, interval [-0.31, 4.31]
    ([-4.0, -3.0, -2.0, -1.0, 0.0], REVERSED),  # difference -5
])
def test_verdicts(b, expected):
    assert verdict([1.0, 2.0, 3.0, 4.0, 5.0], b)[0] == expected


@pytest.mark.parametrize("a, b", [([0.5, 0.5], [0.5, 0.5]), ([0.5] * 5, [0.5] * 5), ([0.5, 0.5], [0.6, 0.6]),
                                  ([0.5] * 5, [0.6] * 5), ([0.6] * 3, [0.5] * 3)],
                         ids=["two-equal", "five-equal", "two-different", "five-different", "lower"])
def test_samples_without_spread_never_decide_a_claim(a, b):
    """Constant samples give no estimate of the seeds' variation: a zero-width interval at the difference would
    make any difference "hold" (two seeds each at 0.5 and 0.6). Their interval is undefined: cannot be told apart."""
    word, ci = verdict(a, b)
    assert word == UNDECIDED and math.isnan(ci.low) and math.isnan(ci.high)
    assert ci.mean == pytest.approx(sum(b) / len(b) - sum(a) / len(a))
    assert math.isnan(mean_ci(a).low) and format_interval(mean_ci(a)) == f"{a[0]:.3f}"


def test_one_constant_sample_against_a_varying_one_has_the_varying_ones_interval():
    # se = sqrt(2.5 / 5) = 0.7071, df = (0.5)^2 / (0.5^2 / 4) = 4: half = 2.7764 * 0.7071 = 1.9632 around 3 - 0.5
    ci = diff_ci([0.5] * 5, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert (ci.low, ci.high) == pytest.approx((2.5 - 1.9632, 2.5 + 1.9632), abs=1e-3)
    assert verdict([0.5] * 5, [6.0, 7.0, 8.0, 9.0, 10.0])[0] == HOLDS


def test_one_seed_gives_no_interval_and_no_verdict():
    assert math.isnan(mean_ci([0.4]).low)
    assert verdict([0.4], [0.9])[0] == UNDECIDED
    assert format_interval(mean_ci([0.4])) == "0.400"
    assert format_interval(mean_ci([1.0, 2.0, 3.0, 4.0, 5.0]), ".2f") == "3.00 [1.04, 4.96]"
