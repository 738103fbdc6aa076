import pytest
from transformers import AutoTokenizer

from specdistill.data.tasks import extract_final_number, load_task, score_arith, score_facts
from specdistill.data.tokenizer import build_tokenizer


def all_task_text():
    for task in ("arith", "facts"):
        for split in ("train", "validation", "test"):
            for r in load_task(task, split):
                yield from (v for k, v in r.items() if isinstance(v, str) and k != "id")


def test_builtin_tokenizer_round_trips_all_task_text_after_save_and_load(tmp_path):
    build_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    texts = sorted(set(all_task_text()))
    assert len(texts) > 1000
    encoded = tok(texts, add_special_tokens=False).input_ids
    assert all(tok.unk_token_id not in ids for ids in encoded)
    assert tok.batch_decode(encoded) == texts
    assert all(len(ids) == len(t) for ids, t in zip(encoded, texts))  # one token per character


def test_builtin_tokenizer_has_a_chat_template_ending_turns_with_eos(tmp_path):
    build_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>S<|end|><|user|>Q<|end|><|assistant|>"
    assert tok.eos_token == "<|end|>" and tok.padding_side == "left"
    assert tok.convert_ids_to_tokens(tok(text, add_special_tokens=False).input_ids)[:2] == ["<|system|>", "S"]


@pytest.mark.parametrize("task", ["arith", "facts"])
def test_splits_are_disjoint_and_seeded(task):
    splits = {s: load_task(task, s) for s in ("train", "validation", "test")}
    queries = {s: {r["query"] for r in rs} for s, rs in splits.items()}
    assert not queries["train"] & queries["test"]
    assert not queries["train"] & queries["validation"]
    assert not queries["validation"] & queries["test"]
    assert all(len(rs) > 100 for rs in splits.values())
    assert load_task(task, "test") == splits["test"]
    assert load_task(task, "test", seed=1) != splits["test"]


def test_arith_solutions_are_worked_and_correct():
    for r in load_task("arith", "test"):
        lines = r["response"].split("\n")
        assert len(lines) == 3 and lines[-1] == f"#### {r['answer']}"
        for step in lines[:2]:
            lhs, rhs = step.split("=")
            assert eval(lhs) == int(rhs)  # noqa: S307 - generated arithmetic only
        assert eval(r["query"][len("What is "):-1]) == int(r["answer"])  # noqa: S307


def test_facts_teacher_knowledge_answers_the_question():
    for r in load_task("facts", "test"):
        assert r["answer"] in r["knowledge"] and r["answer"] not in r["query"]


@pytest.mark.parametrize("prediction, gold, expected", [
    ("3*4=12\n5+12=17\n#### 17", "17", 1.0),
    ("#### 17<|end|>", "17", 1.0),
    ("#### 1,234", "1234", 1.0),
    ("#### 17.0", "17", 1.0),
    ("the answer is 17", "17", 0.0),
    ("#### 16", "17", 0.0),
    ("#### 12\n#### 17", "17", 1.0),  # the last #### counts
    ("#### -3", "-3", 1.0),
])
def test_score_arith(prediction, gold, expected):
    assert score_arith(prediction, {"answer": gold}) == expected


def test_score_arith_falls_back_to_the_reference_response():
    assert score_arith("#### 5", {"response": "2+3=5\n#### 5"}) == 1.0
    assert extract_final_number("no answer") is None


@pytest.mark.parametrize("prediction, gold, expected", [
    ("Pell", "Pell", 1.0), (" pell. ", "Pell", 1.0), ("Pell town", "Pell", 0.0), ("", "Pell", 0.0),
])
def test_score_facts(prediction, gold, expected):
    assert score_facts(prediction, {"answer": gold}) == expected


def test_score_arith_reads_a_gsm8k_solution_as_the_answer():
    gsm8k = {"answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"}
    assert score_arith("so #### 72", gsm8k) == 1.0
    assert score_arith("#### 24", gsm8k) == 0.0
