"""Offline imitations of real Hugging Face model families, for tests and benchmarks.

Each family ("qwen2.5", "qwen3", "llama3", "gemma2", "gemma3", "mistral") gets, built offline and
deterministically:

- a byte-level BPE tokenizer of exactly TOKENIZER_SIZE ids, trained on text this module generates (the
  built-in tasks plus generated English and a little Korean), with the family's special tokens and roles
  and the family's published chat template (copied verbatim, sources named at each constant below);
- a generation_config listing every end id the real instruct checkpoint ships;
- a tiny random teacher (TEACHER_ROWS embedding rows) and student (STUDENT_ROWS rows) of the family's
  architecture, saved with save_pretrained, whose rows past the tokenizer are zero (or random);
- an "other student" of the same format and size whose tokenizer differs at one known id.

Use `get_family(name)` in tests (built once per process into `family_root()`), or `build_family(name, root)`.
Import with `from families import ...` (tests/ is on sys.path under pytest; benchmarks insert it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from specdistill.data.tasks import load_task

FAMILIES: tuple[str, ...] = ("qwen2.5", "qwen3", "llama3", "gemma2", "gemma3", "mistral")
TOKENIZER_SIZE = 2000  # len(tokenizer), special tokens included
TEACHER_ROWS = 2048  # embedding / lm_head rows of every teacher (48 padded rows)
STUDENT_ROWS = 2016  # embedding / lm_head rows of every student (16 padded rows)
SLIDING_WINDOW = 16  # gemma fixtures: small, so prompt + response outgrows it
MAX_POSITIONS = 4096  # teacher views can be ~2,500 tokens


@dataclass
class Family:
    name: str
    model_type: str  # "qwen2", "qwen3", "llama", "gemma2", "gemma3_text", "mistral"
    teacher: Path  # HF folder: model, tokenizer (with chat template), generation_config
    student: Path  # HF folder
    other_student: Path  # HF folder whose tokenizer differs from the teacher's at `differing_token`
    end_ids: list[int]  # every id that ends an assistant turn: generation_config ids + the template's turn end
    turn_end: str  # token string that closes an assistant turn in the template
    system_role: bool  # False when the template raises on a system message (gemma2)
    sliding_window: int | None
    differing_token: tuple[int, str, str]  # (id, teacher's token, other student's token)


@dataclass(frozen=True)
class _Spec:
    """How one real family lays out its tokenizer, template and configs."""

    model_type: str
    template: str
    front: tuple[str, ...]  # special tokens trained in at ids 0.. (gemma, mistral)
    back: tuple[str, ...]  # special tokens appended after the BPE vocab (qwen, llama)
    back_plain: tuple[str, ...]  # added but not special tokens, appended last (qwen3's <think>, </think>)
    bos: str | None
    eos: str  # the tokenizer's eos_token
    pad: str | None
    unk: str | None
    gen_eos: tuple[str, ...]  # generation_config.eos_token_id, in the order the real checkpoint lists them
    config_eos: tuple[str, ...]  # config.json eos_token_id (one entry is written as an int)
    turn_end: str
    system_role: bool
    prepend_bos: bool  # the real tokenizer adds bos when encoding with add_special_tokens=True
    tied: bool  # tie_word_embeddings of the real checkpoint
    split_regex: str | None = None  # the real pre-tokenizer's split pattern; None: GPT-2's (gemma, mistral)
    config_bos: str | None = None  # bos_token_id of config.json / generation_config.json when not `bos`

    @property
    def model_bos(self) -> str | None:
        return self.config_bos or self.bos


# Pre-tokenizer patterns of the real tokenizer.json files. Qwen splits digits one by one, Llama 3 in runs of
# up to three. transformers loads a qwen2 folder with Qwen2Tokenizer, which rebuilds exactly this pipeline.
_QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_LLAMA3_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


@functools.cache
def _specs() -> dict[str, _Spec]:
    qwen_back = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    qwen = dict(front=(), back=qwen_back, bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None,
                gen_eos=("<|im_end|>", "<|endoftext|>"), config_eos=("<|im_end|>",), turn_end="<|im_end|>",
                system_role=True, prepend_bos=False, tied=False, split_regex=_QWEN_SPLIT,
                config_bos="<|endoftext|>")  # Qwen's configs name <|endoftext|> as bos; its tokenizer has none
    gemma_front = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
    gemma = dict(front=gemma_front, back=(), back_plain=(), bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
                 gen_eos=("<eos>", "<end_of_turn>"), turn_end="<end_of_turn>", prepend_bos=True, tied=True)
    llama_back = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eom_id|>", "<|eot_id|>")
    llama_end = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
    return {
        "qwen2.5": _Spec("qwen2", QWEN25_TEMPLATE, back_plain=(), **qwen),
        # Real Qwen3 adds <think> and </think> as plain added tokens ("special": false), so
        # decode(skip_special_tokens=True) keeps them; so do these.
        "qwen3": _Spec("qwen3", QWEN3_TEMPLATE, back_plain=("<think>", "</think>"), **qwen),
        "llama3": _Spec("llama", LLAMA31_TEMPLATE, front=(), back=llama_back, back_plain=(),
                        bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, unk=None, gen_eos=llama_end,
                        config_eos=llama_end, turn_end="<|eot_id|>", system_role=True, prepend_bos=True,
                        tied=False, split_regex=_LLAMA3_SPLIT),
        "gemma2": _Spec("gemma2", GEMMA2_TEMPLATE, config_eos=("<eos>",), system_role=False, **gemma),
        "gemma3": _Spec("gemma3_text", GEMMA3_TEMPLATE, config_eos=("<eos>", "<end_of_turn>"), system_role=True,
                        **gemma),
        "mistral": _Spec("mistral", MISTRAL_V3_TEMPLATE, front=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
                         back=(), back_plain=(), bos="<s>", eos="</s>", pad=None, unk="<unk>", gen_eos=("</s>",),
                         config_eos=("</s>",), turn_end="</s>", system_role=True, prepend_bos=True, tied=False),
    }


def _spec(family: str) -> _Spec:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    return _specs()[family]


# ---------------------------------------------------------------- corpus
_SUBJECTS = ["the farmer", "a small child", "my neighbour", "the old pilot", "our teacher", "the doctor",
             "a quiet student", "the baker", "her brother", "the young singer", "every visitor", "the judge"]
_VERBS = ["finds", "carries", "paints", "remembers", "watches", "builds", "sells", "reads", "cleans",
          "describes", "follows", "counts", "borrows", "repairs", "answers", "explains"]
_OBJECTS = ["a red boat", "the heavy box", "an empty bottle", "the long letter", "three green apples",
            "a broken clock", "the river map", "seven blue stones", "a warm coat", "the last question",
            "an old photograph", "the morning paper", "a wooden chair", "the school garden"]
_PLACES = ["near the station", "in the kitchen", "before dinner", "after the rain", "at the market",
           "under the bridge", "during the winter", "on the hill", "by the window", "every morning"]
_CONNECTIVES = ["because", "although", "while", "so", "and then", "but"]
_FIXED = [
    "You are a helpful assistant.",
    "Answer the question in one short sentence.",
    "Think step by step, then give the final answer after ####.",
    "Use the knowledge below to answer the question.",
    "The quick brown fox jumps over the lazy dog.",
    "Please keep your answer brief and accurate.",
]
_COMMON = """time year people way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government number night
point home water room mother area money story fact month lot right study book eye job word business issue
side kind head house service friend father power hour game line end member law car city community name
president team minute idea kid body information back parent face others level office door health person
art war history party result change morning reason research girl guy moment air teacher force education
foot boy age policy music market sense nation plan college interest death experience effect class control
care field development role effort rate heart drug show leader light voice wife police mind price report
decision son view relationship town road arm difference value building action model season society tax
director position player record paper space ground form event official matter center couple site project
activity star table need court oil situation cost industry figure street image phone data picture practice
piece land product doctor wall patient worker news test movie north love support technology step baby
computer type attention film tree source organization hair window evidence population site chance
simple different important large small great little public bad able early young possible whole free
military true federal international full special easy clear recent certain personal open red difficult
available likely short single medical current wrong private past foreign fine common poor natural
significant similar hot dead central happy serious ready left physical general environmental financial
blue democratic dark various entire close legal religious cold final main green nice huge popular
traditional cultural wonderful quickly slowly carefully together already always never often usually
become include continue believe happen provide write stand lose understand watch follow create speak
remember consider appear allow suggest develop raise pass require report decide pull receive agree""".split()
_KOREAN = [
    "한국의 전통 음식은 김치입니다.",
    "오늘은 날씨가 맑고 따뜻합니다.",
    "학생들은 도서관에서 책을 읽습니다.",
    "서울은 한국의 수도입니다.",
]


def _english_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` generated English sentences, identical for the same seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        clause = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        text = f"{clause} {rng.choice(_PLACES)}"
        if rng.random() < 0.5:
            text += f", {rng.choice(_CONNECTIVES)} {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        out.append(text[0].upper() + text[1:] + rng.choice([".", ".", "!", "?"]))
    for _ in range(n):  # word salad over a wider vocabulary, so BPE has enough distinct words to merge
        words = rng.sample(_COMMON, 8)
        out.append(" ".join(words).capitalize() + f" {rng.randrange(10_000)}.")
    return out


@functools.cache
def _corpus() -> tuple[str, ...]:
    """Training text for every family's BPE: all built-in task rows, generated English, a little Korean."""
    lines: list[str] = []
    for task in ("arith", "facts"):
        for split in ("train", "validation", "test"):
            for row in load_task(task, split, seed=0):
                lines += [row["query"], row["response"], row.get("knowledge") or ""]
    lines += _english_sentences(600) + _FIXED * 20 + _KOREAN * 20
    return tuple(line for line in lines if line)


