"""`specdistill init-draft`: drafts cut from the target's own layers, on every family of tests/families.py.

Each kept layer is checked against the source's own computation: the source runs once with hooks that record
every layer's input and output; the draft runs on the same ids with its layer j fed the source's input of layer
keep[j] (its position embeddings and masks are the draft's own, built from its config), and must return the
source layer's output. A draft of every layer must give the source's logits exactly.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from families import FAMILIES, SLIDING_WINDOW, TEACHER_ROWS, TOKENIZER_SIZE, get_family
from specdistill.cli import main
from specdistill.data.templates import end_token_ids
from specdistill.drafts import count_rule, parse_layers
from specdistill.models import check_same_tokenizer

SLIDING, FULL = "sliding_attention", "full_attention"
# The deep sources' layer patterns: a cut of layers 0,2,3 keeps [S, F, S] of gemma's and [F, S, S] of qwen's, and
# the first three entries of either list would give another pattern.
DEEP_PATTERNS = {"gemma2": [SLIDING, SLIDING, FULL, SLIDING], "gemma3": [SLIDING, SLIDING, FULL, SLIDING]}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def deep_sources(tmp_path_factory) -> dict:
    """Per family, a 4-layer random model of the family's format (its teacher's config, tokenizer, template and
    generation_config): gemma with a mixed sliding/full pattern, qwen2.5 with sliding layers from layer 2 on."""
    root = tmp_path_factory.mktemp("deep")
    return {name: _deep_source(name, root / name) for name in FAMILIES}


def _deep_source(name: str, folder):
    fam = get_family(name)
    config = AutoConfig.from_pretrained(fam.teacher)
    config.num_hidden_layers = 4
    if name in DEEP_PATTERNS:
        config.layer_types = DEEP_PATTERNS[name]
    elif name == "qwen2.5":  # Qwen's own rule: layers >= max_window_layers use the window
        config.use_sliding_window, config.sliding_window, config.max_window_layers = True, SLIDING_WINDOW, 2
        config.layer_types = [FULL if i < 2 else SLIDING for i in range(4)]
    elif getattr(config, "layer_types", None) is not None:
        config.layer_types = [FULL] * 4
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = AutoModelForCausalLM.from_pretrained(fam.teacher).generation_config
    model.save_pretrained(folder)
    for f in TOKENIZER_FILES:
        if (fam.teacher / f).exists():
            shutil.copy(fam.teacher / f, folder / f)
    return folder


def cut(source, layers, out, capsys) -> dict:
    code, stdout, err = run_cli(["init-draft", "--from", source, "--layers", layers, "--out", out], capsys)
    assert code == 0, err
    return json.loads(stdout.splitlines()[0])


def ids_and_mask(length: int = 40, pad: int = 3):
    """[2, length] random token ids (longer than the fixtures' 16-token window) and a mask with `pad` left pads in
    the second row."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TOKENIZER_SIZE, (2, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    return ids, mask


def decoder_layers(model):
    return model.model.layers


def _hidden(args, kwargs):
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _output(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def source_layer_io(model, ids, mask) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) hidden states [B, L, d] of every decoder layer of `model` in one forward."""
    seen, handles = [], []
    for i, layer in enumerate(decoder_layers(model)):
        seen.append([None, None])
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, k, i=i: seen[i].__setitem__(0, _hidden(a, k).clone()), with_kwargs=True))
        handles.append(layer.register_forward_hook(lambda m, a, out, i=i: seen[i].__setitem__(1, _output(out).clone())))
    try:
        model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    return [tuple(x) for x in seen]


@torch.no_grad()
def draft_layer_outputs(draft, inputs: list[torch.Tensor], ids, mask) -> list[torch.Tensor]:
    """The outputs of the draft's layers when its layer j is fed inputs[j] (the rest of the forward as the draft
    computes it: its embeddings, position embeddings and masks)."""
    outs, handles = [], []
    for j, layer in enumerate(decoder_layers(draft)):
        def feed(m, args, kwargs, j=j):
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": inputs[j]}
            return (inputs[j], *args[1:]), kwargs
        handles.append(layer.register_forward_pre_hook(feed, with_kwargs=True))
        handles.append(layer.register_forward_hook(lambda m, a, out: outs.append(_output(out).clone())))
    try:
        draft(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    return outs


def assert_layers_match(source_dir, draft_dir, keep):
    source = AutoModelForCausalLM.from_pretrained(source_dir).eval()
    draft = AutoModelForCausalLM.from_pretrained(draft_dir).eval()  # plain transformers, no specdistill code
    ids, mask = ids_and_mask()
    io = source_layer_io(source, ids, mask)
    outs = draft_layer_outputs(draft, [io[k][0] for k in keep], ids, mask)
    assert len(outs) == len(keep)
    for j, k in enumerate(keep):
        torch.testing.assert_close(outs[j], io[k][1], rtol=0, atol=1e-6, msg=f"draft layer {j} vs source layer {k}")


# ---------------------------------------------------------------- the layers
@pytest.mark.parametrize("family", FAMILIES)
def test_each_kept_layer_computes_what_it_computed_in_the_source(family, deep_sources, tmp_path, capsys):
    summary = cut(deep_sources[family], "0,2,3", tmp_path / "draft", capsys)
    assert summary["layers"] == [0, 2, 3] and summary["num_hidden_layers"] == 3
    assert_layers_match(deep_sources[family], tmp_path / "draft", [0, 2, 3])


def test_a_wrong_layer_pattern_would_fail_the_layer_check(deep_sources, tmp_path, capsys):
    """The check above can fail: the same cut with the first three pattern entries instead of the kept layers'
    (the sliding window moved to the wrong layer) gives a layer whose output differs from its source's."""
    cut(deep_sources["gemma3"], "0,2,3", tmp_path / "draft", capsys)
    config_file = tmp_path / "draft" / "config.json"
    config = json.loads(config_file.read_text())
    config["layer_types"] = DEEP_PATTERNS["gemma3"][:3]
    config_file.write_text(json.dumps(config))
    with pytest.raises(AssertionError, match="draft layer 1 vs source layer 2"):
        assert_layers_match(deep_sources["gemma3"], tmp_path / "draft", [0, 2, 3])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_layer_pattern_and_window_survive_the_reload(family, deep_sources, tmp_path, capsys):
    cut(deep_sources[family], "0,2,3", tmp_path / "draft", capsys)
    source = AutoModelForCausalLM.from_pretrained(deep_sources[family])
    draft = AutoModelForCausalLM.from_pretrained(tmp_path / "draft")
    written = {"gemma2": [SLIDING, FULL, SLIDING], "gemma3": [SLIDING, FULL, SLIDING],
               "qwen2.5": [FULL, SLIDING, SLIDING]}  # by hand, from the deep sources' patterns
    expected = written.get(family) or ([FULL] * 3 if getattr(source.config, "layer_types", None) else None)
    assert getattr(draft.config, "layer_types", None) == expected
    assert getattr(draft.config, "sliding_window", None) == getattr(source.config, "sliding_window", None)
    for j, k in enumerate([0, 2, 3]):  # each attention module's own window, as transformers set it at build
        assert (getattr(decoder_layers(draft)[j].self_attn, "sliding_window", None)
                == getattr(decoder_layers(source)[k].self_attn, "sliding_window", None))
    if family in ("gemma2", "gemma3", "qwen2.5"):
        assert [getattr(layer.self_attn, "sliding_window", None) for layer in decoder_layers(draft)] == [
            SLIDING_WINDOW if t == SLIDING else None for t in written[family]]
    if family == "qwen2.5":  # Qwen's count of leading full layers follows the cut: layer 0 only
        assert draft.config.max_window_layers == 1


