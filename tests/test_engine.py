"""The draft/verify/decide engine: stub models with hand-written logits, then tiny real architectures."""

import gc
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from specdistill.engine import (
    AdaptiveTopKPolicy,
    GreedyPolicy,
    HeuristicGamma,
    LupiGamma,
    Sampling,
    SpeculativePolicy,
    TopKPolicy,
    generate,
    sample,
)
from specdistill.evaluate.speculative import hf_generate

V = 8  # stub vocabulary
SHARP = 30.0  # logit gap that makes temperature-1 sampling deterministic in practice (e^-30 < 2^-32)



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and a shared 2-core machine loses a lot to oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- stub models


class BigramLM(torch.nn.Module):
    """Next-token logits written by hand as a function of the current token: logits = table[token].

    Its "KV cache" stores the token ids, and every call checks the engine's bookkeeping: each real query token
    must get position_ids == the number of real tokens before it in the cache.
    """

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table  # [V, V]
        self.widths = []  # input width of every call

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache=True, **kwargs):
        past = past_key_values.get_seq_length()
        mask = attention_mask.long()
        assert mask.shape[1] == past + input_ids.shape[1]
        real_before = (mask.cumsum(1) - mask)[:, past:]
        real = mask[:, past:].bool()
        assert torch.equal(position_ids.expand_as(real)[real], real_before[real])
        fake_kv = input_ids[:, None, :, None].float()
        past_key_values.update(fake_kv, fake_kv, 0)
        self.widths.append(input_ids.shape[1])
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=past_key_values)


def graded_teacher() -> BigramLM:
    """After token t the teacher ranks t+1 first, t+2 second, ... (mod V), SHARP logits apart."""
    table = torch.empty(V, V)
    for t in range(V):
        for j in range(1, V + 1):
            table[t, (t + j) % V] = -SHARP * j
    return BigramLM(table)


def student(next_token) -> BigramLM:
    """A student that after token t drafts next_token(t) (all other tokens SHARP lower)."""
    table = torch.full((V, V), -SHARP)
    for t in range(V):
        table[t, next_token(t) % V] = 0.0
    return BigramLM(table)


class PrefixSumLM(torch.nn.Module):
    """Next token = (S mod 7 + c) mod V, where S is the sum and c the count of the real tokens it can see; with
    detour=True it writes the token after that one whenever S is a multiple of 3. Its output depends on its whole
    cache, so any missing, extra or unmasked cached token changes what it writes."""

    def __init__(self, detour=False):
        super().__init__()
        self.detour = detour

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache=True, **kwargs):
        past, w = past_key_values.get_seq_length(), input_ids.shape[1]
        fake_kv = input_ids[:, None, :, None].float()
        keys, _ = past_key_values.update(fake_kv, fake_kv, 0)
        real = attention_mask.long()  # [B, past + w]: holes and padding are 0
        visible = torch.arange(past + w)[None, :] <= (past + torch.arange(w))[:, None]  # [w, past + w] causal
        sums = ((keys[:, 0, :, 0].long() * real)[:, None, :] * visible).sum(-1)  # [B, w]
        counts = (real[:, None, :] * visible).sum(-1)
        nxt = (sums % 7 + counts) % V
        if self.detour:
            nxt = torch.where(sums % 3 == 0, (nxt + 1) % V, nxt)
        logits = torch.full((*input_ids.shape, V), -SHARP).scatter_(-1, nxt[..., None], 0.0)
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


