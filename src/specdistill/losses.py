"""Distillation losses: divergences between the student's and the teacher's next-token distributions.

Every loss returns ``(loss_sum, n_tokens)``: the sum over the valid positions of ``mask`` and their count.
The trainer divides by the global token count (`global_token_count`, `micro_batch_loss`), so gradient
accumulation and several processes give the gradient of one big batch.

One chunked core serves every loss. It selects the valid positions first (padding costs nothing), then
applies a per-position function to chunks of ``chunk_size`` positions, upcast to max(fp32, input dtype).
The gradient of each chunk is taken as soon as the chunk is done, so only one chunk's fp32
intermediates are ever alive; a [L, 150k] vocabulary never materialises in fp32 at full size.
Teacher logits are constants: they get no gradient. Double backward is not supported.

Logits come aligned with the tokens they predict: position j of the logits predicts label j (the trainer
gets them from `scoring.response_logits`, or from the SKD rollout, which kept them). With sparse_top_k the
teacher may come as a `TopKLogits` (its top-k ids and bucket logits at the loss temperature) instead of [B, L, V].
"""

from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

# Positions per chunk (loss.chunk_size's default). A chunk holds several fp32 [chunk_size, V] temporaries at once:
# with V = 152k and 256 positions each is ~156 MB, and a jsd chunk peaks near 1 GB, whatever the sequence length.
from .config import DEFAULT_CHUNK_SIZE


# ---------------------------------------------------------------- per-position math, [n, V] fp32 chunks
# Each *_rows(s, t, y, **params) maps student and teacher logits [n, V] and labels [n] to losses [n];
# the formulas are in the public functions' docstrings.


def _log(w: float) -> float:
    return math.log(w) if w > 0 else -math.inf


def _kl(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) from log-probs [n, K] -> [n].

    Clamped at 0: the true value is >= 0, so the clamp only removes rounding error."""
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0)


def _log_mix(la: torch.Tensor, lb: torch.Tensor, w: float) -> torch.Tensor:
    """log(w * a + (1 - w) * b) from log-probs [n, K], computed in log space (w may be 0 or 1)."""
    return torch.logaddexp(la + _log(w), lb + _log(1 - w))


def _bucket_logits(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits [n, V] -> [n, k+1]: the k logits at ``ids`` [n, k], then one 'rest' bucket.

    The rest logit is logsumexp over the other V - k logits, so a softmax over the k+1 buckets gives
    exactly each bucket's probability mass. With k = V the rest bucket is empty: its logit is clamped
    from -inf to the most negative finite float, so that 0 * (log 0 - log 0) stays 0 and not NaN."""
    rest = x.scatter(-1, ids, -math.inf).logsumexp(-1, keepdim=True)  # [n, 1]
    return torch.cat([x.gather(-1, ids), rest.clamp_min(torch.finfo(x.dtype).min)], -1)


class TopKLogits(NamedTuple):
    """A teacher's logits in the sparse form of ``sparse_top_k`` at one temperature T (`top_k_logits`).

    ids [..., k]: the teacher's top-k tokens; buckets [..., k+1] fp32: their logits / T, then the logsumexp of
    every other logit / T (the 'rest' bucket). That is all a sparse loss reads of the teacher: k * 12 + 4 bytes
    per position, against V * 4 (fp32) or V * 2 (bf16) for the full logits."""

    ids: torch.Tensor
    buckets: torch.Tensor

    @property
    def k(self) -> int:
        return self.ids.shape[-1]

    def to(self, device) -> TopKLogits:
        return TopKLogits(self.ids.to(device), self.buckets.to(device))


