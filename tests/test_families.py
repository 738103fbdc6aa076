"""Checks of the offline model-family fixtures (tests/families.py) against the real families they imitate."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import families
from families import (
    FAMILIES,
    STUDENT_ROWS,
    TEACHER_ROWS,
    TOKENIZER_SIZE,
    build_family,
    build_tokenizer,
    family_root,
    get_family,
)

KOREAN = "한국의 전통 음식은 김치입니다."
ODD_TEXTS = [KOREAN, "  two spaces,\ttab\n\nnew lines  ", "Emoji 🙂 and café, 12345 + 678 = 13023", "<think> x"]
USER = [{"role": "user", "content": "What is 2+3?"}]
SYSTEM = [{"role": "system", "content": "Be brief."}]
ANSWER = "It is 5."

# (bos, eos, pad, unk) token strings of the real instruct tokenizers (llama3's eos as in Llama-3-8B base).
ROLES = {
    "qwen2.5": (None, "<|im_end|>", "<|endoftext|>", None),
    "qwen3": (None, "<|im_end|>", "<|endoftext|>", None),
    "llama3": ("<|begin_of_text|>", "<|end_of_text|>", None, None),
    "gemma2": ("<bos>", "<eos>", "<pad>", "<unk>"),
    "gemma3": ("<bos>", "<eos>", "<pad>", "<unk>"),
    "mistral": ("<s>", "</s>", None, "<unk>"),
}
SPECIAL = {
    "qwen2.5": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "qwen3": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
               "<|eom_id|>"],
    "gemma2": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
    "gemma3": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
    "mistral": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
}
PLAIN_ADDED = {"qwen3": ["<think>", "</think>"]}  # added tokens the real Qwen3 marks "special": false
LOW_IDS = {"gemma2": {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3},
           "gemma3": {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3},
           "mistral": {"<unk>": 0, "<s>": 1, "</s>": 2}}
GENERATION_MARKER = {
    "qwen2.5": "<|im_start|>assistant\n",
    "qwen3": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma2": "<start_of_turn>model\n",
    "gemma3": "<start_of_turn>model\n",
    "mistral": "[/INST]",
}
# generation_config.json of the real instruct checkpoints: (bos, eos, pad).
GENERATION = {
    "qwen2.5": ("<|endoftext|>", ["<|im_end|>", "<|endoftext|>"], "<|endoftext|>"),
    "qwen3": ("<|endoftext|>", ["<|im_end|>", "<|endoftext|>"], "<|endoftext|>"),
    "llama3": ("<|begin_of_text|>", ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], None),
    "gemma2": ("<bos>", ["<eos>", "<end_of_turn>"], "<pad>"),
    "gemma3": ("<bos>", ["<eos>", "<end_of_turn>"], "<pad>"),
    "mistral": ("<s>", "</s>", None),
}
TURN_END = {"qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>", "llama3": "<|eot_id|>", "gemma2": "<end_of_turn>",
            "gemma3": "<end_of_turn>", "mistral": "</s>"}
MODEL_TYPE = {"qwen2.5": "qwen2", "qwen3": "qwen3", "llama3": "llama", "gemma2": "gemma2", "gemma3": "gemma3_text",
              "mistral": "mistral"}
GEMMAS = ["gemma2", "gemma3"]


def folders(fam) -> list[Path]:
    return [fam.teacher, fam.student, fam.other_student]


def user_turn(name: str) -> list[dict]:
    return (SYSTEM + USER) if get_family(name).system_role else USER


@pytest.mark.parametrize("name", FAMILIES)
def test_tokenizer_has_exactly_tokenizer_size_ids(name):
    tok = build_tokenizer(name)
    assert len(tok) == TOKENIZER_SIZE
    assert sorted(tok.get_vocab().values()) == list(range(TOKENIZER_SIZE))  # no holes, nothing past 1999
    for folder in folders(get_family(name)):
        assert len(AutoTokenizer.from_pretrained(folder)) == TOKENIZER_SIZE


@pytest.mark.parametrize("name", FAMILIES)
def test_special_tokens_have_the_family_roles(name):
    tok = AutoTokenizer.from_pretrained(get_family(name).teacher)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ROLES[name]
    for text in SPECIAL[name]:
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == 1 and text in tok.all_special_tokens, text
    for text in PLAIN_ADDED.get(name, []):
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] not in tok.all_special_ids, text
    for text, i in LOW_IDS.get(name, {}).items():
        assert tok.convert_tokens_to_ids(text) == i
    if name not in LOW_IDS:  # qwen and llama put their specials after the regular vocabulary
        assert min(tok.convert_tokens_to_ids(SPECIAL[name])) >= TOKENIZER_SIZE - 8


@pytest.mark.parametrize("name", FAMILIES)
def test_encoding_adds_bos_only_where_the_real_tokenizer_does(name):
    tok = AutoTokenizer.from_pretrained(get_family(name).teacher)
    ids = tok.encode("hello")
    if ROLES[name][0] is None:
        assert ids == tok.encode("hello", add_special_tokens=False)
    else:
        assert ids[0] == tok.bos_token_id and ids[1:] == tok.encode("hello", add_special_tokens=False)


@pytest.mark.parametrize("name", FAMILIES)
def test_chat_template_is_saved_with_the_tokenizer(name):
    template = families._spec(name).template
    for folder in folders(get_family(name)):
        assert AutoTokenizer.from_pretrained(folder).chat_template == template


@pytest.mark.parametrize("name", FAMILIES)
def test_generation_prompt_carries_the_family_markers(name):
    tok = AutoTokenizer.from_pretrained(get_family(name).teacher)
    text = tok.apply_chat_template(user_turn(name), tokenize=False, add_generation_prompt=True)
    assert text.endswith(GENERATION_MARKER[name]) and "What is 2+3?" in text
    if name == "mistral":
        assert text == "<s>[INST] Be brief.\n\nWhat is 2+3?[/INST]"  # system goes into the last user turn
    if name == "llama3":
        assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    if ROLES[name][0] is not None:
        assert text.startswith(ROLES[name][0])  # the template writes bos itself


def test_gemma2_rejects_a_system_message():
    tok = AutoTokenizer.from_pretrained(get_family("gemma2").teacher)
    assert get_family("gemma2").system_role is False
    with pytest.raises(jinja2.exceptions.TemplateError, match="System role not supported"):
        tok.apply_chat_template(SYSTEM + USER, tokenize=False, add_generation_prompt=True)


def test_gemma3_folds_a_system_message_into_the_first_user_turn():
    tok = AutoTokenizer.from_pretrained(get_family("gemma3").teacher)
    text = tok.apply_chat_template(SYSTEM + USER, tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+3?<end_of_turn>\n<start_of_turn>model\n"


def test_qwen3_template_honours_enable_thinking():
    tok = AutoTokenizer.from_pretrained(get_family("qwen3").teacher)
    thinking = tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    plain = tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert thinking.endswith("<|im_start|>assistant\n")
    assert plain == thinking + "<think>\n\n</think>\n\n"
    qwen25 = AutoTokenizer.from_pretrained(get_family("qwen2.5").teacher)
    assert "You are Qwen, created by Alibaba Cloud" in qwen25.apply_chat_template(USER, tokenize=False)


@pytest.mark.parametrize("name", FAMILIES)
def test_an_assistant_turn_is_closed_by_turn_end(name):
    fam = get_family(name)
    tok = AutoTokenizer.from_pretrained(fam.teacher)
    text = tok.apply_chat_template(user_turn(name) + [{"role": "assistant", "content": ANSWER}], tokenize=False)
    assert fam.turn_end == TURN_END[name]
    assert text[text.index(ANSWER) + len(ANSWER):].startswith(fam.turn_end)
    turn_end_ids = tok.encode(fam.turn_end, add_special_tokens=False)
    assert len(turn_end_ids) == 1 and turn_end_ids[0] in fam.end_ids


@pytest.mark.parametrize("name", FAMILIES)
def test_generation_config_lists_every_end_id(name):
    fam = get_family(name)
    tok = build_tokenizer(name)
    bos, eos, pad = GENERATION[name]
    want_eos = tok.convert_tokens_to_ids(eos)  # a list for all but mistral, whose checkpoint ships an int
    for folder in folders(fam):
        gen = GenerationConfig.from_pretrained(folder)
        assert gen.eos_token_id == want_eos
        assert gen.bos_token_id == tok.convert_tokens_to_ids(bos)
        assert gen.pad_token_id == (tok.convert_tokens_to_ids(pad) if pad else None)
    listed = want_eos if isinstance(want_eos, list) else [want_eos]
    assert fam.end_ids == list(dict.fromkeys(listed + [tok.convert_tokens_to_ids(fam.turn_end)]))


@pytest.mark.parametrize("name", FAMILIES)
def test_any_text_round_trips_without_unknown_tokens(name):
    tokenizers = [build_tokenizer(name)] + [AutoTokenizer.from_pretrained(f) for f in folders(get_family(name))]
    for tok in tokenizers:
        for text in ODD_TEXTS:
            ids = tok.encode(text, add_special_tokens=False)
            assert tok.decode(ids) == text
            assert max(ids) < TOKENIZER_SIZE and (tok.unk_token_id is None or tok.unk_token_id not in ids)


@pytest.mark.parametrize("name", FAMILIES)
def test_saved_tokenizers_encode_like_build_tokenizer(name):
    # transformers may rebuild a family's pipeline on load (a qwen2 folder loads as Qwen2Tokenizer)
    tok = build_tokenizer(name)
    fam = get_family(name)
    for folder in (fam.teacher, fam.student):
        loaded = AutoTokenizer.from_pretrained(folder)
        for text in ODD_TEXTS + ["What is 123*45?"]:
            assert loaded(text).input_ids == tok(text).input_ids, (folder, text)


@pytest.mark.parametrize("name", FAMILIES)
def test_embedding_rows_are_padded_differently(name):
    fam = get_family(name)
    for folder, rows in ((fam.teacher, TEACHER_ROWS), (fam.student, STUDENT_ROWS), (fam.other_student, STUDENT_ROWS)):
        config = AutoConfig.from_pretrained(folder)
        assert config.model_type == MODEL_TYPE[name] == fam.model_type
        assert config.vocab_size == rows and config.max_position_embeddings >= 4096
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.get_input_embeddings().weight.shape[0] == rows
        assert model.get_output_embeddings().weight.shape[0] == rows


def padded_and_real_rows(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
        norms = layer.weight.detach().norm(dim=-1)  # [rows]
        out.append((norms[TOKENIZER_SIZE:], norms[:TOKENIZER_SIZE]))
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_padded_rows_are_zero(name):
    fam = get_family(name)
    for folder in (fam.teacher, fam.student):
        for padded, real in padded_and_real_rows(AutoModelForCausalLM.from_pretrained(folder)):
            assert padded.numel() > 0 and torch.all(padded == 0)
            assert torch.all(real > 0)


def test_pad_rows_random_keeps_the_padded_rows_random(tmp_path):
    fam = build_family("mistral", tmp_path, pad_rows="random")
    for folder in (fam.teacher, fam.student):
        for padded, _ in padded_and_real_rows(AutoModelForCausalLM.from_pretrained(folder)):
            assert torch.all(padded > 0)
    with pytest.raises(ValueError, match="pad_rows"):
        build_family("mistral", tmp_path / "x", pad_rows="ones")
    with pytest.raises(ValueError, match="another root"):
        build_family("mistral", tmp_path, pad_rows="zero")  # a build with other settings is there


@pytest.mark.parametrize("name", FAMILIES)
def test_other_student_tokenizer_differs_at_one_known_id(name):
    fam = get_family(name)
    teacher = AutoTokenizer.from_pretrained(fam.teacher)
    other = AutoTokenizer.from_pretrained(fam.other_student)
    idx, teacher_token, other_token = fam.differing_token
    assert teacher_token != other_token
    assert teacher.convert_ids_to_tokens(idx) == teacher_token and other.convert_ids_to_tokens(idx) == other_token
    assert idx not in teacher.all_special_ids
    t_vocab = {i: t for t, i in teacher.get_vocab().items()}
    o_vocab = {i: t for t, i in other.get_vocab().items()}
    assert len(o_vocab) == TOKENIZER_SIZE
    assert [i for i in range(TOKENIZER_SIZE) if t_vocab[i] != o_vocab[i]] == [idx]
    assert other.chat_template == teacher.chat_template and other.all_special_tokens == teacher.all_special_tokens


@pytest.mark.parametrize("name", FAMILIES)
def test_models_load_and_score_a_templated_prompt(name):
    fam = get_family(name)
    for folder, rows in ((fam.teacher, TEACHER_ROWS), (fam.student, STUDENT_ROWS), (fam.other_student, STUDENT_ROWS)):
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        ids = tok.apply_chat_template(user_turn(name), add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]  # [1, T]
        with torch.no_grad():
            logits = model(ids).logits  # [1, T, rows]
        assert logits.shape == (1, ids.shape[1], rows) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_only_gemma_has_a_small_sliding_window(name):
    fam = get_family(name)
    for folder in (fam.teacher, fam.student):
        config = AutoConfig.from_pretrained(folder)
        if name in GEMMAS:
            assert fam.sliding_window == config.sliding_window == 16
            assert set(config.layer_types) == {"sliding_attention", "full_attention"}
        else:
            assert fam.sliding_window is None and getattr(config, "sliding_window", None) is None


@pytest.mark.parametrize("name", GEMMAS)
def test_gemma_sliding_window_is_outgrown_by_a_short_chat(name):
    fam = get_family(name)
    tok = AutoTokenizer.from_pretrained(fam.teacher)
    chat = USER + [{"role": "assistant", "content": "Two plus three is five, so the answer is 5."}]
    ids = tok.apply_chat_template(chat, return_tensors="pt", return_dict=True)["input_ids"]  # [1, T]
    assert ids.shape[1] > 2 * fam.sliding_window
    model = AutoModelForCausalLM.from_pretrained(fam.teacher).eval()
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_builds_are_deterministic_across_processes(tmp_path):
    code = (
        "import hashlib, sys; sys.path.insert(0, 'tests'); import families as F; "
        "print(' '.join(hashlib.sha256(F.build_tokenizer(n).backend_tokenizer.to_str().encode()).hexdigest()"
        " for n in F.FAMILIES))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    here = [hashlib.sha256(build_tokenizer(n).backend_tokenizer.to_str().encode()).hexdigest() for n in FAMILIES]
    assert out.stdout.split() == here
    fam = build_family("mistral", tmp_path)
    for part in ("teacher", "student"):
        a = load_file(fam.teacher.parent / part / "model.safetensors")
        b = load_file(get_family("mistral").teacher.parent / part / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_get_family_builds_once_into_family_root():
    fam = get_family("qwen3")
    assert get_family("qwen3") is fam
    assert fam.teacher.parent == family_root() / "qwen3"
    assert json.loads((fam.teacher.parent / "family.json").read_text())["seed"] == 0
    with pytest.raises(ValueError, match="unknown family"):
        get_family("qwen4")