def test_every_cached_token_is_the_committed_history():
    rows = [[3], [5, 1, 6, 2], [7, 7]]
    ids, mask = left_pad(rows)
    alone = sample(PrefixSumLM(), ids, mask, max_new_tokens=20)
    # The same model as draft: every block is fully accepted plus a bonus, so the student must feed two pending
    # tokens next block; a single token missing from either cache would show as a rejection.
    same = generate(PrefixSumLM(), ids, mask, PrefixSumLM(), ids, mask, gamma=3, max_new_tokens=20)
    assert same.stats.acceptance_rate == 1.0 and torch.equal(same.tokens, alone.tokens)
    # A draft that sometimes detours: rows reject at different places, leaving holes in the batch's caches.
    detour = generate(PrefixSumLM(detour=True), ids, mask, PrefixSumLM(), ids, mask, gamma=3, max_new_tokens=20)
    assert 0 < detour.stats.acceptance_rate < 1 and torch.equal(detour.tokens, alone.tokens)
    for b, row in enumerate(rows):
        one = generate(PrefixSumLM(detour=True), *left_pad([row]), PrefixSumLM(), *left_pad([row]), gamma=3,
                       max_new_tokens=20)
        assert one.rows()[0] == detour.rows()[b]


def run_stub(policy, draft, gamma=2, max_new_tokens=10, **kwargs):
    ids = torch.tensor([[7, 0]])  # the pending token is 0
    mask = torch.ones_like(ids)
    return generate(draft, ids, mask, graded_teacher(), ids, mask, policy=policy, gamma=gamma,
                    max_new_tokens=max_new_tokens, **kwargs)


def check(out, tokens, written, drafted, accepted, replaced, bonus, full, first, per_position):
    s = out.stats
    assert out.tokens[0].tolist() == tokens
    assert out.teacher_written[0].nonzero().flatten().tolist() == written
    got = (s.drafted, s.accepted, s.replaced, s.bonus, s.full_matches, s.first_accepted)
    assert got == (drafted, accepted, replaced, bonus, full, first)
    assert s.per_position_acceptance == pytest.approx(per_position)
    assert s.acceptance_rate == pytest.approx(accepted / drafted)
    assert s.target_calls == s.blocks  # one verification per block (the first one encodes the prompt too)
    assert out.finish_reasons == ["length"]


# Lossless policies (bonus on): the output is the teacher's greedy 1, 2, 3, ... whatever the student drafts.
TEACHER_GREEDY = [1, 2, 3, 4, 5, 6, 7, 0, 1, 2]
LOSSLESS = {
    "greedy": lambda: GreedyPolicy(),
    "speculative-t0": lambda: SpeculativePolicy(),
}  # speculative sampling at temperature 1 is tested on soft logits: test_speculative_sampling_on_soft_bigrams


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_lossless_policies_always_accept(name):
    out = run_stub(LOSSLESS[name](), student(lambda t: t + 1))
    # blocks: [1 2 +3] [4 5 +6] [7 0 +1] [2 (+3 cut by the budget)]
    check(out, TEACHER_GREEDY, [2, 5, 8], drafted=7, accepted=7, replaced=0, bonus=4, full=4, first=4,
          per_position=[1.0, 1.0])


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_lossless_policies_never_accept(name):
    out = run_stub(LOSSLESS[name](), student(lambda t: t + 3))
    # every block: the first draft t+3 is rejected and the teacher writes t+1; the last block drafts 1 token
    check(out, TEACHER_GREEDY, list(range(10)), drafted=19, accepted=0, replaced=10, bonus=0, full=0, first=0,
          per_position=[0.0])


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_lossless_policies_partly_accept(name):
    out = run_stub(LOSSLESS[name](), student(lambda t: t + 2 if t == 3 else t + 1))
    # blocks: [1 2 +3] [5 rejected -> 4] [5 6 +7] [0 1 +2]
    check(out, TEACHER_GREEDY, [2, 3, 6, 9], drafted=8, accepted=6, replaced=1, bonus=3, full=3, first=3,
          per_position=[0.75, 1.0])


def soft_bigrams(scale: float, favourite: int) -> BigramLM:
    """After token t: logit -scale * |j - favourite| for token t + j (j = 1..V), so sampling is far from greedy."""
    table = torch.empty(V, V)
    for t in range(V):
        for j in range(1, V + 1):
            table[t, (t + j) % V] = -scale * abs(j - favourite)
    return BigramLM(table)


