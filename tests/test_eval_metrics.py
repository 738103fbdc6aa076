"""Quality metrics of `specdistill eval`: hand-checked values, perplexity against plain cross-entropy, the command."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF
from transformers import LlamaForCausalLM

from conftest import save_tiny_model, tiny_config
from specdistill.cli import main
from specdistill.data.tokenizer import build_tokenizer
from specdistill.evaluate.metrics import (METRICS, bleu, chrf, exact_match, gsm8k_answer, parse_metrics, perplexity,
                                          response_nll, rouge_l, score_gsm8k, select_metrics)

TOK = build_tokenizer()
REFS = ["the cat sat on a mat", "a quick brown fox jumps over the dog"]
PREDS = ["the cat sat on the mat", "the quick brown fox jumped over a lazy dog"]


# ---------------------------------------------------------------- text overlap
def test_identical_texts_score_the_maximum():
    assert chrf(REFS, REFS) == pytest.approx(100.0)
    assert bleu(REFS, REFS) == pytest.approx(100.0)
    assert rouge_l(REFS, REFS) == pytest.approx(1.0)


def test_bleu_of_a_hand_computed_pair():
    # pred "the cat sat on the mat" vs ref "the cat sat on a mat": clipped precisions 5/6, 3/5, 2/4, 1/3 and
    # equal lengths (BP = 1), so BLEU = 100 * (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = 100 * (1/12) ** (1/4).
    assert bleu(PREDS[:1], REFS[:1]) == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-9)


def test_rouge_l_of_a_hand_computed_pair():
    # LCS("the cat sat", "the cat") = 2: P = 2/2, R = 2/3, F = 2PR / (P + R) = 0.8; mean with an exact match.
    assert rouge_l(["the cat", "x y"], ["the cat sat", "x y"]) == pytest.approx((0.8 + 1.0) / 2)


def test_partial_matches_equal_the_libraries_on_the_same_strings():
    assert chrf(PREDS, REFS) == pytest.approx(CHRF().corpus_score(PREDS, [REFS]).score)
    assert bleu(PREDS, REFS) == pytest.approx(BLEU().corpus_score(PREDS, [REFS]).score)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDS, REFS)) / 2
    assert rouge_l(PREDS, REFS) == pytest.approx(expected)
    assert 0 < chrf(PREDS, REFS) < 100 and 0 < bleu(PREDS, REFS) < 100 and 0 < rouge_l(PREDS, REFS) < 1


# ---------------------------------------------------------------- exact match
GSM8K = {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
         "answer": "In May she sold 48/2 = 24 clips.\nIn all she sold 48+24 = 72 clips.\n#### 72"}


def test_gsm8k_exact_match():
    assert gsm8k_answer(GSM8K) == "72"  # the worked solution's final answer
    assert gsm8k_answer({"answer": 1234}) == "1234" and gsm8k_answer({"answer": "1,234"}) == "1234"
    assert gsm8k_answer({"response": "so #### -3.5"}) == "-3.5" and gsm8k_answer({"response": "72"}) is None
    assert gsm8k_answer({"response": "seventy-two"}) is None
    assert score_gsm8k("48/2=24\n48+24=72\n#### 72", GSM8K) == 1.0
    assert score_gsm8k("#### 72.0", GSM8K) == 1.0
    assert score_gsm8k("#### 1,234", {"answer": "1234"}) == 1.0
    assert score_gsm8k("#### 71", GSM8K) == 0.0
    assert score_gsm8k("72", GSM8K) == 0.0  # no `####`: not an answer
    mean, scores = exact_match(["#### 72", "#### 5", "no answer"], [GSM8K, {"answer": "5"}, GSM8K])
    assert scores == [1.0, 1.0, 0.0] and mean == pytest.approx(2 / 3)
    mean, _ = exact_match(["Pell", "x"], [{}, {}], scorer=lambda p, r: float(p == "Pell"))
    assert mean == 0.5


# ---------------------------------------------------------------- names and applicability
def test_metric_names_and_what_the_records_allow():
    assert parse_metrics("bleu, chrf,bleu") == ["bleu", "chrf"]
    with pytest.raises(ValueError, match="'meteor'.*allowed: exact_match, chrf, bleu, rouge_l, perplexity"):
        parse_metrics("chrf,meteor")
    rows = [{"id": "a", "response": "x #### 3"}, {"id": "b", "response": "y"}]
    assert select_metrics(None, rows, has_scorer=True) == (list(METRICS), {})
    metrics, skipped = select_metrics(None, rows, has_scorer=False)
    assert metrics == ["chrf", "bleu", "rouge_l", "perplexity"] and "['b']" in skipped["exact_match"]
    with pytest.raises(ValueError, match="exact_match needs .* 1 of 2 lack one"):
        select_metrics(["exact_match", "bleu"], rows, has_scorer=False)
    no_refs = [{"id": "a", "answer": "3"}]
    metrics, skipped = select_metrics(None, no_refs, has_scorer=False)
    assert metrics == ["exact_match"] and list(skipped) == ["chrf", "bleu", "rouge_l", "perplexity"]
    with pytest.raises(ValueError, match="perplexity needs a reference response"):
        select_metrics(["perplexity"], no_refs, has_scorer=False)


# ---------------------------------------------------------------- perplexity
def test_perplexity_equals_exp_of_the_cross_entropy_of_each_unpadded_sequence():
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config("llama", len(TOK) + 8)).eval()  # 8 padded embedding rows
    V = len(TOK)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(6, V, (n,), generator=g).tolist() for n in (5, 1, 9)]
    responses = [torch.randint(6, V, (n,), generator=g).tolist() + [TOK.eos_token_id] for n in (3, 7, 0)]
    total, tokens = 0.0, 0
    for p, r in zip(prompts, responses):  # one unpadded sequence at a time
        with torch.no_grad():
            logits = model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1, :V]  # [T, V]: predicts r
        total += F.cross_entropy(logits, torch.tensor(r), reduction="sum").item()
        tokens += len(r)
    for batch_size in (1, 3):
        sums, counts = response_nll(model, prompts, responses, TOK.pad_token_id, V, batch_size)
        assert counts.tolist() == [4, 8, 1]
        assert perplexity(sums, counts) == pytest.approx(math.exp(total / tokens), rel=1e-5)
    assert math.isnan(perplexity(torch.zeros(0), torch.zeros(0, dtype=torch.long)))


# ---------------------------------------------------------------- the command
def test_eval_command_writes_every_metric(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model")
    data = tmp_path / "data.jsonl"
    rows = [{"id": f"r{i}", "query": f"What is {i}+{i}?", "response": f"{i}+{i}={2 * i}\n#### {2 * i}"}
            for i in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model), "--data", str(data), "--metrics", ",".join(METRICS),
                 "--max-new-tokens", "6", "--batch-size", "2", "--json", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads(out.read_text())
    for name in METRICS:
        assert math.isfinite(report[name]) and printed[name] == report[name]
    assert 0 <= report["exact_match"] <= 1 and 0 <= report["rouge_l"] <= 1 and report["perplexity"] >= 1
    assert 0 <= report["chrf"] <= 100 and 0 <= report["bleu"] <= 100 and "tok:13a" in report["sacrebleu"]["bleu"]
    assert report["n"] == 5 and len(report["samples"]) == 5
    sample = report["samples"][0]
    assert {"prediction", "reference", "score", "nll", "response_tokens"} <= set(sample)
    assert sample["response_tokens"] == len(rows[0]["response"]) + 1  # one token per character, then EOS

    # Default: every metric the records allow; without `####` answers exact_match is skipped, with the reason.
    data.write_text("".join(json.dumps({"query": r["query"], "response": str(i)}) + "\n" for i, r in enumerate(rows)))
    assert main(["eval", "--model", str(model), "--data", str(data), "--max-new-tokens", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [k for k in summary if k in METRICS] == ["chrf", "bleu", "rouge_l", "perplexity"]
    assert "`#### N`" in summary["skipped"]["exact_match"]


def test_eval_command_rejects_unknown_and_impossible_metrics(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"query": "Hi", "response": "hello"}) + "\n")
    missing_model = str(tmp_path / "no-model")  # never loaded: the metrics are checked first
    assert main(["eval", "--model", missing_model, "--data", str(data), "--metrics", "bleu,meteor"]) == 2
    assert "allowed: exact_match, chrf, bleu, rouge_l, perplexity" in capsys.readouterr().err
    assert main(["eval", "--model", missing_model, "--data", str(data), "--metrics", "exact_match"]) == 2
    assert "exact_match needs" in capsys.readouterr().err
