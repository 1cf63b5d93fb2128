"""The index: a LanceDB database folder holding one table (`rows`) and `sentmtl-index.json` (what
made it: the model's identity, the tasks, each task's columns).

Rows are what `sentmtl batch` writes, typed: `id` (a string), `text`, `vector` (the sentence
embedding, float32) and each head's own columns (`cls_label`, `cls_score`, `cls_scores`,
`ner_entities`), plus `<task>_keys` for a token head: its entities as "label:text", lowercased,
which `--entity` matches.

Nothing is lost. A new index is written whole in a folder beside INDEX, then renamed into place
(an old one, with --force, is moved aside first and deleted once the new one is in), so a build
killed at any point leaves INDEX as it was. `--add` is one LanceDB commit (the rows stream into
new data files; the table's manifest names them only when all are written), so a kill leaves the
table at the version before; searches read one version, so rows being added are all there or none.
A writer holds an exclusive lock on INDEX/.lock: a second one is refused. The vector index
(IVF partitions of RaBitQ codes, exact re-ranking) is built once the table has ANN_ROWS rows;
below that, search is an exact scan, which takes milliseconds.

The table is a Lance dataset (`rows.lance`), read and written by `lance` itself: LanceDB's Python
package opens the same folder (`lancedb.connect(INDEX).open_table("rows")`), but importing it
takes 1.2-2.8 s (pandas and a REST client), against 0.15 s for `lance`, and a one-shot search must
start in half a second."""

from __future__ import annotations

import json
import os
import shutil
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SentmtlError

FORMAT = "sentmtl-index/1"
META = "sentmtl-index.json"
TABLE = "rows"
LOCK = ".lock"
ANN_ROWS = 100_000  # from here on a vector index (an exact scan of 100k vectors takes about 15 ms)
PARTITION_ROWS = 8192  # rows per IVF partition
RQ_BITS = 3  # bits a dimension in the RaBitQ codes: as good as 5 once re-ranked, and less to load
RAY_UNIT_ROWS = 2048  # rows of a unit of work on a Ray worker (--engine ray)
KEYS = "_keys"  # a token head's column of "label:text" entity keys: <task>_keys


# ---- the model an index belongs to ----------------------------------------------------------------
def identity(model, known: dict | None = None) -> dict:
    """What a query's vector depends on: the backbone's weights (by content), how tokens become a
    vector, and the backend. An index is searched only with the same. `known`: an index's record,
    whose weights' sha256 is trusted while the file is the one it was taken from (the same path,
    size and modification time), so that opening an index does not read 90 MB to hash them; else
    the one `sentmtl export` recorded for the graph under the same condition (a new export of the
    same weights: 70 ms of a one-shot search)."""
    from ..backbone.folder import sha256_file
    from ..backbone.onnx_backbone import recorded_hash

    weights = Path(
        model.onnx_path if model.backend != "torch" and model.onnx_path else model.folder / "model.safetensors"
    )
    st = weights.stat()
    stamp = [str(weights.resolve()), st.st_size, st.st_mtime_ns]
    known = known or {}
    sha = known["weights"] if known.get("weights_file") == stamp and known.get("weights") else None
    if sha is None and model.backend != "torch":
        sha = recorded_hash(weights)
    sha = sha or sha256_file(weights)
    b = model.cfg.backbone
    return {
        "weights": sha,
        "weights_file": stamp,
        "pooling": b.pooling,
        "normalize": b.normalize,
        "max_seq_length": b.max_seq_length,
        "dimension": model.dim,
        "backend": model.backend,
    }


def same_model(meta: dict, model, index: Path) -> None:
    """Refuse, in one line, a model whose vectors are not the index's."""
    theirs = meta.get("identity", {})
    mine = identity(model, theirs)
    diff = [k for k in mine if k != "weights_file" and theirs.get(k) != mine[k]]
    if diff:
        raise SentmtlError(
            f"index {index} was made with another model ({', '.join(diff)} differ); "
            "search it with the --config it was built with, or build a new index"
        )