def test_speculative_sampling_on_soft_bigrams():
    """Temperature-1 speculative sampling with a teacher that prefers t+1 and a student that prefers t+2, both
    soft (logit steps of 0.7 and 0.5). Expected values by hand: the first draft is accepted with probability
    sum_x min(p(x|0), q(x|0)) (Leviathan's alpha), and the first two response tokens follow the teacher's own
    bigram distribution p(t1|0) p(t2|t1), whatever the student proposes (chi-square over 64 cells)."""
    from scipy.stats import chisquare

    teacher, draft = soft_bigrams(0.7, favourite=1), soft_bigrams(0.5, favourite=2)
    rows = 6000
    ids = torch.tensor([[7, 0]]).expand(rows, -1)  # the pending token is 0
    out = generate(draft, ids, torch.ones_like(ids), teacher, ids, torch.ones_like(ids),
                   policy=SpeculativePolicy(target=Sampling(1.0)), draft_sampling=Sampling(1.0), gamma=2,
                   max_new_tokens=2, seed=torch.arange(rows), trace=True)
    p, q = teacher.table.double().softmax(-1), draft.table.double().softmax(-1)  # [V, V]: row t is p(. | t)
    alpha = float(torch.minimum(p[0], q[0]).sum())
    first_accepted = float((out.trace[0]["accepted"] >= 1).double().mean())
    assert abs(first_accepted - alpha) < 4 * math.sqrt(alpha * (1 - alpha) / rows), (first_accepted, alpha)
    joint = (p[0][:, None] * p).flatten()  # [V*V]: p(t1 | 0) p(t2 | t1)
    counts = torch.bincount(out.tokens[:, 0] * V + out.tokens[:, 1], minlength=V * V).double()
    keep = joint * rows > 5  # chi-square's validity rule; the rest pooled into one cell
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
    expected = torch.cat([joint[keep], joint[~keep].sum()[None]])
    expected = expected / expected.sum() * rows
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3


GREEDY_TEACHER = Sampling()  # top-K ranks by raw logits; the teacher writes its argmax t+1
TOP_K = {
    "top_k": lambda lo, hi: TopKPolicy(k=2, target=GREEDY_TEACHER),
    "adaptive_top_k": lambda lo, hi: AdaptiveTopKPolicy(k_init=hi, k_min=lo, k_max=hi, entropy_gain=0.0,
                                                        target=GREEDY_TEACHER),
}


@pytest.mark.parametrize("name", list(TOP_K))
def test_top_k_policies_always_accept(name):
    out = run_stub(TOP_K[name](2, 6), student(lambda t: t + 2))  # t+2 is the teacher's 2nd choice: in the top-2
    check(out, [2, 4, 6, 0, 2, 4, 6, 0, 2, 4], [], drafted=10, accepted=10, replaced=0, bonus=0, full=5, first=5,
          per_position=[1.0, 1.0])


@pytest.mark.parametrize("name", list(TOP_K))
def test_top_k_policies_never_accept(name):
    out = run_stub(TOP_K[name](2, 2), student(lambda t: t + 3))  # 3rd choice: never in the top-2
    check(out, TEACHER_GREEDY, list(range(10)), drafted=19, accepted=0, replaced=10, bonus=0, full=0, first=0,
          per_position=[0.0])
    assert out.teacher_written.all()


@pytest.mark.parametrize("name", list(TOP_K))
def test_top_k_policies_partly_accept(name):
    out = run_stub(TOP_K[name](2, 2), student(lambda t: t + 4 if t == 4 else t + 2))
    # blocks: [2 4] [0 rejected -> 5] [7 1] [3 5] [7 1] [3]
    check(out, [2, 4, 5, 7, 1, 3, 5, 7, 1, 3], [2], drafted=11, accepted=9, replaced=1, bonus=0, full=5, first=5,
          per_position=[5 / 6, 1.0])
    assert out.stats.skd_top_k_mean == 2


