"""What `sentmtl batch` reads: one file or a folder of shards, cut into units of rows.

A row's id is its position in the input (files in name order, then rows in file order), so it is the
same on every run, whatever the engine or worker count. The plan (files, their row counts, and the
byte offset where each unit starts) is made in one pass over the inputs, so that any worker can read
any unit on its own: by seeking to its offset (.txt, .jsonl, .csv) or by reading the row groups it
overlaps (.parquet). In a .txt file a blank line is not a row, as in `sentmtl embed --file`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import SentmtlError

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class InputFile:
    path: str
    fmt: str
    rows: int
    size: int
    mtime_ns: int
    offsets: list[int] = field(default_factory=list)  # byte offset of each unit's first row (not parquet)
    header: list[str] = field(default_factory=list)  # csv: the column names


@dataclass
class Unit:
    """Rows [start, start + rows) of one input file; written as output shard part-{index:06d}."""

    index: int
    file: str
    fmt: str
    start: int
    rows: int
    first_id: int
    offset: int = 0
    header: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Unit:
        return Unit(**d)


@dataclass
class Rows:
    """A unit's rows: each row's id, and its text or the reason it has none."""

    ids: list
    texts: list[str | None]
    problems: dict[int, str]  # position in this unit -> why the row cannot be used


def input_files(path: Path) -> list[Path]:
    """The file, or a folder's files of a known format in name order (not its sub-folders)."""
    path = Path(path)
    if not path.exists():
        raise SentmtlError(f"input not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
        if not files:
            raise SentmtlError(f"input folder {path} has no {', '.join(FORMATS)} files")
        return files
    if path.suffix.lower() not in FORMATS:
        raise SentmtlError(f"input {path}: unknown format (give a {', '.join(FORMATS)} file, or a folder of them)")
    return [path]


def plan(path: Path, shard_rows: int, text_column: str, id_column: str | None) -> tuple[list[InputFile], list[Unit]]:
    """Every input file's rows, and the units they are cut into (at most shard_rows rows each,
    never across files)."""
    files = [scan(p, shard_rows, text_column, id_column) for p in input_files(path)]
    units: list[Unit] = []
    first = 0
    for f in files:
        for k, start in enumerate(range(0, f.rows, shard_rows)):
            units.append(
                Unit(
                    index=len(units),
                    file=f.path,
                    fmt=f.fmt,
                    start=start,
                    rows=min(shard_rows, f.rows - start),
                    first_id=first + start,
                    offset=f.offsets[k] if f.offsets else 0,
                    header=f.header,
                )
            )
        first += f.rows
    if not units:
        raise SentmtlError(f"no rows to process in {path}")
    return files, units


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise SentmtlError(f"cannot read {path}: {e.strerror}") from None


def scan(path: Path, shard_rows: int, text_column: str, id_column: str | None) -> InputFile:
    fmt = FORMATS[path.suffix.lower()]
    st = path.stat()
    out = InputFile(str(path.resolve()), fmt, 0, st.st_size, st.st_mtime_ns)
    if fmt == "parquet":
        pf = _parquet(path)
        names = pf.schema_arrow.names
        for col in [text_column] + ([id_column] if id_column else []):
            if col not in names:
                raise SentmtlError(f"{path}: no column {col!r} (it has {', '.join(names)})")
        out.rows = pf.metadata.num_rows
        return out
    with _open(path) as f:
        if fmt == "csv":
            records = _csv_records(f)
            header = next(records, None)
            if header is None:
                return out
            out.header = header[1]
            for col in [text_column] + ([id_column] if id_column else []):
                if col not in out.header:
                    raise SentmtlError(f"{path}: no column {col!r} in its header (it has {', '.join(out.header)})")
            for offset, _ in records:
                if out.rows % shard_rows == 0:
                    out.offsets.append(offset)
                out.rows += 1
            return out
        offset = 0
        for raw in f:
            if fmt == "jsonl" or raw.strip():  # a blank .txt line is not a row
                if out.rows % shard_rows == 0:
                    out.offsets.append(offset)
                out.rows += 1
            offset += len(raw)
    return out


def _parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise SentmtlError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None


def _csv_records(f, start: int = 0) -> Iterator[tuple[int, list[str]]]:
    """(byte offset, fields) of each CSV record from `start`; a record may span lines (quotes).
    Undecodable bytes become lone surrogates, which the row check reports."""
    f.seek(start)
    pos = [start]

    def lines():
        for raw in f:
            pos[0] += len(raw)
            yield raw.decode("utf-8", "surrogateescape")

    reader = csv.reader(lines())
    begin = start
    for rec in reader:
        yield begin, rec
        begin = pos[0]


def read_unit(unit: Unit, text_column: str, id_column: str | None) -> Rows:
    """The unit's rows, each with its id and its text or a reason it cannot be used."""
    path = Path(unit.file)
    if unit.fmt == "parquet":
        return _read_parquet(unit, text_column, id_column)
    ids: list = []
    texts: list[str | None] = []
    problems: dict[int, str] = {}

    def add(value, row_id, problem: str | None = None):
        k = len(texts)
        ids.append(row_id if id_column else unit.first_id + k)
        if problem is None and id_column and row_id is None:
            problem = f"no {id_column!r} value"
        if problem is None:
            problem = text_problem(value, text_column)
        texts.append(None if problem else value)
        if problem:
            problems[k] = problem

    with _open(path) as f:
        if unit.fmt == "csv":
            col = unit.header.index(text_column)
            idc = unit.header.index(id_column) if id_column else -1
            for _, rec in _take(_csv_records(f, unit.offset), unit.rows):
                if len(rec) != len(unit.header):
                    add(
                        None,
                        rec[idc] if 0 <= idc < len(rec) else None,
                        f"has {len(rec)} fields, the header {len(unit.header)}",
                    )
                else:
                    add(rec[col], _id_value(rec[idc] if id_column else None, id_column))
        else:
            f.seek(unit.offset)
            lines = (raw for raw in f if unit.fmt == "jsonl" or raw.strip())
            for raw in _take(lines, unit.rows):
                line = raw.decode("utf-8-sig" if unit.offset == 0 and not texts else "utf-8", "surrogateescape")
                line = line.removesuffix("\n").removesuffix("\r")  # a CRLF's CR only: a lone CR is text
                if unit.fmt == "txt":
                    add(line, None)
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    add(None, None, f"not a JSON object ({e.msg})")
                    continue
                if not isinstance(obj, dict):
                    add(None, None, "not a JSON object")
                    continue
                add(obj.get(text_column, _MISSING), _id_value(obj.get(id_column) if id_column else None, id_column))
    if len(texts) != unit.rows:
        raise SentmtlError(f"{path} changed while being read (expected {unit.rows} rows from row {unit.start})")
    return Rows(ids, texts, problems)


def _take(it, n: int):
    for k, x in enumerate(it):
        if k == n:
            return
        yield x


_MISSING = object()


def _id_value(v, id_column: str | None):
    """An --id-column value as the output's string id (None: missing)."""
    if not id_column or v is None or v == "":
        return None
    return v if isinstance(v, str) else json.dumps(v)


def text_problem(v, text_column: str) -> str | None:
    if v is _MISSING or v is None:
        return f"no {text_column!r} value"
    if not isinstance(v, str):
        return f"{text_column!r} is not a string ({type(v).__name__})"
    if not v.strip():
        return "empty or whitespace-only text"
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid UTF-8 (undecodable bytes)"
    return None


def _read_parquet(unit: Unit, text_column: str, id_column: str | None) -> Rows:
    import pyarrow as pa

    pf = _parquet(Path(unit.file))
    groups: list[int] = []
    first, skip = 0, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if first < unit.start + unit.rows and first + n > unit.start:
            if not groups:
                skip = unit.start - first
            groups.append(g)
        first += n
    cols = [text_column] + ([id_column] if id_column else [])
    table = pf.read_row_groups(groups, columns=cols).slice(skip, unit.rows)
    text_type = table.schema.field(text_column).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise SentmtlError(f"{unit.file}: column {text_column!r} is {text_type}, not text")
    texts = table.column(text_column).to_pylist()
    raw_ids = table.column(id_column).to_pylist() if id_column else [None] * len(texts)
    ids, out, problems = [], [], {}
    for k, (t, i) in enumerate(zip(texts, raw_ids)):
        ids.append(_id_value(i, id_column) if id_column else unit.first_id + k)
        p = f"no {id_column!r} value" if id_column and ids[-1] is None else text_problem(t, text_column)
        out.append(None if p else t)
        if p:
            problems[k] = p
    if len(out) != unit.rows:
        raise SentmtlError(f"{unit.file} changed while being read (expected {unit.rows} rows from row {unit.start})")
    return Rows(ids, out, problems)


def describe_unit(unit: Unit, k: int) -> str:
    """Where row k of a unit is, for error messages: the file and the row's number in it (1-based)."""
    return f"{unit.file} row {unit.start + k + 1}"
