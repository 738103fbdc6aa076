"""Speculative decoding with a draft: lossless under greedy decoding and under sampling, and the bench command."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from conftest import ARCHS, tiny_config
from specdistill.cli import main
from specdistill.data.tokenizer import build_tokenizer
from specdistill.engine import SpeculativePolicy, Verdict, generate, Sampling
from specdistill.engine import GenerationStats
from specdistill.evaluate import speculative
from specdistill.evaluate.prediction import ForwardCosts, best_gamma, predicted_speedup
from specdistill.evaluate.speculative import bench_pair, hf_generate, run_hf_assisted, run_speculative, run_target_alone

TOK = build_tokenizer()
ALL_ARCHS = {**ARCHS, "qwen3": (Qwen3Config, Qwen3ForCausalLM)}


def tiny(arch: str, seed: int, layers: int = 2):
    torch.manual_seed(seed)
    cfg_cls, model_cls = ALL_ARCHS[arch]
    if arch == "qwen3":
        cfg = cfg_cls(vocab_size=len(TOK), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                      pad_token_id=TOK.pad_token_id, eos_token_id=TOK.eos_token_id, bos_token_id=None)
    else:
        cfg = tiny_config(arch, len(TOK), layers=layers)
    return model_cls(cfg).eval()


def perturbed(model, scale: float, seed: int):
    """A draft close to the target: the target's weights plus noise, so that it is accepted some of the time."""
    draft = type(model)(model.config).eval()
    draft.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().clamp_min(1e-3))
    return draft


PROMPTS = ["What is 2+3*4?", "Hi", "Where does Kato Rimi live? Tell me.", "7*8-9"]


def prompt_ids(n):
    return [TOK(TOK.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False).input_ids for p in PROMPTS[:n]]