def test_top_k_bonus_is_an_option():
    out = run_stub(TopKPolicy(k=2, target=GREEDY_TEACHER, bonus_token=True), student(lambda t: t + 2))
    # blocks: [2 4 +5] [7 1 +2] [4 6 +7] [1 (+2 cut)]
    assert out.tokens[0].tolist() == [2, 4, 5, 7, 1, 2, 4, 6, 7, 1]
    assert out.teacher_written[0].nonzero().flatten().tolist() == [2, 5, 8]


def test_adaptive_top_k_lowers_k_while_the_student_succeeds():
    policy = AdaptiveTopKPolicy(k_init=4, k_min=2, k_max=6, entropy_gain=1.0, ema=0.1, r_plus=0.8, r_minus=0.5,
                                target=GREEDY_TEACHER)
    out = run_stub(policy, student(lambda t: t + 2), trace=True)
    # A greedy teacher has zero entropy: K_eff = K_base - 1. The success EMA starts at 0.65 and passes 0.8 after
    # the third block (0.7165, 0.7704, 0.8140), so K_base goes 4 -> 3 -> 2 and stays at k_min.
    k_per_block = [entry["skd_top_k"][0, :2].tolist() for entry in out.trace]
    assert k_per_block == [[3, 3], [3, 3], [3, 3], [2, 2], [2, 2]]
    assert out.stats.skd_top_k_mean == pytest.approx((6 * 3 + 4 * 2) / 10)
    assert out.stats.acceptance_rate == 1.0


def test_gamma_schedule_and_its_statistics():
    draft = student(lambda t: t + 2 if t == 6 else t + 1)  # wrong only after 6
    out = run_stub(GreedyPolicy(), draft, gamma=LupiGamma(2, 6), max_new_tokens=16, trace=True)
    # lupi: [1 2 +3] full: 2 -> 4; [4 5 6 x -> 7] n=3: 4; [0 1 2 3 +4] full: 6, clipped to the 4 left;
    # [5 6 x -> 7] n=2: 3, clipped to the 1 left; [0 (+1 cut)]
    gammas = [int(entry["gamma"][0]) for entry in out.trace]
    assert gammas == [2, 4, 4, 4, 1]
    assert out.tokens[0].tolist() == [i % V for i in range(1, 17)]
    s = out.stats
    assert (s.gamma_min, s.gamma_max, s.gamma_mean) == (1, 4, 3.0)
    assert s.gamma_std == pytest.approx(torch.tensor(gammas, dtype=torch.double).std(unbiased=False).item())


def test_stops_on_eos_and_stop_sequences_and_pads_the_batch():
    ids = torch.tensor([[7, 0], [7, 3]])
    mask = torch.ones_like(ids)
    draft = student(lambda t: t + 1)
    out = generate(draft, ids, mask, graded_teacher(), ids, mask, gamma=3, max_new_tokens=10, eos_token_id=5,
                   pad_token_id=-1)
    assert out.tokens.tolist() == [[1, 2, 3, 4, 5], [4, 5, -1, -1, -1]]
    assert out.lengths.tolist() == [5, 2] and out.finish_reasons == ["eos", "eos"]
    assert not out.teacher_written[1, 2:].any()
    out = generate(draft, ids, mask, graded_teacher(), ids, mask, gamma=3, max_new_tokens=10, stop=[[6, 7]])
    assert out.rows() == [[1, 2, 3, 4, 5, 6, 7], [4, 5, 6, 7]] and out.finish_reasons == ["stop", "stop"]
    chars = SimpleNamespace(encode=lambda text, add_special_tokens=False: [int(c) for c in text])
    out = generate(draft, ids, mask, graded_teacher(), ids, mask, gamma=3, max_new_tokens=10, stop=["23"],
                   tokenizer=chars)
    assert out.rows() == [[1, 2, 3], [4, 5, 6, 7, 0, 1, 2, 3]] and out.finish_reasons == ["stop", "stop"]


