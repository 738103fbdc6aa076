"""Tests for specdistill.losses: identities, exactness of the fast paths, normalisation, TRL agreement."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from specdistill import losses

DIVERGENCES = ["fkl", "rkl", "jsd", "tvd", "skew_fkl", "skew_rkl"]  # 0 iff the distributions are equal
ALL = DIVERGENCES + ["ce", "hybrid", "rank"]
PARAMS = {"jsd": {"beta": 0.3}, "skew_fkl": {"alpha": 0.2}, "skew_rkl": {"alpha": 0.2},
          "hybrid": {"ce_weight": 0.3}, "rank": {"rank_top_k": 4, "margin": 0.5}}
B, L, V = 2, 6, 11


def make(dtype=torch.float32, seed=0, scale=2.0):
    """Random student/teacher logits [B, L, V], a padding mask [B, L] and labels [B, L]."""
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(B, L, V, generator=g, dtype=torch.float64)).to(dtype)
    t = (scale * torch.randn(B, L, V, generator=g, dtype=torch.float64)).to(dtype)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)  # left and right padding
    labels = torch.randint(0, V, (B, L), generator=g)
    return s, t, mask, labels


def run(name, s, t, mask, labels, **kw):
    return losses.compute(name, s, t, mask, labels=labels, **{**PARAMS.get(name, {}), **kw})


def per_position(name, s, t, labels, **kw):
    """The loss at each position [B, L], from one-position masks."""
    out = torch.zeros(B, L, dtype=torch.float64)
    for b in range(B):
        for p in range(L):
            m = torch.zeros(B, L, dtype=torch.bool)
            m[b, p] = True
            out[b, p] = run(name, s, t, m, labels, **kw)[0]
    return out


# ---------------------------------------------------------------- closed-form identities


def test_jsd_endpoints_are_the_two_kls():
    s, t, mask, _ = make()
    fkl, rkl = losses.fkl(s, t, mask)[0], losses.rkl(s, t, mask)[0]
    torch.testing.assert_close(losses.jsd(s, t, mask, beta=0.0)[0], fkl)
    torch.testing.assert_close(losses.jsd(s, t, mask, beta=1.0)[0], rkl)
    assert not torch.isclose(fkl, rkl)


def test_kls_match_definitions():
    s, t, mask, _ = make(torch.float64)
    lp_s, lp_t = (s / 2).log_softmax(-1)[mask], (t / 2).log_softmax(-1)[mask]
    fkl = (lp_t.exp() * (lp_t - lp_s)).sum()
    torch.testing.assert_close(losses.fkl(s, t, mask, temperature=2.0)[0], fkl)
    rkl = (lp_s.exp() * (lp_s - lp_t)).sum()
    torch.testing.assert_close(losses.rkl(s, t, mask, temperature=2.0)[0], rkl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_divergence_zero_on_equal_logits_and_nonnegative(name, dtype):
    s, t, mask, labels = make(dtype)
    zero, count = run(name, s, s.clone(), mask, labels)
    assert count == mask.sum() and zero.dtype == torch.float32
    assert zero.abs() < 1e-6
    near = (s.float() + 1e-2 * torch.randn(s.shape)).to(dtype)  # nearly equal: rounding could go negative
    for other in (t, near):
        assert (per_position(name, s, other, labels) >= 0).all()
    assert run(name, s, t, mask, labels)[0] > 0


def test_tvd_lies_in_unit_interval():
    s, t, mask, labels = make()
    vals = per_position("tvd", s, t, labels)
    assert ((vals >= 0) & (vals <= 1)).all()
    far = per_position("tvd", 100 * s, -100 * s, labels)  # near-disjoint supports: close to 1, never above
    assert (far <= 1).all() and far.max() > 0.99


def test_skew_at_alpha_zero_is_the_plain_kl():
    s, t, mask, _ = make()
    torch.testing.assert_close(losses.skew_fkl(s, t, mask, alpha=0.0)[0], losses.fkl(s, t, mask)[0])
    torch.testing.assert_close(losses.skew_rkl(s, t, mask, alpha=0.0)[0], losses.rkl(s, t, mask)[0])


def test_skew_fkl_definition():
    s, t, mask, _ = make(torch.float64)
    p, q = t.softmax(-1)[mask], s.softmax(-1)[mask]
    mix = 0.2 * p + 0.8 * q
    torch.testing.assert_close(losses.skew_fkl(s, t, mask, alpha=0.2)[0], (p * (p / mix).log()).sum())
    mix = 0.2 * q + 0.8 * p
    torch.testing.assert_close(losses.skew_rkl(s, t, mask, alpha=0.2)[0], (q * (q / mix).log()).sum())


def test_ce_equals_torch_cross_entropy_on_masked_tokens():
    s, t, mask, labels = make()
    loss, n = losses.compute("ce", s, None, mask, labels=labels)
    torch.testing.assert_close(loss, F.cross_entropy(s[mask], labels[mask], reduction="sum"))
    assert n == mask.sum()


def test_hybrid_is_hinton_mix():
    """w * CE at temperature 1 + (1 - w) * T^2 * KL(p_T || p_S) at temperature T, written out per position."""
    s, t, mask, labels = make(torch.float64)
    T, w = 2.0, 0.3
    want = 0.0
    for row_s, row_t, y in zip(s[mask], t[mask], labels[mask]):
        p_s, p_t = (row_s / T).softmax(-1), (row_t / T).softmax(-1)
        ce = -(row_s[y] - row_s.exp().sum().log())  # hard labels, temperature 1
        kl = sum(p_t[v] * (p_t[v].log() - p_s[v].log()) for v in range(V))
        want += w * ce + (1 - w) * T**2 * kl
    torch.testing.assert_close(losses.hybrid(s, t, mask, labels, ce_weight=w, temperature=T)[0], want)


def test_rank_matches_pairwise_definition_and_rewards_teacher_order():
    s, t, mask, _ = make(torch.float64)
    k, margin, T = 4, 0.5, 2.0
    got = losses.rank(s, t, mask, rank_top_k=k, margin=margin, temperature=T)[0]
    want = 0.0
    for row_s, row_t in zip(s[mask], t[mask]):
        top = row_t.argsort(descending=True)[:k]
        pairs = [(a, b) for i, a in enumerate(top) for b in top[i + 1:]]
        want += sum(math.log1p(math.exp(-(row_s[a] - row_s[b] - margin) / T)) for a, b in pairs) / len(pairs)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    agree = losses.rank(10 * t, t, mask, rank_top_k=k)[0]  # student ordering = teacher ordering
    reverse = losses.rank(-10 * t, t, mask, rank_top_k=k)[0]
    assert agree < 0.05 * mask.sum() < reverse


@pytest.mark.parametrize("name", ALL)
def test_gradcheck(name):
    s, t, mask, labels = make(torch.float64)
    s = s[:, :4, :5].clone().requires_grad_()  # small: gradcheck perturbs every entry
    t, mask, labels = t[:, :4, :5], mask[:, :4], labels[:, :4] % 5
    assert torch.autograd.gradcheck(lambda x: run(name, x, t, mask, labels, chunk_size=2)[0], (s,))


def test_gradcheck_sparse_top_k():
    s, t, mask, _ = make(torch.float64)
    s = s[:, :4, :6].clone().requires_grad_()
    t, mask = t[:, :4, :6], mask[:, :4]
    sparse_jsd = lambda x: losses.jsd(x, t, mask, beta=0.4, sparse_top_k=3, chunk_size=2)[0]  # noqa: E731
    assert torch.autograd.gradcheck(sparse_jsd, (s,))


def test_teacher_gets_no_gradient_and_dtype_follows_input():
    s, t, mask, labels = make(torch.float64)
    s.requires_grad_()
    t.requires_grad_()
    loss = losses.jsd(s, t, mask)[0]
    assert loss.dtype == torch.float64
    loss.backward()
    assert t.grad is None and s.grad is not None


# ---------------------------------------------------------------- fast paths equal the simple ones


@pytest.mark.parametrize("name", ALL)
def test_chunked_equals_unchunked(name):
    s, t, mask, labels = make()
    grads, vals = [], []
    for chunk_size in (1, 3, 10_000):
        x = s.clone().requires_grad_()
        val = run(name, x, t, mask, labels, chunk_size=chunk_size)[0]
        val.backward()
        vals.append(val)
        grads.append(x.grad)
    for val, grad in zip(vals[:2], grads[:2]):
        torch.testing.assert_close(val, vals[-1], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, grads[-1], rtol=1e-6, atol=1e-6)


def test_padding_costs_nothing():
    s, t, mask, labels = make()
    s_pad, t_pad = s.clone(), t.clone()
    s_pad[~mask], t_pad[~mask] = float("nan"), float("inf")  # garbage where the mask is off
    for name in ALL:
        x = s_pad.clone().requires_grad_()
        val = run(name, x, t_pad, mask, labels)[0]
        val.backward()
        torch.testing.assert_close(val, run(name, s, t, mask, labels)[0])
        assert (x.grad[~mask] == 0).all() and x.grad.isfinite().all()


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "tvd", "skew_fkl", "skew_rkl", "hybrid"])
def test_sparse_top_k_equal_to_vocab_is_dense(name):
    s, t, mask, labels = make()
    vals, grads = [], []
    for sparse_top_k in (None, V):
        x = s.clone().requires_grad_()
        val = run(name, x, t, mask, labels, sparse_top_k=sparse_top_k, temperature=1.5)[0]
        val.backward()
        vals.append(val)
        grads.append(x.grad)
    torch.testing.assert_close(vals[0], vals[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_sparse_top_k_uses_top_k_plus_rest_bucket():
    s, t, mask, _ = make(torch.float64)
    k = 3
    ids = t.topk(k, dim=-1).indices  # [B, L, k]

    def buckets(x):  # [B, L, V] logits -> [B, L, k+1] probabilities
        p = x.softmax(-1)
        top = p.gather(-1, ids)
        return torch.cat([top, 1 - top.sum(-1, keepdim=True)], -1)

    p, q = buckets(t)[mask], buckets(s)[mask]
    torch.testing.assert_close(losses.fkl(s, t, mask, sparse_top_k=k)[0], (p * (p / q).log()).sum())


def test_no_grad_path_gives_the_same_value():
    s, t, mask, _ = make()
    x = s.clone().requires_grad_()
    with torch.no_grad():
        val = losses.jsd(x, t, mask)[0]
    assert not val.requires_grad
    torch.testing.assert_close(val, losses.jsd(s, t, mask)[0])


# ---------------------------------------------------------------- normalisation


def _micro_batches():
    """4 micro-batches of features [b, L, D] and masks with uneven token counts (one has none)."""
    g = torch.Generator().manual_seed(1)
    sizes, counts = [1, 3, 2, 2], [[5], [1, 6, 0], [2, 3], [6, 4]]
    out = []
    for b, cnt in zip(sizes, counts):
        x = torch.randn(b, L, 4, generator=g, dtype=torch.float64)
        mask = torch.arange(L)[None, :] < torch.tensor(cnt)[:, None]
        out.append((x, mask))
    return out


def _grad_of(w_student, w_teacher, pieces, loss_of):
    w = w_student.clone().requires_grad_()
    for x, mask in pieces:
        loss_of(x @ w, x @ w_teacher, mask).backward()
    return w.grad


def test_accumulated_gradients_equal_one_big_batch():
    g = torch.Generator().manual_seed(2)
    w_s, w_t = (torch.randn(4, V, generator=g, dtype=torch.float64) for _ in range(2))
    pieces = _micro_batches()
    x_all, m_all = torch.cat([x for x, _ in pieces]), torch.cat([m for _, m in pieces])

    def mean_loss(s, t, mask):
        total, n = losses.jsd(s, t, mask)
        return total / n

    full = _grad_of(w_s, w_t, [(x_all, m_all)], mean_loss)
    count = losses.global_token_count([m for _, m in pieces])
    assert count == m_all.sum() == 27
    accumulated = _grad_of(w_s, w_t, pieces, lambda s, t, m: losses.micro_batch_loss(losses.jsd(s, t, m)[0], count))
    torch.testing.assert_close(accumulated, full)

    class TwoProcesses:  # stands in for an Accelerator: process 0 holds pieces[:2], process 1 pieces[2:]
        num_processes = 2

        def reduce(self, tensor, reduction):
            assert reduction == "sum"
            return tensor + sum(m.sum() for _, m in pieces[2:])

    count = losses.global_token_count([m for _, m in pieces[:2]], TwoProcesses())
    assert count == 27

    def ddp_loss(s, t, m):
        return losses.micro_batch_loss(losses.jsd(s, t, m)[0], count, num_processes=2)

    ddp = (_grad_of(w_s, w_t, pieces[:2], ddp_loss) + _grad_of(w_s, w_t, pieces[2:], ddp_loss)) / 2  # DDP mean
    torch.testing.assert_close(ddp, full)


# ---------------------------------------------------------------- TRL agreement


def _trl_gkd_trainer():
    pytest.importorskip("trl")
    for module in ("trl.experimental.gkd", "trl.trainer.gkd_trainer", "trl"):
        try:
            return importlib.import_module(module).GKDTrainer
        except (ImportError, AttributeError):
            continue
    pytest.skip("this trl has no GKDTrainer")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_agrees_with_trl(beta):
    trl_jsd = _trl_gkd_trainer().generalized_jsd_loss
    s, t, mask, labels = make(scale=3.0)
    trl_labels = labels.masked_fill(~mask, -100)  # TRL masks with labels == -100
    ours, n = losses.jsd(s, t, mask, beta=beta, temperature=0.7)
    theirs = trl_jsd(s, t, labels=trl_labels, beta=beta, temperature=0.7, reduction="sum")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    theirs = trl_jsd(s, t, labels=trl_labels, beta=beta, temperature=0.7, reduction="batchmean")
    torch.testing.assert_close(ours / n, theirs, rtol=1e-5, atol=1e-5)  # batchmean = sum / valid tokens


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("call, words", [
    (lambda a: losses.compute("kld", *a), ["'kld'", "fkl", "jsd"]),
    (lambda a: losses.compute("jsd", *a, beta=1.5), ["beta=1.5", "[0, 1]"]),
    (lambda a: losses.compute("skew_fkl", *a, alpha=1.0), ["alpha=1.0", "[0, 1)"]),
    (lambda a: losses.compute("fkl", *a, temperature=0.0), ["temperature=0.0", "> 0"]),
    (lambda a: losses.compute("fkl", *a, sparse_top_k=V + 1), [f"sparse_top_k={V + 1}", f"[1, {V}]"]),
    (lambda a: losses.compute("fkl", *a, chunk_size=0), ["chunk_size=0"]),
    (lambda a: losses.compute("fkl", *a, beta=0.5), ["'beta'", "temperature"]),
    (lambda a: losses.compute("rank", *a, rank_top_k=1), ["rank_top_k=1", "[2, 11]"]),
    (lambda a: losses.compute("hybrid", *a, torch.zeros(B, L, dtype=torch.long), ce_weight=-1), ["ce_weight=-1"]),
    (lambda a: losses.compute("ce", *a), ["labels", "ce"]),
    (lambda a: losses.compute("fkl", a[0], a[1][..., :5], a[2]), ["teacher_logits.shape", "(2, 6, 11)"]),
    (lambda a: losses.compute("fkl", a[0], a[1], a[2].long()), ["mask", "bool"]),
])
def test_bad_names_and_params_raise_value_error(call, words):
    s, t, mask, _ = make()
    with pytest.raises(ValueError) as err:
        call((s, t, mask))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_labels_outside_vocabulary_inside_mask_raise():
    s, t, mask, labels = make()
    labels = labels.masked_fill(~mask, -100)
    losses.ce(s, t, mask, labels)  # -100 outside the mask is fine
    labels[0, 0] = -100
    with pytest.raises(ValueError, match="labels"):
        losses.ce(s, t, mask, labels)
