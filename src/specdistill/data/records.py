"""Records and readers: JSON, JSONL, CSV and parquet through `datasets`, built-in tasks, field mapping, checks.

A record is {id, query, knowledge?, response?}. `knowledge` is privileged: only the teacher's view shows it.
Every bad record is reported with its line (JSONL, CSV) or index (JSON array, parquet) and the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DatasetConfig, FieldMap
from ..errors import UserError
from .tasks import load_task

FORMATS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
LUPI_KEYS = {"id", "category", "query", "knowledge"}


class DataError(UserError):
    """A dataset cannot be used. The message lists the bad records with their location and reason."""


@dataclass
class Record:
    id: str
    query: str
    knowledge: str | None = None
    response: str | None = None
    extra: dict = field(default_factory=dict)  # the raw row, for scorers (e.g. the final `answer`)


@dataclass
class Problem:
    where: str  # "file.jsonl:12" or "file.json[3]"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return "json" if fmt == "lupi" else fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: cannot tell the format from {suffix!r}; set format to one of json, jsonl, csv, parquet, lupi")
    if suffix == ".json" and Path(path).read_text(encoding="utf-8").lstrip()[:1] != "[":
        return "jsonl"  # a .json file holding one object per line
    return FORMATS[suffix]


def _where(path: str | Path, fmt: str, index: int) -> str:
    name = Path(path).name
    if fmt == "jsonl":
        return f"{name}:{index + 1}"  # line number
    if fmt == "csv":
        return f"{name}:{index + 2}"  # line number after the header
    return f"{name}[{index}]"


def scan_json_lines(path: str | Path) -> tuple[list[dict], list[Problem]]:
    """Parse a JSONL file line by line, so that a broken line is reported with its number."""
    rows, problems = [], []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(f"{Path(path).name}:{n}", f"broken JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(row, dict):
            problems.append(Problem(f"{Path(path).name}:{n}", f"expected a JSON object, got {type(row).__name__}"))
            continue
        rows.append(row)
    return rows, problems


def read_rows(path: str | Path, fmt: str = "auto") -> list[dict]:
    """All rows of a file as dicts, read through `datasets`; a file it cannot parse is reported precisely."""
    import datasets

    if not Path(path).exists():
        raise DataError(f"data file not found: {path}")
    kind = detect_format(path, fmt)
    builder = "json" if kind in ("json", "jsonl") else kind
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 - re-raised with the exact bad lines where we can find them
        if kind == "jsonl":
            _, problems = scan_json_lines(path)
            if problems:
                raise DataError("\n".join(map(str, problems))) from None
        raise DataError(f"{path}: cannot read as {kind}: {exc}") from None
    return ds.to_list()


def read_hub(name: str, config: str | None, split: str) -> list[dict]:
    """All rows of one split of a hub dataset (`datasets.load_dataset(name, config, split=split)`), e.g.
    openai/gsm8k, config main; a dataset that cannot be loaded is a DataError naming it."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, a wrong id, config or split: say which
        raise DataError(f"hub dataset {name!r} (config {config!r}, split {split!r}) cannot be loaded: {exc}") from None
    return ds.to_list()


def _pick(row: dict, keys: list[str]):
    for key in keys:
        if key in row and row[key] is not None:
            return key, row[key]
    return None, None


def to_record(row: dict, fields: FieldMap, where: str, index: int) -> Record | Problem:
    """Map one raw row to a Record, or say why it cannot be one."""
    qkey, query = _pick(row, fields.query)
    if qkey is None:
        return Problem(where, f"missing query field (looked for {', '.join(fields.query)}; keys present: {', '.join(map(str, row))})")
    if not isinstance(query, str):
        return Problem(where, f"field {qkey!r} must be a string, got {type(query).__name__} {query!r}")
    if not query.strip():
        return Problem(where, f"field {qkey!r} is empty")
    values = {}
    for name in ("knowledge", "response"):
        key, value = _pick(row, getattr(fields, name))
        if key is not None and not isinstance(value, str):
            return Problem(where, f"field {key!r} must be a string, got {type(value).__name__} {value!r}")
        values[name] = value
    _, rid = _pick(row, fields.id)
    return Record(id=str(rid if rid is not None else index), query=query, extra=row, **values)


def rows_to_records(rows: list[dict], fields: FieldMap, where) -> tuple[list[Record], list[Problem]]:
    records, problems = [], []
    for i, row in enumerate(rows):
        item = to_record(row, fields, where(i), i)
        (problems if isinstance(item, Problem) else records).append(item)
    return records, problems


def check_file(path: str | Path, fields: FieldMap | None = None, fmt: str = "auto") -> tuple[int, list[Problem]]:
    """(number of rows, every problem found): broken lines, missing fields, empty queries, wrong types."""
    fields = fields or FieldMap()
    kind = detect_format(path, fmt)
    if kind == "jsonl":
        rows, problems = scan_json_lines(path)
        # Line numbers of the rows that parsed, so that field problems name the right line.
        lines = [n for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()) if line.strip()]
        good = [n for n in lines if not any(p.where == f"{Path(path).name}:{n + 1}" for p in problems)]
        _, more = rows_to_records(rows, fields, lambda i: f"{Path(path).name}:{good[i] + 1}")
        return len(lines), sorted(problems + more, key=lambda p: int(p.where.rsplit(":", 1)[1]))
    if kind == "json":
        try:
            rows = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            return 0, [Problem(f"{Path(path).name}:{exc.lineno}", f"broken JSON ({exc.msg} at column {exc.colno})")]
        if not isinstance(rows, list):
            return 0, [Problem(Path(path).name, "a .json dataset must be a list of objects (or use JSON lines)")]
        bad = [Problem(_where(path, kind, i), f"expected an object, got {type(r).__name__}") for i, r in enumerate(rows) if not isinstance(r, dict)]
        rows = [r if isinstance(r, dict) else {} for r in rows]
    else:
        rows, bad = read_rows(path, kind), []
    _, problems = rows_to_records(rows, fields, lambda i: _where(path, kind, i))
    problems = [p for p in problems if p.where not in {b.where for b in bad}]
    return len(rows), bad + problems


def load_records(cfg: DatasetConfig, seed: int = 0) -> list[Record]:
    """The records of one configured dataset; any bad record is an error that lists them all."""
    if cfg.task is not None:
        rows = load_task(cfg.task, cfg.split, seed)
        records, problems = rows_to_records(rows, cfg.fields, lambda i: f"{cfg.task}/{cfg.split}[{i}]")
    elif cfg.hub is not None:
        rows = read_hub(cfg.hub, cfg.hub_config, cfg.split)
        records, problems = rows_to_records(rows, cfg.fields, lambda i: f"{cfg.hub}/{cfg.split}[{i}]")
    else:
        kind = detect_format(cfg.path, cfg.format)
        rows = read_rows(cfg.path, cfg.format)
        if cfg.format == "lupi" and rows and not LUPI_KEYS <= set(rows[0]):
            raise DataError(f"{cfg.path}: format lupi needs the keys {sorted(LUPI_KEYS)}; found {sorted(rows[0])}")
        records, problems = rows_to_records(rows, cfg.fields, lambda i: _where(cfg.path, kind, i))
    if problems:
        shown = "\n".join(map(str, problems[:20]))
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} bad record(s):\n{shown}{more}\n(run `specdistill data check FILE` for all)")
    return records[: cfg.limit] if cfg.limit is not None else records


def is_lupi(rows: list[dict]) -> bool:
    """Auto-detection of the LUPI-SKD record format {id, category, query, knowledge}."""
    return bool(rows) and all(LUPI_KEYS <= set(r) for r in rows[:10])