def test_prompts_must_be_left_padded():
    ids = torch.tensor([[7, 0], [7, 3]])
    mask = torch.tensor([[1, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"left-padded.*rows \[1\]"):
        generate(student(lambda t: t + 1), ids, mask, graded_teacher(), ids, torch.ones_like(ids))


def test_compile_option_gives_the_same_tokens_and_falls_back_cleanly():
    draft = student(lambda t: t + 2 if t == 3 else t + 1)
    eager = run_stub(SpeculativePolicy(target=Sampling(1.0)), draft, draft_sampling=Sampling(1.0))
    traced = run_stub(SpeculativePolicy(target=Sampling(1.0)), draft, draft_sampling=Sampling(1.0), compile="eager")
    assert torch.equal(eager.tokens, traced.tokens)
    with pytest.warns(UserWarning, match="running it eagerly"):
        broken = run_stub(SpeculativePolicy(target=Sampling(1.0)), draft, draft_sampling=Sampling(1.0),
                          compile="no-such-backend")
    assert torch.equal(eager.tokens, broken.tokens)


def test_trace_records_each_block():
    out = run_stub(TopKPolicy(k=2, target=GREEDY_TEACHER), student(lambda t: t + 4 if t == 4 else t + 2), trace=True)
    first, second = out.trace[:2]
    assert first["draft"].tolist() == [[2, 4]] and first["accepted"].tolist() == [2]
    assert first["next_token"].tolist() == [-1] and first["gamma"].tolist() == [2]
    assert second["draft"].tolist() == [[0, 2]] and second["accepted"].tolist() == [0]
    assert second["next_token"].tolist() == [5] and second["committed"].tolist() == [1]
    assert second["teacher_top"][0, 0].tolist() == [5, 6]  # the teacher's top-2 after token 4
    assert second["skd_top_k"].tolist() == [[2, 2, 2]]


# ---------------------------------------------------------------- tiny real architectures


def tiny(arch: str, layers=2, hidden=64, seed=0, vocab=96):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    return Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common)).eval()


def perturbed(model, scale=0.005, seed=1):
    """A copy of model with noisy weights: a draft that agrees with it often, not always."""
    copy = type(model)(model.config).eval()
    copy.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in copy.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return copy


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def pair(request):
    teacher = tiny(request.param, seed=0)
    stranger = tiny(request.param, hidden=32, seed=3)  # an unrelated draft: rarely accepted
    return SimpleNamespace(arch=request.param, teacher=teacher, student=perturbed(teacher), stranger=stranger)


def prompts(count, seed=0, lengths=(3, 9)):
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lengths[0], lengths[1] + 1, (count,), generator=generator).tolist()
    return [torch.randint(3, 96, (n,), generator=generator).tolist() for n in sizes]


def left_pad(rows):
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def views(rows, privileged=(50, 51, 52, 53)):
    """Student view = the prompt; teacher view = privileged tokens + the prompt (longer, LUPI-style)."""
    return (*left_pad(rows), *left_pad([list(privileged) + row for row in rows]))


def run_pair(pair, rows, draft=None, shared_view=False, **kwargs):
    s_ids, s_mask, t_ids, t_mask = views(rows, privileged=() if shared_view else (50, 51, 52, 53))
    kwargs.setdefault("max_new_tokens", 12)
    return generate(draft or pair.student, s_ids, s_mask, pair.teacher, t_ids, t_mask, **kwargs)


def test_speculative_greedy_equals_the_teachers_generate(pair):
    rows = prompts(3, seed=1)
    for policy in (GreedyPolicy(), SpeculativePolicy()):
        out = generate(pair.student, *left_pad(rows), pair.teacher, *left_pad(rows), policy=policy, gamma=3,
                       max_new_tokens=16, eos_token_id=2)
        assert 0 < out.stats.acceptance_rate < 1, "the perturbed draft should agree partly"
        for b, row in enumerate(rows):
            ref = hf_generate(pair.teacher, torch.tensor([row]), max_new_tokens=16, do_sample=False, eos_token_id=2,
                              pad_token_id=0)
            assert out.rows()[b] == ref[0, len(row) :].tolist()


