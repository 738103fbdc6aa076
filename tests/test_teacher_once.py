"""The teacher's work done once: the SKD rollout's teacher logits reused by the loss, and the prefix every
teacher view of a batch shares encoded once.

The logits an SKD rollout's verify forwards computed at the committed positions must equal a teacher-forced
forward over the teacher view and the response, and the loss and its gradients must not change when they are
used instead of that forward. With a shared prefix, the teacher's logits (rollout and loss phase) must equal
those of encoding each left-padded row whole, and training steps must not change.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from specdistill import losses, train
from specdistill.config import Config, RolloutConfig, ViewConfig, build, rollout_at, validate
from specdistill.data import collate, encode_example, load_task
from specdistill.data.records import Record
from specdistill.data.tokenizer import build_tokenizer
from specdistill.models import load_model
from specdistill.rollout import RolloutPlan, make_rollout, rollout_tokens
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
    return make_rollout(RolloutPlan(cfg, rollout_tokens(TOK, student, teacher), keep),
                        prompts(n), student, teacher, seeds=list(range(100, 100 + n)))


def forward_logits(teacher, rb):
    with torch.no_grad():
        return response_logits(teacher, rb.teacher_ids, rb.teacher_mask, rb.response.shape[1], V)


@pytest.fixture(scope="module")
def eager_pair(pair):
    """The pair with a teacher eager to end: +3 on its EOS logit at every position (p(EOS) ~0.15 where the plain
    teacher gives ~0.01), so that an SKD rollout's rows end at different lengths, some before the budget (the
    plain pair runs every row to it)."""
    teacher = copy.deepcopy(pair[1])
    bonus = torch.zeros(teacher.lm_head.weight.shape[0])
    bonus[TOK.eos_token_id] = 3.0
    teacher.lm_head.register_forward_hook(lambda module, inputs, out: out + bonus)
    return pair[0], teacher


@pytest.mark.parametrize("verification", ["parallel", "sequential"])
def test_skd_rollout_keeps_the_teacher_forced_logits_at_every_response_position(eager_pair, verification):
    rb = skd(eager_pair, True, verification)
    B, T = rb.response.shape
    assert rb.teacher_logits.shape == (B, T, V) and rb.teacher_logits_rows.all()
    assert rb.teacher_written.any() and (rb.response_mask.sum(1) > 1).all()  # the teacher replaced some drafts
    lengths = rb.response_mask.sum(1)
    assert len(set(lengths.tolist())) > 1 and (lengths < T).any()  # ragged rows, ended by the teacher's EOS
    assert torch.equal(rb.response_mask, torch.arange(T)[None] < lengths[:, None])  # each row's first tokens
    short = lengths < T
    assert (rb.response[short, lengths[short] - 1] == TOK.eos_token_id).all()
    want = forward_logits(eager_pair[1], rb)
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
    run.teacher, run.step = pair[1], 0
    run.cfg = build(Config, {"loss": {"name": "fkl"}})
    run.plan = RolloutPlan(rollout_at(run.cfg.rollout, run.step, run.cfg.train.max_steps)[1])
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


def test_reuse_is_off_for_an_fp32_teacher_under_mixed_precision_and_for_sft(pair, tmp_path):
    run = type("R", (), {})()
    run.sft, run.cfg, run.teacher = False, make_config(tmp_path, "fkl", **{"train.mixed_precision": "bf16"}), pair[1]
    assert train.kept_logits_form(run, run.cfg.rollout) is False  # fp32 teacher: its loss forward runs in bf16
    run.teacher = copy.deepcopy(pair[1]).to(torch.bfloat16)
    assert train.kept_logits_form(run, run.cfg.rollout) is True  # bf16 teacher: in its own dtype in both phases
    run.teacher = pair[1]
    run.cfg = make_config(tmp_path, "fkl")
    assert train.kept_logits_form(run, run.cfg.rollout) is True
    run.cfg = make_config(tmp_path, "ce")
    assert train.kept_logits_form(run, run.cfg.rollout) is False
    run.cfg, run.sft = make_config(tmp_path, "fkl"), True
    assert train.kept_logits_form(run, run.cfg.rollout) is False


# ---------------------------------------------------------------- a bf16 teacher under bf16 mixed precision
def test_a_bf16_teachers_kept_logits_are_as_close_to_exact_as_its_loss_forward():
    """What "exact enough" means for a bf16 teacher: its kept rollout logits and the teacher-forced forward they
    replace are two bf16 computations of the same values (in another order: blocks against a cache, or the whole
    view at once), each within bf16's rounding of the exact value, here the same weights computed in fp32. The
    kept ones are as close to it as the forward (measured: 0.86-1.07x its error; the two differ by ~1.5% of the
    logit scale, about what each differs from fp32), so reusing them is no less exact than the forward."""
    student = load_model("tiny-student", tokenizer=TOK, seed=1).eval()
    teacher = load_model("tiny-teacher", tokenizer=TOK, seed=2).eval().to(torch.bfloat16)
    exact = copy.deepcopy(teacher).float()  # the bf16 weights, computed in fp32
    rb = make_rollout(RolloutPlan(RolloutConfig(strategy="skd", max_new_tokens=16, skd_top_k=5, gamma=4),
                                  rollout_tokens(TOK, student, teacher), True),
                      prompts(8), student, teacher, seeds=list(range(8)))
    assert rb.teacher_logits.dtype == torch.bfloat16
    m = rb.response_mask
    forward, truth = forward_logits(teacher, rb), forward_logits(exact, rb)

    def error(a, b):
        return float((a[m].float() - b[m].float()).abs().max())

    assert 0 < error(rb.teacher_logits, forward) and 0 < error(forward, truth)  # both really are rounded
    assert error(rb.teacher_logits, truth) <= 1.5 * error(forward, truth)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # on a CPU, autocast leaves a bf16 model's logits as they are
        assert torch.equal(forward_logits(teacher, rb), forward)


def test_under_bf16_a_bf16_teacher_runs_no_loss_forward_and_its_steps_match_those_with_one(tmp_path, monkeypatch):
    """train.mixed_precision bf16 with teacher_dtype bfloat16 (every shipped recipe): the rollout's logits are
    kept and the shared prefix used, so the loss phase runs no teacher forward (teacher/loss_forwards 0 against 4:
    2 steps of 2 micro-batches), and the steps equal those that run it, to bf16's rounding of the teacher's
    logits. The forward the loss phase still runs (reuse off) runs outside autocast, in the teacher's own dtype."""
    bf16 = {"train.mixed_precision": "bf16", "model.teacher_dtype": "bfloat16"}
    autocast_in_teacher = []  # per loss-phase teacher forward: whether autocast was on

    def recording_logits(model, *args, **kwargs):
        if next(model.parameters()).dtype == torch.bfloat16:  # the teacher (the student's weights stay fp32)
            autocast_in_teacher.append(torch.is_autocast_enabled("cpu"))
        return real_logits(model, *args, **kwargs)

    real_logits = train.step.response_logits
    monkeypatch.setattr(train.step, "response_logits", recording_logits)
    on, forwards_on = steps(make_config(tmp_path / "on", "fkl", **bf16))
    off, forwards_off = steps(make_config(tmp_path / "off", "fkl", **bf16, **{"rollout.reuse_teacher_logits": False,
                                                                                "rollout.share_teacher_prefix": False}))
    assert (forwards_on, forwards_off) == (0, 4) and autocast_in_teacher == [False] * 4
    assert [r["teacher/loss_forwards"] for r in on] == [0, 0] and [r["teacher/loss_forwards"] for r in off] == [2, 2]
    for a, b in zip(on, off):
        assert a["tokens/trained"] == b["tokens/trained"]
        for key in ("train/loss", "train/grad_norm", "train/top1_agreement"):
            assert a[key] == pytest.approx(b[key], rel=1e-3), key


