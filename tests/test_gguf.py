"""GGUF in and out: a .gguf model spec, `convert`, `export`, and llama.cpp as the independent reference.

The GGUF files are the tests' own: the family fixtures (llama3, mistral, gemma3 of tests/families.py) and a
SmolLM2-like tied Llama (ChatML, <|im_end|> as EOS and pad, SmolLM's single-digit pre-tokenizer, grouped-query
attention 6/2) are exported with `export` and read back by transformers and by llama.cpp (xllamacpp). Expected
values come from elsewhere: the original folder's logits and greedy output, the stated per-weight bounds of f16
and q8_0, llama.cpp's own tokenizer and decoding.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, PreTrainedTokenizerFast

import specdistill.gguf_export as gguf_export
from families import GEMMA3_TEMPLATE, QWEN25_TEMPLATE, TOKENIZER_SIZE, _corpus, build_tokenizer, get_family
from specdistill.cli import main
from specdistill.gguf_io import convert_gguf, read_header
from specdistill.models import check_same_tokenizer, load_model, load_tokenizer

gguf = pytest.importorskip("gguf")
needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None,
                                    reason="xllamacpp (llama.cpp in-process) is not installed")
MODELS = ("llama3", "mistral", "gemma3", "smollm")
PROMPT = torch.randint(0, TOKENIZER_SIZE, (2, 48), generator=torch.Generator().manual_seed(0))  # > gemma's window 16


def smollm_like(root: Path) -> Path:
    """A tied Llama in SmolLM2's format: ChatML tokens and template (<|im_start|> bos, <|im_end|> eos and pad),
    SmolLM's pre-tokenizer (single digits, then GPT-2's byte-level split), 6 heads over 2 kv heads, 2,000 rows."""
    folder = root / "smollm"
    if (folder / "config.json").exists():
        return folder
    spec = json.loads(build_tokenizer("qwen2.5").backend_tokenizer.to_str())
    spec["normalizer"] = None
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>",
                                  clean_up_tokenization_spaces=False)
    tok.chat_template = QWEN25_TEMPLATE
    end = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                         rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=end, pad_token_id=end)
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=end, pad_token_id=end)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def gemma_spm(root: Path) -> Path:
    """The Gemma-3 teacher with a SentencePiece-style tokenizer, as Gemma's own: byte-fallback BPE over text whose
    spaces are written as U+2581, <0xNN> byte tokens, BOS prepended; 1,500 ids, Gemma's special tokens at Gemma's
    ids (so the model's config fits), the Gemma-3 template."""
    folder = root / "gemma-spm"
    if (folder / "config.json").exists():
        return folder
    core = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    core.normalizer = normalizers.Replace(" ", "\u2581")
    core.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    trainer = trainers.BpeTrainer(vocab_size=1500, show_progress=False,
                                  special_tokens=specials + [f"<0x{i:02X}>" for i in range(256)])
    core.train_from_iterator(_corpus(), trainer=trainer)
    spec = json.loads(core.to_str())  # byte tokens are vocabulary entries, not added tokens matched in text
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not t["content"].startswith("<0x")]
    core = Tokenizer.from_str(json.dumps(spec))
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos>:1 $B:1",
                                                        special_tokens=[("<bos>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>", clean_up_tokenization_spaces=False)
    tok.chat_template = GEMMA3_TEMPLATE
    AutoModelForCausalLM.from_pretrained(get_family("gemma3").teacher).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class Exports:
    """Each model's folder, and its export per outtype (written once per session)."""

    def __init__(self, root: Path):
        self.root = root

    def folder(self, name: str) -> Path:
        builders = {"smollm": smollm_like, "gemma-spm": gemma_spm}
        return builders[name](self.root) if name in builders else get_family(name).teacher

    @functools.cache
    def file(self, name: str, outtype: str) -> Path:
        out = self.root / f"{name}-{outtype}.gguf"
        gguf_export.export_gguf(str(self.folder(name)), str(out), outtype)
        return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Exports:
    return Exports(tmp_path_factory.mktemp("gguf"))


def logits(model, ids=PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits[..., :TOKENIZER_SIZE]  # [2, 48, 2000]


def original(exports, name):
    return AutoModelForCausalLM.from_pretrained(exports.folder(name), dtype=torch.float32)


# ---------------------------------------------------------------- GGUF in: a .gguf spec, round trip of export
@pytest.mark.parametrize("name", MODELS)
def test_f32_export_loads_back_with_the_same_logits_config_and_tied_head(exports, name):
    source = original(exports, name)
    loaded = load_model(str(exports.file(name, "f32")))
    assert (logits(loaded) - logits(source)).abs().max() <= 1e-4
    tied = lambda m: m.get_output_embeddings().weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()
    assert tied(loaded) == tied(source) == (name in ("gemma3", "smollm"))
    names = [t[0] for t in read_header(exports.file(name, "f32"))[1]]
    assert ("output.weight" in names) == (not tied(source))  # a tied head is not written: llama.cpp reuses token_embd
    for key in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "layer_types",
                "sliding_window", "max_position_embeddings", "query_pre_attn_scalar"):
        assert getattr(loaded.config, key, None) == getattr(source.config, key, None), key


def _block_bound(weight: torch.Tensor, outtype: str) -> torch.Tensor:
    """The stated per-weight error bound (gguf_export's docstring) of `weight` [rows, cols] in `outtype`; q8_0
    rows that are not whole 32-weight blocks are stored as f16."""
    if outtype == "f16" or weight.shape[-1] % 32:
        return weight.abs() * 2.0 ** -11 + 2.0 ** -24
    blocks = weight.reshape(weight.shape[0], -1, 32)  # q8_0: 32 weights of a row share one scale
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    return (scale * (0.5 + 127 * 2.0 ** -11)).expand_as(blocks).reshape(weight.shape) + 1e-12


@pytest.mark.parametrize("outtype, logit_rms", [("f16", 0.005), ("q8_0", 0.05)])
@pytest.mark.parametrize("name", ("llama3", "gemma3", "smollm"))
def test_f16_and_q8_0_stay_within_their_stated_bounds(exports, name, outtype, logit_rms):
    """Every 2-D weight read back is within its bound (f16: 2^-11 relative; q8_0: 0.562 x its block's scale);
    norms are exact; the logits' rms error stays under the stated fraction of their rms."""
    source = original(exports, name)
    loaded = load_model(str(exports.file(name, outtype)))
    theirs = loaded.state_dict()
    for key, weight in source.state_dict().items():
        error = (theirs[key] - weight).abs()
        if weight.ndim == 1:
            assert error.max() <= 1e-6, key  # f32 (Gemma's +1 and -1 round in float32 only)
        else:
            assert (error <= _block_bound(weight, outtype)).all(), key
    ours, reference = logits(loaded), logits(source)
    assert (ours - reference).pow(2).mean().sqrt() <= logit_rms * reference.pow(2).mean().sqrt()


@pytest.mark.parametrize("name, wrong", [("llama3", "no q/k permutation"), ("gemma3", "no norm offset"),
                                         ("gemma3", "no sliding-window pattern")])
def test_a_wrong_layout_breaks_the_round_trip(exports, tmp_path, monkeypatch, name, wrong):
    """The round-trip test can fail: each of llama.cpp's layout rules, left out, changes the logits."""
    if wrong == "no q/k permutation":
        monkeypatch.setattr(gguf_export, "_permute_rope", lambda weight, heads: weight)
    elif wrong == "no norm offset":
        monkeypatch.setattr(gguf_export, "GEMMA_NORM_SHIFT", 0.0)
    else:
        monkeypatch.setattr(gguf.GGUFWriter, "add_sliding_window_pattern", lambda self, value: None)
    out = tmp_path / "wrong.gguf"
    gguf_export.export_gguf(str(exports.folder(name)), str(out), "f32")
    assert (logits(load_model(str(out))) - logits(original(exports, name))).abs().max() > 10 * 1e-4  # the f32 bound


def _generate_ids(capsys, model: str, prompt: str) -> list[list[int]]:
    out = Path(model).parent / f"out-{Path(model).name}.json"
    assert main(["generate", "--model", model, "--prompt", prompt, "--max-new-tokens", "12", "--device", "cpu",
                 "--json", str(out)]) == 0
    capsys.readouterr()
    return [row["token_ids"] for row in json.loads(out.read_text())["outputs"]]


@pytest.mark.parametrize("name", ("llama3", "gemma3", "smollm"))
def test_generate_on_a_gguf_spec_equals_generate_on_the_folder(exports, capsys, name):
    """The whole command on a .gguf spec: chat template, end ids and greedy tokens as on the original folder."""
    prompt = "What does the farmer carry after the rain?"
    assert _generate_ids(capsys, str(exports.file(name, "f32")), prompt) == _generate_ids(
        capsys, str(exports.folder(name)), prompt)
    tok, before = load_tokenizer(str(exports.file(name, "f32"))), AutoTokenizer.from_pretrained(exports.folder(name))
    assert tok.chat_template == before.chat_template
    check_same_tokenizer(tok, before)  # every id the same token, the same specials; no [PADi] rows, no extras
    assert len(tok) == len(before)


def test_a_file_without_a_chat_template_uses_the_plain_template_with_one_warning(exports, tmp_path):
    folder = tmp_path / "plain"
    source = original(exports, "gemma3")
    tok = AutoTokenizer.from_pretrained(exports.folder("gemma3"))
    tok.chat_template = None
    source.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    out = tmp_path / "plain.gguf"
    gguf_export.export_gguf(str(folder), str(out), "f32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = load_tokenizer(str(out)), load_tokenizer(str(out))
    notes = [w for w in caught if "no chat template" in str(w.message)]
    assert len(notes) == 1 and str(out) in str(notes[0].message)
    from specdistill.data.templates import render_prompt

    assert render_prompt(second, [{"role": "user", "content": "hi"}]) == "Question: hi\nAnswer:"  # the response keeps its leading space (data/templates.py)


def test_without_the_gguf_package_a_gguf_spec_names_the_extra(exports, capsys, monkeypatch):
    path = exports.file("llama3", "f32")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    assert main(["generate", "--model", str(path), "--prompt", "hi"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "pip install 'specdistill[gguf]'" in line and str(path) in line and "Traceback" not in line


def test_distill_takes_gguf_teacher_and_student_and_saves_a_plain_student(exports, tmp_path, capsys):
    """SKD with both models given as .gguf files (the student's 2,016 rows and the teacher's 2,048 share the
    2,000-id tokenizer): the run trains, and its final/ folder is a plain folder that loads, with the teacher's row
    count as every student folder (docs/models.md)."""
    from test_real_families import arith_file, distill_config

    family = get_family("gemma3")
    student = exports.root / "gemma3-student.gguf"
    if not student.exists():
        gguf_export.export_gguf(str(family.student), str(student), "f32")
    fam = type("GgufPair", (), {"teacher": exports.file("gemma3", "f16"), "student": student})
    out = tmp_path / "run"
    cfg = distill_config(tmp_path / "c.yaml", fam, "skd", arith_file(tmp_path / "d.jsonl"), out)
    assert main(["distill", str(cfg), "--set", "train.max_steps=2"]) == 0, capsys.readouterr().err
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert final.get_input_embeddings().weight.shape[0] == 2048
    assert "quantization_config" not in json.loads((out / "final" / "config.json").read_text())


def test_a_student_cut_from_a_gguf_target_exports_after_training_with_the_targets_vocabulary(exports, tmp_path,
                                                                                            capsys):
    """init-draft from the target's .gguf, distil it, export its final/: the file's own tokenizer fields are
    copied (the record of the source file travels from the cut draft into the run's final/)."""
    from specdistill.drafts import init_draft
    from test_real_families import arith_file, distill_config

    target = exports.file("gemma3", "f32")
    init_draft(str(target), "1", str(tmp_path / "cut"))  # the last of its 2 layers
    fam = type("CutPair", (), {"teacher": target, "student": tmp_path / "cut"})
    out = tmp_path / "run"
    cfg = distill_config(tmp_path / "c.yaml", fam, "skd", arith_file(tmp_path / "d.jsonl"), out)
    assert main(["distill", str(cfg), "--set", "train.max_steps=2"]) == 0, capsys.readouterr().err
    summary = gguf_export.export_gguf(str(out / "final"), str(tmp_path / "student.gguf"), "f32")
    assert summary["tokenizer"] == f"copied from {target.resolve()}"


# ---------------------------------------------------------------- convert
@pytest.mark.parametrize("name", ("llama3", "gemma3", "smollm"))
def test_convert_writes_a_plain_folder_with_the_files_logits_and_end_ids(exports, tmp_path, name):
    source = exports.file(name, "q8_0")  # quantized: the folder must hold the file's weights, not the original's
    out = tmp_path / "converted"
    convert_gguf(str(source), str(out))
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    plain = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no gguf_file
    assert (logits(plain) - logits(load_model(str(source)))).abs().max() <= 1e-5
    ends = GenerationConfig.from_pretrained(out).eos_token_id
    ends = set(ends if isinstance(ends, list) else [ends])
    expected = set(get_family(name).end_ids) if name != "smollm" else {plain.config.eos_token_id}
    assert ends == expected
    tok, before = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(exports.folder(name))
    assert tok.chat_template == before.chat_template
    text = "The farmer finds 3 red boats <|im_end|> <end_of_turn> <|eot_id|>"
    assert tok(text).input_ids == before(text).input_ids
    assert json.loads((out / "gguf_source.json").read_text())["gguf"] == str(source.resolve())


def test_export_of_a_converted_folder_copies_the_files_tokenizer(exports, tmp_path):
    source = exports.file("gemma3", "f32")
    convert_gguf(str(source), str(tmp_path / "converted"))
    out = tmp_path / "again.gguf"
    summary = gguf_export.export_gguf(str(tmp_path / "converted"), str(out), "f32")
    assert summary["tokenizer"] == f"copied from {source.resolve()}"
    fields = lambda path: {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()
                           if k.startswith("tokenizer.")}
    assert fields(out) == fields(source)
    assert (logits(load_model(str(out))) - logits(load_model(str(source)))).abs().max() <= 1e-5


# ---------------------------------------------------------------- llama.cpp, the independent reference
def _greedy_pairs(model, path, prompts, new_tokens=16):
    from specdistill.gguf_check import llamacpp_greedy
    from specdistill.llamacpp_server import serve

    with serve(path, n_ctx=512) as server:
        for prompt in prompts:
            ours = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False,
                                  attention_mask=torch.ones(1, len(prompt), dtype=torch.long))[0, len(prompt):]
            yield prompt, ours.tolist(), llamacpp_greedy(server, prompt, new_tokens)


@needs_llamacpp
@pytest.mark.parametrize("outtype", ("f32", "f16", "q8_0"))
@pytest.mark.parametrize("name", MODELS)
def test_llamacpp_greedy_equals_transformers_greedy(exports, name, outtype):
    """llama.cpp on the exported file writes transformers' greedy tokens on the same weights (prompts of 5, 12 and
    40 tokens: past Gemma's 16-token window). q8_0: llama.cpp also rounds activations to 8 bits, so a first
    difference is allowed only at a near tie, where transformers' two candidates are within 15% of a logit std."""
    path = exports.file(name, outtype)
    model = load_model(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(exports.folder(name))
    prompts = [[5, 6, 7, 100, 200], tok("The farmer finds a red boat near the station", add_special_tokens=False)
               .input_ids, list(range(300, 340))]
    for prompt, ours, theirs in _greedy_pairs(model, path, prompts):
        if outtype != "q8_0" or ours == theirs:
            assert ours == theirs, (prompt, ours, theirs)
            continue
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        with torch.no_grad():
            row = model(torch.tensor([prompt + ours[:first]])).logits[0, -1]
        assert row[ours[first]] - row[theirs[first]] <= 0.15 * row.std(), (prompt, ours, theirs)


@needs_llamacpp
@pytest.mark.parametrize("name", (*MODELS, "gemma-spm"))
def test_the_rebuilt_tokenizer_matches_llamacpps(exports, name):
    """transformers' tokenizer rebuilt from the file, the original folder's tokenizer, and llama.cpp's tokenizer of
    the same file agree on digits, runs of spaces, newlines, code, non-ASCII text, special tokens written in text
    and a chat-template prompt (gemma-spm: the SentencePiece-style vocabulary export builds, with merge-rank
    scores)."""
    from specdistill.gguf_check import tokenizer_check

    path = exports.file(name, "f32")
    for tokenizer in (None, AutoTokenizer.from_pretrained(exports.folder(name))):
        found = tokenizer_check(path, tokenizer=tokenizer)
        assert found["texts"] >= 12 and found["mismatches"] == [], found["mismatches"]
    if name == "gemma-spm":
        fields = gguf.GGUFReader(path).fields
        assert fields["tokenizer.ggml.model"].contents() == "llama"
        assert fields["tokenizer.ggml.token_type"].contents()[6 + 0x41] == gguf.TokenType.BYTE  # <0x41>


@needs_llamacpp
def test_the_tokenizer_check_finds_a_wrong_pre_tokenizer(exports, tmp_path, monkeypatch):
    """Llama-3 splits digits in runs of three; written as GPT-2's split, llama.cpp groups them and the check says so."""
    from specdistill.gguf_check import tokenizer_check

    monkeypatch.setattr(gguf_export, "_pre_tokenizer_name", lambda spec, folder: "gpt-2")
    out = tmp_path / "wrong-pre.gguf"
    gguf_export.export_gguf(str(get_family("llama3").teacher), str(out), "f32")
    found = tokenizer_check(out, tokenizer=AutoTokenizer.from_pretrained(get_family("llama3").teacher))
    assert "digits" in {m["name"] for m in found["mismatches"]}


@needs_llamacpp
def test_the_tokenizer_check_finds_wrong_sentencepiece_scores(exports, tmp_path, monkeypatch):
    """With the merge-rank scores reversed, llama.cpp's SentencePiece merges run in the wrong order."""
    from specdistill.gguf_check import tokenizer_check

    real = gguf.GGUFWriter.add_token_scores
    monkeypatch.setattr(gguf.GGUFWriter, "add_token_scores", lambda self, scores: real(self, [-x for x in scores]))
    out = tmp_path / "wrong-scores.gguf"
    gguf_export.export_gguf(str(exports.folder("gemma-spm")), str(out), "f32")
    found = tokenizer_check(out, tokenizer=AutoTokenizer.from_pretrained(exports.folder("gemma-spm")))
    assert {"words", "question"} <= {m["name"] for m in found["mismatches"]}
