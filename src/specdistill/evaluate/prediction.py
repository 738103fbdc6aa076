"""What speculative decoding will gain, predicted from acceptance and cost (Leviathan et al. 2023, section 3).

Notation: alpha is the probability that the target accepts one drafted token (the same at every position,
independently: Leviathan's assumption); gamma the drafts per block; c the cost of one draft forward and c_v(gamma)
the cost of the target's verification forward over gamma + 1 tokens, both in units of one decoding forward of the
target (Leviathan take c_v = 1). Every figure is defined in docs/metrics.md.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch

from ..engine.sampling import Sampling, float_dtype, warp_logits
from ..scoring import paired_response_logits

MAX_GAMMA = 16  # the prediction table's longest block


@dataclass
class ForwardCosts:
    """Measured forward costs, in units of one decoding forward of the target (one token after a cache).

    c: one draft forward of one token. verify[g - 1]: the target's forward over g + 1 tokens (g drafts and the
    pending token), g = 1..len(verify); empty: Leviathan's c_v = 1 at every gamma.
    """

    c: float
    verify: list[float] = field(default_factory=list)
    measured: list[float] = field(default_factory=list)  # the raw c_v ratios `verify` was fitted to, if any

    def verify_cost(self, gamma: float) -> float:
        """c_v(gamma), interpolated linearly between measured gammas (a mean gamma need not be whole), held
        at the last measured value beyond them; 1 without measurements."""
        if not self.verify:
            return 1.0
        g = min(max(gamma, 1.0), float(len(self.verify)))
        low = int(math.floor(g))
        high = min(low + 1, len(self.verify))
        return self.verify[low - 1] + (g - low) * (self.verify[high - 1] - self.verify[low - 1])


def fit_verify_costs(measured: list[float]) -> list[float]:
    """c_v(gamma) = a + b gamma for gamma = 1..len(measured), fitted to the measured ratios by Theil-Sen (b: the
    median of the slopes between every two gammas; a: the median of c_v - b gamma), so that the few timings a
    busy machine spoils do not bend the table. A forward's cost grows about linearly with its tokens while they
    fit in one pass of the hardware."""
    if len(measured) < 2:
        return list(measured)
    points = list(enumerate(measured, start=1))
    slope = statistics.median((y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1 :])
    intercept = statistics.median(y - slope * x for x, y in points)
    return [intercept + slope * x for x, _ in points]


def expected_accepted_length(alpha: float, gamma: float) -> float:
    """tau(gamma) = 1 + alpha + ... + alpha^gamma = (1 - alpha^(gamma+1)) / (1 - alpha): tokens per target call
    (the accepted drafts plus the target's own token); gamma + 1 at alpha = 1."""
    if alpha >= 1:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def predicted_speedup(alpha: float, gamma: float, c: float, verify_cost: float = 1.0) -> float:
    """Speedup over the target alone: tau(gamma) / (gamma c + c_v). With c_v = 1 this is Leviathan et al.'s
    Theorem 3.8, (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1))."""
    return expected_accepted_length(alpha, gamma) / (gamma * c + verify_cost)


def speedup_table(alpha: float, costs: ForwardCosts, max_gamma: int = MAX_GAMMA) -> list[dict]:
    """For gamma = 1..max_gamma: {gamma, tau, verify_cost, speedup}, as in the functions above."""
    return [{"gamma": g, "tau": expected_accepted_length(alpha, g), "verify_cost": costs.verify_cost(g),
             "speedup": predicted_speedup(alpha, g, costs.c, costs.verify_cost(g))} for g in range(1, max_gamma + 1)]


def best_gamma(alpha: float, costs: ForwardCosts, max_gamma: int = MAX_GAMMA) -> int:
    """argmax over gamma in 1..max_gamma of the predicted speedup (the smallest such gamma on ties)."""
    table = speedup_table(alpha, costs, max_gamma)
    return max(table, key=lambda row: (row["speedup"], -row["gamma"]))["gamma"]


def break_even_acceptance(costs: ForwardCosts, max_gamma: int = MAX_GAMMA, tol: float = 1e-6) -> float | None:
    """The smallest alpha whose best predicted speedup over gamma in 1..max_gamma reaches 1; None if not even
    alpha = 1 does. Bisection: the speedup at every gamma grows with alpha.

    With Leviathan's c_v = 1 it is c: at gamma 1, (1 + alpha) / (c + 1) >= 1 exactly when alpha >= c, and no
    longer block does better, since tau(gamma) - 1 = alpha + ... + alpha^gamma <= gamma alpha."""

    def pays(alpha: float) -> bool:
        return max(row["speedup"] for row in speedup_table(alpha, costs, max_gamma)) >= 1

    if not pays(1.0):
        return None
    low, high = 0.0, 1.0
    while high - low > tol:
        mid = (low + high) / 2
        low, high = (low, mid) if pays(mid) else (mid, high)
    return high


def prediction_figures(stats, costs: ForwardCosts, max_gamma: int = MAX_GAMMA) -> dict:
    """The predicted figures of one measured run (a GenerationStats) with the pair's costs, and the serving
    engines' acceptance figures beside ours (docs/metrics.md):

    token_acceptance          alpha = accepted / judged positions (GenerationStats.token_acceptance)
    vllm_mean_acceptance_length  1 + accepted / drafts, a draft being one (row, block) proposal: vLLM's mean
                              acceptance length (not `mean_accepted_length`, committed tokens per block, which a
                              row's EOS or budget cuts)
    expected_accepted_length  tau(g) at the run's mean gamma g
    predicted_speedup         tau(g) / (g c + c_v(g)); leviathan_speedup: the same with c_v = 1
    predicted_by_gamma        {gamma, tau, verify_cost, speedup} for gamma = 1..max_gamma
    verify_costs_measured     the raw c_v ratios behind the fitted verify costs
    best_gamma, best_predicted_speedup, break_even_acceptance
    """
    alpha, g = stats.token_acceptance, stats.gamma_mean
    table = speedup_table(alpha, costs, max_gamma)
    best = None if math.isnan(alpha) else best_gamma(alpha, costs, max_gamma)
    drafts = stats.blocks if stats.drafted else 0
    return {
        "token_acceptance": alpha,
        "vllm_mean_acceptance_length": 1 + stats.accepted / drafts if drafts else math.nan,
        "expected_accepted_length": expected_accepted_length(alpha, g),
        "cost_ratio_c": costs.c,
        "verify_cost": costs.verify_cost(g),
        "verify_costs_measured": costs.measured,
        "predicted_speedup": predicted_speedup(alpha, g, costs.c, costs.verify_cost(g)),
        "leviathan_speedup": predicted_speedup(alpha, g, costs.c),
        "best_gamma": best,
        "best_predicted_speedup": table[best - 1]["speedup"] if best else math.nan,
        "break_even_acceptance": break_even_acceptance(costs, max_gamma),
        "predicted_by_gamma": table,
    }


@torch.no_grad()
def expected_acceptance(target, draft, target_prompts: list[list[int]], draft_prompts: list[list[int]],
                        responses: list[list[int]], sampling: Sampling, pad_id: int, vocab: int,
                        batch_size: int = 16) -> float:
    """alpha predicted from the two distributions: the mean over response positions of sum_v min(p_v, q_v)
    (= 1 - total variation distance), the probability that speculative sampling accepts a draft there.

    p and q are the target's and the draft's next-token distributions, each model reading its own prompt followed
    by the same response (teacher forcing; pass the target's own outputs), both warped by the serving `sampling`
    (temperature, top-p) over the tokenizer's ids [:vocab]. At temperature 0 both are one-hot and this is top-1
    agreement. nan without response tokens."""
    total, count = 0.0, 0
    pairs = ((target, target_prompts), (draft, draft_prompts))
    for logits, r_mask in paired_response_logits(pairs, responses, pad_id, vocab, batch_size):
        for p_row, q_row, keep in zip(*logits, r_mask):  # one fp32 [T, V] pair at a time, on the target's device
            p = warp_logits(p_row, sampling).softmax(-1)
            q = warp_logits(q_row, sampling).softmax(-1).to(p.device)
            total += float(torch.minimum(p, q).sum(-1)[keep.to(p.device)].to(float_dtype(p.device)).sum())
        count += int(r_mask.sum())
    return total / count if count else math.nan
