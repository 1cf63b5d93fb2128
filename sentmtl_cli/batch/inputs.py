"""What `sentmtl batch` reads: one file or a folder of shards, cut into units of rows.

A row's id is its position in the input (files in name order, then rows in file order), so it is the
same on every run, whatever the engine or worker count. The plan (files, their row counts, and the
byte offset where each unit starts) is made in one pass over the inputs, so that any worker can read
any unit on its own: by seeking to its offset (.txt, .jsonl, .csv) or by reading the row groups it
overlaps (.parquet). In a .txt file a blank line is not a row, as in `sentmtl embed --file`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
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
    digest: str = ""  # of the file's bytes
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
    if not path.is_file():  # a pipe: its rows are counted, then read (and read again on a resume)
        raise SentmtlError(f"input {path} is not a plain file (a pipe or a device): it is read more than once")
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
    digest = hashlib.blake2b(digest_size=16)
    if fmt == "parquet":
        pf = _parquet(path)
        names = pf.schema_arrow.names
        for col in [text_column] + ([id_column] if id_column else []):
            if col not in names:
                raise SentmtlError(f"{path}: no column {col!r} (it has {', '.join(names)})")
        _check_text_type(path, text_column, pf.schema_arrow.field(text_column).type)
        if id_column:
            _check_id_type(path, id_column, pf.schema_arrow.field(id_column).type)
        out.rows = pf.metadata.num_rows
        with _open(path) as f:
            while block := f.read(1 << 20):
                digest.update(block)
        out.digest = digest.hexdigest()
        return out
    with _open(path) as f:
        if fmt == "csv":
            records = _csv_records(f, digest=digest)
            header = _csv_next(records, path)
            if header is None:
                out.digest = digest.hexdigest()
                return out
            out.header = header[1]
            for col in [text_column] + ([id_column] if id_column else []):
                if col not in out.header:
                    raise SentmtlError(f"{path}: no column {col!r} in its header (it has {', '.join(out.header)})")
            while (rec := _csv_next(records, path)) is not None:
                if out.rows % shard_rows == 0:
                    out.offsets.append(rec[0])
                out.rows += 1
            out.digest = digest.hexdigest()
            return out
        offset = 0
        for raw in f:
            digest.update(raw)
            if fmt == "jsonl" or raw.strip():  # a blank .txt line is not a row
                if out.rows % shard_rows == 0:
                    out.offsets.append(offset)
                out.rows += 1
            offset += len(raw)
    out.digest = digest.hexdigest()
    return out


def _csv_next(records, path: Path):
    """The next CSV record, or None at the end; a record the csv module cannot read is one line."""
    try:
        return next(records, None)
    except csv.Error as e:
        raise SentmtlError(f"{path}: not a readable CSV file ({e})") from None


def _check_text_type(path, column: str, kind) -> None:
    import pyarrow as pa

    if _is_text(kind) or (pa.types.is_dictionary(kind) and _is_text(kind.value_type)):
        return
    raise SentmtlError(f"{path}: column {column!r} is {kind}, not text")


def _is_text(kind) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def _check_id_type(path, column: str, kind) -> None:
    """An id column is kept as strings: numbers, text, dates, times and decimals read as such."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_nested(kind) or pa.types.is_null(kind):
        raise SentmtlError(f"{path}: column {column!r} is {kind}: an id column must hold numbers, text, dates or times")


def _parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise SentmtlError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None


def _csv_records(f, start: int = 0, digest=None) -> Iterator[tuple[int, list[str]]]:
    """(byte offset, fields) of each CSV record from `start`; a record may span lines (quotes).
    Undecodable bytes become lone surrogates, which the row check reports. `digest` is fed the
    bytes read."""
    # a field may be a whole document: the csv module's 128 KiB default would refuse it
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    f.seek(start)
    pos = [start]

    def lines():
        for raw in f:
            pos[0] += len(raw)
            if digest is not None:
                digest.update(raw)
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
            records = _csv_records(f, unit.offset)
            for _ in range(unit.rows):
                got = _csv_next(records, path)
                if got is None:
                    break
                rec = got[1]
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
                except RecursionError:
                    add(None, None, "not a JSON object (nested too deeply)")
                    continue
                except ValueError as e:  # a number past Python's digit limit
                    add(None, None, f"not a JSON object ({str(e).split(';')[0]})")
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
    _check_text_type(unit.file, text_column, table.schema.field(text_column).type)
    texts = _plain(table.column(text_column)).cast(pa.string()).to_pylist()
    raw_ids = parquet_ids(unit.file, table.column(id_column), id_column) if id_column else [None] * len(texts)
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


def _plain(column):
    """A dictionary-encoded column (pandas' category) as its values."""
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def parquet_ids(file, column, id_column: str) -> list:
    """An id column's values: ints, floats, bools and strings as they are (see _id_value), dates,
    times, timestamps, decimals and UTF-8 binary as their text."""
    import pyarrow as pa

    _check_id_type(file, id_column, column.type)
    column = _plain(column)
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) or _is_text(kind):
        return column.cast(pa.string()).to_pylist() if pa.types.is_string_view(kind) else column.to_pylist()
    try:
        return column.cast(pa.string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise SentmtlError(f"{file}: column {id_column!r} ({kind}) cannot be read as text ids ({e})") from None


def duplicate_ids(units: list[Unit], text_column: str, id_column: str) -> dict[str, list[str]]:
    """Each --id-column value found on more than one row, with where those rows are. Values that
    differ in the input but not as output ids (the number 1 and the string "1") count as one."""
    seen: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    columns: dict[str, list] = {}  # a parquet file's id column, read once
    for unit in units:
        for k, value in enumerate(_unit_ids(unit, text_column, id_column, columns)):
            if value is None:
                continue  # a row without an id is a bad row, reported as such
            if value in seen:
                repeated.setdefault(value, [seen[value]]).append(describe_unit(unit, k))
            else:
                seen[value] = describe_unit(unit, k)
    return repeated


def _unit_ids(unit: Unit, text_column: str, id_column: str, columns: dict[str, list]) -> list:
    if unit.fmt == "parquet":
        if unit.file not in columns:
            column = _parquet(Path(unit.file)).read(columns=[id_column]).column(id_column)
            columns[unit.file] = [_id_value(v, id_column) for v in parquet_ids(unit.file, column, id_column)]
        return columns[unit.file][unit.start : unit.start + unit.rows]
    return read_unit(unit, text_column, id_column).ids


def describe_unit(unit: Unit, k: int) -> str:
    """Where row k of a unit is, for error messages: the file and the row's number in it (1-based)."""
    return f"{unit.file} row {unit.start + k + 1}"