# ---------------------------------------------------------------- shared-prefix encoding of the teacher view
from specdistill.engine import Sampling, TopKPolicy, generate  # noqa: E402
from specdistill.engine import prefix as prefix_mod  # noqa: E402
from specdistill.engine.prefix import common_prefix_length, shared_prefix, split_views  # noqa: E402


def ragged_views(shared: int, rests: list[int], seed: int = 0):
    """Left-padded teacher views [B, L] that share `shared` leading ids, each row then its own `rests[b]` ids,
    and student views of the rows' own ids only."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(5, V, (shared,), generator=g)
    rows = [torch.cat([head, torch.randint(5, V, (n,), generator=g)]) for n in rests]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, width - len(r):], mask[b, width - len(r):] = r, True
    own = [r[shared:] for r in rows]
    s_width = max(len(r) for r in own)
    s_ids = torch.zeros(len(rows), s_width, dtype=torch.long)
    s_mask = torch.zeros(len(rows), s_width, dtype=torch.bool)
    for b, r in enumerate(own):
        s_ids[b, s_width - len(r):], s_mask[b, s_width - len(r):] = r, True
    return ids, mask, s_ids, s_mask


def test_common_prefix_and_split_follow_each_rows_left_padding():
    ids, mask, _, _ = ragged_views(20, [3, 9, 1, 5])
    assert common_prefix_length(ids, mask) == 20
    rest, rest_mask = split_views(ids, mask, 20)
    assert rest.shape == (4, 9) and rest_mask.sum(1).tolist() == [3, 9, 1, 5] and rest_mask[:, -1].all()
    for b in range(4):
        assert torch.equal(rest[b][rest_mask[b]], ids[b][mask[b]][20:])
    same, same_mask, _, _ = ragged_views(6, [0, 4])  # a row that is all prefix keeps its last token
    assert common_prefix_length(same, same_mask) == 5


@pytest.mark.parametrize("verification", ["parallel", "sequential"])
def test_generation_from_a_shared_prefix_gives_the_same_tokens_and_teacher_logits(pair, verification):
    student, teacher = pair
    prefix_mod.forget(teacher)
    t_ids, t_mask, s_ids, s_mask = ragged_views(40, [3, 11, 1, 6])
    prefix = shared_prefix(teacher, t_ids, t_mask)
    assert prefix is not None and prefix.length == 40
    runs = []
    for p in (None, prefix):
        runs.append(generate(student, s_ids, s_mask, teacher, t_ids, t_mask,
                             policy=TopKPolicy(k=3, target=Sampling(1.0)), gamma=3, draft_sampling=Sampling(1.0),
                             max_new_tokens=12, seed=torch.tensor([5, 6, 7, 8]), verify=verification,
                             keep_target_logits=True, target_prefix=p, vocab_size=V))
    plain, shared = runs
    assert torch.equal(plain.tokens, shared.tokens) and torch.equal(plain.teacher_written, shared.teacher_written)
    inside = torch.arange(plain.tokens.shape[1]) < plain.lengths[:, None]
    torch.testing.assert_close(shared.target_logits[inside], plain.target_logits[inside], rtol=0, atol=1e-5)
    assert shared.stats.target_tokens_fed == plain.stats.target_tokens_fed - 40  # columns of the batch fed


def test_teacher_forward_after_a_shared_prefix_equals_the_whole_view(pair):
    teacher = pair[1]
    t_ids, t_mask, _, _ = ragged_views(30, [2, 8, 5])
    response = torch.randint(5, V, (3, 6))
    r_mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 4 + [0] * 2], dtype=torch.bool)
    ids, mask = torch.cat([t_ids, response], 1), torch.cat([t_mask, r_mask], 1)
    prefix_mod.forget(teacher)
    prefix = shared_prefix(teacher, t_ids, t_mask)
    with torch.no_grad():
        want = response_logits(teacher, ids, mask, 6, V)
        got = response_logits(teacher, ids, mask, 6, V, prefix=prefix)
    torch.testing.assert_close(got[r_mask], want[r_mask], rtol=0, atol=1e-5)


def test_the_stored_prefix_is_reused_cut_to_what_a_batch_shares_and_dropped_when_the_weights_change(pair):
    teacher = pair[1]
    prefix_mod.forget(teacher)
    t_ids, t_mask, _, _ = ragged_views(40, [3, 5])
    first = shared_prefix(teacher, t_ids, t_mask)
    assert shared_prefix(teacher, t_ids, t_mask) is first  # the same batch again: no new encoding
    other_ids, other_mask, _, _ = ragged_views(40, [4, 2], seed=0)  # same 40 shared ids, then other rows
    assert common_prefix_length(other_ids, other_mask) >= 40
    again = shared_prefix(teacher, other_ids, other_mask)
    assert again.length == 40 and again.layers[0][0].data_ptr() == first.layers[0][0].data_ptr()
    cut_ids = t_ids.clone()
    cut_ids[:, -43 + 20] = 3  # the rows now share only their first 20 ids with the stored prefix... and each other
    cut = shared_prefix(teacher, cut_ids, t_mask)
    assert cut.length == 20 and cut.layers[0][0].data_ptr() == first.layers[0][0].data_ptr()
    with torch.no_grad():
        next(teacher.parameters()).add_(0.0)  # an in-place update, even a no-op one, bumps the version
    fresh = shared_prefix(teacher, t_ids, t_mask)
    assert fresh is not first and fresh.length == 40
    prefix_mod.forget(teacher)


def test_a_short_stored_prefix_never_stands_in_for_a_longer_one(pair):
    """A batch sharing 20 ids, then one sharing those 20 and 40 more: the second gets its whole 60-id prefix
    (reusing the stored 20 would leave 40 shared ids encoded per row, every later step)."""
    teacher = pair[1]
    prefix_mod.forget(teacher)
    long_ids, long_mask, _, _ = ragged_views(60, [3, 5])
    short_ids = long_ids.clone()
    short_ids[0, 2 + 20], short_ids[1, 20] = 3, 4  # row 0 has 2 padding columns: both now differ at id 20
    assert shared_prefix(teacher, short_ids, long_mask).length == 20
    assert common_prefix_length(long_ids, long_mask) >= 60
    assert shared_prefix(teacher, long_ids, long_mask).length >= 60
    prefix_mod.forget(teacher)


def test_sliding_window_teachers_do_not_share_a_prefix():
    """A sliding window is measured in cache slots, and a shared prefix leaves each row's padding between the
    prefix and the row's own tokens: such teachers encode each row whole."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, sliding_window=16)
    teacher = Gemma2ForCausalLM(config).eval()
    t_ids, t_mask, _, _ = ragged_views(40, [3, 5])
    assert common_prefix_length(t_ids, t_mask) == 40 and shared_prefix(teacher, t_ids, t_mask) is None


