"""How prompts and reference responses become ids, on every family's format: the BOS of the plain template, the
word after "Answer:", the end of a response (turn end or EOS), the same reference in training and evaluation, and
responses over the limit."""

from __future__ import annotations

import warnings

import pytest
from families import FAMILIES, get_family
from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

from specdistill.config import ViewConfig
from specdistill.data import prompt_views as views_module
from specdistill.data.records import Record
from specdistill.data.templates import render_prompt, turn_end_id
from specdistill.data.prompt_views import encode_example
from specdistill.evaluate.quality import reference_ids
from specdistill.models import load_tokenizer

PLAIN = ViewConfig(use_chat_template=False)
QUERY, RESPONSE = "What does the farmer carry?", "the farmer carries a red boat."


def family_tokenizer(name: str):
    return load_tokenizer(str(get_family(name).teacher))


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """A character tokenizer without a chat template whose encoding starts with its BOS <s>, as a base Llama's."""
    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", *chars])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.add_special_tokens(["<pad>", "<s>", "</s>"])
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def bos_count(ids: list[int], tok) -> int:
    return sum(i == tok.bos_token_id for i in ids) if tok.bos_token_id is not None else 0


# ---------------------------------------------------------------- BOS
def test_a_plain_prompt_of_a_tokenizer_that_adds_bos_starts_with_exactly_one():
    tok = bos_tokenizer()
    assert tok("x").input_ids == [1, tok.convert_tokens_to_ids("x")] and tok.chat_template is None
    views = ViewConfig(system_prompt="Be brief.", few_shot=[{"query": "1+1?", "response": "2"}])
    ex = encode_example(Record(id="a", query="Who?", knowledge="Bo.", response="Bo"), tok, views)
    for prompt in (ex.student_prompt, ex.teacher_prompt):
        assert prompt[0] == tok.bos_token_id and bos_count(prompt, tok) == 1
    assert tok.decode(ex.student_prompt) == "<s>Question: Who?\nAnswer:"
    assert ex.response == tok(" Bo", add_special_tokens=False).input_ids + [tok.eos_token_id]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("plain", [True, False], ids=["plain", "chat"])
def test_every_family_prompt_starts_with_its_bos_once_and_qwen_with_none(name, plain):
    """gemma2/3, llama3 and mistral add a BOS when encoding: their plain prompts get it in front, and their chat
    templates write it themselves (it must not be doubled); qwen has none."""
    tok = family_tokenizer(name)
    adds = tok("x").input_ids[0] == tok.bos_token_id if tok.bos_token_id is not None else False
    assert adds == (name not in ("qwen2.5", "qwen3"))
    views = ViewConfig(use_chat_template=not plain)
    ids = encode_example(Record(id="a", query=QUERY), tok, views).student_prompt
    text = render_prompt(tok, [{"role": "user", "content": QUERY}], use_chat_template=not plain)
    if adds:
        assert ids[0] == tok.bos_token_id and bos_count(ids, tok) == 1
        assert ids[1:] == tok(text, add_special_tokens=False).input_ids[(0 if plain else 1):]
    else:
        assert ids == tok(text, add_special_tokens=False).input_ids  # nothing added in front


def test_gemma3_without_a_chat_template_gets_its_bos_in_every_view():
    """A Gemma-3 base checkpoint has no chat template: the plain template, with its BOS (without it Gemma-3-270M
    answers digits)."""
    tok = family_tokenizer("gemma3")
    tok.chat_template = None
    ex = encode_example(Record(id="a", query=QUERY, knowledge="Boats float.", response=RESPONSE), tok, ViewConfig())
    for prompt in (ex.student_prompt, ex.teacher_prompt):
        assert tok.convert_ids_to_tokens(prompt[:1]) == ["<bos>"] and bos_count(prompt, tok) == 1


# ---------------------------------------------------------------- the word after "Answer:"
@pytest.mark.parametrize("name", FAMILIES)
def test_a_plain_prompt_and_its_response_are_the_ids_of_the_whole_text(name):
    """The ids the model reads in training equal the tokenizer's own encoding of the whole text (with its BOS):
    the response's first word keeps its space (" the", not " " then "the")."""
    tok = family_tokenizer(name)
    ex = encode_example(Record(id="a", query=QUERY, response=RESPONSE), tok, PLAIN)
    whole = tok(f"Question: {QUERY}\nAnswer: {RESPONSE}").input_ids  # add_special_tokens: its BOS where it adds one
    assert ex.student_prompt + ex.response[:-1] == whole
    assert ex.student_prompt == whole[: len(ex.student_prompt)]


def test_llama3_plain_response_starts_with_the_spaced_word():
    tok = family_tokenizer("llama3")
    ex = encode_example(Record(id="a", query=QUERY, response=RESPONSE), tok, PLAIN)
    first = tok.convert_ids_to_tokens(ex.response[:1])[0]
    assert first == "Ġthe"  # byte-level BPE's " the" (alone, "the" is "t" then "he")
    assert tok.convert_ids_to_tokens(ex.student_prompt[-1:]) == [":"]


