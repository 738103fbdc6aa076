"""Policies, schedules and sampling on hand-made distributions (no models except a context-free stub)."""

import math
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chisquare

from specdistill.engine import (
    AdaptiveTopKPolicy,
    Block,
    ConstantGamma,
    GreedyPolicy,
    HeuristicGamma,
    LupiGamma,
    Sampling,
    SpeculativePolicy,
    TopKPolicy,
    generate,
    make_policy,
    make_schedule,
    sample,
    sample_tokens,
    settle,
    uniforms,
    warp_logits,
)
from specdistill.engine.policies import Verdict
from specdistill.engine.sampling import derive_seed, row_seeds


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and a shared 2-core machine loses a lot to oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)




def logits_of(probs):
    """Logits whose softmax is probs (zeros become -inf)."""
    return torch.tensor(probs, dtype=torch.float).log()


def chi2_pvalue(counts, probs):
    """Chi-square p-value of observed counts against probabilities (zero-probability cells must be empty)."""
    counts = counts.double().numpy()
    probs = torch.tensor(probs, dtype=torch.double).numpy()
    keep = probs > 0
    assert counts[~keep].sum() == 0
    return chisquare(counts[keep], probs[keep] / probs[keep].sum() * counts[keep].sum()).pvalue


def block(drafts, target_probs, draft_probs=None, u_accept=None, u_target=None):
    """A one-row Block from Python lists: drafts [g], target_probs [g+1][V], draft_probs [g][V]."""
    g = len(drafts)
    return Block(
        draft_tokens=torch.tensor([drafts]),
        draft_logits=None if draft_probs is None else logits_of(draft_probs)[None],
        target_logits=logits_of(target_probs)[None],
        u_accept=torch.tensor([u_accept if u_accept is not None else [0.5] * g], dtype=torch.double),
        u_target=torch.tensor([u_target if u_target is not None else [0.5] * (g + 1)], dtype=torch.double),
    )


# ---------------------------------------------------------------- sampling


def test_warp_greedy_is_one_hot_on_first_argmax():
    z = warp_logits(torch.tensor([[1.0, 3.0, 3.0, 0.0]]), Sampling())
    assert z.softmax(-1).tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_warp_filters():
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    kept = lambda s: torch.isfinite(warp_logits(logits, s)).tolist()  # noqa: E731
    assert kept(Sampling(1.0, top_p=0.5)) == [True, False, False, False]  # 0.5 reaches 0.5
    assert kept(Sampling(1.0, top_p=0.6)) == [True, True, False, False]
    assert kept(Sampling(1.0, top_p=0.99)) == [True, True, True, True]
    assert kept(Sampling(1.0, top_k=3)) == [True, True, True, False]
    assert kept(Sampling(1.0, min_p=0.5)) == [True, True, False, False]  # 0.15 < 0.5 * 0.5
    hot = warp_logits(logits, Sampling(2.0)).softmax(-1)
    expected = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    torch.testing.assert_close(hot, expected / expected.sum())


