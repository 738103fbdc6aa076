"""Predicted speedup: the closed forms, a stub pair whose drafts are accepted independently with a known alpha,
the break-even acceptance, the expected acceptance sum(min(p, q)) and the choice of gamma."""

import math

import pytest
import torch

from specdistill.engine import GenerationStats, Sampling
from specdistill.engine.sampling import warp_logits
from specdistill.evaluate.prediction import (
    ForwardCosts,
    best_gamma,
    break_even_acceptance,
    expected_acceptance,
    expected_accepted_length,
    fit_verify_costs,
    prediction_figures,
    predicted_speedup,
    speedup_table,
)
from specdistill.evaluate.speculative import bench_pair, choose_gamma

V = 8
DRAFTED = 1  # the token the stub draft always proposes


class ConstantLM(torch.nn.Module):
    """A stub causal LM whose next-token logits are the same after any context: `logits` [V]. Its "KV cache"
    stores the token ids, so the engine's cache bookkeeping runs as with a real model."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.float(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=0, **kwargs):
        if past_key_values is not None:
            fake_kv = input_ids[:, None, :, None].float()
            past_key_values.update(fake_kv, fake_kv, 0)
        width = input_ids.shape[1] if not logits_to_keep else min(logits_to_keep, input_ids.shape[1])
        logits = self.logits.expand(input_ids.shape[0], width, self.logits.shape[-1])
        return type("Output", (), {"logits": logits, "past_key_values": past_key_values})()


def independent_pair(alpha: float) -> tuple[ConstantLM, ConstantLM]:
    """(target, draft): the draft always proposes DRAFTED (q = one-hot); the target gives it probability alpha
    and spreads the rest evenly. Speculative sampling accepts with probability min(1, p/q) = alpha at every
    position, whatever came before: Leviathan's independent acceptance."""
    p = torch.full((V,), (1 - alpha) / (V - 1))
    p[DRAFTED] = alpha
    q = torch.full((V,), -1e4)
    q[DRAFTED] = 0.0
    return ConstantLM(p.log()), ConstantLM(q)


class StubTokenizer:
    """What the benchmark reads of a tokenizer: no end id (rows run to the budget), a pad id, its size."""

    eos_token_id, pad_token_id, chat_template = None, 0, None

    def __len__(self):
        return V


# ---------------------------------------------------------------- closed forms
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_expected_accepted_length_is_the_geometric_sum(alpha):
    for gamma in range(1, 17):
        assert expected_accepted_length(alpha, gamma) == pytest.approx(sum(alpha**i for i in range(gamma + 1)))


def test_token_acceptance_divides_by_judged_positions_not_by_drafts():
    # Two blocks of gamma 4: one accepts 4 (judges 4), one accepts 1 and is rejected at position 2 (judges 2).
    stats = GenerationStats(blocks=2, drafted=8, accepted=5, position_reached=[2, 2, 1, 1],
                            position_accepted=[2, 1, 1, 1])
    assert stats.token_acceptance == pytest.approx(5 / 6) and stats.acceptance_rate == pytest.approx(5 / 8)
    assert stats.metrics()["rollout/token_acceptance"] == pytest.approx(5 / 6)
    assert math.isnan(GenerationStats().token_acceptance)


def test_best_gamma_and_break_even_follow_the_table():
    costs = ForwardCosts(c=0.1)
    table = speedup_table(0.8, costs)
    assert [row["gamma"] for row in table] == list(range(1, 17))
    assert best_gamma(0.8, costs) == max(table, key=lambda row: row["speedup"])["gamma"]
    # With Leviathan's c_v = 1 the break-even acceptance is c itself (proof in its docstring).
    for c in (0.05, 0.1, 0.45, 0.9):
        assert break_even_acceptance(ForwardCosts(c)) == pytest.approx(c, abs=1e-5)
    assert break_even_acceptance(ForwardCosts(1.2)) is None  # a draft dearer than the target never pays
    # A verification forward dearer than a decoding step raises it; at the break-even the best speedup is 1.
    dear = ForwardCosts(c=0.1, verify=[1 + 0.05 * g for g in range(1, 17)])
    alpha = break_even_acceptance(dear)
    assert alpha > 0.1
    assert max(row["speedup"] for row in speedup_table(alpha, dear)) == pytest.approx(1.0, abs=1e-4)