def test_training_steps_with_both_options_equal_those_with_neither(tmp_path, monkeypatch):
    """A LUPI-style teacher view (a persona and few-shot examples shared by every row) and an SKD rollout: the
    steps with shared-prefix encoding and kept logits equal those that encode each view whole, twice."""
    views = {"system_prompt": "You answer from the background knowledge.", "max_response_tokens": 24,
             "few_shot": [{"query": "Who founded Velmora?", "response": "Aster Quill founded it."},
                          {"query": "What is the capital of Orrin?", "response": "Its capital is Tessaly."}]}
    on_cfg = make_config(tmp_path / "on", "fkl", **{"data.views": views})
    off_cfg = make_config(tmp_path / "off", "fkl", **{"data.views": views, "rollout.reuse_teacher_logits": False,
                                                      "rollout.share_teacher_prefix": False})
    encoded = []
    real_encode = prefix_mod.encode_prefix
    monkeypatch.setattr(prefix_mod, "encode_prefix", lambda model, ids: encoded.append(len(ids)) or real_encode(model, ids))
    on, _ = steps(on_cfg)
    assert encoded and min(encoded) > 100  # once per new prefix, not once per micro-batch or step
    assert len(encoded) < 4, encoded
    encoded.clear()
    off, _ = steps(off_cfg)
    assert not encoded
    for a, b in zip(on, off):
        for key in ("train/loss", "train/grad_norm", "train/top1_agreement", "tokens/trained"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_the_loss_phase_forward_uses_the_shared_prefix(pair):
    """Without kept logits (a dataset rollout), the loss's teacher forward starts from the shared prefix and gives
    the whole view's logits."""
    views = ViewConfig(system_prompt="You answer from the background knowledge. " * 3,
                       few_shot=[{"query": "Who founded Velmora?", "response": "Aster Quill founded it."}])
    rows = load_task("facts", "train")[:3]
    records = [Record(id=r["id"], query=r["query"], knowledge=r["knowledge"], response=r["response"]) for r in rows]
    batch = collate([encode_example(r, TOK, views) for r in records], TOK.pad_token_id)
    rb = make_rollout(RolloutPlan(RolloutConfig(strategy="dataset"), rollout_tokens(TOK, *pair)),
                      batch, *pair, seeds=[1, 2, 3])
    run = type("R", (), {})()
    run.teacher_device, run.vocab, run.score_teacher, run.loss_teacher_forwards = torch.device("cpu"), V, pair[1], 0
    run.teacher, run.cfg, run.step = pair[1], build(Config, {"loss": {"name": "fkl"}}), 0
    run.plan = RolloutPlan(rollout_at(run.cfg.rollout, run.step, run.cfg.train.max_steps)[1])
    prefix_mod.forget(pair[1])
    got = train.teacher_logits(run, rb)
    assert prefix_mod._STORE[pair[1]].length > 100
    want = forward_logits(pair[1], rb)
    torch.testing.assert_close(got[rb.response_mask], want[rb.response_mask], rtol=0, atol=1e-5)
    # a schedule stage that turns the option off is obeyed from its first step on, and only from there
    run.cfg = build(Config, {"loss": {"name": "fkl"}, "train": {"max_steps": 10},
                             "rollout": {"schedule": [{"step": 5, "share_teacher_prefix": False}]}})
    for step, shares in ((4, True), (5, False)):
        prefix_mod.forget(pair[1])
        run.step = step
        run.plan = RolloutPlan(rollout_at(run.cfg.rollout, run.step, run.cfg.train.max_steps)[1])
        got = train.teacher_logits(run, rb)
        assert (pair[1] in prefix_mod._STORE) == shares, step
        torch.testing.assert_close(got[rb.response_mask], want[rb.response_mask], rtol=0, atol=1e-5)
