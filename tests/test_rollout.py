import threading
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from specdistill.config import RolloutConfig, ViewConfig
from specdistill.data import collate, encode_example, load_task
from specdistill.data.records import Record
from specdistill.data.tokenizer import build_tokenizer
from specdistill.models import load_model
from specdistill.engine import GenerationStats, Verdict
from specdistill.engine.sampling import derive_seed
from specdistill.rollout import RolloutPlan, make_rollout, mix_choice, rollout_metrics, rollout_tokens, skd_policy

TOK = build_tokenizer()


@pytest.fixture(scope="module")
def pair():
    return load_model("tiny-student", tokenizer=TOK, seed=1).eval(), load_model("tiny-student", tokenizer=TOK, seed=2).eval()


def prompts(n=3, first=0):
    rows = load_task("facts", "train")[first : first + n]
    records = [Record(id=r["id"], query=r["query"], knowledge=r["knowledge"], response=r["response"]) for r in rows]
    return collate([encode_example(r, TOK, ViewConfig()) for r in records], TOK.pad_token_id)


@torch.no_grad()
def greedy_decode(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The model's greedy continuation by full forwards without a cache, up to and including EOS."""
    out = []
    while len(out) < max_new_tokens and TOK.eos_token_id not in out:
        out.append(int(model(torch.tensor([prompt + out])).logits[0, -1].argmax()))
    return out


def responses(rb) -> list[list[int]]:
    return [r[m].tolist() for r, m in zip(rb.response, rb.response_mask)]


def check_views(rb, batch):
    """Each view is that model's own prompt followed by the same response."""
    P, Q = batch.student_ids.shape[1], batch.teacher_ids.shape[1]
    assert torch.equal(rb.student_ids[:, :P], batch.student_ids) and torch.equal(rb.teacher_ids[:, :Q], batch.teacher_ids)
    assert torch.equal(rb.student_ids[:, P:][rb.response_mask], rb.teacher_ids[:, Q:][rb.response_mask])
    assert torch.equal(rb.student_mask[:, P:], rb.response_mask) and torch.equal(rb.teacher_mask[:, Q:], rb.response_mask)
    assert (rb.student_prompt_len, rb.teacher_prompt_len) == (P, Q)
    assert not (rb.teacher_written & ~rb.response_mask).any()


@pytest.mark.parametrize("strategy", ["dataset", "teacher", "student", "mixed", "skd"])
def test_every_strategy_returns_the_same_batch_object(pair, strategy):
    student, teacher = pair
    batch = prompts()
    cfg = RolloutConfig(strategy=strategy, max_new_tokens=6, temperature=1.0, lam=0.5, skd_top_k=3)
    rb = make_rollout(RolloutPlan(cfg, rollout_tokens(TOK, student, teacher)),
                      batch, student, teacher, seeds=[11, 12, 13])
    check_views(rb, batch)
    assert rb.num_tokens > 0
    if strategy == "dataset":
        refs = [TOK(e.record.response, add_special_tokens=False).input_ids + [TOK.eos_token_id] for e in batch.examples]
        assert [r[m].tolist() for r, m in zip(rb.response, rb.response_mask)] == refs
    if strategy == "teacher":
        assert torch.equal(rb.teacher_written, rb.response_mask)
    if strategy in ("dataset", "student"):
        assert not rb.teacher_written.any()
    if strategy == "skd":
        m = rollout_metrics([rb])
        assert m["tokens/drafted"] > 0 and 0 <= m["rollout/acceptance_rate"] <= 1
        assert rb.teacher_written.sum() == m["tokens/replaced"] + m.get("tokens/bonus", 0)


@pytest.mark.parametrize("who", ["teacher", "student"])
def test_model_rollouts_decode_each_models_own_view_at_its_own_temperature(pair, who):
    """SeqKD (teacher) and on-policy (student) rollouts, greedy for the model that writes and temperature 1 for
    the other: each response is the writing model's cache-free greedy decode of its own prompt view."""
    student, teacher = pair
    batch = prompts()
    temperatures = {"temperature": 0.0, "teacher_temperature": 1.0} if who == "student" else \
        {"temperature": 1.0, "teacher_temperature": 0.0}
    rb = make_rollout(RolloutPlan(RolloutConfig(strategy=who, max_new_tokens=6, **temperatures),
                                  rollout_tokens(TOK, student, teacher)),
                      batch, student, teacher, seeds=[11, 12, 13])
    model = teacher if who == "teacher" else student
    views = [e.teacher_prompt if who == "teacher" else e.student_prompt for e in batch.examples]
    assert responses(rb) == [greedy_decode(model, view, 6) for view in views]
    assert torch.equal(rb.teacher_written, rb.response_mask if who == "teacher" else torch.zeros_like(rb.response_mask))


def test_mixed_takes_the_students_sample_with_probability_lambda(pair):
    """lam = 0.25 over 120 rows: each response is either the dataset's or the student's greedy decode, and the
    number of student rows is Binomial(120, 0.25) (mean 30, sd 4.7): within 4 sd of the mean."""
    student, teacher = pair
    batch = prompts(120)
    cfg = RolloutConfig(strategy="mixed", lam=0.25, max_new_tokens=6, temperature=0.0)
    rb = make_rollout(RolloutPlan(cfg, rollout_tokens(TOK, student, teacher)),
                      batch, student, teacher, seeds=list(range(500, 620)))
    own = 0
    for got, e in zip(responses(rb), batch.examples):
        if got != e.response:
            assert got == greedy_decode(student, e.student_prompt, 6)
            own += 1
    assert abs(own - 30) < 4 * 4.75, own


def test_mixed_lambda_endpoints(pair):
    student, teacher = pair
    batch = prompts()
    seeds = [1, 2, 3]
    args = dict(max_new_tokens=6, temperature=1.0)
    none = make_rollout(RolloutPlan(RolloutConfig(strategy="mixed", lam=0.0, **args),
                                    rollout_tokens(TOK, student, teacher)),
                        batch, student, teacher, seeds)
    data = make_rollout(RolloutPlan(RolloutConfig(strategy="dataset", **args), rollout_tokens(TOK, student, teacher)),
                        batch, student, teacher, seeds)
    assert torch.equal(none.student_ids, data.student_ids)
    every = make_rollout(RolloutPlan(RolloutConfig(strategy="mixed", lam=1.0, **args),
                                     rollout_tokens(TOK, student, teacher)),
                         batch, student, teacher, seeds)
    own = make_rollout(RolloutPlan(RolloutConfig(strategy="student", **args), rollout_tokens(TOK, student, teacher)),
                       batch, student, teacher, seeds)
    assert torch.equal(every.student_ids, own.student_ids) and torch.equal(every.response_mask, own.response_mask)


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.85])
def test_mix_choice_takes_the_first_strategy_with_probability_lambda(lam):
    """20,000 rows' coins, seeded as training seeds them (seed, step, global row): the number that take mix[0] passes
    an exact two-sided binomial test at p > 0.001 (the seeds are fixed, so the test is deterministic)."""
    from scipy.stats import binomtest

    seeds = [derive_seed(7, step, row) for step in range(50) for row in range(400)]
    first = mix_choice(seeds, lam)
    assert binomtest(sum(first), len(seeds), lam).pvalue > 1e-3
    assert first == mix_choice(list(seeds), lam)  # a function of the seeds alone
    assert mix_choice(seeds, 0.0) == [False] * len(seeds) and mix_choice(seeds, 1.0) == [True] * len(seeds)


