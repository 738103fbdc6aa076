"""Property-based tests (hypothesis) of the places where users' input enters: the record readers, the config
loader and the `--set` parser. Whatever the input, each ends in a parsed result or in the project's own error
(UserError and its subclasses), never in another exception; and `data check` and training agree on every file.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specdistill.config import Config, ConfigError, DatasetConfig, apply_override, load_config, save_config
from specdistill.data.records import check_file, load_records
from specdistill.errors import UserError

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values, as users' files hold them: text (some of it empty, some not ASCII), numbers, nulls, nesting.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
KEYS = st.sampled_from(["id", "query", "prompt", "question", "knowledge", "context", "response", "answer", "other"])
ROWS = st.lists(st.dictionaries(KEYS, JSON, max_size=5), max_size=6)


SCRATCH = tempfile.TemporaryDirectory(prefix="specdistill-properties-")  # removed when the module is unloaded


def scratch() -> Path:
    """A fresh folder per example (hypothesis runs many examples per test, and no function-scoped fixture)."""
    return Path(tempfile.mkdtemp(dir=SCRATCH.name))


def tmp_file(name: str, data: bytes) -> Path:
    path = scratch() / name
    path.write_bytes(data)
    return path


def read_both(path: Path, fmt: str = "auto"):
    """What `data check` and training make of one file: (check_file's result or error, load_records's result or
    error). Any exception but a UserError fails the test."""
    try:
        checked = check_file(path, fmt=fmt)
    except UserError as exc:
        checked = exc
    try:
        loaded = load_records(DatasetConfig(path=str(path), format=fmt))
    except UserError as exc:
        loaded = exc
    return checked, loaded


def assert_readers_agree(path: Path, fmt: str = "auto") -> None:
    """Both readers see the same records: no problems <=> the records load, and then as many as rows."""
    checked, loaded = read_both(path, fmt)
    if isinstance(checked, UserError):  # the file as a whole cannot be read: training must refuse it too
        assert isinstance(loaded, UserError) and str(loaded) == str(checked)
        return
    count, problems = checked
    if problems:
        assert isinstance(loaded, UserError), problems
        assert str(problems[0]) in str(loaded) or problems[0].reason in str(loaded)
    else:
        assert not isinstance(loaded, UserError), loaded
        assert len(loaded) == count


@SETTINGS
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_any_bytes_end_in_records_or_a_user_error(data, suffix):
    assert_readers_agree(tmp_file("d" + suffix, data))


@SETTINGS
@given(rows=ROWS, junk=st.lists(st.text(max_size=8), max_size=2), fmt=st.sampled_from(["jsonl", "json"]))
def test_json_rows_end_in_records_or_a_user_error(rows, junk, fmt):
    """Rows of any JSON values (and a few junk lines in JSONL): both readers agree record by record."""
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "".join(j + "\n" for j in junk)
    else:
        text = json.dumps(rows + junk, ensure_ascii=False)
    assert_readers_agree(tmp_file(f"d.{fmt}", text.encode("utf-8")), fmt)


@SETTINGS
@given(rows=st.lists(st.dictionaries(KEYS, st.text(max_size=10) | st.integers() | st.none(), min_size=1, max_size=4),
                     min_size=1, max_size=5))
def test_csv_and_parquet_rows_end_in_records_or_a_user_error(rows):
    frame = pd.DataFrame(rows)
    folder = scratch()
    frame.to_csv(folder / "d.csv", index=False)
    assert_readers_agree(folder / "d.csv")
    try:
        frame.to_parquet(folder / "d.parquet")
    except Exception:  # noqa: BLE001 - pyarrow cannot store every mixed column; nothing to read then
        return
    assert_readers_agree(folder / "d.parquet")


# ---------------------------------------------------------------- the config loader and --set
SECTION_KEYS = {
    "model": ["student", "teacher", "student_device", "lora", "student_dtype"],
    "data": ["train", "validation", "views", "schedule", "seed"],
    "rollout": ["strategy", "lam", "gamma", "max_gamma", "temperature", "top_p", "skd_top_k", "ema"],
    "loss": ["name", "beta", "temperature", "sparse_top_k", "chunk_size"],
    "train": ["max_steps", "batch_size", "lr", "warmup_steps", "seed", "output_dir", "resume", "trackers"],
}
VALUES = (st.none() | st.booleans() | st.integers(-5, 5) | st.integers() | st.floats()
          | st.sampled_from(["auto", "cpu", "arith", "skd", "fkl", "x", "", "cuda:0", "1e-3", "nan"])
          | st.lists(st.integers(-2, 3) | st.dictionaries(st.sampled_from(["task", "path", "limit", "weight"]),
                                                         st.integers(-1, 3) | st.sampled_from(["arith", "facts"]),
                                                         max_size=2), max_size=2))
CONFIGS = st.dictionaries(
    st.sampled_from(list(SECTION_KEYS) + ["trian"]),
    st.one_of(VALUES, st.dictionaries(st.sampled_from(sum(SECTION_KEYS.values(), []) + ["lrr"]), VALUES, max_size=3)),
    max_size=4,
)


def load_or_error(text: str | None = None, overrides=()):
    """load_config on a file holding `text` (or the defaults), or the UserError it raised."""
    path = tmp_file("c.yaml", text.encode("utf-8")) if text is not None else None
    try:
        return load_config(path, list(overrides))
    except UserError as exc:
        return exc


@SETTINGS
@given(text=st.text(max_size=120))
def test_any_yaml_text_is_a_config_or_a_config_error(text):
    result = load_or_error(text)
    assert isinstance(result, (Config, ConfigError)), result


@SETTINGS
@given(data=CONFIGS)
def test_any_mapping_is_a_valid_config_or_a_config_error(data):
    """A structured config of real and misspelt keys with any values: a Config that round-trips through its
    saved YAML, or a ConfigError; a Config's numbers are finite."""
    result = load_or_error(yaml.safe_dump(data))
    assert isinstance(result, (Config, ConfigError)), result
    if isinstance(result, Config):
        folder = scratch()
        save_config(result, folder / "config.yaml")
        assert load_config(folder / "config.yaml") == result
        assert all(math.isfinite(v) for v in _numbers(yaml.safe_load((folder / "config.yaml").read_text())))


def _numbers(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _numbers(v)
    elif isinstance(node, list):
        for v in node:
            yield from _numbers(v)
    elif isinstance(node, float):
        yield node


OVERRIDE_KEYS = st.sampled_from(["train.lr", "train.max_steps", "rollout.gamma", "data.train", "data.views.few_shot",
                                 "model.student_device", "loss.beta", "train", "x.y.z", ".lr", "train..lr", ""])


@SETTINGS
@given(override=st.text(max_size=40) | st.builds(lambda k, v: f"{k}={v}", OVERRIDE_KEYS, st.text(max_size=20)))
def test_any_set_override_is_a_config_or_a_config_error(override):
    result = load_or_error(None, [override])
    assert isinstance(result, (Config, ConfigError)), result


@SETTINGS
@given(override=st.text(max_size=40))
def test_apply_override_changes_the_dict_or_raises_a_config_error(override):
    data = {"train": {"max_steps": 3}, "data": {"validation": None}}
    try:
        apply_override(data, override)
    except ConfigError:
        return
    assert "=" in override


@pytest.mark.parametrize("value, expected", [("1e-3", 1e-3), ("3", 3.0), ("'0.5'", 0.5)])
def test_numbers_as_text_still_parse(value, expected):
    assert load_config(None, [f"train.lr={value}"]).train.lr == pytest.approx(expected)