def hf_greedy(model, prompt, max_new_tokens, assistant=None):
    """transformers' greedy generate (assisted with `assistant`), none of the checkpoint's generation settings
    applied (hf_generate)."""
    out = hf_generate(model, torch.tensor([prompt]), assistant, do_sample=False, max_new_tokens=max_new_tokens,
                      eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", list(ALL_ARCHS))
def test_greedy_speculative_equals_the_targets_own_greedy_generate(arch):
    target = tiny(arch, seed=0)
    drafts = {"close": perturbed(target, 0.3, seed=1), "other": tiny(arch, seed=5, layers=1)}
    prompts = prompt_ids(4)
    expected = [hf_greedy(target, p, 16) for p in prompts]
    accepted = 0
    for name, draft in drafts.items():
        for gamma in (1, 3, 8):
            for schedule in ("constant", "heuristic", "lupi"):
                for batch_size in (1, 4):
                    out, stats, _ = run_speculative(target, draft, prompts, TOK, gamma=gamma, schedule=schedule,
                                                    max_new_tokens=16, batch_size=batch_size)
                    assert out == expected, (name, gamma, schedule, batch_size)
                    accepted += stats.accepted
    assert accepted > 0  # the close draft was accepted at times: both accept and reject paths ran


def speedup_by_enumeration(alpha: float, gamma: int, c: float) -> float:
    """Leviathan's setting enumerated outcome by outcome: a block accepts k drafts with probability
    alpha^k (1 - alpha) for k < gamma and alpha^gamma for k = gamma, and emits k + 1 tokens; it costs gamma draft
    forwards (c each) and one target forward, where the target alone emits one token per forward."""
    outcomes = [(k + 1, alpha**k * (1 - alpha)) for k in range(gamma)] + [(gamma + 1, alpha**gamma)]
    assert sum(p for _, p in outcomes) == pytest.approx(1.0)
    return sum(tokens * p for tokens, p in outcomes) / (gamma * c + 1)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("gamma, c", [(1, 0.5), (4, 0.1), (4, 0.25), (7, 0.05)])
def test_leviathan_formula_equals_the_enumerated_expectation(alpha, gamma, c):
    assert predicted_speedup(alpha, gamma, c) == pytest.approx(speedup_by_enumeration(alpha, gamma, c))


# ---------------------------------------------------------------- lossless sampling: a chi-square test
V = 6


def tiny_vocab_model(seed: int, sharpness: float):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random models are nearly uniform: sharpen so that draft and target clearly differ
        model.lm_head.weight.mul_(sharpness)
    return model


@torch.no_grad()
def exact_two_token_distribution(target, prompt):
    """p(t1, t2 | prompt) [V, V] from the target's own forward passes."""
    p1 = target(torch.tensor([prompt])).logits[0, -1].softmax(-1)  # [V]
    seqs = torch.tensor([prompt + [t] for t in range(V)])
    p2 = target(seqs).logits[:, -1].softmax(-1)  # [V, V]
    return p1[:, None] * p2


class AlwaysAccept(SpeculativePolicy):
    """A deliberately wrong rule: accept every drafted token (the output then follows the draft)."""

    def judge(self, block, state=None):
        v = super().judge(block, state)
        return Verdict(accept=torch.ones_like(v.accept), correction=v.correction, bonus=v.bonus)


def empirical_two_token_counts(target, draft, prompt, policy, n, gamma):
    ids = torch.tensor([prompt] * n)
    gen = generate(draft, ids, torch.ones_like(ids, dtype=torch.bool), target, ids, torch.ones_like(ids, dtype=torch.bool),
                   policy=policy, gamma=gamma, draft_sampling=Sampling(temperature=1.0), max_new_tokens=2,
                   pad_token_id=0, seed=torch.arange(n))
    assert (gen.lengths == 2).all()
    pairs = gen.tokens[:, 0] * V + gen.tokens[:, 1]
    return torch.bincount(pairs, minlength=V * V).double()


@pytest.mark.parametrize("gamma", [1, 2])
def test_speculative_sampling_reproduces_the_target_distribution(gamma):
    scipy_stats = pytest.importorskip("scipy.stats")
    target, draft = tiny_vocab_model(0, 6.0), tiny_vocab_model(1, 6.0)
    prompt = [1, 2, 3]
    n = 20000
    exact = exact_two_token_distribution(target, prompt).flatten().double()
    expected = exact / exact.sum() * n
    keep = expected > 5  # the usual validity rule for chi-square cells; merge the rest into one cell

    def chi2_pvalue(counts):
        obs, exp = counts[keep], expected[keep]
        if not keep.all():
            obs, exp = torch.cat([obs, counts[~keep].sum()[None]]), torch.cat([exp, expected[~keep].sum()[None]])
        return scipy_stats.chisquare(obs.numpy(), exp.numpy()).pvalue

    right = SpeculativePolicy(target=Sampling(temperature=1.0), bonus_token=True)
    assert chi2_pvalue(empirical_two_token_counts(target, draft, prompt, right, n, gamma)) > 1e-3
    wrong = AlwaysAccept(target=Sampling(temperature=1.0), bonus_token=True)
    assert chi2_pvalue(empirical_two_token_counts(target, draft, prompt, wrong, n, gamma)) < 1e-6


# ---------------------------------------------------------------- the commands
@torch.no_grad()
def brute_force_blocks(target, draft, prompt: list[int], gamma: int, budget: int) -> list[tuple[int, int]]:
    """Greedy speculative decoding of one prompt by full forwards without any cache: (drafted, accepted) per block.

    The output is the target's greedy continuation y (lossless), up to its first EOS. A block starting at
    response index s drafts g = min(gamma, budget - s) tokens, the draft's argmax after prompt + y[:s + i] for
    each i; it keeps the leading drafts equal to y and commits them plus one target token."""
    y = []
    for _ in range(budget):
        y.append(int(target(torch.tensor([prompt + y])).logits[0, -1].argmax()))
    end = y.index(TOK.eos_token_id) + 1 if TOK.eos_token_id in y else budget
    blocks, s = [], 0
    while s < end:
        g = min(gamma, budget - s)
        guesses = [int(draft(torch.tensor([prompt + y[: s + i]])).logits[0, -1].argmax()) for i in range(g)]
        n = next((i for i in range(g) if guesses[i] != y[s + i]), g)
        blocks.append((g, n))
        s += n + 1
    return blocks


def expected_bench_figures(target, draft, prompts, gamma, batch_size, budget) -> dict:
    """acceptance_rate, mean_accepted_length, per_position_acceptance and target_calls from the brute force:
    the teacher is called once per block of a batch, and a batch runs as many blocks as its longest row."""
    rows = [brute_force_blocks(target, draft, p, gamma, budget) for p in prompts]
    flat = [b for row in rows for b in row]
    reached = [sum(1 for g, n in flat if i < g and i <= n) for i in range(gamma)]
    accepted = [sum(1 for g, n in flat if i < n) for i in range(gamma)]
    new_tokens = sum(min(sum(n + 1 for _, n in row), budget) for row in rows)
    return {
        "acceptance_rate": sum(n for _, n in flat) / sum(g for g, _ in flat),
        "token_acceptance": sum(accepted) / sum(reached),
        "mean_accepted_length": new_tokens / len(flat),
        "per_position_acceptance": [a / r for a, r in zip(accepted, reached) if r],
        "target_calls": sum(max(len(r) for r in rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)),
    }


def test_bench_and_generate_commands(tmp_path, capsys):
    from specdistill.cli.bench import bench_prompts

    target, draft = tiny("llama", 0), perturbed(tiny("llama", 0), 0.3, 1)
    target.save_pretrained(tmp_path / "target")
    TOK.save_pretrained(tmp_path / "target")
    draft.save_pretrained(tmp_path / "draft")
    TOK.save_pretrained(tmp_path / "draft")
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    assert main(["bench", "--target", str(tmp_path / "target"), "--draft", str(tmp_path / "draft"), "--limit", "3",
                 "--gamma", "1,3", "--batch-size", "1,2", "--max-new-tokens", "8", "--compare-hf",
                 "--json", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert [(r["batch_size"], r["gamma"]) for r in report["results"]] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    prompts, _ = bench_prompts(SimpleNamespace(prompts=None, task="arith", limit=3, draft_view="target"), TOK)
    for r in report["results"]:
        assert r["matches_target_greedy"] is True
        want = expected_bench_figures(target, draft, prompts, r["gamma"], r["batch_size"], budget=8)
        assert 0 < want["acceptance_rate"] < 1  # both the accept and the reject paths are counted
        for key, value in want.items():
            assert r[key] == pytest.approx(value), (r["batch_size"], r["gamma"], key)
        blocks = [b for p in prompts for b in brute_force_blocks(target, draft, p, r["gamma"], 8)]
        gamma_mean = sum(g for g, _ in blocks) / len(blocks)  # the last blocks of a row may be shorter
        c, c_v = r["cost_ratio_c"], r["verify_cost"]
        assert r["predicted_speedup"] == pytest.approx(predicted_speedup(want["token_acceptance"], gamma_mean, c, c_v))
        assert r["speedup_vs_target"] == pytest.approx(r["tokens_per_s"] / r["target_tokens_per_s"])
    b1 = report["results"][0]
    assert b1["matches_hf_assisted"] is True and b1["speedup_vs_hf_assisted"] > 0
    assert "speedup_vs_hf_assisted" not in report["results"][2]  # HF assisted generation is batch size 1 only
    assert plot.stat().st_size > 10_000
    capsys.readouterr()
    gen_json = tmp_path / "gen.json"
    assert main(["generate", "--model", str(tmp_path / "target"), "--draft", str(tmp_path / "draft"),
                 "--prompt", "What is 2+3*4?", "--max-new-tokens", "8", "--json", str(gen_json)]) == 0
    gen = json.loads(gen_json.read_text())
    assert gen["outputs"][0]["token_ids"] == hf_greedy(target, prompt_ids(1)[0], 8)
    assert gen["stats"]["rollout/target_calls"] > 0


def test_the_hf_baseline_ignores_the_checkpoints_own_generation_settings():
    """Checkpoints ship generation settings that change greedy output (Qwen2.5-7B-Instruct repetition_penalty 1.05,
    0.5B-Instruct 1.1; others no_repeat_ngram_size, min_new_tokens). transformers' assisted generation, the
    baseline of `bench --compare-hf`, must not apply them: it then gives the engine's greedy output (transformers
    with the settings writes something else, so they bite here), and the models keep their settings after it."""
    target, draft = tiny("llama", 0), perturbed(tiny("llama", 0), 0.3, 1)
    for model in (target, draft):
        model.generation_config.update(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=6)
    prompts = prompt_ids(3)
    engine, _, _ = run_target_alone(target, prompts, TOK, max_new_tokens=12)
    hf, _ = run_hf_assisted(target, draft, prompts, TOK, gamma=3, max_new_tokens=12)
    assert hf == engine
    assert [hf_greedy(target, p, 12) for p in prompts] == engine
    own = [target.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
                           max_new_tokens=12, eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)[0, len(p):]
           .tolist() for p in prompts]
    assert own != engine
    for model in (target, draft):
        assert (model.generation_config.repetition_penalty, model.generation_config.no_repeat_ngram_size) == (1.3, 2)


def save_pair(tmp_path, **drafts) -> dict:
    """The tiny Llama target and each named draft saved with the built-in tokenizer; {name: folder}."""
    folders = {}
    for name, model in {"target": tiny("llama", 0), **drafts}.items():
        model.save_pretrained(tmp_path / name)
        TOK.save_pretrained(tmp_path / name)
        folders[name] = str(tmp_path / name)
    return folders


def test_bench_compares_several_drafts_each_at_its_auto_gamma(tmp_path, capsys):
    target = tiny("llama", 0)
    paths = save_pair(tmp_path, close=perturbed(target, 0.1, 1), far=perturbed(target, 0.6, 2),
                      shallow=tiny("llama", 3, layers=1))
    out, plot = tmp_path / "drafts.json", tmp_path / "drafts.png"
    drafts = ",".join(paths[n] for n in ("close", "far", "shallow"))
    assert main(["bench", "--target", paths["target"], "--draft", drafts, "--limit", "3", "--max-new-tokens", "8",
                 "--repeats", "1", "--json", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert [r["draft"] for r in report["results"]] == drafts.split(",")  # several drafts: gamma auto by default
    for r, row in zip(report["results"], report["comparison"]):
        auto = r["gamma_auto"]
        costs = ForwardCosts(auto["cost_ratio_c"], auto["verify_costs"])  # measured before the probe
        assert auto["probe_gamma"] == 4 and r["gamma"] == auto["gamma"] and len(auto["verify_costs"]) == 16
        assert auto["gamma"] == best_gamma(auto["probe_token_acceptance"], costs)
        assert row["draft"] == r["draft"] and row["gamma"] == r["gamma"] and row["batch_size"] == 1
        for key in ("token_acceptance", "cost_ratio_c", "predicted_speedup", "speedup_vs_target"):
            assert row[key] == r[key]
        assert row["layers"] == (1 if r["draft"] == paths["shallow"] else 2) and row["parameters"] > 0
        assert f"| {r['draft']} |" in printed
    accepted = {r["draft"]: r["token_acceptance"] for r in report["results"]}
    assert accepted[paths["close"]] > accepted[paths["far"]]
    assert plot.stat().st_size > 10_000


def test_bench_gamma_auto_for_one_draft_and_a_bad_gamma(tmp_path, capsys):
    target = tiny("llama", 0)
    paths = save_pair(tmp_path, close=perturbed(target, 0.1, 1))
    out = tmp_path / "auto.json"
    assert main(["bench", "--target", paths["target"], "--draft", paths["close"], "--gamma", "auto", "--limit", "2",
                 "--max-new-tokens", "8", "--repeats", "1", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())["results"]
    assert r["gamma"] == r["gamma_auto"]["gamma"] and r["matches_target_greedy"] is True
    capsys.readouterr()
    assert main(["bench", "--target", paths["target"], "--draft", paths["close"], "--gamma", "0,4"]) == 2
    assert "--gamma '0,4'" in capsys.readouterr().err


class StubTokenizer:
    """What the benchmark reads of a tokenizer: end and pad ids, no chat template, and its size."""

    eos_token_id, pad_token_id, chat_template = 2, 0, None

    def __len__(self):
        return 10


def test_the_hf_comparison_gives_both_drafts_the_targets_prompt(monkeypatch):
    """With the draft on the student view, transformers' assistant still reads the target's prompt, so the engine
    run behind speedup_vs_hf_assisted must too. Fake runs: an engine run on the student view takes 100 s, on the
    target's view 1 s; transformers takes 2 s; each writes 3 tokens per prompt."""
    calls = []

    def fake_speculative(target, draft, prompts, tokenizer, batch_size=1, draft_prompts=None, **kw):
        calls.append((batch_size, draft_prompts))
        student_view = draft_prompts is not None and draft_prompts != prompts
        stats = GenerationStats(drafted=4, accepted=3, blocks=2)
        return [[5, 6, 7]] * len(prompts), stats, 100.0 if student_view else 1.0

    monkeypatch.setattr(speculative, "run_speculative", fake_speculative)
    monkeypatch.setattr(speculative, "run_target_alone",
                        lambda t, p, tok, **kw: ([[5, 6, 7]] * len(p), GenerationStats(), 3.0))
    monkeypatch.setattr(speculative, "run_hf_assisted", lambda t, d, p, tok, **kw: ([[5, 6, 7]] * len(p), 2.0))
    monkeypatch.setattr(speculative, "measure_forward_costs", lambda *a, **kw: ForwardCosts(0.5))
    monkeypatch.setattr(speculative, "expected_acceptance", lambda *a, **kw: 0.75)
    monkeypatch.setattr(speculative, "hf_same_vocab", lambda t, d: True)  # no models here
    monkeypatch.setattr(speculative, "end_token_ids", lambda tokenizer, *models: [2])
    tok = StubTokenizer()
    target_view, student_view = [[1, 9, 9], [1, 8]], [[9, 9], [8]]
    r = bench_pair(None, None, target_view, tok, draft_prompts=student_view, compare_hf=True, warmup=1, repeats=1)
    assert r["tokens_per_s"] == pytest.approx(6 / 100)  # the engine's own figures use the student view
    assert r["tokens_per_s_b1"] == pytest.approx(6 / 1) and r["speedup_vs_hf_assisted"] == pytest.approx(2.0)
    assert (1, None) in calls and r["matches_hf_assisted"] is True
