import json

import pandas as pd
import pytest

from conftest import SHARED_DATA, needs_shared
from specdistill.cli import main
from specdistill.config import DatasetConfig, FieldMap, ViewConfig
from specdistill.data import DataError, Record, check_file, collate, encode_example, load_records, read_rows
from specdistill.data.tokenizer import build_tokenizer
from specdistill.data.prompt_views import render_prompt, view_messages

ROWS = [
    {"id": "a", "query": "What is 2+2?", "knowledge": "Two and two make four.", "response": "4"},
    {"id": "b", "query": "Where does Bo live?", "knowledge": "Bo lives in Pell.", "response": "Pell"},
]


def write(tmp_path, fmt, rows=ROWS):
    path = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_every_reader_loads_records(tmp_path, fmt):
    records = load_records(DatasetConfig(path=str(write(tmp_path, fmt))))
    assert [(r.id, r.query, r.knowledge, r.response) for r in records] == [
        (r["id"], r["query"], r["knowledge"], r["response"]) for r in ROWS]


def test_field_mapping_and_limit(tmp_path):
    rows = [{"question": "Q1", "answer": "A1", "ctx": "K1"}, {"question": "Q2", "answer": "A2", "ctx": "K2"}]
    fields = FieldMap(query=["question"], knowledge=["ctx"], response=["answer"])
    records = load_records(DatasetConfig(path=str(write(tmp_path, "jsonl", rows)), fields=fields, limit=1))
    assert len(records) == 1 and (records[0].query, records[0].knowledge, records[0].response) == ("Q1", "K1", "A1")
    assert records[0].id == "0"  # no id field: the index


BAD_JSONL = "\n".join([
    json.dumps({"query": "ok", "response": "fine"}),
    '{"query": "broken", ',
    json.dumps({"prompt_text": "no query field"}),
    json.dumps({"query": "   "}),
    json.dumps({"query": 42}),
    json.dumps({"query": "q", "knowledge": ["not", "text"]}),
    json.dumps(["not an object"]),
]) + "\n"


def test_check_reports_every_bad_jsonl_record_with_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(BAD_JSONL)
    n, problems = check_file(path)
    assert n == 7
    got = [str(p) for p in problems]
    assert got[0].startswith("bad.jsonl:2: broken JSON")
    assert got[1].startswith("bad.jsonl:3: missing query field")
    assert got[2] == "bad.jsonl:4: field 'query' is empty"
    assert got[3] == "bad.jsonl:5: field 'query' must be a string, got int 42"
    assert got[4].startswith("bad.jsonl:6: field 'knowledge' must be a string, got list")
    assert got[5] == "bad.jsonl:7: expected a JSON object, got list"
    assert len(got) == 6


def test_loading_a_broken_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(BAD_JSONL)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: broken JSON"):
        load_records(DatasetConfig(path=str(path)))


def test_bad_records_in_json_array_and_csv_name_index_and_line(tmp_path):
    rows = [{"query": "fine"}, {"query": ""}, {"other": 1}]
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps(rows + ["text"]))
    _, problems = check_file(json_path)
    got = [str(p) for p in problems]
    assert got[:2] == ["d.json[3]: expected an object, got str", "d.json[1]: field 'query' is empty"]
    assert got[2].startswith("d.json[2]: missing query field (looked for query, prompt, question, instruction; keys present: other)")
    assert len(got) == 3
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("query,response\nfine,ok\n,empty\n")
    _, problems = check_file(csv_path)
    # The cell is there but empty (it once read "missing query field ... keys present: query, response").
    assert [str(p) for p in problems] == ["d.csv:3: field 'query' is empty"]
    with pytest.raises(DataError, match=r"d\.csv:3: field 'query' is empty"):
        load_records(DatasetConfig(path=str(csv_path)))