# ---------------------------------------------------------------- tokenizers
@functools.cache
def _backend_json(family: str) -> str:
    """The family's trained `tokenizers` serialization (BPE vocab, merges, specials, post-processor)."""
    spec = _spec(family)
    core = Tokenizer(models.BPE())
    core.decoder = decoders.ByteLevel()
    if spec.split_regex is None:
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split
    else:  # the real family's split, then bytes, as in its tokenizer.json
        core.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(spec.split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if spec.model_type in ("qwen2", "qwen3"):
        core.normalizer = normalizers.NFC()
    n_back = len(spec.back) + len(spec.back_plain)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_SIZE - n_back,  # front specials and the 256-byte alphabet count inside it
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(spec.front),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.back])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.back_plain])
    if spec.prepend_bos:
        bos_id = core.token_to_id(spec.bos)
        core.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos}:1 $B:1", special_tokens=[(spec.bos, bos_id)]
        )
    size = core.get_vocab_size(with_added_tokens=True)
    assert size == TOKENIZER_SIZE, f"{family}: trained {size} ids, want {TOKENIZER_SIZE}; enlarge the corpus"
    return core.to_str()


def _wrap(family: str, backend_json: str) -> PreTrainedTokenizerFast:
    """A PreTrainedTokenizerFast over `backend_json` with the family's roles and chat template."""
    spec = _spec(family)
    roles = {"bos_token": spec.bos, "eos_token": spec.eos, "pad_token": spec.pad, "unk_token": spec.unk}
    extra = [t for t in spec.front + spec.back if t not in roles.values()]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(backend_json),
        **roles,
        additional_special_tokens=extra,
        clean_up_tokenization_spaces=False,  # byte-level text must round-trip exactly
        model_max_length=MAX_POSITIONS,
    )
    tok.chat_template = spec.template
    assert len(tok) == TOKENIZER_SIZE, f"{family}: len(tokenizer) = {len(tok)}, want {TOKENIZER_SIZE}"
    return tok


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The family's teacher/student tokenizer: deterministic; trained once per process, a fresh wrapper each call."""
    return _wrap(family, _backend_json(family))