CASES = {
    "greedy": dict(policy=GreedyPolicy(), gamma=HeuristicGamma(2, 6)),
    "speculative-sampled": dict(policy=SpeculativePolicy(target=Sampling(0.8)), gamma=3,
                                draft_sampling=Sampling(1.0, top_p=0.9)),
    "skd-sampled": dict(policy=TopKPolicy(k=5, target=Sampling(1.0, top_p=0.95)), gamma=LupiGamma(3, 8),
                        draft_sampling=Sampling(1.0)),
}


@pytest.mark.parametrize("view", ["shared", "lupi"])  # shared: high acceptance; lupi: longer teacher view
@pytest.mark.parametrize("case", list(CASES))
def test_batched_equals_row_by_row(pair, case, view):
    rows = prompts(8, seed=2)
    seeds = torch.arange(100, 108)
    options = dict(shared_view=view == "shared", **CASES[case])
    singles = [run_pair(pair, [row], seed=seeds[b : b + 1], **options) for b, row in enumerate(rows)]
    for size in (3, 8):  # size 1 is the singles themselves
        out = run_pair(pair, rows[:size], seed=seeds[:size], **options)
        for b in range(size):
            assert out.rows()[b] == singles[b].rows()[0], (size, b)
            written = out.teacher_written[b, : out.lengths[b]]
            assert torch.equal(written, singles[b].teacher_written[0, : singles[b].lengths[0]])


@pytest.mark.parametrize("case", list(CASES))
def test_parallel_equals_sequential_verification(pair, case):
    rows = prompts(3, seed=3)
    parallel = run_pair(pair, rows, seed=7, trace=True, **CASES[case])
    sequential = run_pair(pair, rows, seed=7, verify="sequential", **CASES[case])
    assert torch.equal(parallel.tokens, sequential.tokens)
    assert torch.equal(parallel.teacher_written, sequential.teacher_written)
    assert parallel.stats.accepted == sequential.stats.accepted
    widths = [entry["draft"].shape[1] for entry in parallel.trace]
    assert parallel.stats.target_calls == len(widths)  # the prompt is encoded with the first block
    assert sequential.stats.target_calls == 1 + sum(g + 1 for g in widths)  # a prefill, then one token per call


def test_caches_are_never_re_encoded(pair):
    rows = prompts(3, seed=4)
    s_ids, s_mask, t_ids, t_mask = views(rows)
    widths = {"student": [], "teacher": []}
    hooks = [
        model.register_forward_pre_hook(lambda m, args, kw, key=key: widths[key].append(kw["input_ids"].shape[1]),
                                        with_kwargs=True)
        for key, model in (("student", pair.student), ("teacher", pair.teacher))
    ]
    try:
        out = generate(pair.student, s_ids, s_mask, pair.teacher, t_ids, t_mask, policy=GreedyPolicy(),
                       gamma=LupiGamma(2, 6), max_new_tokens=24, trace=True)
    finally:
        for hook in hooks:
            hook.remove()
    blocks = [entry["draft"].shape[1] for entry in out.trace]
    # The first block feeds each model its whole prompt (the teacher: with the first drafts), then only new tokens.
    assert widths["teacher"] == [t_ids.shape[1] + blocks[0]] + [g + 1 for g in blocks[1:]]
    assert widths["student"][0] == s_ids.shape[1] and max(widths["student"][1:]) <= 2
    assert len(widths["student"]) == sum(blocks)
    assert out.stats.target_tokens_fed == sum(widths["teacher"])
    assert out.stats.draft_tokens_fed == sum(widths["student"])
    assert out.stats.model_time_s > 0 and out.stats.model_time_s <= out.stats.wall_time_s
    assert out.stats.draft_time_s > 0 and out.stats.target_time_s > 0
    assert out.stats.model_time_s == pytest.approx(out.stats.draft_time_s + out.stats.target_time_s)


