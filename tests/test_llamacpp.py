"""llama.cpp serving (`bench --engine llamacpp`, evaluate/llamacpp.py) of a tiny target and a draft cut from it,
both written as GGUF by `specdistill export`: llama.cpp's greedy output is the same with and without the draft,
and its counters add up (accepted <= drafted, every generated token accounted for by a verification step, the
per-position counts summing to the accepted ones)."""

from __future__ import annotations

import json
import sys

import pytest

from families import get_family
from specdistill.cli import main

pytest.importorskip("xllamacpp")
pytest.importorskip("gguf")

from specdistill.evaluate import llamacpp  # noqa: E402
from specdistill.evaluate.llamacpp import check_same_vocab, serve_prompts  # noqa: E402
from specdistill.errors import UserError  # noqa: E402
from specdistill.models import load_tokenizer  # noqa: E402

GAMMA = 3
THREADS = 1  # steadier than 2 on a shared 2-core machine (llama.cpp's threads spin while they wait)


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict:
    """The llama3 family's teacher, a 1-layer draft cut from it, and the other student (a tokenizer that differs at
    one id), each exported f32; and three chat-templated prompts as the teacher's token ids."""
    fam, root = get_family("llama3"), tmp_path_factory.mktemp("llamacpp")
    assert main(["init-draft", "--from", str(fam.teacher), "--layers", "1", "--out", str(root / "draft")]) == 0
    files = {}
    for name, folder in (("target", fam.teacher), ("draft", root / "draft"), ("other", fam.other_student)):
        files[name] = root / f"{name}.gguf"
        assert main(["export", str(folder), str(files[name]), "--outtype", "f32"]) == 0
    tok = load_tokenizer(str(fam.teacher))
    texts = ["What is 4+4*4?", "What is 7+1*3?", "Name three green apples."]
    files["prompts"] = [tok(tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                    add_generation_prompt=True), add_special_tokens=False).input_ids
                        for t in texts]
    files["texts"], files["family"] = texts, fam
    return files


def test_llamacpp_with_the_draft_writes_the_targets_own_greedy_output_and_its_counters_add_up(ggufs):
    prompts = ggufs["prompts"]
    alone = serve_prompts(str(ggufs["target"]), prompts, 16, threads=THREADS)
    spec = serve_prompts(str(ggufs["target"]), prompts, 16, draft=str(ggufs["draft"]), gamma=GAMMA, threads=THREADS)
    assert spec["outputs"] == alone["outputs"] and all(alone["outputs"])
    assert "drafted" not in alone  # no draft, no draft counters
    drafted, accepted, drafts = spec["drafted"], spec["accepted"], spec["drafts"]
    assert 0 < drafts and 0 <= accepted <= drafted <= GAMMA * drafts
    assert spec["acceptance_rate"] == pytest.approx(accepted / drafted)
    assert spec["mean_acceptance_length"] == pytest.approx(1 + accepted / drafts)
    assert spec["counters_agree"]  # per-completion timings == the server's metrics counters
    # Token accounting: each prompt's first token comes from its prompt's forward, each verification step
    # commits its accepted drafts plus one token of the target's, and a step without a draft (at most one per
    # prompt, when one token of the budget is left) commits one.
    new = sum(map(len, spec["outputs"]))
    assert spec["new_tokens"] == new
    assert 0 <= new - (len(prompts) + drafts + accepted) <= len(prompts)
    # Acceptance at position i needs acceptance at every earlier one; the positions' counts sum to `accepted`.
    per_pos = spec["per_position_acceptance"]
    assert len(per_pos) == GAMMA and all(a >= b for a, b in zip(per_pos, per_pos[1:]))
    assert sum(per_pos) * drafts == pytest.approx(accepted)


