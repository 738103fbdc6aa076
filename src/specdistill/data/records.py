"""Records and readers: JSON, JSONL, CSV and parquet, built-in tasks, field mapping, checks.

A record is {id, query, knowledge?, response?}. `knowledge` is privileged: only the teacher's view shows it.
A pre-tokenized record is {id?, prompt_ids, response_ids?}: lists of token ids, no text (`format: tokens`, or
any row holding `prompt_ids`); both views are its prompt ids, with no template (data/prompt_views.py).
One reader (`scan_records`) serves `specdistill data check`, training, eval and bench, so they agree on every
record. Every bad record is reported with its line (JSONL, CSV) or index (JSON array, parquet) and the reason;
bytes that are not UTF-8 with their line and byte offset.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DatasetConfig, FieldMap
from ..errors import UserError
from .tasks import load_task

FORMATS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
LUPI_KEYS = {"id", "category", "query", "knowledge"}
ID_FIELDS = ("prompt_ids", "response_ids")  # the keys of a pre-tokenized record


class DataError(UserError):
    """A dataset cannot be used. The message lists the bad records with their location and reason."""


@dataclass
class Record:
    id: str
    query: str
    knowledge: str | None = None
    response: str | None = None
    extra: dict = field(default_factory=dict)  # the raw row, for scorers (e.g. the final `answer`)
    where: str = ""  # where it was read: "file.jsonl:12", "file.json[3]", "arith/train[5]" (errors name it)
    prompt_ids: list[int] | None = None  # a pre-tokenized record: both views' prompt (query is then its text)
    response_ids: list[int] | None = None  # its reference response, without or with the end id

    def label(self) -> str:
        """How errors name the record: its id and, when known, its file and line."""
        return f"record {self.id}" + (f" ({self.where})" if self.where else "")


@dataclass
class Problem:
    where: str  # "file.jsonl:12" or "file.json[3]"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    """The reader for `path`: `fmt` when given (lupi is read as json), else from the suffix; a `.json` file whose
    first character is not `[` holds JSON lines."""
    if Path(path).is_dir():
        raise DataError(f"{path}: is a folder; give a data file (JSON, JSONL, CSV or parquet)")
    if fmt not in ("auto", "tokens"):  # tokens: any of the JSON and parquet readers, told by the suffix
        return "json" if fmt == "lupi" else fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: cannot tell the format from {suffix!r}; set format to one of json, jsonl, csv, parquet, lupi")
    if suffix == ".json" and _first_byte(path) != b"[":
        return "jsonl"  # a .json file holding one object per line
    return FORMATS[suffix]


def _first_byte(path: str | Path) -> bytes:
    with open(_existing_file(path), "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")  # a UTF-8 byte-order mark, then whitespace
    return head[:1]


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give a data file (JSON, JSONL, CSV or parquet)")
    return path


def decode_utf8(data: bytes, where: str, offset: int = 0) -> str:
    """UTF-8 text (a leading byte-order mark dropped), or a DataError naming the line and the byte offset of the
    first byte that is not UTF-8. where: the file's name, or `name:line` for one line (offset: the line's start)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        at = where if ":" in where else f"{where}:{line}"
        raise DataError(f"{at}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte offset {offset + exc.start} of "
                        f"the file); save the file as UTF-8") from None


@dataclass
class Scan:
    """What a file holds, row by row: each readable row with its location, every problem, and the row count."""

    rows: list[tuple[str, dict]]  # (where, raw row)
    problems: list[Problem]
    count: int  # rows seen, bad ones included
    fmt: str  # the reader used (json for lupi)


