"""`eval`, `bench` and `generate` make their prompts as training did: `--config` brings data.views (system prompts,
template options, limits, the plain template), and record files are read by the training reader."""

from __future__ import annotations

import json

import pytest
from families import get_family

from specdistill.cli import main
from specdistill.config import DatasetConfig, load_config, save_config
from specdistill.data.records import load_records
from specdistill.data.prompt_views import encode_example
from specdistill.evaluate import quality, speculative
from specdistill.models import load_tokenizer

SYSTEM, STUDENT_SYSTEM = "You are a careful teacher.", "Answer briefly."
QUERIES = ["What is 2+3?", "What does the farmer carry?"]


@pytest.fixture(scope="module")
def qwen3():
    fam = get_family("qwen3")
    return fam, load_tokenizer(str(fam.teacher))


def run_config(tmp_path, fam, **views) -> str:
    """A run's config.yaml as training writes it (save_config of the resolved config), with these data.views;
    its devices name a GPU this machine lacks: only its data section is read."""
    overrides = [f"model.student={fam.student}", f"model.teacher={fam.teacher}", "model.student_device=cuda:7",
                 f"data.train=[{{path: {tmp_path / 'train.jsonl'}}}]"]
    overrides += [f"data.views.{k}={json.dumps(v)}" for k, v in views.items()]
    cfg = load_config(None, overrides, check=lambda c: None)
    save_config(cfg, tmp_path / "run" / "config.yaml")
    return str(tmp_path / "run" / "config.yaml")