def test_broken_json_array_and_unknown_format(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"query": "a"},\n {"query": }]')
    _, problems = check_file(path)
    assert str(problems[0]).startswith("d.json:2: broken JSON")
    with pytest.raises(DataError, match="cannot tell the format from '.txt'"):
        load_records(DatasetConfig(path=str(tmp_path / "x.txt")))
    with pytest.raises(DataError, match="data file not found"):
        load_records(DatasetConfig(path=str(tmp_path / "missing.jsonl")))


def test_data_check_command(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(BAD_JSONL)
    assert main(["data", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "bad.jsonl:2: broken JSON" in out and "7 records, 6 bad" in out
    assert main(["data", "check", str(write(tmp_path, "jsonl"))]) == 0


def test_views_put_knowledge_only_in_the_teacher_view():
    tok = build_tokenizer()
    views = ViewConfig(system_prompt="Use the background.", few_shot=[{"query": "1+1?", "response": "2"}])
    rec = Record(id="x", query="Where does Bo live?", knowledge="Bo lives in Pell.", response="Pell")
    ex = encode_example(rec, tok, views)
    teacher, student = tok.decode(ex.teacher_prompt), tok.decode(ex.student_prompt)
    assert teacher == ("<|system|>Use the background.<|end|><|user|>1+1?<|end|><|assistant|>2<|end|>"
                       "<|user|>[Background Knowledge]\nBo lives in Pell.\n\nWhere does Bo live?<|end|><|assistant|>")
    assert student == "<|user|>Where does Bo live?<|end|><|assistant|>"
    assert tok.decode(ex.response) == "Pell<|end|>"
    no_knowledge = encode_example(rec, tok, ViewConfig(teacher_knowledge=False))
    assert no_knowledge.teacher_prompt == no_knowledge.student_prompt


def test_plain_template_without_chat_template():
    rec = Record(id="x", query="Q?", knowledge="K.")
    msgs = view_messages(rec, ViewConfig(system_prompt="Sys"), teacher=True)
    tok = build_tokenizer()
    tok.chat_template = None
    assert render_prompt(tok, msgs) == "Sys\n\nQuestion: [Background Knowledge]\nK.\n\nQ?\nAnswer:"
    assert render_prompt(build_tokenizer(), msgs, use_chat_template=False) == render_prompt(tok, msgs)
    ex = encode_example(Record(id="x", query="Q?", response="A."), tok, ViewConfig())
    # the answer follows "Answer:" after one space, and ends with the EOS (no chat template: no turn token)
    assert tok.decode(ex.student_prompt + ex.response) == "Question: Q?\nAnswer: A.<|end|>"


def test_collate_left_pads_both_views():
    tok = build_tokenizer()
    recs = [Record(id="1", query="short", knowledge="k"), Record(id="2", query="a much longer question", knowledge="kk")]
    batch = collate([encode_example(r, tok, ViewConfig()) for r in recs], tok.pad_token_id)
    assert batch.student_ids.shape[0] == 2 and batch.teacher_ids.shape[1] > batch.student_ids.shape[1]
    assert not batch.student_mask[0, 0] and batch.student_mask[:, -1].all()  # padding on the left
    assert (batch.student_ids[~batch.student_mask] == tok.pad_token_id).all()
    assert tok.decode(batch.student_ids[0][batch.student_mask[0]]) == "<|user|>short<|end|><|assistant|>"


@needs_shared
@pytest.mark.parametrize("name", ["korean_culture_train_200.json", "korean_culture_train_200_en.json"])
@pytest.mark.parametrize("fmt", ["lupi", "auto"])
def test_lupi_records_load_and_keep_knowledge_out_of_the_student_view(tmp_path, name, fmt):
    path = SHARED_DATA / "lupi" / name
    records = load_records(DatasetConfig(path=str(path), format=fmt))
    assert len(records) == 200 and all(r.knowledge and r.response is None for r in records)
    tok = build_tokenizer()  # any tokenizer with a chat template: check the rendered text
    for r in records[:20]:
        teacher = render_prompt(tok, view_messages(r, ViewConfig(), teacher=True))
        student = render_prompt(tok, view_messages(r, ViewConfig(), teacher=False))
        assert r.knowledge in teacher and "[Background Knowledge]" in teacher
        assert r.knowledge not in student and r.query in student
    assert main(["data", "check", str(path)]) == 0


@needs_shared
def test_lupi_format_requires_its_keys(tmp_path):
    rows = read_rows(SHARED_DATA / "lupi" / "korean_culture_train_200_en.json")
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"query": r["query"]} for r in rows[:3]]))
    with pytest.raises(DataError, match="format lupi needs the keys"):
        load_records(DatasetConfig(path=str(path), format="lupi"))


