"""What `sentmtl batch` writes: OUTPUT/part-NNNNNN.parquet, one per unit of input rows, each written
whole or not at all (a temporary file, fsynced, renamed), so a shard that exists is complete and
a run killed at any point resumes by doing the units whose shard is missing. `_job.json` records
what the shards were made from (inputs, tasks, config and model fingerprints); a second run with
other inputs, tasks or model is refused unless --force. `_errors.jsonl` (the rows left out by
`--on-error skip`, with the reason) and `_SUCCESS` (the manifest) are written last.

Columns: id, text, `embedding` (fixed-size list of float32) with the embed task, then each head's
own typed columns (Head.arrow_fields): a reader gets types, not JSON strings.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ..errors import SentmtlError
from ..files.atomic import AtomicFile, atomic_write_text
from .inputs import InputFile, Rows, Unit, describe_unit

JOB_FORMAT = "sentmtl-batch/1"
JOB, SUCCESS, ERRORS = "_job.json", "_SUCCESS", "_errors.jsonl"
PART = re.compile(r"^part-(\d{6})\.parquet$")
# a reader of the folder (pyarrow, DuckDB, Ray, Spark) skips names starting with _ or .: only shards show
OURS = re.compile(r"^(part-\d{6}\.parquet|_part-\d{6}\.errors\.jsonl|_job\.json|_SUCCESS|_errors\.jsonl)$")
TEMP = re.compile(r"^\.(part-\d{6}\.parquet|_part-\d{6}\.errors\.jsonl|_job\.json|_SUCCESS|_errors\.jsonl)\..*\.tmp$")
EMBED = "embed"  # the task name that adds the embedding column


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def errors_name(index: int) -> str:
    return f"_part-{index:06d}.errors.jsonl"


def schema(model, tasks: list[str], id_column: str | None):
    """The shards' arrow schema for these tasks (the same for every shard, empty ones included)."""
    import pyarrow as pa

    fields = [pa.field("id", pa.string() if id_column else pa.int64()), pa.field("text", pa.string())]
    if EMBED in tasks:
        fields.append(pa.field("embedding", pa.list_(pa.float32(), model.dim)))
    for t in tasks:
        if t != EMBED:
            fields += model.heads[t].arrow_fields()
    return pa.schema(fields)


def task_columns(model, tasks: list[str], texts: list[str], batch_size: int, progress=None) -> tuple[list, list]:
    """The fields and arrays the tasks add for texts (all valid): one forward pass for the
    embedding and every head, exactly `sentmtl predict`'s numbers, and `sentmtl embed`'s for a
    text within max_seq_length (a longer one is read in windows unless the model's overflow is
    truncate: `embed --overflow window`'s vector)."""
    import pyarrow as pa

    heads = [t for t in tasks if t != EMBED]
    fields = list(schema(model, tasks, None))[2:]
    if not texts:
        return fields, [pa.array([], f.type) for f in fields]
    emb, results = model.run(texts, heads, batch_size=batch_size, want_embeddings=EMBED in tasks, progress=progress)
    cols = []
    if emb is not None:
        flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), pa.float32())
        cols.append(pa.FixedSizeListArray.from_arrays(flat, model.dim))
    for t in heads:
        cols += model.heads[t].arrow_columns([r[t] for r in results])
    return fields, cols


def predict_table(
    model, tasks: list[str], ids: list, texts: list[str], batch_size: int, id_column: str | None, progress=None
):
    """id, text and the tasks' columns, typed as `schema` says."""
    import pyarrow as pa

    sch = schema(model, tasks, id_column)
    _, cols = task_columns(model, tasks, texts, batch_size, progress)
    return pa.Table.from_arrays([pa.array(ids, sch.field("id").type), pa.array(texts, pa.string()), *cols], schema=sch)


def unit_table(
    model,
    tasks: list[str],
    unit: Unit,
    rows: Rows,
    on_error: str,
    batch_size: int,
    id_column: str | None,
    progress=None,
):
    """A unit's table and its error records; with on_error=fail, the first bad row is an error."""
    errors = []
    for k, why in sorted(rows.problems.items()):
        if on_error == "fail":
            raise SentmtlError(
                f"{describe_unit(unit, k)} (id {rows.ids[k]}): {why} (--on-error skip lists such rows in {ERRORS})"
            )
        errors.append({"id": rows.ids[k], "file": unit.file, "row": unit.start + k + 1, "reason": why})
    keep = [k for k in range(len(rows.texts)) if k not in rows.problems]
    texts = [rows.texts[k] for k in keep]
    table = predict_table(model, tasks, [rows.ids[k] for k in keep], texts, batch_size, id_column, progress)  # type: ignore[arg-type]
    return table, errors


def write_unit(output: Path, unit: Unit, table, errors: list[dict]) -> None:
    """The shard (and its errors, first): each whole or not at all; the shard marks the unit done."""
    import pyarrow.parquet as pq

    if errors:
        atomic_write_text(
            output / errors_name(unit.index), "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
        )
    with AtomicFile(output / part_name(unit.index)) as f:
        pq.write_table(table, f.file, compression="zstd")