def test_mixed_skd_rows_are_their_own_skd_rollout_or_the_gold_response(pair):
    """mix [skd, dataset]: a row whose coin says SKD holds exactly the SKD rollout of that row alone with its seed
    (response and teacher-written marks); every other row holds its reference response, with no teacher tokens."""
    student, teacher = pair
    n = 8
    batch = prompts(n)
    seeds = [derive_seed(3, 0, row) for row in range(n)]
    cfg = RolloutConfig(strategy="mixed", mix=["skd", "dataset"], lam=0.5, max_new_tokens=5, temperature=1.0,
                        skd_top_k=2)
    rb = make_rollout(RolloutPlan(cfg, rollout_tokens(TOK, student, teacher)), batch, student, teacher, seeds)
    check_views(rb, batch)
    skd_rows = mix_choice(seeds, cfg.lam)
    assert 0 < sum(skd_rows) < n
    for i, (example, seed) in enumerate(zip(batch.examples, seeds)):
        written = rb.teacher_written[i][rb.response_mask[i]].tolist()
        if skd_rows[i]:
            alone = make_rollout(RolloutPlan(replace(cfg, strategy="skd"), rollout_tokens(TOK, student, teacher)),
                                 prompts(1, first=i), student, teacher, [seed])
            assert responses(rb)[i] == responses(alone)[0]
            assert written == alone.teacher_written[0][alone.response_mask[0]].tolist()
        else:
            assert responses(rb)[i] == example.response and not any(written)
    assert rb.teacher_written.any(), "top-2 of a random teacher should replace some drafts"
    assert rollout_metrics([rb])["tokens/drafted"] > 0


