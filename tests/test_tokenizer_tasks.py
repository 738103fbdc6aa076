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


_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_WORD_OPS = {"plus": "+", "minus": "-", "times": "*"}


def _step_is_true(line: str) -> bool:
    """An independent reading of a step line in any of the three styles: is its arithmetic right?"""
    import re

    if m := re.fullmatch(r"(\d+) (plus|minus|times) (\d+) is (-?\d+)", line):
        x, op, y, z = m.group(1), _WORD_OPS[m.group(2)], m.group(3), m.group(4)
    elif m := re.fullmatch(r"(\d+)([-+*])(\d+)=(-?\d+)", line):
        x, op, y, z = m.groups()
    elif m := re.fullmatch(r"(-?\d+)=(\d+)([-+*])(\d+)", line):
        z, x, op, y = m.groups()
    else:
        return False
    return _OPS[op](int(x), int(y)) == int(z)


@pytest.mark.parametrize("split", ["train", "test"])
def test_arith_styles_keeps_the_problems_and_mixes_true_steps_by_weight(split):
    from specdistill.data.tasks import STYLE_WEIGHTS, style_shares

    plain, styled = load_task("arith", split), load_task("arith_styles", split)
    assert [(r["query"], r["answer"]) for r in plain] == [(r["query"], r["answer"]) for r in styled]
    for p, s in zip(plain, styled):
        *steps, final = s["response"].split("\n")
        assert final == p["response"].split("\n")[-1] and all(_step_is_true(line) for line in steps), s["response"]
        assert score_arith(s["response"], p) == 1.0
    shares = style_shares([r["response"] for r in styled])
    n = sum(len(r["response"].split("\n")) - 1 for r in styled)
    for style, weight in STYLE_WEIGHTS.items():  # each share within 4 binomial standard deviations of its weight
        assert abs(shares[style] - weight) <= 4 * (weight * (1 - weight) / n) ** 0.5, (style, shares[style])
    assert shares["other"] == 0
    assert style_shares([r["response"] for r in plain])["symbols"] == 1.0  # the teacher's data: one style


def test_arith_styles_are_the_same_for_the_same_seed_and_differ_for_another():
    first, again, other = (load_task("arith_styles", "train", seed) for seed in (0, 0, 1))
    assert first == again and [r["styles"] for r in first] != [r["styles"] for r in other[: len(first)]]