def test_sampling_settings_are_validated():
    with pytest.raises(ValueError, match="top_p"):
        Sampling(1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        Sampling(-1.0)


def test_uniforms_are_keyed_by_seed_position_and_stream():
    seeds = torch.tensor([5, 6, 5])
    positions = torch.tensor([[0, 1, 2], [0, 1, 2], [7, 1, 0]])
    u = uniforms(seeds, positions, stream=1)
    assert u.shape == (3, 3) and bool(((u > 0) & (u < 1)).all())
    assert u[0, 1] == u[2, 1] and u[0, 0] == u[2, 2]  # same (seed, position): same number, whatever the row
    assert u[0, 0] != u[1, 0]  # another seed
    assert not torch.equal(u, uniforms(seeds, positions, stream=2))  # another stream
    many = uniforms(torch.tensor([1]), torch.arange(20000)[None], stream=3)[0]
    assert abs(float(many.mean()) - 0.5) < 0.01
    assert chi2_pvalue(torch.histc(many.float(), bins=10, min=0, max=1), [0.1] * 10) > 1e-3


def test_noise_is_float64_except_on_mps_which_has_none():
    from specdistill.engine.sampling import float_dtype, unit_interval

    assert float_dtype("cpu") == float_dtype(torch.device("cuda:1")) == torch.float64
    assert float_dtype(torch.device("mps")) == float_dtype("mps:0") == torch.float32
    # float32 uniforms stay inside the open interval at the hash's extremes, where (h + 0.5) / 2^32 rounds to 1.0
    extremes = torch.tensor([0, 1, 511, 512, 2**31, 2**32 - 513, 2**32 - 1])
    assert float(((extremes.float() + 0.5) * 2.0**-32)[-1]) == 1.0  # the float64 formula, done in float32
    u32, u64 = unit_interval(extremes, torch.float32), unit_interval(extremes, torch.float64)
    assert u32.dtype == torch.float32 and bool((u32 > 0).all() and (u32 < 1).all())
    assert float((u32.double() - u64).abs().max()) <= 2.0**-23
    assert u32[-1] == 1 - 2.0**-24 and u32[0] == 2.0**-24  # (h >> 9 + 0.5) / 2^23 by hand
    seeds, positions = torch.tensor([3, 7]), torch.arange(64).expand(2, -1)
    torch.testing.assert_close(uniforms(seeds, positions, 1, torch.float32).double(), uniforms(seeds, positions, 1),
                               atol=2.0**-23, rtol=0)


def test_row_seeds_are_hashed_from_seed_and_row():
    a = row_seeds(0, 8)
    assert torch.equal(a, row_seeds(0, 8)) and torch.equal(row_seeds(0, 5, first_row=3), a[3:])  # pure in (seed, row)
    assert row_seeds(torch.tensor([4, 9]), 2).tolist() == [4, 9]  # explicit per-row seeds pass through
    for s in range(20):  # seed s at row i against seed s + 1 at row i - 1: `seed + row` would make them equal
        assert not (row_seeds(s, 8)[1:] == row_seeds(s + 1, 8)[:-1]).any()
    assert derive_seed(3, 1, 2) != derive_seed(3, 2, 1)


def test_sampled_rows_of_neighbouring_seeds_are_independent():
    """A uniform 5-token model sampled with seeds 0 and 1: row i of one run and row i - 1 of the other share a
    token at a position with probability 1/5 (independent streams), not 1 (one stream)."""
    ids = torch.ones(6, 1, dtype=torch.long)
    runs = [sample(FixedLM([0.2] * 5), ids, torch.ones_like(ids), sampling=Sampling(1.0), max_new_tokens=60,
                   seed=seed).tokens for seed in (0, 1)]  # [6, 60] each
    same = (runs[0][1:] == runs[1][:-1]).double().mean().item()  # over 5 * 60 = 300 positions
    assert abs(same - 0.2) < 0.1, same


def test_inverse_cdf_sampling_matches_distribution_and_skips_zero_mass():
    probs = [0.1, 0.0, 0.6, 0.3]
    u = uniforms(torch.tensor([3]), torch.arange(6000)[None], stream=1)[0]
    tokens = sample_tokens(logits_of(probs).expand(6000, -1), u)
    assert chi2_pvalue(torch.bincount(tokens, minlength=4), probs) > 1e-3
    assert sample_tokens(logits_of(probs)[None], None).tolist() == [2]


# ---------------------------------------------------------------- policies


def test_greedy_policy():
    p = [[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.1, 0.1, 0.8]]
    v = GreedyPolicy().judge(block([1, 2], p))
    assert v.accept.tolist() == [[True, False]]
    assert v.correction.tolist() == [[1, 0]]
    assert v.bonus.tolist() == [[1, 0, 2]]


def test_speculative_accepts_when_u_below_p_over_q():
    p = [[0.2, 0.6, 0.2], [0.5, 0.25, 0.25], [0.0, 0.0, 1.0]]
    q = [[0.1, 0.3, 0.6], [0.0, 0.5, 0.5]]
    # position 0: x=1, p/q = 2 -> always; position 1: x=2, p/q = 0.5 -> accept iff u < 0.5
    policy = SpeculativePolicy(target=Sampling(1.0))
    v = policy.judge(block([1, 2], p, q, u_accept=[0.99, 0.49]))
    assert v.accept.tolist() == [[True, True]]
    v = policy.judge(block([1, 2], p, q, u_accept=[0.99, 0.51]))
    assert v.accept.tolist() == [[True, False]]
    # Rejected at 1: the residual max(0, p - q) = [0.5, 0, 0] has only token 0.
    assert v.correction[0, 1] == 0
    assert v.bonus[0, 2] == 2  # p_{g+1} has all its mass on token 2
    # A greedy teacher (p one-hot on its argmax) accepts only its argmax, whatever u.
    greedy = SpeculativePolicy().judge(block([1, 2], p, q, u_accept=[0.0, 0.0]))
    assert greedy.accept.tolist() == [[True, False]] and greedy.correction[0, 1] == 0


def test_speculative_rejects_tokens_the_teacher_never_writes():
    p = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    q = [[0.0, 0.0, 1.0]]
    v = SpeculativePolicy(target=Sampling(1.0)).judge(block([2], p, q, u_accept=[1e-9]))
    assert v.accept.tolist() == [[False]] and v.correction.tolist() == [[0]]


def test_top_k_uses_rank_support_and_min_prob():
    p = [[0.5, 0.3, 0.15, 0.05]] * 4
    drafts = [1, 2, 3]
    hot = Sampling(1.0)
    assert TopKPolicy(k=2, target=hot).judge(block(drafts, p)).accept.tolist() == [[True, False, False]]
    assert TopKPolicy(k=4, target=hot).judge(block(drafts, p)).accept.tolist() == [[True, True, True]]
    assert TopKPolicy(k=4, min_prob=0.1, target=hot).judge(block(drafts, p)).accept.tolist() == [[True, True, False]]
    assert TopKPolicy(k=4, min_prob=1.5, target=hot).judge(block(drafts, p)).accept.tolist() == [[False] * 3]
    # The teacher's top-p is applied before the test: token 2 (rank 2) is outside the 0.8 nucleus.
    nucleus = Sampling(1.0, top_p=0.8)
    assert TopKPolicy(k=4, target=nucleus).judge(block(drafts, p)).accept.tolist() == [[True, False, False]]
    # A greedy teacher ranks by its raw logits.
    assert TopKPolicy(k=3, target=Sampling()).judge(block(drafts, p)).accept.tolist() == [[True, True, False]]


@pytest.mark.parametrize("target", [Sampling(), Sampling(1.0)], ids=["greedy", "sampled"])
@pytest.mark.parametrize("policy", ["top_k", "adaptive_top_k"])
def test_top_k_lets_exactly_k_tokens_through_when_bf16_logits_tie(policy, target):
    """2.0, 2.001 and 2.002 are one bf16 value (its spacing at 2 is 1/64): tokens 0-2 tie, and so do 4-5. Tie rule:
    the smaller id ranks first, so the accepted set is always the first K tokens of the order 0 1 2 3 4 5 6."""
    raw = torch.tensor([2.0, 2.001, 2.002, 1.5, 1.0, 1.001, 0.0])
    logits = raw.to(torch.bfloat16)
    assert logits[0] == logits[1] == logits[2] and logits[4] == logits[5]
    V = len(raw)
    for k in range(1, V + 1):
        options = {"k": k} if policy == "top_k" else {"k_init": k, "k_min": 1, "k_max": V, "entropy_gain": 0.0}
        judge = make_policy(policy, target=target, **options)
        state = judge.init_state(V, "cpu")
        every = Block(draft_tokens=torch.arange(V)[:, None],  # row x drafts token x: brute force over the vocabulary
                      draft_logits=None, target_logits=logits.expand(V, 2, V),
                      u_accept=torch.full((V, 1), 0.5, dtype=torch.double),
                      u_target=torch.full((V, 2), 0.5, dtype=torch.double))
        accepted = judge.judge(every, state).accept[:, 0]
        assert accepted.nonzero().flatten().tolist() == list(range(k)), k


def test_top_k_replacement_samples_the_warped_teacher():
    p = [[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]]
    # u = 0.6 falls in token 1 of p; with temperature -> 0 the teacher writes its argmax instead.
    v = TopKPolicy(k=1, target=Sampling(1.0)).judge(block([3], p, u_target=[0.6, 0.9]))
    assert v.correction.tolist() == [[1]] and v.bonus.tolist() == [[1, 3]] and v.skd_top_k.tolist() == [[1, 1]]
    v = TopKPolicy(k=1, target=Sampling()).judge(block([3], p, u_target=[0.6, 0.9]))
    assert v.correction.tolist() == [[0]]


def test_adaptive_top_k_entropy_offset():
    policy = AdaptiveTopKPolicy(k_init=10, k_min=1, k_max=40, entropy_gain=4.0, target=Sampling(1.0))
    state = policy.init_state(1, "cpu")
    uniform = torch.zeros(1, 1, 16)  # H_norm = 1 -> +g
    peaked = logits_of([1.0] + [0.0] * 15)[None, None]  # H_norm = 0 -> -g
    assert policy.effective_k(uniform, state.k_base).tolist() == [[14]]
    assert policy.effective_k(peaked, state.k_base).tolist() == [[6]]
    low = AdaptiveTopKPolicy(k_init=2, k_min=1, k_max=40, entropy_gain=4.0)
    assert low.effective_k(peaked, low.init_state(1, "cpu").k_base).tolist() == [[1]]  # clipped to k_min


def test_a_greedy_teacher_tests_min_prob_on_its_distribution_at_temperature_one():
    """logits [3, 2.9, 0, 0, 0, 0], draft token 1, K=5, min_prob 0.1, greedy teacher: at T=1,
    p(1) = e^2.9 / (e^3 + e^2.9 + 4) = 18.17 / 42.26 = 0.43 >= 0.1, so the draft is kept (the one-hot p of the
    warped greedy teacher gave p(1) = 0). p(2) = 1 / 42.26 = 0.024 < 0.1: rejected although its rank is 2 < 5."""
    logits = torch.tensor([3.0, 2.9, 0.0, 0.0, 0.0, 0.0])
    p1 = math.exp(2.9) / (math.exp(3) + math.exp(2.9) + 4)
    assert 0.42 < p1 < 0.44
    for policy in (TopKPolicy(k=5, min_prob=0.1, target=Sampling()),
                   AdaptiveTopKPolicy(k_init=5, k_min=5, k_max=5, min_prob=0.1, target=Sampling())):
        for draft, kept in ((1, True), (2, False), (0, True)):
            b = Block(draft_tokens=torch.tensor([[draft]]), draft_logits=None, target_logits=logits.expand(1, 2, 6),
                      u_accept=torch.full((1, 1), 0.5, dtype=torch.double),
                      u_target=torch.full((1, 2), 0.5, dtype=torch.double))
            assert policy.judge(b, policy.init_state(1, "cpu")).accept.tolist() == [[kept]], (policy.name, draft)


def test_the_adaptive_k_of_a_greedy_teacher_reads_its_entropy_at_temperature_one():
    """p = [1/2, 1/4, 1/8, 1/8] (V = 4): H = (1/2 + 2/4 + 3/8 + 3/8) ln 2 = 1.75 ln 2, H_norm = 1.75 / 2 = 0.875,
    K_eff = round(25 + 5 (2 * 0.875 - 1)) = round(28.75) = 29. (The one-hot p of the warped greedy teacher has
    H = 0: K_eff = 25 - 5 = 20 whatever the teacher's distribution.)"""
    policy = AdaptiveTopKPolicy(k_init=25, k_min=1, k_max=100, entropy_gain=5.0, target=Sampling())
    b = block([2], [[0.5, 0.25, 0.125, 0.125]] * 2)
    assert policy.judge(b, policy.init_state(1, "cpu")).skd_top_k.tolist() == [[29, 29]]


def test_adaptive_top_k_moves_its_baseline_with_the_success_ema():
    policy = AdaptiveTopKPolicy(k_init=5, k_min=1, k_max=9, r_plus=0.8, r_minus=0.5, ema=0.5, step=1.0)
    state = policy.init_state(3, "cpu")  # EMA starts at (r_plus + r_minus) / 2 = 0.65
    verdict = Verdict(
        accept=torch.tensor([[True, True, True], [False, True, True], [True, False, True]]),
        correction=torch.zeros(3, 3, dtype=torch.long),
        bonus=torch.zeros(3, 4, dtype=torch.long),
    )
    n = torch.tensor([3, 0, 1])
    gamma_rows = torch.tensor([3, 3, 3])
    state = policy.update(state, verdict, n, gamma_rows, torch.tensor([True, True, False]))
    # row 0 judged 3 successes: 0.65 -> 0.825 -> 0.9125 -> 0.95625; row 1 judged one failure: 0.325.
    torch.testing.assert_close(state.success[:2], torch.tensor([0.95625, 0.325]))
    assert state.k_base.tolist() == [4.0, 6.0, 5.0]  # down, up, and row 2 (not running) unchanged


def test_make_policy_builds_each_named_rule_with_its_options():
    """One hand-made block judged by each policy made by name, with options: the verdicts follow each rule.
    Drafts 1, 2 under p_0 = [0.1, 0.2, 0.3, 0.4] and p_1 = [0.4, 0.3, 0.2, 0.1]; the student's q_0 = q_1 =
    [0.25, 0.25, 0.4, 0.1]; u_accept = 0.6 at both positions."""
    p = [[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]
    q = [[0.25, 0.25, 0.4, 0.1]] * 2
    b = block([1, 2], p, q, u_accept=[0.6, 0.6])
    hot = Sampling(1.0)
    verdicts = {
        # greedy: argmax p_0 = 3, argmax p_1 = 0: neither draft
        ("greedy", ()): [[False, False]],
        # speculative: p/q = 0.2/0.25 = 0.8 > 0.6 accepts token 1; 0.2/0.4 = 0.5 < 0.6 rejects token 2
        ("speculative", (("target", hot),)): [[True, False]],
        # top_k: token 1 is 3rd under p_0, token 2 is 3rd under p_1
        ("top_k", (("k", 2), ("target", hot))): [[False, False]],
        ("top_k", (("k", 3), ("target", hot))): [[True, True]],
        ("top_k", (("k", 3), ("min_prob", 0.25), ("target", hot))): [[False, False]],
        ("adaptive_top_k", (("k_init", 3), ("entropy_gain", 0.0), ("target", hot))): [[True, True]],
        ("adaptive_top_k", (("k_init", 2), ("entropy_gain", 0.0), ("target", hot))): [[False, False]],
    }
    for (name, options), accept in verdicts.items():
        policy = make_policy(name, **dict(options))
        assert policy.judge(b, policy.init_state(1, "cpu")).accept.tolist() == accept, (name, options)
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        make_policy("nope")
    with pytest.raises(TypeError):
        make_policy("greedy", k=3)  # an option the policy does not have


def test_settle_takes_leading_accepts_within_each_rows_gamma():
    verdict = Verdict(
        accept=torch.tensor([[True, False, True], [True, True, True], [True, True, True], [False, True, True]]),
        correction=torch.tensor([[10, 11, 12], [10, 11, 12], [10, 11, 12], [10, 11, 12]]),
        bonus=torch.tensor([[20, 21, 22, 23]] * 4),
    )
    gamma_rows = torch.tensor([3, 3, 2, 3])
    out = settle(verdict, gamma_rows, bonus_token=True)
    assert out.n.tolist() == [1, 3, 2, 0]
    assert out.full.tolist() == [False, True, True, False]
    assert out.next_token.tolist() == [11, 23, 22, 10]  # row 2's bonus comes after its own 2 drafts
    assert out.has_next.tolist() == [True] * 4
    assert settle(verdict, gamma_rows, bonus_token=False).has_next.tolist() == [True, False, False, True]


# ---------------------------------------------------------------- schedules


def test_gamma_schedules():
    gamma = torch.tensor([4, 4, 15, 1])
    n = torch.tensor([4, 2, 15, 0])
    full = n == gamma
    assert ConstantGamma(4).update(gamma, n, full).tolist() == [4, 4, 15, 1]
    assert LupiGamma(4, max_gamma=16).update(gamma, n, full).tolist() == [6, 3, 16, 1]
    assert HeuristicGamma(4, max_gamma=32).update(gamma, n, full).tolist() == [6, 3, 17, 1]
    assert make_schedule("lupi", 2, 8) == LupiGamma(2, 8)
    with pytest.raises(ValueError, match="unknown gamma schedule"):
        make_schedule("fast")


# ---------------------------------------------------------------- distribution of speculative sampling


class FixedLM(torch.nn.Module):
    """A context-free model: the same next-token logits everywhere."""

    def __init__(self, probs):
        super().__init__()
        self.logits = logits_of(probs)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **kwargs):
        fake_kv = input_ids[:, None, :, None].float()
        past_key_values.update(fake_kv, fake_kv, 0)
        logits = self.logits.expand(*input_ids.shape, -1)
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


def test_speculative_sampling_reproduces_the_teacher_distribution():
    """Leviathan sampling is lossless: every response position follows p, whatever the draft q."""
    p = [0.05, 0.4, 0.1, 0.3, 0.15]
    q = [0.4, 0.1, 0.3, 0.1, 0.1]
    rows = 3000
    ids = torch.full((rows, 2), 1)
    mask = torch.ones_like(ids)
    out = generate(FixedLM(q), ids, mask, FixedLM(p), ids, mask, policy=SpeculativePolicy(target=Sampling(1.0)),
                   draft_sampling=Sampling(1.0), gamma=2, max_new_tokens=3, seed=torch.arange(rows))
    assert 0.2 < out.stats.acceptance_rate < 0.9
    for position in range(3):
        counts = torch.bincount(out.tokens[:, position], minlength=5)
        assert chi2_pvalue(counts, p) > 1e-3, (position, counts)