def test_verify_costs_are_a_line_fitted_robustly_to_the_measurements():
    line = [1.0 + 0.05 * g for g in range(1, 17)]
    assert fit_verify_costs(line) == pytest.approx(line)
    spoiled = list(line)
    spoiled[3], spoiled[9] = 3.0, 0.2  # two timings a busy machine spoiled
    assert fit_verify_costs(spoiled) == pytest.approx(line)


def test_verify_cost_interpolates_between_measured_gammas():
    costs = ForwardCosts(c=0.2, verify=[1.0, 1.2, 1.6])
    assert costs.verify_cost(2) == pytest.approx(1.2)
    assert costs.verify_cost(2.5) == pytest.approx(1.4)
    assert costs.verify_cost(0.5) == pytest.approx(1.0) and costs.verify_cost(9) == pytest.approx(1.6)
    assert ForwardCosts(c=0.2).verify_cost(7) == 1.0


# ---------------------------------------------------------------- a stub pair with independent acceptance
def test_independent_acceptance_gives_the_closed_forms_and_the_old_formula_fails():
    """alpha 0.8, gamma 4, c 0.1 (verification costing one decoding step): Leviathan's speedup is
    tau / (gamma c + 1) = 3.36 / 1.4 = 2.40. Feeding accepted / drafted (0.59) to the formula gave 1.62."""
    alpha, gamma, c = 0.8, 4, 0.1
    target, draft = independent_pair(alpha)
    prompts = [[3, 4 + i % 3] for i in range(64)]
    r = bench_pair(target, draft, prompts, StubTokenizer(), gamma=gamma, temperature=1.0, max_new_tokens=400,
                   batch_size=64, warmup=1, repeats=1, costs=ForwardCosts(c))
    blocks = r["new_tokens"] / r["mean_accepted_length"]  # (row, block) pairs
    judged = blocks * 2.95  # about 1 + alpha + alpha^2 + alpha^3 judged positions per block
    tol = 4 * math.sqrt(alpha * (1 - alpha) / judged)  # 4 standard errors of the estimated alpha
    tau = (1 - alpha ** (gamma + 1)) / (1 - alpha)
    closed = tau / (gamma * c + 1)
    assert closed == pytest.approx(2.40, abs=0.005)
    assert r["token_acceptance"] == pytest.approx(alpha, abs=tol)
    # The reported figures are the closed forms at the reported alpha and mean gamma ...
    a_hat = r["token_acceptance"]
    assert r["predicted_by_gamma"][gamma - 1]["tau"] == pytest.approx((1 - a_hat ** (gamma + 1)) / (1 - a_hat))
    assert r["predicted_by_gamma"][gamma - 1]["speedup"] == pytest.approx(
        (1 - a_hat ** (gamma + 1)) / ((1 - a_hat) * (gamma * c + 1)))
    # ... and within alpha's sampling error of the closed forms at the true alpha (dtau/dalpha < 7 here).
    assert r["expected_accepted_length"] == pytest.approx(tau, abs=7 * tol + 0.02)  # + short last blocks
    assert r["vllm_mean_acceptance_length"] == pytest.approx(tau, abs=7 * tol + 0.02)  # measured, vLLM's definition
    margin = (7 * tol + 0.02) / (gamma * c + 1)
    assert r["predicted_speedup"] == pytest.approx(closed, abs=margin)
    assert r["leviathan_speedup"] == r["predicted_speedup"]  # c_v = 1 here
    # accepted / drafted is alpha (1 - alpha^g) / ((1 - alpha) g) = 0.59, and the old formula's 1.62 fails.
    assert r["acceptance_rate"] == pytest.approx(alpha * (1 - alpha**gamma) / ((1 - alpha) * gamma), abs=2 * tol)
    old = predicted_speedup(r["acceptance_rate"], gamma, c)
    assert old == pytest.approx(1.62, abs=0.05)
    assert abs(old - closed) > 10 * margin
    # sum_v min(p_v, q_v) with q one-hot on the drafted token is p(drafted) = alpha, exactly.
    assert r["expected_acceptance"] == pytest.approx(alpha, abs=1e-6)
    assert r["break_even_acceptance"] == pytest.approx(c, abs=1e-5)
    assert r["best_gamma"] == best_gamma(a_hat, ForwardCosts(c))