def test_a_count_keeps_the_first_layers_and_the_last(deep_sources, tmp_path, capsys):
    assert count_rule(6, 30) == [0, 1, 2, 3, 4, 29] and count_rule(1, 4) == [3]
    assert parse_layers("3", 4) == [0, 1, 3] and parse_layers("1,3", 4) == [1, 3]
    summary = cut(deep_sources["gemma3"], "3", tmp_path / "draft", capsys)
    assert summary["layers"] == [0, 1, 3]
    assert summary["layer_types"] == [SLIDING, SLIDING, SLIDING]
    assert_layers_match(deep_sources["gemma3"], tmp_path / "draft", [0, 1, 3])


# ---------------------------------------------------------------- embeddings, head, whole model
@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_norm_and_head_are_the_sources_and_a_tied_head_stays_tied(family, tmp_path, capsys):
    fam = get_family(family)
    cut(fam.teacher, "1", tmp_path / "draft", capsys)
    source = AutoModelForCausalLM.from_pretrained(fam.teacher)
    draft = AutoModelForCausalLM.from_pretrained(tmp_path / "draft")
    emb, head = draft.get_input_embeddings().weight, draft.get_output_embeddings().weight
    assert emb.shape[0] == TEACHER_ROWS and torch.equal(emb, source.get_input_embeddings().weight)
    assert torch.equal(head, source.get_output_embeddings().weight)
    assert torch.equal(draft.model.norm.weight, source.model.norm.weight)
    tied = source.get_output_embeddings().weight.data_ptr() == source.get_input_embeddings().weight.data_ptr()
    assert tied == (family in ("gemma2", "gemma3"))  # the fixtures tie as the real checkpoints do
    assert (head.data_ptr() == emb.data_ptr()) == tied
    assert draft.config.tie_word_embeddings == source.config.tie_word_embeddings
    if not tied:
        assert not torch.equal(head, emb)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_draft_of_every_layer_gives_the_sources_logits_exactly(family, deep_sources, tmp_path, capsys):
    cut(deep_sources[family], "0,1,2,3", tmp_path / "draft", capsys)
    source = AutoModelForCausalLM.from_pretrained(deep_sources[family]).eval()
    draft = AutoModelForCausalLM.from_pretrained(tmp_path / "draft").eval()
    ids, mask = ids_and_mask()
    with torch.no_grad():
        assert torch.equal(draft(input_ids=ids, attention_mask=mask).logits,
                           source(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_template_and_end_ids_travel_with_the_draft(family, tmp_path, capsys):
    fam = get_family(family)
    cut(fam.teacher, "1", tmp_path / "draft", capsys)
    a, b = AutoTokenizer.from_pretrained(fam.teacher), AutoTokenizer.from_pretrained(tmp_path / "draft")
    check_same_tokenizer(a, b)
    assert a.chat_template == b.chat_template and a.chat_template
    source = AutoModelForCausalLM.from_pretrained(fam.teacher)
    draft = AutoModelForCausalLM.from_pretrained(tmp_path / "draft")
    assert draft.generation_config.eos_token_id == source.generation_config.eos_token_id
    assert end_token_ids(b, draft) == end_token_ids(a, source) and set(fam.end_ids) <= set(end_token_ids(b, draft))


# ---------------------------------------------------------------- the draft at work
def hf_greedy(model_path, tok, ids, max_new_tokens, ends) -> list[int]:
    """transformers' own greedy generate of the target, up to and including its first end id."""
    model = AutoModelForCausalLM.from_pretrained(model_path)
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=ends,
                         pad_token_id=tok.pad_token_id, suppress_tokens=list(range(TOKENIZER_SIZE, TEACHER_ROWS)),
                         top_p=None, top_k=None, temperature=None)
    new = out[0, len(ids):].tolist()
    stop = next((j for j, i in enumerate(new) if i in ends), None)
    return new if stop is None else new[: stop + 1]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_cut_draft_serves_generate_losslessly(family, tmp_path, capsys):
    fam = get_family(family)
    cut(fam.teacher, "1", tmp_path / "draft", capsys)
    question = "What is 23+2*7?"
    code, _, err = run_cli(["generate", "--model", fam.teacher, "--draft", tmp_path / "draft", "--prompt", question,
                            "--max-new-tokens", 16, "--gamma", 3, "--json", tmp_path / "g.json"], capsys)
    assert code == 0, err
    ours = json.loads((tmp_path / "g.json").read_text())["outputs"][0]["token_ids"]
    tok = AutoTokenizer.from_pretrained(fam.teacher)
    rendered = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True)
    assert ours == hf_greedy(fam.teacher, tok, tok(rendered, add_special_tokens=False).input_ids, 16, fam.end_ids)