def query_file(path, responses=False) -> str:
    rows = [{"id": f"q{i}", "query": q, **({"response": f"#### {i}"} if responses else {})}
            for i, q in enumerate(QUERIES)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def chat_ids(tok, system: str, query: str) -> list[int]:
    """The reference: transformers' own rendering of [system, user] with thinking off, as ids."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": query}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    return tok(text, add_special_tokens=False).input_ids


def training_ids(config: str, tok, file: str, teacher: bool) -> list[list[int]]:
    cfg = load_config(config, check=lambda c: None)
    records = load_records(DatasetConfig(path=file))
    return [(e.teacher_prompt if teacher else e.student_prompt)
            for e in (encode_example(r, tok, cfg.data.views) for r in records)]


def capture(monkeypatch, module, name, result):
    """Replace module.name by a recorder of the prompts it is given; returns the list they are appended to."""
    seen = []

    def fake(*args, **kwargs):
        prompts = next(a for a in args if isinstance(a, list))
        seen.append({"prompts": prompts, **kwargs})
        return result(prompts)

    monkeypatch.setattr(module, name, fake)
    return seen


OPTIONS = dict(system_prompt=SYSTEM, student_system_prompt=STUDENT_SYSTEM, template_options={"enable_thinking": False})


def test_generate_with_a_run_config_reads_the_views_training_read(qwen3, tmp_path, monkeypatch, capsys):
    fam, tok = qwen3
    config, file = run_config(tmp_path, fam, **OPTIONS), query_file(tmp_path / "q.jsonl")
    seen = capture(monkeypatch, quality, "generate_ids", lambda prompts: [[5]] * len(prompts))
    for view, system in (("student", STUDENT_SYSTEM), ("teacher", SYSTEM)):
        assert main(["generate", "--model", str(fam.student), "--prompts", file, "--config", config, "--view", view,
                     "--max-new-tokens", "2"]) == 0
        expected = [chat_ids(tok, system, q) for q in QUERIES]
        assert seen[-1]["prompts"] == expected == training_ids(config, tok, file, view == "teacher")
    assert main(["generate", "--model", str(fam.student), "--prompt", QUERIES[1], "--config", config]) == 0
    assert seen[-1]["prompts"] == [chat_ids(tok, STUDENT_SYSTEM, QUERIES[1])]
    assert "<think>" in tok.decode(seen[-1]["prompts"][0])  # enable_thinking: false writes the empty think block
    capsys.readouterr()


def test_bench_with_a_config_gives_target_and_draft_their_training_views(qwen3, tmp_path, monkeypatch, capsys):
    fam, tok = qwen3
    config, file = run_config(tmp_path, fam, **OPTIONS), query_file(tmp_path / "q.jsonl")
    seen = capture(monkeypatch, speculative, "bench_pair", lambda prompts: {})
    argv = ["bench", "--target", str(fam.teacher), "--draft", str(fam.student), "--prompts", file, "--config", config]
    assert main(argv + ["--draft-view", "student"]) == 0
    assert seen[-1]["prompts"] == [chat_ids(tok, SYSTEM, q) for q in QUERIES] == training_ids(config, tok, file, True)
    assert seen[-1]["draft_prompts"] == [chat_ids(tok, STUDENT_SYSTEM, q) for q in QUERIES]
    assert seen[-1]["draft_prompts"] == training_ids(config, tok, file, False)
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["draft"] == str(fam.student)


def test_eval_with_a_config_scores_the_training_views(qwen3, tmp_path, monkeypatch, capsys):
    fam, tok = qwen3
    config, file = run_config(tmp_path, fam, **OPTIONS), query_file(tmp_path / "q.jsonl", responses=True)
    seen = capture(monkeypatch, quality, "generate_texts", lambda prompts: ["#### 0"] * len(prompts))
    for view, system in (("student", STUDENT_SYSTEM), ("teacher", SYSTEM)):
        assert main(["eval", "--model", str(fam.student), "--data", file, "--config", config, "--view", view,
                     "--metrics", "exact_match"]) == 0
        assert seen[-1]["prompts"] == [chat_ids(tok, system, q) for q in QUERIES]
        assert seen[-1]["prompts"] == training_ids(config, tok, file, view == "teacher")
        summary = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert summary["exact_match"] == 0.5 and summary["config"] == config  # "#### 0" is record q0's answer


def test_the_plain_template_of_a_config_reaches_the_prompts(qwen3, tmp_path, monkeypatch, capsys):
    fam, tok = qwen3
    config, file = run_config(tmp_path, fam, use_chat_template=False), query_file(tmp_path / "q.jsonl")
    seen = capture(monkeypatch, quality, "generate_ids", lambda prompts: [[5]] * len(prompts))
    assert main(["generate", "--model", str(fam.student), "--prompts", file, "--config", config]) == 0
    assert seen[-1]["prompts"] == [tok(f"Question: {q}\nAnswer:").input_ids for q in QUERIES]
    capsys.readouterr()


def test_a_config_prompt_limit_applies_and_without_one_only_positions_do(qwen3, tmp_path, monkeypatch, capsys):
    fam, tok = qwen3
    config = run_config(tmp_path, fam, max_prompt_tokens=8)
    capture(monkeypatch, quality, "generate_ids", lambda prompts: [[5]] * len(prompts))
    assert main(["generate", "--model", str(fam.student), "--prompt", QUERIES[1], "--config", config]) == 2
    assert "data.views.max_prompt_tokens=8" in capsys.readouterr().err
    assert main(["generate", "--model", str(fam.student), "--prompt", QUERIES[1] * 60]) == 0


@pytest.mark.parametrize("command", ["bench", "generate", "eval"])
def test_a_file_of_query_records_is_read_as_training_reads_it(qwen3, tmp_path, monkeypatch, capsys, command):
    """{query: ...} rows, and a mix with pre-tokenized rows, told apart row by row (they were refused as "missing
    field 'prompt_ids' of a pre-tokenized record" by bench and generate)."""
    fam, tok = qwen3
    path = tmp_path / "mixed.jsonl"
    rows = [{"query": QUERIES[0], "response": "#### 5"},
            {"prompt_ids": [5, 6, 7], "response_ids": [8], "answer": "5"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text_ids = tok(tok.apply_chat_template([{"role": "user", "content": QUERIES[0]}], tokenize=False,
                                           add_generation_prompt=True), add_special_tokens=False).input_ids
    if command == "bench":
        seen = capture(monkeypatch, speculative, "bench_pair", lambda prompts: {})
        argv = ["bench", "--target", str(fam.teacher), "--draft", str(fam.student), "--prompts", str(path)]
    elif command == "generate":
        seen = capture(monkeypatch, quality, "generate_ids", lambda prompts: [[5]] * len(prompts))
        argv = ["generate", "--model", str(fam.student), "--prompts", str(path)]
    else:
        seen = capture(monkeypatch, quality, "generate_texts", lambda prompts: ["#### 5"] * len(prompts))
        argv = ["eval", "--model", str(fam.student), "--data", str(path), "--metrics", "exact_match"]
    assert main(argv) == 0, capsys.readouterr().err
    assert seen[-1]["prompts"] == [text_ids, [5, 6, 7]]
    capsys.readouterr()