def _last_merge(model: dict) -> tuple[str, str]:
    last = model["merges"][-1]
    return tuple(last.split(" ")) if isinstance(last, str) else tuple(last)


@functools.cache
def _other_backend(family: str) -> tuple[str, tuple[int, str, str]]:
    """The teacher's serialization with its last merge's token swapped for a new one at the same id.

    The last merge's product is the newest BPE token: no other merge builds on it, so dropping that merge and
    adding one that builds a string the vocab lacks keeps a valid BPE of the same size that differs at one id.
    """
    data = json.loads(_backend_json(family))
    model = data["model"]
    vocab: dict[str, int] = model["vocab"]
    left, right = _last_merge(model)
    old = left + right
    new_pair = next((a, b) for a in "qzxj" for b in "abcdefghijklmnopqrstuvwxyz" if a + b not in vocab)
    idx = vocab.pop(old)
    vocab[new_pair[0] + new_pair[1]] = idx
    was_str = isinstance(model["merges"][-1], str)
    model["merges"][-1] = " ".join(new_pair) if was_str else list(new_pair)
    return json.dumps(data, ensure_ascii=False), (idx, old, new_pair[0] + new_pair[1])


def build_other_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """Same format and size as `build_tokenizer(family)`, but one regular token differs (see Family.differing_token)."""
    return _wrap(family, _other_backend(family)[0])