# ---------------------------------------------------------------- one reader for data check and training
def _bad_file(tmp_path, fmt):
    """One file per format with a good record, a record whose query is a number, and a repeated id."""
    good = {"id": "a", "query": "What is 2+2?", "response": "4"}
    if fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("\n".join([json.dumps(good), json.dumps({"id": "b", "query": 7}), json.dumps(good)]) + "\n")
        return path, ["d.jsonl:2: field 'query' must be a string, got int 7",
                      "d.jsonl:3: id 'a' repeats the id of d.jsonl:1; ids must be unique"]
    if fmt == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps([good, {"id": "b", "query": 7}, good]))
        return path, ["d.json[1]: field 'query' must be a string, got int 7",
                      "d.json[2]: id 'a' repeats the id of d.json[0]; ids must be unique"]
    if fmt == "csv":  # every CSV value is text: "7" is a query; an empty cell is an empty query
        path = tmp_path / "d.csv"
        path.write_text('id,query,response\na,What is 2+2?,4\nb,,x\na,"What is\n2+2?",4\n')
        return path, ["d.csv:3: field 'query' is empty",
                      "d.csv:4: id 'a' repeats the id of d.csv:2; ids must be unique"]
    path = tmp_path / "d.parquet"
    pd.DataFrame([good, {"id": "b", "query": None, "response": "x"}, good]).to_parquet(path)
    return path, ["d.parquet[1]: field 'query' is empty (null)",
                  "d.parquet[2]: id 'a' repeats the id of d.parquet[0]; ids must be unique"]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_data_check_and_training_report_the_same_records(tmp_path, fmt, capsys):
    """The same problems, at the same lines (a quoted CSV cell spanning two lines counts from its first), from
    `data check` and from the loader training uses; valid records are never blamed."""
    path, expected = _bad_file(tmp_path, fmt)
    n, problems = check_file(path)
    assert n == 3 and [str(p) for p in problems] == expected
    with pytest.raises(DataError) as err:
        load_records(DatasetConfig(path=str(path)))
    message = str(err.value)
    assert "\n" not in message and "2 bad record(s) of 3" in message and all(e in message for e in expected)
    assert main(["data", "check", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == expected and out[2].endswith("3 records, 2 bad (format: " + fmt + ")")


def test_encoding_errors_name_the_line_and_byte_offset(tmp_path, capsys):
    line1 = json.dumps({"query": "fine"}).encode() + b"\n"
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(line1 + b'{"query": "caf\xe9"}\n' + json.dumps({"query": "also fine"}).encode() + b"\n")
    n, problems = check_file(path)
    offset = len(line1) + len(b'{"query": "caf')
    assert n == 3 and [str(p) for p in problems] == [
        f"latin1.jsonl:2: not UTF-8 text (byte 0xe9 at byte offset {offset} of the file); save the file as UTF-8"]
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"query\nfine\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin1\.csv:3: not UTF-8 text \(byte 0xe9 at byte offset 14"):
        load_records(DatasetConfig(path=str(csv_path)))


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_an_empty_file_is_the_same_error_in_both(tmp_path, content):
    path = tmp_path / ("d.json" if content == "[]" else "d.jsonl")
    path.write_text(content)
    n, problems = check_file(path)
    assert n == 0 and [p.reason for p in problems] == ["holds no records" + (" (the file is empty)" if content != "[]"
                                                                             else "")]
    with pytest.raises(DataError, match="holds no records"):
        load_records(DatasetConfig(path=str(path)))
