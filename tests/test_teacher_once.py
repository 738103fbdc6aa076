"""The teacher's work done once: the SKD rollout's teacher logits reused by the loss (issue 18).

The logits an SKD rollout's verify forwards computed at the committed positions must equal a teacher-forced
forward over the teacher view and the response, and the loss and its gradients must not change when they are
used instead of that forward.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specdistill import losses, train
from specdistill.config import Config, RolloutConfig, ViewConfig, build, validate
from specdistill.data import collate, encode_example, load_task
from specdistill.data.records import Record
from specdistill.data.tokenizer import build_tokenizer
from specdistill.models import load_model
from specdistill.rollout import make_rollout
from specdistill.scoring import response_logits

TOK = build_tokenizer()
V = len(TOK)
DIVERGENCES = ["fkl", "rkl", "jsd", "tvd"]


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    student = load_model("tiny-student", tokenizer=TOK, seed=1).eval()
    teacher = load_model("tiny-student", tokenizer=TOK, seed=2).eval()
    return student, teacher


def prompts(n=4, first=0):
    """facts rows: the teacher's view holds the knowledge, so the two views have different, ragged lengths."""
    rows = load_task("facts", "train")[first : first + n]
    records = [Record(id=r["id"], query=r["query"], knowledge=r["knowledge"], response=r["response"]) for r in rows]
    return collate([encode_example(r, TOK, ViewConfig()) for r in records], TOK.pad_token_id)


def skd(pair, keep, verification="parallel", strategy="skd", n=4):
    student, teacher = pair
    cfg = RolloutConfig(strategy=strategy, mix=["skd", "dataset"], lam=0.5, max_new_tokens=10, skd_top_k=3,
                        gamma=3, gamma_schedule="lupi", verification=verification)
    return make_rollout(cfg, prompts(n), student, teacher, TOK, seeds=list(range(100, 100 + n)),
                        keep_teacher_logits=keep)


def forward_logits(teacher, rb):
    with torch.no_grad():
        return response_logits(teacher, rb.teacher_ids, rb.teacher_mask, rb.response.shape[1], V)


@pytest.mark.parametrize("verification", ["parallel", "sequential"])
def test_skd_rollout_keeps_the_teacher_forced_logits_at_every_response_position(pair, verification):
    rb = skd(pair, True, verification)
    assert rb.teacher_logits.shape == (4, rb.response.shape[1], V) and rb.teacher_logits_rows.all()
    assert rb.teacher_written.any() and (rb.response_mask.sum(1) > 1).all()  # the teacher replaced some drafts
    assert len(set(rb.response_mask.sum(1).tolist())) > 1 or rb.response_mask.all()
    want = forward_logits(pair[1], rb)
    m = rb.response_mask
    torch.testing.assert_close(rb.teacher_logits[m], want[m], rtol=0, atol=1e-5)


def test_without_the_option_nothing_is_kept(pair):
    rb = skd(pair, False)
    assert rb.teacher_logits is None and rb.teacher_logits_rows is None


def loss_and_grad(name, student_logits, teacher, mask, **params):
    s = student_logits.detach().clone().requires_grad_(True)
    loss, _ = losses.compute(name, s, teacher, mask, **params)
    loss.backward()
    return loss.detach(), s.grad


@pytest.mark.parametrize("sparse_top_k", [None, 5])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_loss_and_gradients_from_kept_logits_equal_those_of_a_second_forward(pair, name, sparse_top_k):
    temperature = 1.5
    keep = True if sparse_top_k is None else lambda x: losses.top_k_logits(x, sparse_top_k, temperature)
    rb = skd(pair, keep)
    if sparse_top_k is not None:
        assert isinstance(rb.teacher_logits, losses.TopKLogits) and rb.teacher_logits.ids.shape[-1] == sparse_top_k
    student = pair[0]
    s_logits = response_logits(student, rb.student_ids, rb.student_mask, rb.response.shape[1], V)
    params = dict(temperature=temperature, sparse_top_k=sparse_top_k)
    want_loss, want_grad = loss_and_grad(name, s_logits, forward_logits(pair[1], rb), rb.response_mask, **params)
    got_loss, got_grad = loss_and_grad(name, s_logits, rb.teacher_logits, rb.response_mask, **params)
    assert want_loss > 0
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5)