# ---------------------------------------------------------------- configs and models
def _ids(tok: PreTrainedTokenizerFast, tokens: tuple[str, ...]) -> list[int]:
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def _generation_config(family: str, tok: PreTrainedTokenizerFast) -> GenerationConfig:
    """The end ids (and bos/pad) the real instruct checkpoint's generation_config.json lists; no sampling defaults."""
    spec = _spec(family)
    eos = _ids(tok, spec.gen_eos)
    return GenerationConfig(
        bos_token_id=tok.convert_tokens_to_ids(spec.model_bos) if spec.model_bos else None,
        eos_token_id=eos if family != "mistral" else eos[0],  # Mistral-7B-Instruct-v0.3 ships a single int
        pad_token_id=tok.convert_tokens_to_ids(spec.pad) if spec.pad else None,
    )


def _model_config(
    family: str, tok: PreTrainedTokenizerFast, rows: int, teacher: bool
) -> transformers.PreTrainedConfig:
    """A tiny config of the family's architecture with `rows` embedding rows."""
    spec = _spec(family)
    hidden = 64 if teacher else 32
    gemma = spec.model_type in ("gemma2", "gemma3_text")
    layers = 2 if (teacher or gemma) else 1  # gemma students keep one sliding and one full layer
    heads = 4
    config_eos = _ids(tok, spec.config_eos)
    kwargs = dict(
        vocab_size=rows, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=2, head_dim=hidden // heads,
        max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=spec.tied,
        bos_token_id=tok.convert_tokens_to_ids(spec.model_bos) if spec.model_bos else None,
        eos_token_id=config_eos[0] if len(config_eos) == 1 else config_eos,
        pad_token_id=tok.convert_tokens_to_ids(spec.pad) if spec.pad else None,
    )
    if gemma:
        pattern = ["sliding_attention", "full_attention"]  # gemma2 alternates; gemma3 mixes (5:1 in the 1B)
        kwargs.update(sliding_window=SLIDING_WINDOW, query_pre_attn_scalar=hidden // heads,
                      layer_types=[pattern[i % 2] for i in range(layers)])
    if spec.model_type == "mistral":
        kwargs["sliding_window"] = None  # Mistral-7B-v0.3 has no sliding window
    return AutoConfig.for_model(spec.model_type, **kwargs)


def _save_model(path: Path, config, tok: PreTrainedTokenizerFast, gen: GenerationConfig, seed: int,
                pad_rows: str) -> None:
    """Initialise a model from `config` with `seed`, zero its rows past the tokenizer, save it with tok and gen."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        emb = model.get_input_embeddings()
        if emb.padding_idx is not None:  # init zeroes the pad row; a trained checkpoint's is not zero
            emb.weight[emb.padding_idx].normal_(0.0, config.initializer_range)
        if pad_rows == "zero":  # as checkpoints padded past their tokenizer usually ship them
            for layer in (emb, model.get_output_embeddings()):
                layer.weight[TOKENIZER_SIZE:] = 0.0  # [rows - TOKENIZER_SIZE, hidden]
    model.generation_config = gen
    model.save_pretrained(path)
    tok.save_pretrained(path)
    gen.save_pretrained(path)


def _write_family(folder: Path, family: str, seed: int, pad_rows: str) -> None:
    """Teacher (seed), student (seed + 1) and other student (the student's weights, the other tokenizer)."""
    tok, other = build_tokenizer(family), build_other_tokenizer(family)
    gen = _generation_config(family, tok)
    student_config = _model_config(family, tok, STUDENT_ROWS, False)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per folder is noise in test logs
    try:
        _save_model(folder / "teacher", _model_config(family, tok, TEACHER_ROWS, True), tok, gen, seed, pad_rows)
        _save_model(folder / "student", student_config, tok, gen, seed + 1, pad_rows)
        _save_model(folder / "other-student", student_config, other, gen, seed + 1, pad_rows)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _family_record(family: str, base: Path) -> Family:
    spec, tok = _spec(family), build_tokenizer(family)
    end_ids = list(dict.fromkeys(_ids(tok, spec.gen_eos + (spec.turn_end,))))
    return Family(
        name=family, model_type=spec.model_type, teacher=base / "teacher", student=base / "student",
        other_student=base / "other-student", end_ids=end_ids, turn_end=spec.turn_end,
        system_role=spec.system_role,
        sliding_window=SLIDING_WINDOW if spec.model_type in ("gemma2", "gemma3_text") else None,
        differing_token=_other_backend(family)[1],
    )


_MARKER = "family.json"


def build_family(family: str, root: Path, seed: int = 0, pad_rows: str = "zero") -> Family:
    """Write `<root>/<family>/{teacher,student,other-student}` (skipped when a complete build is there).

    Safe when several processes build into the same root: each builds in a private folder and renames it
    into place; the loser discards its copy. A complete build made with another seed or pad_rows is an error.
    """
    spec = _spec(family)
    if pad_rows not in ("zero", "random"):
        raise ValueError(f"pad_rows={pad_rows!r}; allowed: 'zero', 'random'")
    root = Path(root)
    base = root / family
    wanted = {"family": family, "model_type": spec.model_type, "seed": seed, "pad_rows": pad_rows}
    if not (base / _MARKER).exists():
        root.mkdir(parents=True, exist_ok=True)
        if base.exists():
            shutil.rmtree(base, ignore_errors=True)  # a build interrupted before its marker was written
        tmp = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=root))
        _write_family(tmp, family, seed, pad_rows)
        (tmp / _MARKER).write_text(json.dumps(wanted))
        try:
            os.rename(tmp, base)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    found = json.loads((base / _MARKER).read_text())
    if found != wanted:
        raise ValueError(f"{base} holds a build with {found}, not {wanted}; use another root folder")
    return _family_record(family, base)