def test_mixed_with_the_dataset_needs_every_reference_whichever_rows_the_coins_pick(pair):
    student, teacher = pair
    batch = prompts(2)
    batch.examples[1].response = None
    cfg = RolloutConfig(strategy="mixed", mix=["student", "dataset"], lam=1.0, max_new_tokens=4)
    with pytest.raises(ValueError, match="needs reference responses"):
        make_rollout(RolloutPlan(cfg, rollout_tokens(TOK, student, teacher)), batch, student, teacher, [1, 2])


def test_skd_teacher_verifies_against_the_view_with_knowledge(pair):
    student, teacher = pair
    batch = prompts(2)
    seen = {}

    def spy(name, model):
        forward = model.forward

        def wrapped(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            seen.setdefault(name, []).append(ids.clone())  # the first call(s) encode the prompt view
            return forward(*args, **kwargs)

        return wrapped

    def fed(name, row) -> str:
        """What the model read of its prompt view: its first call, after a shared prefix encoded once as [1, P]
        when the rows' views share one (rollout.share_teacher_prefix)."""
        calls = seen[name]
        if calls[0].shape[0] == 1 and len(batch.examples) > 1:
            return TOK.decode(calls[0][0]) + TOK.decode(calls[1][row])
        return TOK.decode(calls[0][row])

    student.forward, teacher.forward = spy("student", student), spy("teacher", teacher)
    try:
        make_rollout(RolloutPlan(RolloutConfig(strategy="skd", max_new_tokens=4, skd_top_k=2),
                                 rollout_tokens(TOK, student, teacher)),
                     batch, student, teacher, [5, 6])
    finally:
        del student.forward, teacher.forward
    for row, example in enumerate(batch.examples):
        assert example.record.knowledge in fed("teacher", row)
        assert example.record.knowledge not in fed("student", row)
        assert example.record.query in fed("student", row)


def test_rollouts_are_seeded_per_row(pair):
    student, teacher = pair
    batch = prompts(3)
    cfg = RolloutConfig(strategy="skd", max_new_tokens=6, temperature=1.0, skd_top_k=2)
    a = make_rollout(RolloutPlan(cfg, rollout_tokens(TOK, student, teacher)), batch, student, teacher, [7, 8, 9])
    b = make_rollout(RolloutPlan(cfg, rollout_tokens(TOK, student, teacher)), batch, student, teacher, [7, 8, 9])
    assert torch.equal(a.student_ids, b.student_ids)
    sub = collate(batch.examples[1:2], TOK.pad_token_id)  # row 1 alone, with its own seed
    alone = make_rollout(RolloutPlan(cfg, rollout_tokens(TOK, student, teacher)), sub, student, teacher, [8])
    assert a.response[1][a.response_mask[1]].tolist() == alone.response[0][alone.response_mask[0]].tolist()


def hand_stats(drafted, accepted, blocks, full, gammas: list[int], reached, accepted_at) -> GenerationStats:
    """Statistics of `blocks` blocks whose own gammas are `gammas`, written by hand."""
    return GenerationStats(drafted=drafted, accepted=accepted, blocks=blocks, full_matches=full,
                           first_accepted=accepted_at[0], replaced=blocks - full, target_calls=blocks,
                           new_tokens=accepted + blocks, gamma_sum=sum(gammas), gamma_sq_sum=sum(g * g for g in gammas),
                           gamma_min=min(gammas), gamma_max=max(gammas), position_reached=reached,
                           position_accepted=accepted_at)


class TwoProcesses:
    """accelerate's gather for two threads standing in for two processes: each gets both ranks' rows."""

    def __init__(self):
        self.barrier, self.rows = threading.Barrier(2), [None, None]

    def gather(self, rank: int):
        def gather(t: torch.Tensor) -> torch.Tensor:
            self.rows[rank] = t
            self.barrier.wait()
            both = torch.cat(self.rows)
            self.barrier.wait()  # nobody writes the next call's rows before both have read these
            return both

        return gather


def test_metrics_merge_different_statistics_over_micro_batches_and_processes():
    """Rank 0 holds two micro-batches (blocks with gammas 2 2 3 3 accepting 2 0 1 3; gammas 1 3 accepting 1 2),
    rank 1 one (gammas 4 4 4 accepting 4 4 2). Expected by hand: drafted 10 + 4 + 12 = 26, accepted 6 + 3 + 10
    = 19, blocks 9, fully accepted 2 + 1 + 2 = 5, first draft accepted 3 + 2 + 3 = 8; the smallest gamma (1) is
    on rank 0 and the largest (4) on rank 1, so a min/max mix-up over micro-batches or ranks shows."""
    rank0 = [hand_stats(10, 6, 4, 2, [2, 2, 3, 3], [4, 3, 1], [3, 2, 1]),
             hand_stats(4, 3, 2, 1, [1, 3], [2, 1, 1], [2, 1, 0])]
    rank1 = [hand_stats(12, 10, 3, 2, [4, 4, 4], [3, 3, 3, 2], [3, 3, 2, 2])]
    world, out = TwoProcesses(), {}

    def run(rank, stats):
        out[rank] = rollout_metrics([SimpleNamespace(stats=s) for s in stats], world.gather(rank))

    threads = [threading.Thread(target=run, args=(r, s)) for r, s in enumerate((rank0, rank1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert out[0] == out[1]
    m = out[0]
    assert (m["tokens/drafted"], m["tokens/accepted"], m["tokens/replaced"]) == (26, 19, 9 - 5)
    assert m["rollout/acceptance_rate"] == pytest.approx(19 / 26)
    assert m["rollout/first_token_acceptance"] == pytest.approx(8 / 9)
    assert m["rollout/full_match_rate"] == pytest.approx(5 / 9)
    assert (m["rollout/gamma_min"], m["rollout/gamma_max"]) == (1, 4)
    assert m["rollout/gamma_mean"] == pytest.approx(26 / 9)
    assert m["rollout/mean_accepted_length"] == pytest.approx((19 + 9) / 9)
    assert rollout_metrics([SimpleNamespace(stats=s) for s in rank0 + rank1]) == m  # one process, three batches


def test_default_adaptive_top_k_tracks_the_acceptance_rate_and_lowers_k():
    """Blocks of 4 drafts alternate between fully accepted and rejected at the last draft (7 of 8 accepted). The
    default EMA (weight 0.1 for the newest token) must follow a token-by-token hand loop, stay near 0.8 and let K
    fall; with weight 0.9 it would be the last token's outcome and K would swing between two values for ever."""
    policy = skd_policy(RolloutConfig(strategy="skd", policy="adaptive_top_k"))
    state = policy.init_state(1, "cpu")
    ema, k, expected = (policy.r_plus + policy.r_minus) / 2, policy.k_init, []  # the hand loop
    for block in range(20):
        outcomes = [True, True, True, block % 2 == 0]
        verdict = Verdict(accept=torch.tensor([outcomes]), correction=torch.zeros(1, 4, dtype=torch.long),
                          bonus=torch.zeros(1, 5, dtype=torch.long))
        state = policy.update(state, verdict, torch.tensor([sum(outcomes)]), torch.tensor([4]), torch.tensor([True]))
        for o in outcomes:
            ema = (1 - 0.1) * ema + 0.1 * o
        k = min(max(k + (ema < policy.r_minus) - (ema > policy.r_plus), policy.k_min), policy.k_max)
        expected.append((ema, k))
        assert float(state.success[0]) == pytest.approx(ema) and float(state.k_base[0]) == k, block
    assert all(0.74 < e < 0.9 for e, _ in expected[2:])  # tracks the 7/8 acceptance, with the EMA's lag
    assert expected[-1][1] <= policy.k_init - 15  # K fell by one per block once the EMA passed r_plus