def test_the_cut_draft_serves_bench(tmp_path, capsys):
    fam = get_family("gemma3")  # tied head, a sliding layer
    cut(fam.teacher, "1", tmp_path / "draft", capsys)
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is 4+4*4?\nWhat is 7+1*3?\n")
    code, _, err = run_cli(["bench", "--target", fam.teacher, "--draft", tmp_path / "draft", "--prompts", prompts,
                            "--gamma", 2, "--max-new-tokens", 8, "--repeats", 1, "--json", tmp_path / "b.json"], capsys)
    assert code == 0, err
    [r] = json.loads((tmp_path / "b.json").read_text())["results"]
    assert r["matches_target_greedy"] is True and 0 <= r["acceptance_rate"] <= 1


def test_the_draft_is_written_atomically_and_never_into_a_used_folder(tmp_path, capsys, monkeypatch):
    """A failure while saving leaves no draft folder and no hidden temporary one; a folder with files is refused."""
    fam = get_family("llama3")
    import specdistill.drafts as drafts

    def broken(spec, dest):
        raise OSError("disk full")

    monkeypatch.setattr(drafts, "copy_tokenizer_files", broken)
    with pytest.raises(OSError, match="disk full"):
        main(["init-draft", "--from", str(fam.teacher), "--layers", "1", "--out", str(tmp_path / "draft")])
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()
    cut(fam.teacher, "1", tmp_path / "empty", capsys)  # an empty folder is fine
    assert (tmp_path / "empty" / "model.safetensors").exists()