def family_root() -> Path:
    """The cache folder `get_family` builds into, under the system temp folder, named by a hash of everything a
    build depends on (this file, the task rows, the library versions). Computed once per process; processes with
    the same inputs share it, and any change gives a new folder, so a stale build is never reused.
    """
    return _family_root()


@functools.cache
def _family_root() -> Path:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update("\n".join(_corpus()).encode())
    h.update(f"{transformers.__version__} {tokenizers.__version__} {torch.__version__}".encode())
    return Path(tempfile.gettempdir()) / f"specdistill-families-{h.hexdigest()[:16]}"


@functools.cache
def get_family(name: str) -> Family:
    """The family built (once per process; reused across processes) into `family_root()` with seed 0."""
    return build_family(name, family_root())


# ---------------------------------------------------------------- published chat templates (verbatim)
# Qwen/Qwen2.5-7B-Instruct. Source: ggml-org/llama.cpp, models/templates/Qwen-Qwen2.5-7B-Instruct.jinja
# (written there by scripts/get_chat_template.py from the hub; read from the fork ye-NX/llama.cpp @ 1eeb523c).
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Qwen/Qwen3-8B. Source: ggml-org/llama.cpp, models/templates/Qwen-Qwen3-0.6B.jinja (ye-NX/llama.cpp @ 1eeb523c).
# llama.cpp vendors the Qwen3-0.6B copy; the Qwen3 dense release (0.6B..32B, 8B included) shipped this one
# template with `enable_thinking`. A later hub revision may differ in details (e.g. `content is string` checks).
QWEN3_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

# meta-llama/Llama-3.1-8B-Instruct. Source: ggml-org/llama.cpp, models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja
# (ye-NX/llama.cpp @ 1eeb523c); identical to huggingface/huggingface.js packages/jinja/test/e2e.test.js's copy.
LLAMA31_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# google/gemma-2-2b-it. Source: ggml-org/llama.cpp, models/templates/google-gemma-2-2b-it.jinja (ye-NX/llama.cpp @ 1eeb523c).
GEMMA2_TEMPLATE = r"""{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '
' + message['content'] | trim + '<end_of_turn>
' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model
'}}{% endif %}"""

# google/gemma-3-1b-it (current revision, which accepts string or list content). Source: huggingface/huggingface.js,
# packages/ollama-utils/src/chat-template-automap.ts, entry library/gemma3:270m (the template embedded from google's
# hub repo; its newlines inside string literals are real newlines, as in the hub JSON). The entry library/gemma3:1b
# there is the first 1B revision, which only accepted list content in a system message.
GEMMA3_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"""

# mistralai/Mistral-7B-Instruct-v0.3 (the V3 tool-use template it shares with Mixtral-8x22B-Instruct-v0.1).
# Source: zhudotexe/kani, kani/model_specific/mistral.py (formerly kani/prompts/impl/mistral.py), a commented copy.
# The hub file also has two blank lines (before `{#- This block` and before `{{- bos_token }}`); every tag there
# strips whitespace (`{%-`, `{{-`, `{#-`), so they change no output. No copy under the model's own name was found.
MISTRAL_V3_TEMPLATE = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}"""