def test_top_k_over_the_whole_vocabulary_is_student_sampling(pair):
    rows = prompts(3, seed=5)
    hot = Sampling(0.9, top_p=0.95)
    out = run_pair(pair, rows, draft=pair.stranger, policy=TopKPolicy(k=96, min_prob=0.0, target=Sampling(1.0)),
                   gamma=4, draft_sampling=hot, seed=11)
    alone = sample(pair.stranger, *left_pad(rows), sampling=hot, max_new_tokens=12, seed=11)
    assert torch.equal(out.tokens, alone.tokens)
    assert not out.teacher_written.any() and out.stats.acceptance_rate == 1.0


def test_min_prob_above_one_makes_every_token_teacher_written(pair):
    rows = prompts(3, seed=6)
    out = run_pair(pair, rows, draft=pair.stranger, policy=TopKPolicy(k=5, min_prob=1.01, target=Sampling()),
                   gamma=3, draft_sampling=Sampling(1.0))
    assert out.teacher_written.all() and out.stats.acceptance_rate == 0.0
    _, _, t_ids, t_mask = views(rows)
    assert torch.equal(out.tokens, sample(pair.teacher, t_ids, t_mask, max_new_tokens=12).tokens)


def test_plain_sampling_does_not_depend_on_the_chunk(pair):
    ids, mask = left_pad(prompts(3, seed=8))
    for sampling in (Sampling(), Sampling(1.2, top_k=20)):
        one = sample(pair.teacher, ids, mask, sampling=sampling, max_new_tokens=10, chunk=1, seed=3)
        five = sample(pair.teacher, ids, mask, sampling=sampling, max_new_tokens=10, chunk=5, seed=3)
        assert torch.equal(one.tokens, five.tokens)
        assert one.stats.steps == 10 and five.stats.steps == 2 and not one.teacher_written.any()


def test_metrics_use_the_project_names(pair):
    out = run_pair(pair, prompts(2, seed=9), policy=AdaptiveTopKPolicy(target=Sampling(1.0)), gamma=3,
                   draft_sampling=Sampling(1.0))
    metrics = out.metrics()
    for name in ("rollout/acceptance_rate", "rollout/token_acceptance", "rollout/first_token_acceptance",
                 "rollout/full_match_rate",
                 "rollout/gamma_mean", "rollout/gamma_min", "rollout/gamma_max", "rollout/gamma_std",
                 "rollout/skd_top_k_mean", "tokens/drafted", "tokens/accepted", "tokens/replaced", "time/rollout_s",
                 "time/model_s", "throughput/tokens_per_s"):
        assert name in metrics and math.isfinite(metrics[name]), name
    assert metrics["tokens/drafted"] == out.stats.drafted
    combined = out.stats.combine(out.stats)
    assert combined.drafted == 2 * out.stats.drafted and combined.acceptance_rate == out.stats.acceptance_rate
    assert "rollout/acceptance_rate" not in sample(pair.teacher, *left_pad([[5, 6]]), max_new_tokens=3).metrics()


def test_inductor_compiled_models_match_eager_before_and_after_a_weight_update():
    """compile=True compiles both models' forwards with inductor; the tokens must be the eager ones, and a
    training step (weights changed in place, as the trainer does between rollouts) must be seen by the graphs."""
    teacher = tiny("llama", seed=0)
    draft = perturbed(teacher)
    rows = prompts(3, seed=12)
    options = dict(policy=TopKPolicy(k=5, target=Sampling(1.0)), gamma=3, draft_sampling=Sampling(1.0), seed=5,
                   max_new_tokens=10)

    def both(compile):
        plain = sample(draft, *left_pad(rows), sampling=Sampling(1.0), max_new_tokens=10, seed=5, compile=compile)
        skd = generate(draft, *left_pad(rows), teacher, *left_pad(rows), **options, compile=compile)
        return plain.tokens, skd.tokens, skd.teacher_written

    rounds = []
    for _ in range(2):
        eager, compiled = both(False), both(True)
        assert all(torch.equal(e, c) for e, c in zip(eager, compiled))
        rounds.append(eager)
        with torch.no_grad():  # the update, in place, as an optimizer step does it
            for param in draft.parameters():
                param.add_(torch.randn_like(param) * 0.05)
    assert not torch.equal(rounds[0][0], rounds[1][0]), "the update should change the draft's samples"