# ---------------------------------------------------------------- the end of a response
def test_the_plain_template_ends_a_response_with_the_eos_not_a_chat_token():
    """Llama-3: EOS <|end_of_text|>, end of turn <|eot_id|>. use_chat_template: false trains a base model's EOS."""
    tok = family_tokenizer("llama3")
    assert tok.eos_token == "<|end_of_text|>"
    text = Record(id="a", query=QUERY, response=RESPONSE)
    ids = Record(id="b", query="", prompt_ids=[5, 6], response_ids=[7, 8])
    for record in (text, ids):
        assert tok.convert_ids_to_tokens(encode_example(record, tok, PLAIN).response[-1:]) == ["<|end_of_text|>"]
        assert tok.convert_ids_to_tokens(encode_example(record, tok, ViewConfig()).response[-1:]) == ["<|eot_id|>"]
    assert turn_end_id(tok, use_chat_template=False) == tok.eos_token_id
    assert turn_end_id(tok) == tok.convert_tokens_to_ids("<|eot_id|>")


@pytest.mark.parametrize("views", [ViewConfig(), PLAIN], ids=["chat", "plain"])
@pytest.mark.parametrize("response_ids", [[7, 8], [7, 8, "<|eot_id|>"], [7, 8, "<|end_of_text|>"]],
                         ids=["no-end", "eot", "eos"])
def test_training_and_evaluation_end_a_reference_alike(views, response_ids):
    """Llama-3, where EOS is not the end of turn: training's response and evaluation's reference are the same ids
    (the one that differed appended the EOS to pre-tokenized ids without an end, where training appends the turn
    end). A response that ends with an end id keeps it."""
    tok = family_tokenizer("llama3")
    ids = [tok.convert_tokens_to_ids(i) if isinstance(i, str) else i for i in response_ids]
    for record in (Record(id="b", query="", prompt_ids=[5, 6], response_ids=ids),
                   Record(id="a", query=QUERY, response=RESPONSE)):
        trained = encode_example(record, tok, views).response
        if views.use_chat_template:
            assert reference_ids(tok, record) == trained  # the default views are the default training views
        assert reference_ids(tok, record, views) == trained
    expected_end = ids[-1] if isinstance(response_ids[-1], str) else turn_end_id(tok, views.use_chat_template)
    assert encode_example(Record(id="b", query="", prompt_ids=[5], response_ids=ids), tok, views).response == (
        ids[:2] + [expected_end])


# ---------------------------------------------------------------- a template that cannot render an answer
USER_ONLY = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ raise_exception('no answers here') }}"
             "{% endif %}<|user|>{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>"
             "{% endif %}")


def test_a_template_that_rejects_an_answer_falls_back_to_the_eos_with_a_warning():
    from specdistill.data.tokenizer import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = USER_ONLY
    with pytest.warns(UserWarning, match=r"cannot render \[user, assistant\] \(no answers here\).*'<\|end\|>'"):
        assert turn_end_id(tok) == tok.eos_token_id


def test_a_template_bug_that_is_not_a_template_error_propagates():
    from specdistill.data.tokenizer import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = USER_ONLY.replace("raise_exception('no answers here')", "1 // 0")
    with pytest.raises(ZeroDivisionError):
        turn_end_id(tok)


# ---------------------------------------------------------------- responses over the limit
def test_a_response_over_the_limit_is_cut_without_its_end_and_warned_of_once(monkeypatch):
    monkeypatch.setattr(views_module, "_WARNED", set())
    tok = family_tokenizer("llama3")
    views = ViewConfig(max_response_tokens=4)
    whole = tok(RESPONSE, add_special_tokens=False).input_ids
    assert len(whole) > 4
    long = [Record(id=str(i), query=QUERY, response=RESPONSE) for i in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cut = [encode_example(r, tok, views).response for r in long]
        fits = encode_example(Record(id="s", query=QUERY, response="Yes."), tok, views).response
        ids = encode_example(Record(id="t", query="", prompt_ids=[5], response_ids=whole), tok, views).response
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "data.views.max_response_tokens=4" in messages[0], messages
    assert cut == [whole[:4]] * 2 and tok.convert_tokens_to_ids("<|eot_id|>") not in cut[0]
    assert ids == whole[:4]
    assert fits == tok("Yes.", add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("<|eot_id|>")]
    exact = Record(id="e", query=QUERY, response=RESPONSE)  # exactly at the limit with its end: kept whole
    assert encode_example(exact, tok, ViewConfig(max_response_tokens=len(whole) + 1)).response == whole + [
        tok.convert_tokens_to_ids("<|eot_id|>")]
    assert reference_ids(tok, long[0], views) == whole + [tok.convert_tokens_to_ids("<|eot_id|>")]  # eval: whole