def test_sparse_form_gives_the_dense_losses_sparse_value_on_the_same_logits():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 40), torch.randn(2, 5, 40)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for name in DIVERGENCES:
        a = loss_and_grad(name, s, t, mask, temperature=0.7, sparse_top_k=4)
        b = loss_and_grad(name, s, losses.top_k_logits(t, 4, 0.7), mask, temperature=0.7, sparse_top_k=4)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="sparse_top_k"):
        losses.fkl(s, losses.top_k_logits(t, 4), mask, sparse_top_k=3)


def test_mixed_rollout_keeps_the_skd_rows_and_the_loss_runs_the_teacher_on_the_others_only(pair):
    rb = skd(pair, True, strategy="mixed", n=6)
    have = rb.teacher_logits_rows
    assert have.any() and not have.all()
    want = forward_logits(pair[1], rb)
    m = rb.response_mask & have[:, None]
    torch.testing.assert_close(rb.teacher_logits[m], want[m], rtol=0, atol=1e-5)
    run = type("R", (), {})()
    run.teacher_device, run.vocab, run.score_teacher, run.loss_teacher_forwards = torch.device("cpu"), V, pair[1], 0
    run.cfg = build(Config, {"loss": {"name": "fkl"}})
    full = train.teacher_logits(run, rb)
    assert run.loss_teacher_forwards == 1
    torch.testing.assert_close(full[rb.response_mask], want[rb.response_mask], rtol=0, atol=1e-5)


def make_config(out: Path, loss: str, **overrides) -> Config:
    data = {
        "model": {"student": "tiny-student", "teacher": "tiny-teacher"},
        "data": {"train": [{"task": "facts", "limit": 32}], "views": {"max_response_tokens": 24}},
        "rollout": {"strategy": "skd", "max_new_tokens": 8, "skd_top_k": 3, "gamma": 3},
        "loss": {"name": loss},
        "train": {"output_dir": str(out), "max_steps": 2, "batch_size": 4, "grad_accum": 2, "lr": 3e-3,
                  "warmup_steps": 1, "progress": False},
    }
    for key, value in overrides.items():
        section, field = key.split(".")
        data.setdefault(section, {})[field] = value
    cfg = build(Config, data)
    validate(cfg)
    return cfg


def steps(cfg: Config) -> tuple[list[dict], int]:
    run = train.setup(cfg)
    try:
        rows = []
        for _ in range(2):
            rows.append(train.train_step(run))
            run.step += 1
        return rows, run.loss_teacher_forwards
    finally:
        train.cleanup(run)


@pytest.mark.parametrize("loss,sparse", [("jsd", None), ("tvd", 6)])
def test_training_steps_with_reuse_equal_those_with_a_second_teacher_forward(tmp_path, loss, sparse):
    reused, forwards = steps(make_config(tmp_path / "on", loss, **{"loss.sparse_top_k": sparse}))
    second, forwards_off = steps(make_config(tmp_path / "off", loss, **{"loss.sparse_top_k": sparse,
                                                                        "rollout.reuse_teacher_logits": False}))
    assert forwards == 0 and forwards_off == 4  # 2 steps of 2 micro-batches
    for a, b in zip(reused, second):
        for key in ("train/loss", "train/grad_norm", "train/top1_agreement", "tokens/trained"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_reuse_is_off_under_mixed_precision_and_for_sft(tmp_path):
    run = type("R", (), {})()
    run.sft, run.cfg = False, make_config(tmp_path, "fkl", **{"train.mixed_precision": "bf16"})
    assert train.kept_logits_form(run, run.cfg.rollout) is False
    run.cfg = make_config(tmp_path, "fkl")
    assert train.kept_logits_form(run, run.cfg.rollout) is True
    run.cfg = make_config(tmp_path, "ce")
    assert train.kept_logits_form(run, run.cfg.rollout) is False
    run.cfg, run.sft = make_config(tmp_path, "fkl"), True
    assert train.kept_logits_form(run, run.cfg.rollout) is False