def test_prediction_figures_of_a_run_without_drafts_are_empty_not_errors():
    figures = prediction_figures(GenerationStats(), ForwardCosts(0.3))
    assert math.isnan(figures["token_acceptance"]) and figures["best_gamma"] is None
    assert figures["break_even_acceptance"] == pytest.approx(0.3, abs=1e-5)


def test_gamma_auto_probes_alpha_and_picks_the_best_predicted_gamma():
    """alpha 0.8 and c 0.3: the best gamma is 3 (1.55x, against 1.53x at 2 and 4); with c 0.02 longer blocks pay
    and it moves past 6."""
    target, draft = independent_pair(0.8)
    prompts = [[3, 4]] * 32
    kw = dict(temperature=1.0, max_new_tokens=200, batch_size=32)
    choice = choose_gamma(target, draft, prompts, StubTokenizer(), ForwardCosts(0.3), **kw)
    assert choice["probe_gamma"] == 4 and choice["probe_token_acceptance"] == pytest.approx(0.8, abs=0.03)
    assert choice["gamma"] == best_gamma(choice["probe_token_acceptance"], ForwardCosts(0.3)) == 3
    cheap = choose_gamma(target, draft, prompts, StubTokenizer(), ForwardCosts(0.02), **kw)
    assert cheap["gamma"] > 6


# ---------------------------------------------------------------- expected acceptance under sampling
def brute_force_overlap(p_logits, q_logits, sampling) -> float:
    """sum_v min(p_v, q_v) of the warped distributions, one vocabulary entry at a time."""
    pw, qw = warp_logits(p_logits, sampling).softmax(-1), warp_logits(q_logits, sampling).softmax(-1)
    return sum(min(float(pw[v]), float(qw[v])) for v in range(len(pw)))


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.6), (0.0, 1.0)])
def test_expected_acceptance_is_the_overlap_of_the_warped_distributions(temperature, top_p):
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(V) * 2, torch.randn(V) * 2
    target, draft = ConstantLM(p_logits), ConstantLM(q_logits)
    sampling = Sampling(temperature, top_p)
    got = expected_acceptance(target, draft, [[3, 4], [5]], [[3], [6, 6]], [[1, 2, 3], [4]], sampling, pad_id=0,
                              vocab=V)
    assert got == pytest.approx(brute_force_overlap(p_logits, q_logits, sampling), abs=1e-6)
    if temperature == 0:  # one-hot distributions: 1 when the argmaxes agree
        assert got == float(p_logits.argmax() == q_logits.argmax())


def test_expected_acceptance_uses_the_tokenizers_ids_only():
    """A padded row past the tokenizer (index V) holding most of both models' mass is left out."""
    p_logits, q_logits = torch.zeros(V + 1), torch.zeros(V + 1)
    p_logits[V] = q_logits[V] = 20.0
    q_logits[1] = 3.0
    got = expected_acceptance(ConstantLM(p_logits), ConstantLM(q_logits), [[3]], [[3]], [[1]], Sampling(1.0), 0,
                              vocab=V)
    assert got == pytest.approx(brute_force_overlap(p_logits[:V], q_logits[:V], Sampling(1.0)), abs=1e-6)