def test_a_draft_of_another_vocabulary_is_refused_before_llamacpp_sees_it(ggufs, tmp_path, capsys, monkeypatch):
    i, ours, theirs = ggufs["family"].differing_token
    with pytest.raises(UserError, match=f"id {i} is {ours!r} in .*target.gguf and {theirs!r} in .*other.gguf"):
        check_same_vocab(str(ggufs["target"]), str(ggufs["other"]))
    check_same_vocab(str(ggufs["target"]), str(ggufs["draft"]))  # the cut draft shares it

    def never(*args, **kwargs):
        raise AssertionError("llama.cpp was started")

    monkeypatch.setattr(llamacpp, "serve_prompts", never)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(ggufs["texts"]) + "\n")
    code = main(["bench", "--engine", "llamacpp", "--target", str(ggufs["target"]), "--draft",
                 f"{ggufs['draft']},{ggufs['other']}", "--prompts", str(prompts)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("specdistill bench: error: the vocabularies of") and f"id {i}" in err[-1]


def test_without_xllamacpp_one_line_names_the_extra(ggufs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # import xllamacpp now raises ImportError
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    code = main(["bench", "--engine", "llamacpp", "--target", str(ggufs["target"]), "--draft", str(ggufs["draft"]),
                 "--prompts", str(prompts)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "xllamacpp" in line and "pip install 'specdistill[llamacpp]'" in line


@pytest.mark.parametrize("extra, words", [(["--temperature", "0.7"], "runs greedy"),
                                          (["--gamma", "auto"], "--gamma auto"),
                                          (["--hf-draft", "a,b"], "2 folder(s) for 1 draft(s)")])
def test_options_llamacpp_cannot_honour_are_refused(ggufs, tmp_path, capsys, extra, words):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    code = main(["bench", "--engine", "llamacpp", "--target", str(ggufs["target"]), "--draft", str(ggufs["draft"]),
                 "--prompts", str(prompts), *extra])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and words in line, line


def test_bench_engine_llamacpp_reports_both_engines_side_by_side(ggufs, tmp_path, capsys):
    fam = ggufs["family"]
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(ggufs["texts"][:2]) + "\n")
    code = main(["bench", "--engine", "llamacpp", "--target", str(ggufs["target"]), "--draft", str(ggufs["draft"]),
                 "--prompts", str(prompts), "--gamma", "2", "--max-new-tokens", "8", "--repeats", "1",
                 "--threads", str(THREADS), "--hf-target", str(fam.teacher), "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    [row] = report["results"]
    assert json.loads(out.splitlines()[0]) == row and "| draft | gamma | drafted |" in out
    ours, theirs = row["specdistill"], row["llamacpp"]
    assert theirs["outputs_identical"] is True and theirs["identical_prompts"] == 2
    assert theirs["speedup"] == pytest.approx(theirs["tokens_per_s"] / report["target_alone"]["tokens_per_s"])
    assert 0 <= theirs["accepted"] <= theirs["drafted"] and 0 <= ours["acceptance_rate"] <= 1
    assert ours["predicted_speedup"] > 0 and ours["cost_ratio_c"] > 0
    order = ["llama.cpp: the target alone", "llama.cpp: draft 1/1", "specdistill engine: loading the target",
             "specdistill engine: loading draft 1/1", "specdistill engine, gamma 2"]
    at = [next(i for i, line in enumerate(err.splitlines()) if text in line) for text in order]
    assert at == sorted(at)


def test_a_pair_llamacpp_itself_refuses_is_an_error_not_a_silent_run_without_the_draft(ggufs, tmp_path, capsys,
                                                                                      monkeypatch):
    """llama.cpp decodes without the draft, silently, when it finds a pair incompatible; with our check bypassed,
    that run (no drafted tokens) is one line, exit 2, rather than a table of a target 'with' a draft."""
    monkeypatch.setattr(llamacpp, "check_same_vocab", lambda target, draft: None)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    code = main(["bench", "--engine", "llamacpp", "--target", str(ggufs["target"]), "--draft", str(ggufs["other"]),
                 "--prompts", str(prompts), "--max-new-tokens", "4", "--repeats", "1", "--threads", str(THREADS)])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "without the draft" in line and "other.gguf" in line, line