def _scan_jsonl(path: Path) -> Scan:
    """One object per line; a broken line, a line that is not an object or not UTF-8 is a problem at its line."""
    rows, problems, count, offset = [], [], 0, 0
    for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        start, offset = offset, offset + len(raw) + 1
        if not raw.strip():
            continue
        count += 1
        where = f"{path.name}:{n}"
        try:
            row = json.loads(decode_utf8(raw, where, start))
        except DataError as exc:
            problems.append(Problem(where, str(exc).split(": ", 1)[1]))
            continue
        except json.JSONDecodeError as exc:
            problems.append(Problem(where, f"broken JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(row, dict):
            problems.append(Problem(where, f"expected a JSON object, got {type(row).__name__}"))
            continue
        rows.append((where, row))
    return Scan(rows, problems, count, "jsonl")


def _scan_json(path: Path) -> Scan:
    """A JSON array of objects; an element that is not an object is a problem at its index."""
    try:
        data = json.loads(decode_utf8(path.read_bytes(), path.name))
    except json.JSONDecodeError as exc:
        return Scan([], [Problem(f"{path.name}:{exc.lineno}", f"broken JSON ({exc.msg} at column {exc.colno})")], 0,
                    "json")
    if not isinstance(data, list):
        found = f"an object with keys {', '.join(map(str, data))}" if isinstance(data, dict) else type(data).__name__
        return Scan([], [Problem(path.name, f"a .json dataset must be a list of objects (or JSON lines); found "
                                            f"{found}")], 0, "json")
    rows, problems = [], []
    for i, row in enumerate(data):
        where = f"{path.name}[{i}]"
        if isinstance(row, dict):
            rows.append((where, row))
        else:
            problems.append(Problem(where, f"expected an object, got {type(row).__name__}"))
    return Scan(rows, problems, len(data), "json")


def _scan_csv(path: Path) -> Scan:
    """A header line, then one record per row; every value is text. An empty cell of an optional field
    (knowledge, response, ...) means the field is absent; a row with more cells than the header is a problem."""
    reader = csv.DictReader(io.StringIO(decode_utf8(path.read_bytes(), path.name), newline=""))
    rows, problems, count = [], [], 0
    start = 2  # the line the next row starts on (a quoted cell may span lines)
    try:
        for row in reader:
            count += 1
            where = f"{path.name}:{start}"
            start = reader.line_num + 1
            if None in row:
                problems.append(Problem(where, f"{len(reader.fieldnames) + len(row[None])} cells, but the header "
                                               f"has {len(reader.fieldnames)}"))
                continue
            rows.append((where, {k: v for k, v in row.items() if v is not None}))
    except csv.Error as exc:
        problems.append(Problem(f"{path.name}:{reader.line_num}", f"broken CSV ({exc})"))
    return Scan(rows, problems, count, "csv")


def _scan_parquet(path: Path) -> Scan:
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors have many types; the message says what is wrong
        return Scan([], [Problem(path.name, f"cannot read as parquet ({type(exc).__name__}: "
                                            f"{str(exc).splitlines()[0] if str(exc) else 'no reason given'})")],
                    0, "parquet")
    return Scan([(f"{path.name}[{i}]", row) for i, row in enumerate(data)], [], len(data), "parquet")


SCANNERS = {"jsonl": _scan_jsonl, "json": _scan_json, "csv": _scan_csv, "parquet": _scan_parquet}


def scan_rows(path: str | Path, fmt: str = "auto") -> Scan:
    """Every row of a data file with its location (line for JSONL and CSV, index for a JSON array and parquet),
    and every problem of the file's structure (broken lines, bytes that are not UTF-8, rows that are not
    objects, an empty file). The one reader behind `data check`, training, eval and bench."""
    kind = detect_format(path, fmt)
    path = _existing_file(path)
    scan = SCANNERS[kind](path)
    if scan.count == 0 and not scan.problems:
        empty = not path.read_bytes().strip()
        scan.problems.append(Problem(path.name, "holds no records" + (" (the file is empty)" if empty else "")))
    return scan


def read_rows(path: str | Path, fmt: str = "auto") -> list[dict]:
    """All rows of a file as dicts; a problem of the file's structure is a DataError naming its line or index."""
    scan = scan_rows(path, fmt)
    if scan.problems:
        raise DataError(_summary(path, scan.problems, scan.count))
    return [row for _, row in scan.rows]


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


def _id_list(row: dict, key: str, where: str) -> list[int] | Problem:
    """row[key] as a non-empty list of whole numbers >= 0 (the upper bound is the tokenizer's: `encode_example`)."""
    value = row[key]
    if not isinstance(value, list) or not value:
        what = "an empty list" if value == [] else f"{type(value).__name__} {value!r}"[:80]
        return Problem(where, f"field {key!r} must be a non-empty list of token ids (whole numbers >= 0), got {what}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            return Problem(where, f"field {key!r}[{i}] is {v!r}; token ids must be whole numbers >= 0")
    return value


def to_token_record(row: dict, where: str, index: int) -> Record | Problem:
    """A pre-tokenized row {id?, prompt_ids, response_ids?} as a Record whose query and response are the ids'
    text (for messages and text metrics); the ids are what models read."""
    if row.get("prompt_ids") is None:
        return Problem(where, f"missing field 'prompt_ids' (a list of token ids) of a pre-tokenized record; keys "
                              f"present: {', '.join(map(str, row)) or 'none'}")
    ids = {key: _id_list(row, key, where) for key in ID_FIELDS if row.get(key) is not None}
    bad = next((v for v in ids.values() if isinstance(v, Problem)), None)
    if bad is not None:
        return bad
    rid = row.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        return Problem(where, f"field 'id' must be a string or an integer, got {type(rid).__name__} {rid!r}")
    response = ids.get("response_ids")
    return Record(id=str(rid if rid is not None else index), query=" ".join(map(str, ids["prompt_ids"])),
                  response=" ".join(map(str, response)) if response else None, extra=row,
                  prompt_ids=ids["prompt_ids"], response_ids=response)


def to_record(row: dict, fields: FieldMap, where: str, index: int, tokens: bool = False) -> Record | Problem:
    """Map one raw row to a Record, or say why it cannot be one. tokens: every row is pre-tokenized (format
    tokens); else a row holding prompt_ids or response_ids is."""
    if tokens or any(row.get(key) is not None for key in ID_FIELDS):  # a null *_ids column: a text row
        return to_token_record(row, where, index)
    qkey, query = _pick(row, fields.query)
    if qkey is None:
        present = [k for k in fields.query if k in row]  # there, but null
        if present:
            return Problem(where, f"field {present[0]!r} is empty (null)")
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
        if name == "response" and key is not None and not value.strip():
            return Problem(where, f"field {key!r} is empty (leave it out of a record that has no reference answer)")
        values[name] = value
    idkey, rid = _pick(row, fields.id)
    if idkey is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        return Problem(where, f"field {idkey!r} must be a string or an integer, got {type(rid).__name__} {rid!r}")
    return Record(id=str(rid if rid is not None else index), query=query, extra=row, **values)


def rows_to_records(rows: list[dict], fields: FieldMap, where, tokens: bool = False
                    ) -> tuple[list[Record], list[Problem]]:
    """Records of rows located by where(i); a row that is not a record, or that repeats an id, is a problem.
    tokens: the rows are pre-tokenized (format tokens)."""
    records, problems, seen = [], [], {}
    for i, row in enumerate(rows):
        item = to_record(row, fields, where(i), i, tokens)
        if isinstance(item, Record) and item.id in seen:
            item = Problem(where(i), f"id {item.id!r} repeats the id of {seen[item.id]}; ids must be unique")
        if isinstance(item, Record):
            seen[item.id] = item.where = where(i)
        (problems if isinstance(item, Problem) else records).append(item)
    return records, problems


def scan_records(path: str | Path, fields: FieldMap | None = None, fmt: str = "auto"
                 ) -> tuple[list[Record], list[Problem], int]:
    """(records, every problem, rows seen) of a data file: the one path `data check` and training share.
    Problems are in file order for line-numbered formats (JSONL, CSV); else the file's structure first."""
    fields = fields or FieldMap()
    scan = scan_rows(path, fmt)
    rows = scan.rows
    records, problems = rows_to_records([r for _, r in rows], fields, lambda i: rows[i][0], fmt == "tokens")
    if fmt == "lupi":
        keys = sorted(LUPI_KEYS)
        problems += [Problem(w, f"format lupi needs the keys {keys}; found {sorted(map(str, r))}")
                     for w, r in rows if not LUPI_KEYS <= set(r)]
    problems = scan.problems + problems
    if scan.fmt in ("jsonl", "csv"):
        problems.sort(key=_line_of)
    return records, problems, scan.count


def _line_of(problem: Problem) -> int:
    tail = problem.where.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def check_file(path: str | Path, fields: FieldMap | None = None, fmt: str = "auto") -> tuple[int, list[Problem]]:
    """(number of rows, every problem found): broken lines, missing fields, empty queries, wrong types,
    repeated ids, bytes that are not UTF-8, an empty file."""
    _, problems, count = scan_records(path, fields, fmt)
    return count, problems


def _summary(path, problems: list[Problem], count: int, shown: int = 3) -> str:
    """One line: how many records are bad, the first few, and how to see them all."""
    if len(problems) == 1 and problems[0].where == Path(path).name:
        return f"{path}: {problems[0].reason}"
    first = "; ".join(map(str, problems[:shown]))
    more = f"; ... and {len(problems) - shown} more" if len(problems) > shown else ""
    return (f"{path}: {len(problems)} bad record(s) of {count}: {first}{more} (`specdistill data check {path}` "
            f"lists them all)")


def dataset_label(cfg: DatasetConfig) -> str:
    """How errors name a configured dataset: its file, `task arith (split train)` or `hub openai/gsm8k (config
    main, split train)`."""
    if cfg.path is not None:
        return str(cfg.path)
    if cfg.task is not None:
        return f"task {cfg.task} (split {cfg.split})"
    config = f"config {cfg.hub_config}, " if cfg.hub_config else ""
    return f"hub {cfg.hub} ({config}split {cfg.split})"


def load_records(cfg: DatasetConfig, seed: int = 0) -> list[Record]:
    """The records of one configured dataset; any bad record is an error that names the first ones."""
    if cfg.task is not None:
        rows = load_task(cfg.task, cfg.split, seed)
        records, problems = rows_to_records(rows, cfg.fields, lambda i: f"{cfg.task}/{cfg.split}[{i}]")
        count = len(rows)
    elif cfg.hub is not None:
        rows = read_hub(cfg.hub, cfg.hub_config, cfg.split)
        records, problems = rows_to_records(rows, cfg.fields, lambda i: f"{cfg.hub}/{cfg.split}[{i}]")
        count = len(rows)
    else:
        records, problems, count = scan_records(cfg.path, cfg.fields, cfg.format)
    if problems:
        raise DataError(_summary(dataset_label(cfg), problems, count))
    return records[: cfg.limit] if cfg.limit is not None else records


def is_lupi(rows: list[dict]) -> bool:
    """Auto-detection of the LUPI-SKD record format {id, category, query, knowledge}."""
    return bool(rows) and all(LUPI_KEYS <= set(r) for r in rows[:10])
