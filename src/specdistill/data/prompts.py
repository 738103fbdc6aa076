"""Prompts of `eval`, `bench` and `generate`: the records they read and the views they render, as training does.

A prompts file is read by the data readers when it is a data file (.jsonl, .json, .parquet: each row a text record
{query, knowledge?, ...} or a pre-tokenized one {prompt_ids, ...}, told apart row by row), else as one user message
per non-blank line. `--config` (a YAML config or a run's config.yaml) gives the data.views settings and the field
mapping training used; without it the views are the defaults without limits (the models' positions are the limit,
checked by the commands).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ..config import DatasetConfig, FieldMap, ViewConfig
from ..errors import UserError
from .records import Record, decode_utf8, load_records
from .prompt_views import check_encodable, encode_example, record_texts

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")  # a prompts file with one of these is a data file
# Without --config: the default views without limits on prompts and references (inference has no batch to fit).
INFERENCE_VIEWS = dataclasses.replace(ViewConfig(), max_prompt_tokens=sys.maxsize,
                                      max_teacher_prompt_tokens=sys.maxsize, max_response_tokens=sys.maxsize)


def configured_fields(cfg, file: str | None) -> FieldMap:
    """The field mapping the config gives this file (the dataset whose path is it), else data.train[0]'s."""
    datasets = cfg.data.train + ([cfg.data.validation] if cfg.data.validation else [])
    same = [d for d in datasets if file and d.path and Path(d.path).resolve() == Path(file).resolve()]
    return (same or cfg.data.train)[0].fields


def prompt_settings(config: str | None, file: str | None = None) -> tuple[ViewConfig, FieldMap]:
    """(views, field mapping) of a command's prompts: the config's data.views and its mapping for `file`
    (`configured_fields`), or INFERENCE_VIEWS and the default mapping without a config."""
    if config is None:
        return INFERENCE_VIEWS, FieldMap()
    from ..config import load_prompt_config, resolve_config_path
    from .tasks import check_config_tasks

    cfg = load_prompt_config(config)
    check_config_tasks(cfg.data, resolve_config_path(config))
    return cfg.data.views, configured_fields(cfg, file)


def read_prompt_lines(path: str, flag: str = "--prompts") -> list[Record]:
    """One record per non-blank line of a text file (a user message each; `where` is its line); a missing,
    non-UTF-8 or empty file is a UserError naming it (and the line of a bad byte)."""
    target = _existing(path, flag)
    lines = decode_utf8(target.read_bytes(), target.name).splitlines()
    records = [Record(id=str(n), query=t, where=f"{target.name}:{n}") for n, t in enumerate(lines, 1) if t.strip()]
    if not records:
        raise UserError(f"{flag} {path}: holds no prompts (every line is blank); write one prompt per line")
    return records


def prompt_records(path: str, fields: FieldMap | None = None, flag: str = "--prompts") -> list[Record]:
    """The records of a prompts file: a data file (DATA_SUFFIXES) through `load_records`, as training reads it,
    text and pre-tokenized rows alike; any other file through `read_prompt_lines`."""
    if Path(path).suffix.lower() not in DATA_SUFFIXES:
        return read_prompt_lines(path, flag)
    _existing(path, flag)
    return load_records(DatasetConfig(path=path, fields=fields or FieldMap()))


def _existing(path: str, flag: str) -> Path:
    target = Path(path)
    if not target.is_file():
        raise UserError(f"{flag} {path}: {'is a folder' if target.is_dir() else 'no such file'}; give a text file "
                        f"with one prompt per line, or a data file (.jsonl, .json, .parquet)")
    return target


def encode_prompts(records: list[Record], tokenizer, views: ViewConfig, view: str = "student") -> list[list[int]]:
    """Each record's prompt ids in `view` ("student" or "teacher"), made by `encode_example` with `views`: the
    ids training would give the same record. Text the tokenizer cannot encode is refused first."""
    records = [dataclasses.replace(r, response=None, response_ids=None) for r in records]  # prompts only
    check_encodable(record_texts(records, views), tokenizer)
    examples = [encode_example(r, tokenizer, views) for r in records]
    return [e.teacher_prompt if view == "teacher" else e.student_prompt for e in examples]


def prompt_labels(records: list[Record]) -> list[str]:
    """How errors name each prompt: `prompt <file>:<line>` (or `[index]`), `--prompt` for the one given as text."""
    return [r.where if r.where.startswith("--") else f"prompt {r.where or r.id}" for r in records]