# ---- the job: what the shards are made of, checked before resuming ---------------------------------
def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def model_fingerprint(model) -> dict:
    """What the numbers depend on: the config (heads, layers, pooling, lengths), the backbone's and
    heads' weight files (by content), and the backend that runs it."""
    from ..backbone.folder import sha256_file

    cfg = model.cfg.model_dump(mode="json", exclude={"source"})
    weights = model.onnx_path if model.backend != "torch" and model.onnx_path else model.folder / "model.safetensors"
    files = {"backbone": sha256_file(Path(weights))}
    for task, h in model.cfg.heads.items():
        if h.weights is not None:
            files[task] = sha256_file(Path(h.weights))
    return {
        "config": fingerprint(cfg),
        "model": fingerprint(files),
        "backend": model.backend,
        "overflow": model.overflow,
    }


def job_record(files: list[InputFile], units: list[Unit], tasks, model_fp: dict, text_column, id_column, shard_rows):
    return {
        "format": JOB_FORMAT,
        "inputs": [
            {"path": f.path, "rows": f.rows, "size": f.size, "mtime_ns": f.mtime_ns, "digest": f.digest} for f in files
        ],
        "units": len(units),
        "rows": sum(u.rows for u in units),
        "tasks": tasks,
        "text_column": text_column,
        "id_column": id_column,
        "shard_rows": shard_rows,
        **model_fp,
    }


def prepare(output: Path, job: dict, force: bool) -> set[int]:
    """Make OUTPUT ready for this job; the units already complete (their shard exists). A folder
    that holds another job is refused without --force; one that holds anything but a sentmtl batch
    output is never touched, --force or not."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise SentmtlError(f"output {output} exists and is not a folder")
    if output.is_dir():
        names = [p.name for p in output.iterdir()]
        foreign = [n for n in names if not (OURS.match(n) or TEMP.match(n))]
        if foreign:
            raise SentmtlError(
                f"output {output} holds files that are not a sentmtl batch output ({', '.join(sorted(foreign)[:3])}); "
                "give a new or empty folder"
            )
        old = _read_job(output) if JOB in names else None
        if names and old is None and not force:
            raise SentmtlError(f"output {output} holds shards without {JOB}; give --force to start again")
        if old is not None and old != job and not force:
            what = [k for k in job if old.get(k) != job[k]]
            raise SentmtlError(
                f"output {output} holds a batch made with other {', '.join(what)}; "
                "give --force to replace it, or another OUTPUT"
            )
        if force:  # start again: only our own files are there (checked above)
            for n in names:
                (output / n).unlink(missing_ok=True)
            names = []
        for n in names:  # temporary files a killed run left: never a shard
            if TEMP.match(n):
                try:
                    (output / n).unlink()
                except FileNotFoundError:
                    pass
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SentmtlError(f"cannot create {output}: {e.strerror}") from None
    if not (output / JOB).exists():
        atomic_write_text(output / JOB, json.dumps(job, indent=2) + "\n")
    return {int(m.group(1)) for p in output.iterdir() if (m := PART.match(p.name))}


def _read_job(output: Path) -> dict | None:
    try:
        return json.loads((output / JOB).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finish(output: Path, job: dict, units: list[Unit], extra: dict) -> dict:
    """Check every shard is there, gather the errors, write the manifest last."""
    import pyarrow.parquet as pq

    rows, size = 0, 0
    errors: list[str] = []
    for u in units:
        part = output / part_name(u.index)
        if not part.is_file():
            raise SentmtlError(f"shard {part.name} is missing; run the same command again to finish it")
        rows += pq.ParquetFile(part).metadata.num_rows
        size += part.stat().st_size
        err = output / errors_name(u.index)
        if err.is_file():
            errors += err.read_text(encoding="utf-8").splitlines(keepends=True)
    if errors:
        atomic_write_text(output / ERRORS, "".join(errors))
    from ..defaults import VERSION as __version__

    manifest = {
        "format": JOB_FORMAT,
        "rows": rows,
        "errors": len(errors),
        "input_rows": job["rows"],
        "shards": len(units),
        "tasks": job["tasks"],
        "config": job["config"],
        "model": job["model"],
        "backend": job["backend"],
        "sentmtl_version": __version__,
        "bytes": size,
        **extra,
    }
    if rows + len(errors) != job["rows"]:
        raise SentmtlError(
            f"{rows} rows written and {len(errors)} left out, of {job['rows']}: run it again with --force"
        )
    atomic_write_text(output / SUCCESS, json.dumps(manifest, indent=2) + "\n")
    return manifest


def complete(output: Path, job: dict) -> dict | None:
    """The manifest, when OUTPUT already holds this job, finished."""
    try:
        if _read_job(output) == job:
            return json.loads((Path(output) / SUCCESS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    return None