# ---- opening, locking --------------------------------------------------------------------------------
def read_meta(index: Path) -> dict:
    """The index's record; one line when INDEX is not a sentmtl index."""
    index = Path(index)
    if not index.exists():
        raise SentmtlError(f"index {index}: no such folder (build one with sentmtl index INPUT {index})")
    if not index.is_dir():
        raise SentmtlError(f"index {index} is not a folder")
    try:
        meta = json.loads((index / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SentmtlError(f"{index} is not a sentmtl index (it has no {META})") from None
    except (OSError, ValueError) as e:
        raise SentmtlError(f"index {index} is damaged: {META} is unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SentmtlError(f"{index} is not a sentmtl index ({META} is not {FORMAT})")
    if not (index / f"{TABLE}.lance").is_dir():
        raise SentmtlError(f"index {index} is damaged: its table {TABLE}.lance is missing")
    return meta


def is_index(path: Path) -> bool:
    try:
        read_meta(path)
    except SentmtlError:
        return False
    return True


class WriteLock:
    """An exclusive lock on INDEX/.lock for a writer; a second writer is refused in one line."""

    def __init__(self, index: Path):
        self.path = Path(index) / LOCK
        self.fd: int | None = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise SentmtlError(
                f"index {self.path.parent} is being written by another process; try again when it ends"
            ) from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None
        return False


def _lance():
    # lance's Rust log (a WARN when a dataset is first made, deprecation notes) is not for our users
    os.environ.setdefault("LANCE_LOG", "error")
    import lance

    return lance


class _NoPandas:
    """An import finder that keeps pandas out while lance is imported: pyarrow.dataset, which
    lance imports, loads pandas (0.15-0.3 s) only to ask whether it is there."""

    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            raise ModuleNotFoundError("pandas is kept out of a one-shot search", name=name)
        return None


class _LaterCompute(types.ModuleType):
    """pyarrow.compute until something uses it. Its import makes a Python wrapper for each of
    arrow's compute functions and parses their docstrings (30-50 ms), and pyarrow.dataset imports
    it, which lance imports, only for three names: Expression (pyarrow._compute's, as it is) and
    field and scalar (here they call the real ones). Any other name imports the real module, puts
    it in sys.modules, and is read from it; this one then forwards to it."""

    def __getattr__(self, name: str):
        import importlib
        import sys

        if name.startswith("__"):  # the import system's questions (__path__: a package?) are not a use
            raise AttributeError(name)
        real = self.__dict__.get("_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
            self.__dict__["_real"] = real
        return getattr(real, name)


def _compute_later() -> None:
    import sys

    import pyarrow
    from pyarrow._compute import Expression

    stub = _LaterCompute("pyarrow.compute")
    stub.__dict__.update(
        Expression=Expression,
        field=lambda *name: stub.__getattr__("field")(*name),
        scalar=lambda value: stub.__getattr__("scalar")(value),
    )
    sys.modules["pyarrow.compute"] = stub
    setattr(pyarrow, "compute", stub)  # noqa: B010 - what `import pyarrow.compute` would bind


def import_for_one_shot() -> None:
    """Import lance for a one-shot command, without pandas, which it does not use, and with
    pyarrow.compute left until something uses it (10-30 ms: lance's import took 0.10-0.13 s
    against 0.13-0.17 s, in one process, six runs each). Only the CLI's own process does this:
    pyarrow then takes pandas for absent until something imports it (its to_pandas still does),
    which a user's program beside `open_index` should not meet."""
    import sys

    if "lance" in sys.modules or "pandas" in sys.modules:
        return
    # lance keeps cores back from its compute pool for I/O: on 2 cores it then loads the partitions
    # of an IVF index one after another, and the one query of a one-shot command, which loads them
    # all, takes a third longer. A server's warm queries are faster with lance's default (on 2
    # cores, p50 5.4 against 6.3 ms, filtered 11.4 against 13.8 ms), so only this process sets it.
    os.environ.setdefault("LANCE_CPU_THREADS", str(max(2, os.cpu_count() or 2)))
    if "pyarrow.compute" not in sys.modules:
        _compute_later()
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        _lance()
    finally:
        sys.meta_path.remove(finder)


def table_uri(index: Path) -> str:
    return str(Path(index) / f"{TABLE}.lance")


def lance_message(e: Exception) -> str:
    """The first line of lance's error, without the Rust source location it ends with (", /home/
    runner/work/lance/.../sql.rs:109:22"), which says nothing to a user."""
    import re

    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.sub(r",\s*\S*\.rs:\d+:\d+\s*$", "", first)


def _table_error(index: Path, e: Exception) -> SentmtlError:
    return SentmtlError(f"index {index} is damaged: {lance_message(e)[:300]}")


# ---- rows: from a batch output, or computed --------------------------------------------------------
@dataclass
class Source:
    """Where the rows come from: batches of a batch-shaped table (id, text, embedding, heads'
    columns), and the tasks they carry."""

    batches: Iterator[Any]
    tasks: list[str]
    rows: int
    computed: bool  # the backbone ran (else a batch output's columns were taken as they are)
    columns: dict[str, list[str]] = field(default_factory=dict)  # each head task's stored columns
    tick: list = field(default_factory=lambda: [None])  # [progress(n)], set while the rows are written
    scratch: Path | None = None  # a folder of shards made for this index only, removed after
    skipped: list = field(default_factory=lambda: [0])  # bad rows left out (--on-error skip)


def batch_output_source(model, folder: Path, tasks: list[str] | None) -> Source:
    """A `sentmtl batch` OUTPUT folder's rows, taken as they are: refused when it was made by
    another model, without the embedding, or without a task asked for."""
    import pyarrow.dataset as ds

    from ..batch import output as out

    try:
        job = json.loads((folder / out.JOB).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise SentmtlError(f"{folder}: its {out.JOB} is unreadable") from None
    if not (folder / out.SUCCESS).is_file():
        raise SentmtlError(f"batch output {folder} is not finished (no {out.SUCCESS}); run its batch command again")
    mine = out.model_fingerprint(model)
    if job.get("model") != mine["model"] or job.get("config") != mine["config"]:
        raise SentmtlError(
            f"batch output {folder} was made with another model or config than this index's "
            "(its manifest's model fingerprint differs): give the --config it was made with"
        )
    have = list(job.get("tasks", []))
    if out.EMBED not in have:
        raise SentmtlError(
            f"batch output {folder} has no embeddings: run batch with the embed task (--tasks embed,...)"
        )
    heads = [t for t in have if t != out.EMBED] if tasks is None else [t for t in tasks if t != out.EMBED]
    missing = [t for t in heads if t not in have]
    if missing:
        raise SentmtlError(f"batch output {folder} has no {', '.join(missing)} columns (it has {', '.join(have)})")
    columns = {t: [f.name for f in model.heads[t].arrow_fields()] for t in heads}
    keep = ["id", "text", "embedding", *[c for t in heads for c in columns[t]]]
    data = ds.dataset(sorted(str(p) for p in folder.glob("part-*.parquet")), format="parquet")
    return Source((b for b in data.to_batches(columns=keep, batch_size=8192)), heads, data.count_rows(), False, columns)


def computed_source(
    model, path: Path, tasks: list[str] | None, text_column: str, id_column: str | None, batch_size: int, on_error: str
) -> Source:
    """Rows read as `sentmtl batch` reads them (a file or a folder of .txt/.jsonl/.csv/.parquet),
    embedded and run through the heads in one pass a unit at a time (bounded memory)."""
    from ..batch import output as out
    from ..batch.inputs import plan, read_unit

    heads = list(model.heads) if tasks is None else [t for t in tasks if t != out.EMBED]
    _, units = plan(path, 8192, text_column, id_column)
    all_tasks = [out.EMBED, *heads]

    tick: list = [None]

    def batches():
        for u in units:
            rows = read_unit(u, text_column, id_column)
            try:
                table, errors = out.unit_table(
                    model, all_tasks, u, rows, on_error, batch_size, id_column, progress=tick[0]
                )
            except SentmtlError as e:  # batch's wording names its _errors.jsonl, which an index has not
                raise SentmtlError(str(e).replace("lists such rows in _errors.jsonl", "leaves such rows out")) from None
            if tick[0] is not None and rows.problems:
                tick[0](len(rows.problems))
            skipped[0] += len(errors)
            yield from table.to_batches()

    skipped: list = [0]
    columns = {t: [f.name for f in model.heads[t].arrow_fields()] for t in heads}
    return Source(batches(), heads, sum(u.rows for u in units), True, columns, tick, skipped=skipped)


def index_schema(model, source: Source):
    import pyarrow as pa

    fields = [
        pa.field("id", pa.string()),
        pa.field("text", pa.string()),
        pa.field("vector", pa.list_(pa.float32(), model.dim)),
    ]
    for t in source.tasks:
        fields += model.heads[t].arrow_fields()
        if _is_token_task(source, t):
            fields.append(pa.field(t + KEYS, pa.list_(pa.string())))
    return pa.schema(fields)


def _is_token_task(source: Source, task: str) -> bool:
    return source.columns[task] == [f"{task}_entities"]


def to_index_batch(batch, schema, source: Source):
    """A batch-shaped record batch as the index's: the id as a string, the embedding as `vector`,
    and the entity keys of each token head."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = {name: batch.column(name) for name in batch.schema.names}
    arrays = [pc.cast(cols["id"], pa.string()), cols["text"], cols["embedding"]]
    for t in source.tasks:
        arrays += [cols[c] for c in source.columns[t]]
        if _is_token_task(source, t):
            arrays.append(entity_keys(cols[f"{t}_entities"]))
    return pa.RecordBatch.from_arrays(
        [a.cast(f.type) if a.type != f.type else a for a, f in zip(arrays, schema)], schema=schema
    )


def entity_keys(entities):
    """list<struct<text, label, ...>> -> list<string> of "label:text", lowercased."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(entities, pa.ChunkedArray):
        entities = entities.combine_chunks()
    flat = entities.flatten()
    keys = pc.utf8_lower(pc.binary_join_element_wise(flat.field("label"), flat.field("text"), ":"))
    offsets = pc.subtract(entities.offsets, entities.offsets[0])
    return pa.ListArray.from_arrays(offsets, keys)


def entity_key(spec: str) -> str:
    """`--entity LABEL:TEXT` as the stored key; one line when it is not LABEL:TEXT."""
    label, sep, text = spec.partition(":")
    if not sep or not label.strip() or not text.strip():
        raise SentmtlError(f"--entity {spec[:80]!r}: give LABEL:TEXT, e.g. ORG:Tesla")
    if len(spec) > 500:
        raise SentmtlError(f"--entity {spec[:40]!r}...: {len(spec):,} characters is over the limit of 500")
    return f"{label.strip()}:{text.strip()}".lower()


# ---- building ------------------------------------------------------------------------------------------
@dataclass
class IndexJob:
    input: Path
    index: Path
    tasks: list[str] | None = None  # None: every head of the model (or of the batch output)
    add: bool = False
    force: bool = False
    text_column: str = "text"
    id_column: str | None = None
    batch_size: int = 32
    on_error: str = "fail"
    engine: str = "local"  # ray: the rows are computed by `batch --engine ray` first (Ray Data actors)
    address: str | None = None
    workers: int = 2
    config: str | Path | None = None  # the model's config, for the Ray workers to load
    backend: str | None = None
    overflow: str = "window"  # a text past max_seq_length: window | truncate | error


def is_batch_output(path: Path) -> bool:
    from ..batch import output as out

    return path.is_dir() and (path / out.JOB).is_file()


class _Quiet:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def build(model, job: IndexJob, progress=None) -> dict:
    """Build INDEX from INPUT, or (--add) append INPUT's rows to it. The report. `progress(total)`:
    a context manager for the progress bar of rows embedded (none when a batch output's are taken)."""
    import time

    from ..batch.worker import check_overflow
    from ..files.atomic import output_folder

    t0 = time.perf_counter()
    model.overflow = check_overflow(job.overflow)
    index, src_path = output_folder(job.index), Path(job.input)  # a link to an index stays a link
    if job.tasks is not None:
        unknown = [t for t in job.tasks if t not in model.heads and t != "embed"]
        if unknown:
            raise SentmtlError(
                f"unknown task {', '.join(map(repr, unknown))}: this config has {', '.join(model.heads)}"
            )
    if not src_path.exists():
        raise SentmtlError(f"input {src_path}: no such file or folder")
    if _inside(index, src_path) or _inside(src_path, index):
        raise SentmtlError(f"input {src_path} and index {index} overlap: keep them apart")
    if job.add:
        meta = read_meta(index)
        same_model(meta, model, index)
        tasks = meta["tasks"] if job.tasks is None else job.tasks
        if sorted(tasks) != sorted(meta["tasks"]):
            raise SentmtlError(f"index {index} holds the tasks {', '.join(meta['tasks'])}; --add must give the same")
        with WriteLock(index):
            source = _source(model, job, src_path, meta["tasks"])
            try:
                with progress(source.rows) if progress and source.computed and not source.scratch else _Quiet() as p:
                    source.tick[0] = p
                    added = _append(index, model, source)
            finally:
                if source.scratch is not None:
                    shutil.rmtree(source.scratch, ignore_errors=True)
        return _report(index, source, added, "added", t0) | {"index": str(job.index)}  # as named
    if index.exists() or index.is_symlink():
        if not index.is_dir():
            raise SentmtlError(f"index {index} exists and is not a folder")
        if any(index.iterdir()):
            if not is_index(index):
                raise SentmtlError(f"{index} holds files that are not a sentmtl index; give a new or empty folder")
            if not job.force:
                raise SentmtlError(f"index {index} exists: --add appends to it, --force builds it again")
    source = _source(model, job, src_path, job.tasks)
    try:
        with progress(source.rows) if progress and source.computed and not source.scratch else _Quiet() as p:
            source.tick[0] = p
            rows = _write_new(index, model, source, job.force)
    finally:
        if source.scratch is not None:
            shutil.rmtree(source.scratch, ignore_errors=True)
    return _report(index, source, rows, "built", t0) | {"index": str(job.index)}  # as named


def _inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _source(model, job: IndexJob, src: Path, tasks) -> Source:
    if is_batch_output(src):
        return batch_output_source(model, src, tasks)
    if job.engine == "ray":
        return _ray_source(model, job, src, tasks)
    if job.engine != "local":
        raise SentmtlError(f"--engine must be local or ray, not {job.engine!r}")
    return computed_source(model, src, tasks, job.text_column, job.id_column, job.batch_size, job.on_error)


def _ray_source(model, job: IndexJob, src: Path, tasks) -> Source:
    """The rows computed on a Ray Data actor pool by `batch --engine ray`, into shards in a folder
    beside INDEX (removed when the index is written), then read as a batch output's."""
    from ..batch import output as out
    from ..batch.run import BatchJob, run_batch

    heads = list(model.heads) if tasks is None else [t for t in tasks if t != out.EMBED]
    work = Path(job.index).absolute().with_name(f".{Path(job.index).name}.{os.getpid()}.batch")
    run_batch(
        BatchJob(
            input=src,
            output=work,
            tasks=[out.EMBED, *heads],
            config=job.config,
            engine="ray",
            address=job.address,
            workers=job.workers,
            text_column=job.text_column,
            id_column=job.id_column,
            batch_size=job.batch_size,
            on_error=job.on_error,
            force=True,
            backend=job.backend,
            overflow=job.overflow,
            # small units, so that no worker idles while another ends a unit of longer texts
            # (two units of 10,000 left one of two workers idle for 70 s of 110)
            shard_rows=RAY_UNIT_ROWS,
        )
    )
    source = batch_output_source(model, work, heads)
    source.computed, source.scratch = True, work
    return source


def _report(index: Path, source: Source, rows: int, what: str, t0: float) -> dict:
    import time

    total = open_table(index).count_rows()
    return {
        "index": str(index),
        what: rows,
        "rows": total,
        "tasks": source.tasks,
        "computed": source.computed,
        "skipped": source.skipped[0],
        "ann": total >= ANN_ROWS,
        "seconds": time.perf_counter() - t0,
    }


def _reader(model, source: Source):
    import pyarrow as pa

    schema = index_schema(model, source)
    counted: list = [0, None]  # rows given, and the error that stopped them

    def batches():
        try:
            for b in source.batches:
                out = to_index_batch(b, schema, source)
                counted[0] += out.num_rows
                yield out
        except BaseException as e:  # kept for the caller: lance would wrap it in its own error
            counted[1] = e
            raise

    return pa.RecordBatchReader.from_batches(schema, batches()), counted


def _write(reader, counted, uri: str, mode: str):
    """write_dataset, one commit; an error while the rows were made (a bad row, Ctrl-C) aborts it
    and is raised as it was, not inside lance's message."""
    try:
        return _lance().write_dataset(reader, uri, mode=mode)
    except BaseException:
        if counted[1] is not None:
            raise counted[1] from None
        raise


def _write_new(index: Path, model, source: Source, force: bool) -> int:
    """The whole index in a folder beside INDEX, then renamed into place."""
    from ..files.atomic import atomic_write_text

    index = index.absolute()
    index.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(index)
    tmp = index.with_name(f".{index.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        reader, counted = _reader(model, source)
        table = _write(reader, counted, table_uri(tmp), "create")
        if counted[0] == 0:
            raise SentmtlError("the input has no rows to index")
        if counted[0] >= ANN_ROWS and (column := label_column(table, source)):
            os.replace(table_uri(tmp), tmp / "unsorted.lance")
            table = _rows_by(_lance().dataset(str(tmp / "unsorted.lance")), table_uri(tmp), column)
            shutil.rmtree(tmp / "unsorted.lance")
        meta = {
            "format": FORMAT,
            "identity": identity(model),
            "tasks": source.tasks,
            "columns": source.columns,
            "model_name": model.cfg.name,
        }
        atomic_write_text(tmp / META, json.dumps(meta, indent=2) + "\n")
        _refresh_ann(table)
        old = index.with_name(f".{index.name}.{os.getpid()}.old")
        if index.exists():
            if force and any(index.iterdir()):
                with WriteLock(index):
                    os.replace(index, old)
            else:
                index.rmdir()  # an empty folder
        os.replace(tmp, index)
        shutil.rmtree(old, ignore_errors=True)
        return counted[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def label_column(table, source: Source) -> str | None:
    """The first sentence head's label column (`cls_label` for the shipped model), if any."""
    import pyarrow as pa

    for t in source.tasks:
        c = f"{t}_label"
        if c in source.columns[t] and table.schema.field(c).type == pa.string():
            return c
    return None


GROUP_FRAGMENTS = 64  # up to this many values of the label column, each value's rows a fragment of its own


def _rows_by(unsorted, uri: str, column: str):
    """The rows written again at `uri`, those of one `column` value after another, each value's
    rows in data files (fragments) of their own when there are at most GROUP_FRAGMENTS values. A
    filter on that column (the one users give most) then keeps runs of rows, whole fragments, not
    rows scattered over the whole table; measured on the million rows of bench/index_bench.py (4
    values), a filtered query took 17 ms with the rows in input order, 12-16 ms grouped in one
    fragment, and 12-13 ms grouped a fragment a value, the last two side by side. The table is new
    and not yet in place (_write_new): that it takes a commit a value is seen by no reader."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = sorted(
        pc.unique(unsorted.to_table(columns=[column])[column]).to_pylist(), key=lambda x: (x is None, x or "")
    )

    def rows(v):
        cond = f"{column} IS NULL" if v is None else f"{column} = '{v.replace(chr(39), chr(39) * 2)}'"
        yield from unsorted.scanner(filter=cond, batch_size=8192).to_batches()

    def reader(vs):
        return pa.RecordBatchReader.from_batches(unsorted.schema, (b for v in vs for b in rows(v)))

    if len(values) > GROUP_FRAGMENTS:
        return _lance().write_dataset(reader(values), uri, mode="create")
    table = None
    for i, v in enumerate(values):
        table = _lance().write_dataset(reader([v]), uri, mode="create" if i == 0 else "append")
    return table


def _clean_stale(index: Path) -> None:
    """Folders a killed build left beside INDEX (their process is gone)."""
    for suffix in ("tmp", "batch", "old"):
        for p in index.parent.glob(f".{index.name}.*.{suffix}"):
            pid = p.name[len(index.name) + 2 : -len(suffix) - 1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _append(index: Path, model, source: Source) -> int:
    """One commit of every new row; then the vector index brought up to date."""
    reader, counted = _reader(model, source)
    open_table(index)  # a damaged table is one line before any work
    try:
        table = _write(reader, counted, table_uri(index), "append")
    except SentmtlError:
        raise
    except Exception as e:  # noqa: BLE001 - lance's own errors: one line
        raise _table_error(index, e) from None
    _refresh_ann(table)
    return counted[0]


def _refresh_ann(table) -> None:
    """A vector index once the table is large enough: IVF partitions of about PARTITION_ROWS rows
    holding RaBitQ codes (RQ_BITS a dimension), whose candidates are re-ranked by exact distance.
    Rows appended later are folded into it. Why this kind, measured on the million rows of
    bench/index_bench.py, in docs/ARCHITECTURE.md."""
    n = table.count_rows()
    if n < ANN_ROWS:
        return
    if has_ann(table):
        table.optimize.optimize_indices()
        return
    table.create_index("vector", index_type="IVF_RQ", metric="cosine", num_partitions=partitions(n), num_bits=RQ_BITS)
    # what --where and --entity filter on most, indexed, so that a filter is not a scan of every row
    for f in table.schema:
        if f.name.endswith("_label") and str(f.type) == "string":
            table.create_scalar_index(f.name, index_type="BITMAP")
        elif f.name.endswith(KEYS):
            table.create_scalar_index(f.name, index_type="LABEL_LIST")


def partitions(n: int) -> int:
    return max(8, n // PARTITION_ROWS)


def has_ann(table) -> bool:
    return any("vector" in ix.field_names for ix in table.describe_indices())


def open_table(index: Path):
    try:
        return _lance().dataset(table_uri(index))
    except Exception as e:  # noqa: BLE001
        raise _table_error(Path(index), e) from None


# ---- searching -----------------------------------------------------------------------------------------
NPROBES, REFINE = 48, 2  # partitions searched, exact re-ranking of the best k x REFINE
# a filter keeping a share s of the rows: NPROBES / s ** FILTER_POWER partitions (docs/ARCHITECTURE.md)
FILTER_POWER = 0.4


class Index:
    """An opened index: its record and its table, searched with vectors of the index's model."""

    table: Any  # the Lance dataset, at the version read

    def kept(self, table, cond: str) -> float:
        """The share of rows a filter keeps, counted once per filter and table version."""
        key = (table.version, cond)
        share = self._kept.get(key)
        if share is None:
            share = table.count_rows(filter=cond) / max(1, table.count_rows())
            with self._lock:  # serve searches from several threads
                if len(self._kept) >= 256:
                    self._kept.pop(next(iter(self._kept)))
                self._kept[key] = share
        return share

    def current(self):
        """The table; `fresh`: its latest version (rows an --add committed since it was opened)."""
        if self.fresh and self.table.latest_version != self.table.version:
            self.table = open_table(self.path)
        return self.table

    def __init__(self, path: Path, model=None, fresh: bool = False):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.model = model
        if model is not None:
            same_model(self.meta, model, self.path)
        self.fresh = fresh
        self.table = open_table(self.path)
        self._kept: dict[tuple, float] = {}
        self._lock = threading.Lock()

    @property
    def tasks(self) -> list[str]:
        return list(self.meta["tasks"])

    def token_tasks(self) -> list[str]:
        return [t for t, cols in self.meta["columns"].items() if cols == [f"{t}_entities"]]

    def filter(self, where: str | None, entities: list[str]) -> str | None:
        parts = [f"({where})"] if where and where.strip() else []
        if entities:
            token = self.token_tasks()
            if not token:
                raise SentmtlError(
                    f"--entity: index {self.path} has no entity head (its tasks: {', '.join(self.tasks)})"
                )
            for spec in entities:
                key = entity_key(spec).replace("'", "''")
                parts.append("(" + " OR ".join(f"array_has({t}{KEYS}, '{key}')" for t in token) + ")")
        return " AND ".join(parts) or None

    def query(self, text: str, top_k: int = 5, where: str | None = None, entities: list[str] | None = None):
        """search() for a text, embedded by the index's model."""
        if self.model is None:
            raise SentmtlError("this index was opened without its model: open it with one to query by text")
        return self.search(self.model.embed([text])[0], top_k, where, entities)

    def search(
        self, vector: np.ndarray, top_k: int = 5, where: str | None = None, entities: list[str] | None = None
    ) -> list[dict]:
        """The top_k rows nearest the (unit) vector that pass the filter, best first: rank, score
        (cosine similarity), id, text, then each task's output as `predict` shapes it."""
        if top_k < 1:
            raise SentmtlError("--top-k must be at least 1")
        cond = self.filter(where, entities or [])
        table = self.current()
        keys = [c for t in self.tasks for c in self.meta["columns"][t]]
        nearest: dict[str, Any] = {
            "column": "vector",
            "q": np.asarray(vector, dtype=np.float32),
            "k": top_k,
            "metric": "cosine",
        }
        try:
            if has_ann(table):
                parts = partitions(table.count_rows())
                probes = NPROBES
                if cond:  # a filter leaves fewer rows a partition: more partitions, to find k of them
                    probes = int(np.ceil(NPROBES / max(self.kept(table, cond), 1e-4) ** FILTER_POWER))
                # ef: an index built with HNSW graphs (before IVF_RQ) keeps at least the k x REFINE
                # candidates re-ranked; IVF_RQ ignores it
                nearest.update(nprobes=min(parts, probes), refine_factor=REFINE, ef=max(64, top_k * REFINE))
            got = table.to_table(columns=["id", "text", *keys], nearest=nearest, filter=cond, prefilter=bool(cond))
        except Exception as e:  # noqa: BLE001 - a bad --where is lance's parse error: one line
            msg = lance_message(e)
            if cond:
                raise SentmtlError(f"--where/--entity: {msg[:300]}") from None
            raise _table_error(self.path, e) from None
        rows = got.to_pylist()
        out = []
        for r, row in enumerate(rows):
            hit: dict[str, Any] = {
                "rank": r + 1,
                "score": 1.0 - float(row["_distance"]),
                "id": row["id"],
                "text": row["text"],
            }
            for t in self.tasks:
                cols = self.meta["columns"][t]
                if cols == [f"{t}_entities"]:
                    hit[t] = {"entities": row[f"{t}_entities"]}
                else:
                    hit[t] = {c[len(t) + 1 :]: row[c] for c in cols}
            out.append(hit)
        return out


WARM_ROWS = 2_000_000  # warm() loads every partition's codes up to here: 0.17-0.21 s at 1M rows, on 2 cores


def warm(index: Index) -> None:
    """Load what a table's first search would: the vector index's centroids and partition list,
    lance's thread pool and, up to WARM_ROWS rows, every partition's codes (a first query of the
    million-row index took 65-100 ms, 11 ms after this). For a process that opens the index
    before the query's vector exists (prefork.py); it changes no answer."""
    table = index.table
    if not has_ann(table):
        return
    rows = table.count_rows()
    q = np.zeros(table.schema.field("vector").type.list_size, dtype=np.float32)
    q[0] = 1.0
    probes = partitions(rows) if rows <= WARM_ROWS else 1
    table.to_table(columns=["id"], nearest={"column": "vector", "q": q, "k": 1, "nprobes": probes, "metric": "cosine"})
