"""Pre-tokenized records and the `grids` world: reading ids, validating them, collating them, the class-conditional
grid generator and its scorer, and the grid teacher and students through generate, bench and distill.

Every command runs in-process through `specdistill.cli.main`; models are the grid presets (1-4 layers, width 128)
and the shipped grid teacher."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from specdistill.cli import main
from specdistill.config import DatasetConfig, ViewConfig
from specdistill.data.grids import (CELLS, CLASS_BASE, CLASSES, CODE_BASE, NOISE, RULES, SIDE, build_grid_tokenizer,
                                    parse_codes, rule_score)
from specdistill.data.records import DataError, load_records
from specdistill.data.tasks import load_task
from specdistill.data.prompt_views import collate, encode_example
from specdistill.evaluate.quality import generate_ids
from specdistill.models import load_model, load_tokenizer
from specdistill.rollout import dataset_rollout

TOK = build_grid_tokenizer()
PAD, EOS, BOS = TOK.pad_token_id, TOK.eos_token_id, TOK.bos_token_id


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------- the id tokenizer
def test_the_id_tokenizer_saves_loads_and_decodes_to_token_names(tmp_path):
    TOK.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) == 4 + CLASSES + 32 == 44
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([CLASS_BASE + 3, CODE_BASE + 17]) == ["<class_3>", "<code_17>"]
    ids = [BOS, CLASS_BASE + 3, CODE_BASE, CODE_BASE + 31, EOS]
    assert tok.decode(ids, skip_special_tokens=True) == "<class_3> <code_0> <code_31>"
    assert tok("<class_3> <code_0> <code_31>", add_special_tokens=False).input_ids == ids[1:4]


# ---------------------------------------------------------------- reading and validating ids
def test_a_jsonl_file_of_ids_reads_back_exactly(tmp_path):
    rows = [{"id": "a", "prompt_ids": [2, 5], "response_ids": [12, 13, 14]},
            {"prompt_ids": [2, 6, 7], "response_ids": [40, 41, 1]},  # ends with <eos> already
            {"id": 9, "prompt_ids": [2, 11]}]  # a prompt without a reference
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    for fmt in ("auto", "tokens"):
        records = load_records(DatasetConfig(path=path, format=fmt))
        assert [r.id for r in records] == ["a", "1", "9"]
        assert [r.prompt_ids for r in records] == [[2, 5], [2, 6, 7], [2, 11]]
        assert [r.response_ids for r in records] == [[12, 13, 14], [40, 41, 1], None]
        assert [r.where for r in records] == ["ids.jsonl:1", "ids.jsonl:2", "ids.jsonl:3"]
    examples = [encode_example(r, TOK, ViewConfig()) for r in records]
    assert [(e.student_prompt, e.teacher_prompt) for e in examples] == [([2, 5], [2, 5]), ([2, 6, 7], [2, 6, 7]),
                                                                         ([2, 11], [2, 11])]
    assert [e.response for e in examples] == [[12, 13, 14, 1], [40, 41, 1], None]  # <eos> appended once


def test_collation_left_pads_prompts_and_aligns_response_columns(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [{"prompt_ids": [2, 5, 6], "response_ids": [12]},
                                                {"prompt_ids": [7], "response_ids": [20, 21, 22]}])
    batch = collate([encode_example(r, TOK, ViewConfig()) for r in load_records(DatasetConfig(path=path))], PAD)
    assert torch.equal(batch.student_ids, torch.tensor([[2, 5, 6], [0, 0, 7]]))
    assert torch.equal(batch.student_mask, torch.tensor([[True, True, True], [False, False, True]]))
    assert torch.equal(batch.teacher_ids, batch.student_ids) and torch.equal(batch.teacher_mask, batch.student_mask)
    rb = dataset_rollout(batch, PAD)
    # Prompts end at column 3 in both rows, so response token j is at column 3 + j of each view.
    assert torch.equal(rb.student_ids, torch.tensor([[2, 5, 6, 12, 1, 0, 0], [0, 0, 7, 20, 21, 22, 1]]))
    assert torch.equal(rb.response, torch.tensor([[12, 1, 0, 0], [20, 21, 22, 1]]))
    assert torch.equal(rb.response_mask, torch.tensor([[True, True, False, False], [True, True, True, True]]))
    assert rb.student_prompt_len == rb.teacher_prompt_len == 3


def sft_config(path, data: str, out) -> str:
    cfg = {"model": {"student": "grid-student-1", "teacher": None},
           "data": {"train": [{"path": data}]},
           "train": {"output_dir": str(out), "max_steps": 1, "batch_size": 2, "warmup_steps": 0, "progress": False}}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


GOOD = {"prompt_ids": [2, 4], "response_ids": [12, 13, 14, 15]}


@pytest.mark.parametrize("bad, expected", [
    ({"prompt_ids": [2, 4], "response_ids": [12, 13, 14, 44]}, "bad.jsonl:2: field 'response_ids'[3] is 44, "
                                                               "outside the tokenizer's ids; allowed: 0 <= id < 44"),
    ({"prompt_ids": [2, 4.5], "response_ids": [12]}, "bad.jsonl:2: field 'prompt_ids'[1] is 4.5; token ids must be "
                                                     "whole numbers >= 0"),
    ({"prompt_ids": [2, "7"], "response_ids": [12]}, "bad.jsonl:2: field 'prompt_ids'[1] is '7'"),
    ({"prompt_ids": [2, -1], "response_ids": [12]}, "bad.jsonl:2: field 'prompt_ids'[1] is -1"),
    ({"response_ids": [12, 13]}, "bad.jsonl:2: missing field 'prompt_ids'"),
    ({"prompt_ids": [], "response_ids": [12]}, "bad.jsonl:2: field 'prompt_ids' must be a non-empty list"),
], ids=["out-of-range", "float", "string", "negative", "missing", "empty"])
def test_a_bad_id_row_is_a_one_line_error_naming_file_line_and_field(bad, expected, tmp_path, capsys):
    data = write_jsonl(tmp_path / "bad.jsonl", [GOOD, bad, GOOD])
    code, out, err = run_cli(["sft", sft_config(tmp_path / "c.yaml", data, tmp_path / "run")], capsys)
    assert code == 2
    assert err.startswith("specdistill sft: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not (tmp_path / "run" / "final").exists()


def test_an_out_of_range_id_in_a_record_is_refused_when_encoded():
    record = load_records(DatasetConfig(task="grids", split="validation", limit=1))[0]
    record.prompt_ids = [2, 44]
    with pytest.raises(DataError, match=r"grids/validation\[0\]: field 'prompt_ids'\[1\] is 44"):
        encode_example(record, TOK, ViewConfig())


# ---------------------------------------------------------------- the grid world
def brute_force_rule_counts(codes: list[int]) -> list[int]:
    """For each class, how many cells of rows 1..5 its rule explains, from the 2-D grid by explicit loops."""
    grid = [codes[r * SIDE:(r + 1) * SIDE] for r in range(SIDE)]
    counts = []
    for rule in RULES:
        n = 0
        for r in range(1, SIDE):
            for j in range(SIDE):
                above = grid[r - 1][(j + rule.shift) % SIDE]
                n += above in rule.successor and grid[r][j] == rule.successor[above]
        counts.append(n)
    return counts


def test_every_training_grid_follows_its_class_rule():
    rows = load_task("grids", "train", 0)
    assert len(rows) == 4000 and [len(load_task("grids", s, 0)) for s in ("validation", "test")] == [200, 500]
    assert [sum(r["class"] == c for r in rows) for c in range(CLASSES)] == [500] * CLASSES
    followed = 0
    for row in rows:
        c = row["class"]
        assert row["prompt_ids"] == [BOS, CLASS_BASE + c]
        assert row["response_ids"] == [CODE_BASE + k for k in row["codes"]] and len(row["codes"]) == CELLS
        assert set(row["codes"]) <= set(RULES[c].palette)
        counts = brute_force_rule_counts(row["codes"])
        assert counts[c] == max(counts) and counts.count(max(counts)) == 1  # the grid names its class
        followed += counts[c]
    share = followed / (len(rows) * (CELLS - SIDE))
    assert share == pytest.approx(1 - NOISE * 5 / 6, abs=0.005)  # noise draws the rule's code 1 time in 6


def test_splits_are_deterministic_per_seed():
    assert load_task("grids", "test", 0) == load_task("grids", "test", 0)
    assert load_task("grids", "test", 0) != load_task("grids", "test", 1)


def test_the_rule_score_of_hand_built_grids():
    rule = RULES[0]
    grid = list(rule.palette[:SIDE])
    for i in range(SIDE, CELLS):
        r, j = divmod(i, SIDE)
        grid.append(rule.successor[grid[(r - 1) * SIDE + (j + rule.shift) % SIDE]])
    assert rule_score(grid, 0) == 1.0
    last = grid[:-1] + [next(k for k in range(32) if k != grid[-1])]  # nothing depends on the last cell
    assert rule_score(last, 0) == 35 / 36
    outside = next(k for k in range(32) if k not in rule.palette)
    # A row-0 cell outside the palette is wrong, and so is the one row-1 cell that follows it.
    assert rule_score([outside] + grid[1:], 0) == 34 / 36
    assert rule_score(grid[:30], 0) == 30 / 36  # a short grid: missing cells are wrong
    text = " ".join(f"<code_{k}>" for k in grid)
    assert parse_codes(text + " <class_1>") == grid + [None]


# ---------------------------------------------------------------- the grid teacher
def class_prompts(per_class: int) -> list[list[int]]:
    return [[BOS, CLASS_BASE + c] for c in range(CLASSES) for _ in range(per_class)]


def test_the_grid_teacher_samples_grids_of_its_prompts_class():
    teacher, tok = load_model("builtin-grid-teacher"), load_tokenizer("builtin-grid-teacher")
    prompts = class_prompts(4)
    outputs = generate_ids(teacher, tok, prompts, max_new_tokens=40, temperature=1.0, seed=3)
    own, other = [], []
    assert all(len(out) == CELLS + 1 and out[-1] == EOS for out in outputs)  # 36 cells, then the end
    cells = [t for out in outputs for t in out[:-1]]
    assert sum(not CODE_BASE <= t < CODE_BASE + 32 for t in cells) <= 0.01 * len(cells)  # T=1 may rarely stray
    for prompt, out in zip(prompts, outputs):
        codes, c = parse_codes(TOK.decode(out, skip_special_tokens=True)), prompt[1] - CLASS_BASE
        own.append(rule_score(codes, c))
        other += [rule_score(codes, k) for k in range(CLASSES) if k != c]
    assert sum(own) / len(own) > 0.9 and sum(other) / len(other) < 0.4


def test_generate_samples_grids_from_a_prompt_ids_file(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt_ids": p} for p in class_prompts(1)])
    out = tmp_path / "gen.json"
    code, stdout, err = run_cli(["generate", "--model", "builtin-grid-teacher", "--prompts", prompts, "--temperature",
                                 "1", "--max-new-tokens", "40", "--json", out], capsys)
    assert code == 0, err
    rows = json.loads(out.read_text())["outputs"]
    assert [r["prompt"] for r in rows] == [f"2 {CLASS_BASE + c}" for c in range(CLASSES)]
    for c, row in enumerate(rows):
        assert len(row["token_ids"]) == CELLS + 1 and row["token_ids"][-1] == EOS
        assert row["text"].split() == TOK.convert_ids_to_tokens(row["token_ids"][:-1])  # names, spaces between
        assert rule_score(parse_codes(row["text"]), c) > 0.75


def grid_student(path, layers: int = 2):
    """A random-init grid student saved as a model folder (with its tokenizer)."""
    model = load_model(f"grid-student-{layers}", seed=layers)
    model.save_pretrained(path)
    TOK.save_pretrained(path)
    return path


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_bench_a_grid_student_as_draft_of_the_grid_teacher(temperature, tmp_path, capsys):
    draft, report = grid_student(tmp_path / "draft"), tmp_path / "bench.json"
    code, _, err = run_cli(["bench", "--target", "builtin-grid-teacher", "--draft", draft, "--task", "grids",
                            "--limit", "4", "--gamma", "3", "--temperature", temperature, "--max-new-tokens", "40",
                            "--repeats", "1", "--json", report], capsys)
    assert code == 0, err
    result = json.loads(report.read_text())["results"][0]
    assert 0 <= result["acceptance_rate"] <= 1 and result["target_calls"] > 0
    if temperature == 0:
        assert result["matches_target_greedy"] is True


@pytest.mark.parametrize("method", ["hybrid", "onpolicy"])
def test_distill_a_grid_student_three_steps_and_load_the_saved_folder(method, tmp_path, capsys):
    out = tmp_path / "run"
    settings = [f"train.output_dir={out}", "train.max_steps=3", "train.batch_size=4", "train.eval_every=0",
                "train.eval_samples=4", "train.progress=false", "train.warmup_steps=1", "model.student=grid-student-1"]
    argv = ["distill", f"configs/grid_{method}.yaml", *[a for s in settings for a in ("--set", s)]]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(math.isfinite(r["train/loss"]) for r in steps)
    saved = AutoModelForCausalLM.from_pretrained(out / "final")
    assert saved.config.num_hidden_layers == 1 and saved.config.vocab_size == 44
    assert len(AutoTokenizer.from_pretrained(out / "final")) == 44


def test_a_text_row_with_null_id_columns_stays_a_text_record(tmp_path):
    # a fixed-schema file (parquet, or JSON written from one) holds null prompt_ids/response_ids in its text rows
    rows = [{"id": "t", "query": "What is 2+3?", "response": "#### 5", "prompt_ids": None, "response_ids": None},
            {"id": "g", "prompt_ids": [2, 5], "response_ids": [12]}]
    records = load_records(DatasetConfig(path=write_jsonl(tmp_path / "mixed.jsonl", rows)))
    assert (records[0].query, records[0].response, records[0].prompt_ids) == ("What is 2+3?", "#### 5", None)
    assert records[1].prompt_ids == [2, 5]