def test_each_compiled_model_gets_its_own_graphs():
    """Two models with the same parameter shapes but a different computation (activation, norm epsilon) go
    through the same compiled role: each must give its own eager tokens, and its compiled caller must be dropped
    with it (the callers skip the guards on a model's config and structure, so they must never be shared)."""
    from specdistill.engine import compiling

    rows = prompts(2, seed=3)
    first = tiny("llama", seed=0)
    second = tiny("llama", seed=0)
    second.config.rms_norm_eps = 0.5
    for layer in second.model.layers:
        layer.mlp.act_fn = torch.nn.ReLU()
        layer.input_layernorm.variance_epsilon = layer.post_attention_layernorm.variance_epsilon = 0.5
    callers = len(compiling._CALLERS)
    runs = {}
    for name, model in (("first", first), ("second", second)):
        for mode in (False, True):
            runs[name, mode] = sample(model, *left_pad(rows), sampling=Sampling(1.0), max_new_tokens=8, seed=1,
                                      compile=mode).tokens
    assert not torch.equal(runs["first", False], runs["second", False]), "the two models should differ"
    assert torch.equal(runs["first", True], runs["first", False])
    assert torch.equal(runs["second", True], runs["second", False])
    assert len(compiling._CALLERS) == callers + 2
    del first, second, model
    gc.collect()
    assert len(compiling._CALLERS) == callers


# ---------------------------------------------------------------- defaults taken from the tokenizer
def llama3_student():
    """Llama-3 format: the student has 2,016 output rows over a 2,000-id tokenizer, no pad id in its config, and
    id 0 is a real token ('!'). Returns (model, tokenizer, ids, mask) of two prompts."""
    from families import STUDENT_ROWS, TOKENIZER_SIZE, get_family
    from transformers import AutoModelForCausalLM

    from specdistill.models import load_tokenizer

    fam = get_family("llama3")
    tok = load_tokenizer(str(fam.student))
    model = AutoModelForCausalLM.from_pretrained(fam.student).eval()
    assert model.get_output_embeddings().weight.shape[0] == STUDENT_ROWS and len(tok) == TOKENIZER_SIZE
    assert model.config.pad_token_id is None and tok.pad_token_id not in (None, 0)
    ids, mask = left_pad([tok("What is 2+2?").input_ids, tok("Hello there, who are you?").input_ids])
    return model, tok, ids, mask


def test_given_only_a_tokenizer_generation_never_writes_a_padded_row():
    """Each padded row gets the largest logit; vocab_size is not given, the tokenizer is: its 2,000 ids bound
    what is written (the smaller output size, 2,016, let the padded rows through)."""
    model, tok, ids, mask = llama3_student()
    size = len(tok)

    def boost_padded_rows(module, inputs, output):
        return torch.cat([output[..., :size], output[..., size:] + 1000.0], -1)

    hook = model.get_output_embeddings().register_forward_hook(boost_padded_rows)
    try:
        out = sample(model, ids, mask, max_new_tokens=6, tokenizer=tok)
        spec = generate(model, ids, mask, model, ids, mask, gamma=2, max_new_tokens=6, tokenizer=tok)
    finally:
        hook.remove()
    assert out.tokens.shape == (2, 6) and int(out.tokens.max()) < size and int(spec.tokens.max()) < size


def test_given_only_a_tokenizer_ended_rows_are_padded_with_its_pad_id_not_zero():
    model, tok, ids, mask = llama3_student()
    free = sample(model, ids, mask, max_new_tokens=6, tokenizer=tok).tokens.tolist()
    end = free[0][1]  # row 0's second token ends it; row 1 runs on
    assert end not in free[1] and end not in free[0][:1]
    out = sample(model, ids, mask, max_new_tokens=6, tokenizer=tok, eos_token_id=end)
    assert out.lengths.tolist() == [2, 6] and out.tokens[0, 2:].tolist() == [tok.pad_token_id] * 4