def top_k_logits(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopKLogits:
    """The sparse form of teacher logits [..., V] that a loss with sparse_top_k=k at `temperature` reads: the same
    values the loss computes from the full logits (in fp32), so passing it instead gives the same loss."""
    t = teacher_logits.float()
    if temperature != 1:
        t = t / temperature
    ids = t.topk(k, dim=-1).indices  # [..., k]
    return TopKLogits(ids, _bucket_logits(t, ids))


def teacher_argmax(teacher) -> torch.Tensor:
    """The teacher's most likely token per position, from full logits [..., V] or a TopKLogits."""
    return teacher.ids[..., 0] if isinstance(teacher, TopKLogits) else teacher.argmax(-1)


def _log_probs(s, t, temperature, sparse_top_k):
    """Student and teacher log-probs at ``temperature``: [n, V] logits -> [n, V], or [n, k+1] with sparse_top_k.

    t may be a TopKLogits (its buckets already at ``temperature``)."""
    if isinstance(t, TopKLogits):
        s = s / temperature if temperature != 1 else s
        return _bucket_logits(s, t.ids).log_softmax(-1), t.buckets.log_softmax(-1)
    if temperature != 1:  # skip two [n, V] copies in the common case
        s, t = s / temperature, t / temperature
    if sparse_top_k is not None:
        ids = t.topk(sparse_top_k, dim=-1).indices  # [n, k], the teacher's top-k tokens
        s, t = _bucket_logits(s, ids), _bucket_logits(t, ids)
    return s.log_softmax(-1), t.log_softmax(-1)


def _fkl_rows(s, t, y, temperature, sparse_top_k):
    ls, lt = _log_probs(s, t, temperature, sparse_top_k)
    return _kl(lt, ls)


def _rkl_rows(s, t, y, temperature, sparse_top_k):
    ls, lt = _log_probs(s, t, temperature, sparse_top_k)
    return _kl(ls, lt)


def _jsd_rows(s, t, y, temperature, sparse_top_k, beta):
    ls, lt = _log_probs(s, t, temperature, sparse_top_k)
    if beta in (0, 1):  # TRL's convention: the endpoints are the two KLs, not the (zero) limits
        return _kl(lt, ls) if beta == 0 else _kl(ls, lt)
    lm = _log_mix(lt, ls, beta)  # m = beta * p_T + (1 - beta) * p_S
    return beta * _kl(lt, lm) + (1 - beta) * _kl(ls, lm)


def _tvd_rows(s, t, y, temperature, sparse_top_k):
    ls, lt = _log_probs(s, t, temperature, sparse_top_k)
    return 0.5 * (lt.exp() - ls.exp()).abs().sum(-1)


def _skew_fkl_rows(s, t, y, temperature, sparse_top_k, alpha):
    ls, lt = _log_probs(s, t, temperature, sparse_top_k)
    return _kl(lt, _log_mix(lt, ls, alpha))  # KL(p_T || alpha p_T + (1 - alpha) p_S)


def _skew_rkl_rows(s, t, y, temperature, sparse_top_k, alpha):
    ls, lt = _log_probs(s, t, temperature, sparse_top_k)
    return _kl(ls, _log_mix(ls, lt, alpha))  # KL(p_S || alpha p_S + (1 - alpha) p_T)


def _ce_rows(s, t, y, temperature):
    return F.cross_entropy(s / temperature, y, reduction="none")


def _hybrid_rows(s, t, y, temperature, sparse_top_k, ce_weight):
    soft = temperature**2 * _fkl_rows(s, t, y, temperature, sparse_top_k)  # Hinton's T^2 keeps gradient scale
    return ce_weight * _ce_rows(s, t, y, 1.0) + (1 - ce_weight) * soft


def _rank_rows(s, t, y, temperature, rank_top_k, margin):
    t_top, ids = t.topk(rank_top_k, dim=-1)  # [n, k], teacher order, best first
    s_top = s.gather(-1, ids) / temperature  # [n, k]
    diff = s_top[:, :, None] - s_top[:, None, :]  # [n, k, k]: (s_i - s_j) / T
    pairs = t_top[:, :, None] > t_top[:, None, :]  # [n, k, k]: the teacher ranks i above j (ties skipped)
    loss = F.softplus(margin / temperature - diff) * pairs  # log(1 + exp(-(s_i - s_j - margin) / T))
    return loss.sum((1, 2)) / pairs.sum((1, 2)).clamp_min(1)


# ---------------------------------------------------------------- the chunked core


def _take(teacher, b, l, dtype):
    """The teacher's rows at batch and position indices b, l [n]: [n, V] logits, or a TopKLogits of [n, k]."""
    if teacher is None:
        return None
    if isinstance(teacher, TopKLogits):
        return TopKLogits(teacher.ids[b, l], teacher.buckets[b, l].to(dtype))
    return teacher[b, l].to(dtype)


class _ChunkedSum(torch.autograd.Function):
    """sum over rows of rows_fn(s[rows], t[rows], y[rows]), chunk by chunk; the gradient is taken per chunk."""

    @staticmethod
    def forward(ctx, student, teacher, labels, where, rows_fn, chunk_size, need_grad):
        # student, teacher: [B, L, V]; labels: [B, L] or None; where: ([N], [N]) batch and position indices
        dtype = torch.promote_types(student.dtype, torch.float32)
        grad = torch.zeros_like(student) if need_grad else None  # [B, L, V], input dtype
        total = torch.zeros((), dtype=dtype, device=student.device)
        for b, l in zip(*(i.split(chunk_size) for i in where)):
            s = student[b, l].to(dtype).requires_grad_(need_grad)  # [n, V]
            t = _take(teacher, b, l, dtype)
            y = None if labels is None else labels[b, l]  # [n]
            with torch.set_grad_enabled(need_grad):
                loss = rows_fn(s, t, y).sum()
            if need_grad:
                grad[b, l] = torch.autograd.grad(loss, s)[0].to(grad.dtype)
            total += loss.detach()
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None, None, None, None


def _check(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: expected {allowed}")


def _check_inputs(s, t, mask, labels, sparse_top_k, chunk_size, temperature) -> None:
    _check("student_logits.shape", tuple(s.shape), s.dim() == 3, "[B, L, V]")
    if isinstance(t, TopKLogits):
        _check("teacher_logits.ids.shape", tuple(t.ids.shape), t.ids.shape[:2] == s.shape[:2],
               f"[{s.shape[0]}, {s.shape[1]}, k]")
        _check("sparse_top_k", sparse_top_k, sparse_top_k == t.k, f"{t.k}, the k of the TopKLogits teacher")
    else:
        _check("teacher_logits.shape", None if t is None else tuple(t.shape),
               t is None or t.shape == s.shape, f"the student's shape {tuple(s.shape)}")
    _check("mask", f"{mask.dtype} {tuple(mask.shape)}", mask.dtype == torch.bool and mask.shape == s.shape[:2],
           f"a bool tensor of shape {tuple(s.shape[:2])}")
    if labels is not None:
        _check("labels.shape", tuple(labels.shape), labels.shape == s.shape[:2], f"{tuple(s.shape[:2])}")
        y = labels[mask]
        _check("labels", "an id out of range", y.numel() == 0 or 0 <= y.min() <= y.max() < s.shape[-1],
               f"ids in [0, {s.shape[-1]}) at every position of mask (no -100 inside the mask)")
    _check("temperature", temperature, temperature > 0 and math.isfinite(temperature), "a finite number > 0")
    _check("chunk_size", chunk_size, isinstance(chunk_size, int) and chunk_size >= 1, "an int >= 1")
    k_ok = sparse_top_k is None or (isinstance(sparse_top_k, int) and 1 <= sparse_top_k <= s.shape[-1])
    _check("sparse_top_k", sparse_top_k, k_ok, f"None or an int in [1, {s.shape[-1]}]")


def _masked_chunked_sum(rows_fn, student_logits, teacher_logits, mask, labels=None, *, temperature=1.0,
         chunk_size=DEFAULT_CHUNK_SIZE, **params):
    """Validate, select the valid positions, and sum ``rows_fn`` over them chunk by chunk."""
    _check_inputs(student_logits, teacher_logits, mask, labels, params.get("sparse_top_k"), chunk_size, temperature)
    where = mask.nonzero(as_tuple=True)  # ([N], [N]): padding is never touched
    teacher = teacher_logits
    if isinstance(teacher, torch.Tensor):
        teacher = teacher.detach()
    rows_fn = _bind(rows_fn, temperature=temperature, **params)
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss = _ChunkedSum.apply(student_logits, teacher, labels, where, rows_fn, chunk_size, need_grad)
    return loss, mask.sum()


def _bind(fn, **params):
    return lambda s, t, y: fn(s, t, y, **params)


# ---------------------------------------------------------------- public losses


_SHAPES = """
    Shapes: student_logits, teacher_logits [B, L, V] (any float dtype; computed in max(fp32, dtype));
    mask [B, L] bool over logit positions. Returns (loss_sum, n_tokens), both 0-dim tensors."""


def fkl(student_logits, teacher_logits, mask, *, temperature=1.0, sparse_top_k=None, chunk_size=DEFAULT_CHUNK_SIZE):
    """Forward KL(p_T || p_S) = sum_v p_T,v (log p_T,v - log p_S,v), with p = softmax(logits / T).

    sparse_top_k: compare the two distributions over the teacher's top-k tokens plus one bucket holding the rest
    of each distribution's mass (sparse KD); with sparse_top_k = V this is the dense loss."""
    return _masked_chunked_sum(_fkl_rows, student_logits, teacher_logits, mask, temperature=temperature,
                               sparse_top_k=sparse_top_k, chunk_size=chunk_size)


def rkl(student_logits, teacher_logits, mask, *, temperature=1.0, sparse_top_k=None, chunk_size=DEFAULT_CHUNK_SIZE):
    """Reverse KL(p_S || p_T) = sum_v p_S,v (log p_S,v - log p_T,v). Options as in `fkl`."""
    return _masked_chunked_sum(_rkl_rows, student_logits, teacher_logits, mask, temperature=temperature,
                               sparse_top_k=sparse_top_k, chunk_size=chunk_size)


def jsd(student_logits, teacher_logits, mask, *, beta=0.5, temperature=1.0, sparse_top_k=None,
        chunk_size=DEFAULT_CHUNK_SIZE):
    """Generalised JSD (GKD, TRL's convention), beta in [0, 1]:

        beta = 0: KL(p_T || p_S);  beta = 1: KL(p_S || p_T);  otherwise, with m = beta p_T + (1 - beta) p_S
        JSD_beta = beta KL(p_T || m) + (1 - beta) KL(p_S || m)   (log m by logaddexp, in log space).
    Options as in `fkl`."""
    _check("beta", beta, 0 <= beta <= 1, "a number in [0, 1]")
    return _masked_chunked_sum(_jsd_rows, student_logits, teacher_logits, mask, temperature=temperature,
                               sparse_top_k=sparse_top_k, chunk_size=chunk_size, beta=beta)


def tvd(student_logits, teacher_logits, mask, *, temperature=1.0, sparse_top_k=None, chunk_size=DEFAULT_CHUNK_SIZE):
    """Total variation distance 0.5 * sum_v |p_T,v - p_S,v|, in [0, 1] per position. Options as in `fkl`."""
    return _masked_chunked_sum(_tvd_rows, student_logits, teacher_logits, mask, temperature=temperature,
                               sparse_top_k=sparse_top_k, chunk_size=chunk_size)


def skew_fkl(student_logits, teacher_logits, mask, *, alpha=0.1, temperature=1.0, sparse_top_k=None,
             chunk_size=DEFAULT_CHUNK_SIZE):
    """Skew forward KL (DistiLLM): KL(p_T || alpha p_T + (1 - alpha) p_S), alpha in [0, 1).

    alpha = 0 is the forward KL. Options as in `fkl`."""
    _check("alpha", alpha, 0 <= alpha < 1, "a number in [0, 1)")
    return _masked_chunked_sum(_skew_fkl_rows, student_logits, teacher_logits, mask, temperature=temperature,
                               sparse_top_k=sparse_top_k, chunk_size=chunk_size, alpha=alpha)


def skew_rkl(student_logits, teacher_logits, mask, *, alpha=0.1, temperature=1.0, sparse_top_k=None,
             chunk_size=DEFAULT_CHUNK_SIZE):
    """Skew reverse KL (DistiLLM): KL(p_S || alpha p_S + (1 - alpha) p_T), alpha in [0, 1).

    alpha = 0 is the reverse KL. Options as in `fkl`."""
    _check("alpha", alpha, 0 <= alpha < 1, "a number in [0, 1)")
    return _masked_chunked_sum(_skew_rkl_rows, student_logits, teacher_logits, mask, temperature=temperature,
                               sparse_top_k=sparse_top_k, chunk_size=chunk_size, alpha=alpha)


def ce(student_logits, teacher_logits, mask, labels, *, temperature=1.0, chunk_size=DEFAULT_CHUNK_SIZE):
    """Cross-entropy with hard labels: -log softmax(s / T)[y]. teacher_logits is unused (may be None).

    labels [B, L]: the token each logit position predicts, valid ids inside mask."""
    return _masked_chunked_sum(_ce_rows, student_logits, None, mask, labels, temperature=temperature,
                               chunk_size=chunk_size)


def hybrid(student_logits, teacher_logits, mask, labels, *, ce_weight=0.5, temperature=1.0, sparse_top_k=None,
           chunk_size=DEFAULT_CHUNK_SIZE):
    """Hinton's mix: ce_weight * CE(y, p_S at T=1) + (1 - ce_weight) * T^2 * KL(p_T || p_S) at temperature T.

    ce_weight in [0, 1]; labels as in `ce`; sparse_top_k applies to the KL term as in `fkl`."""
    _check("ce_weight", ce_weight, 0 <= ce_weight <= 1, "a number in [0, 1]")
    return _masked_chunked_sum(_hybrid_rows, student_logits, teacher_logits, mask, labels, temperature=temperature,
                               sparse_top_k=sparse_top_k, chunk_size=chunk_size, ce_weight=ce_weight)


def rank(student_logits, teacher_logits, mask, *, rank_top_k=8, margin=0.0, temperature=1.0,
         chunk_size=DEFAULT_CHUNK_SIZE):
    """Contrastive rank-order loss: keep the student's ordering of the teacher's top-k tokens.

    With i_1..i_k the teacher's top-k tokens in teacher order and s the student logits, per position:
        (1 / |P|) sum_{(a, b) in P} log(1 + exp(-(s_a - s_b - margin) / T)),
        P = {(a, b): the teacher's logit of a > that of b} (ties carry no order and are skipped).
    Averaging over the k(k-1)/2 pairs keeps the scale independent of k. rank_top_k in [2, V]; margin >= 0."""
    V = student_logits.shape[-1]
    _check("rank_top_k", rank_top_k, isinstance(rank_top_k, int) and 2 <= rank_top_k <= V, f"an int in [2, {V}]")
    _check("margin", margin, margin >= 0, "a number >= 0")
    return _masked_chunked_sum(_rank_rows, student_logits, teacher_logits, mask, temperature=temperature,
                               chunk_size=chunk_size, rank_top_k=rank_top_k, margin=margin)


LOSSES = {f.__name__: f for f in (fkl, rkl, jsd, tvd, skew_fkl, skew_rkl, ce, hybrid, rank)}
for _f in LOSSES.values():
    _f.__doc__ += _SHAPES


def compute(name, student_logits, teacher_logits, mask, labels=None, **params):
    """Loss ``name`` summed over the valid positions: returns (loss_sum, n_tokens).

    name: one of `LOSSES`; labels [B, L] is required by ce and hybrid and ignored by the others;
    params: the loss's keyword options (temperature, chunk_size, sparse_top_k, beta, alpha, ce_weight,
    rank_top_k, margin: see each function)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: expected one of {', '.join(LOSSES)}")
    fn = LOSSES[name]
    sig = inspect.signature(fn).parameters
    allowed = [p for p, v in sig.items() if v.kind is v.KEYWORD_ONLY]
    for key in params:
        _check(f"{name} parameter", key, key in allowed, f"one of {', '.join(allowed)}")
    if "labels" in sig:
        _check("labels", labels, labels is not None, f"a [B, L] tensor of token ids: loss {name!r} needs them")
        return fn(student_logits, teacher_logits, mask, labels, **params)
    return fn(student_logits, teacher_logits, mask, **params)


# ---------------------------------------------------------------- normalisation


def global_token_count(masks, accelerator=None) -> torch.Tensor:
    """Valid positions in all micro-batches of one optimiser step, summed over processes: 0-dim int tensor.

    masks: the [B, L] loss masks of this process's micro-batches; accelerator: an accelerate Accelerator,
    whose processes' counts are summed with ``accelerator.reduce`` when it runs more than one."""
    count = torch.stack([m.sum() for m in masks]).sum()
    if accelerator is not None and accelerator.num_processes > 1:
        count = accelerator.reduce(count, reduction="sum")
    return count


def micro_batch_loss(loss_sum: torch.Tensor, global_count, num_processes: int = 1) -> torch.Tensor:
    """The loss to backprop for one micro-batch: loss_sum * num_processes / global_count.

    Accumulation sums the micro-batches' gradients and DDP averages them over processes (hence the factor
    num_processes), so the optimiser sees the gradient of (all valid-token losses) / (all valid tokens)."""
    count = torch.as_tensor(global_count, device=loss_sum.device).clamp_min(1)
    return loss_sum * num_processes / count
