"""`sentmtl batch`: plan the units, check OUTPUT against the job, run the units not yet done (here,
one after another, or on a Ray Data actor pool), then write the manifest."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..defaults import BATCH_SIZE
from ..errors import SentmtlError

SHARD_ROWS = 10_000


@dataclass
class BatchJob:
    input: Path
    output: Path
    tasks: list[str] | str | None = None
    config: str | Path | None = None
    engine: str = "local"
    address: str | None = None
    workers: int = 2
    text_column: str = "text"
    id_column: str | None = None
    batch_size: int = BATCH_SIZE
    on_error: str = "fail"
    duplicate_ids: str = "fail"  # fail | warn, when --id-column repeats a value
    verbose: bool = False  # Ray's own logs and progress bars
    extra_heads: dict | None = None  # task -> HeadConfig as a dict: heads made on the fly (--labels)
    force: bool = False
    shard_rows: int = SHARD_ROWS
    backend: str | None = None
    threads: int | None = None
    overflow: str = "window"  # a text past max_seq_length: window | truncate | error


def run_batch(job: BatchJob, progress=None, worker_class=None) -> dict:
    """Run the job; its manifest (plus `elapsed_s`, `rows_per_s`, `skipped_units`). `progress(total)`
    makes the local engine's progress bar; `worker_class` replaces the Ray worker (tests only)."""
    from ..model import load
    from . import output as out
    from .inputs import plan, read_unit
    from .worker import add_extra_heads, check_overflow, resolve_batch_tasks

    if job.on_error not in ("fail", "skip"):
        raise SentmtlError(f"--on-error must be fail or skip, not {job.on_error!r}")
    if job.duplicate_ids not in ("fail", "warn"):
        raise SentmtlError(f"--duplicate-ids must be fail or warn, not {job.duplicate_ids!r}")
    if job.engine not in ("local", "ray"):
        raise SentmtlError(f"--engine must be local or ray, not {job.engine!r}")
    if job.batch_size < 1 or job.workers < 1 or job.shard_rows < 1:
        raise SentmtlError("--batch-size, --workers and --shard-rows must be at least 1")
    ray = _import_ray(job.verbose) if job.engine == "ray" else None
    t0 = time.perf_counter()
    threads = 1 if job.engine == "ray" else job.threads
    model = load(job.config, threads=threads, backend=job.backend)
    model.overflow = check_overflow(job.overflow)
    add_extra_heads(model, job.extra_heads)
    tasks = resolve_batch_tasks(model, job.tasks)
    files, units = plan(Path(job.input), job.shard_rows, job.text_column, job.id_column)
    _refuse_input_inside_output(files, Path(job.output))
    if job.id_column:
        from .inputs import duplicate_ids

        repeated = duplicate_ids(units, job.text_column, job.id_column)
        if repeated:
            _report_duplicates(repeated, job.id_column, job.duplicate_ids)
    record = out.job_record(
        files, units, tasks, out.model_fingerprint(model), job.text_column, job.id_column, job.shard_rows
    )
    if not job.force:
        done_before = out.complete(Path(job.output), record)
        if done_before is not None:
            return {
                **done_before,
                "already_complete": True,
                "elapsed_s": 0.0,
                "rows_per_s": 0.0,
                "skipped_units": len(units),
            }
    done = out.prepare(Path(job.output), record, job.force)
    todo = [u for u in units if u.index not in done]
    rows_todo = sum(u.rows for u in todo)
    if job.engine == "local":
        with progress(rows_todo) if progress else _Null() as p:
            for u in todo:
                rows = read_unit(u, job.text_column, job.id_column)
                table, errors = out.unit_table(
                    model, tasks, u, rows, job.on_error, job.batch_size, job.id_column, progress=p
                )
                if p is not None and rows.problems:
                    p(len(rows.problems))
                out.write_unit(Path(job.output), u, table, errors)
        extra = {"engine": "local", "workers": 1, "nodes": 1}
    else:
        with _quiet_stderr(job.verbose):
            nodes = _run_on_ray(ray, job, tasks, todo, worker_class) if todo else set()
        extra = {"engine": "ray", "workers": job.workers, "nodes": len(nodes)}
    elapsed = time.perf_counter() - t0
    manifest = out.finish(Path(job.output), record, units, extra)
    return {
        **manifest,
        "elapsed_s": elapsed,
        "rows_per_s": rows_todo / elapsed if elapsed > 0 else 0.0,
        "skipped_units": len(units) - len(todo),
    }


def _refuse_input_inside_output(files, output: Path) -> None:
    """OUTPUT is emptied by --force and holds shards that a resume trusts: no input may be in it."""
    out = output.resolve()
    for f in files:
        if Path(f.path).resolve().is_relative_to(out):
            raise SentmtlError(f"input {f.path} is inside OUTPUT {output}: give an OUTPUT folder apart from the input")


def _report_duplicates(repeated: dict[str, list[str]], id_column: str, policy: str) -> None:
    import sys

    first, where = next(iter(repeated.items()))
    more = f"; {len(repeated) - 1} more id(s) repeat" if len(repeated) > 1 else ""
    message = f"{id_column!r} value {first!r} is on {len(where)} rows ({', '.join(where[:3])}){more}"
    if policy == "fail":
        raise SentmtlError(f"{message}: ids must be unique (--duplicate-ids warn to go on)")
    print(f"warning: {message}", file=sys.stderr)


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class _quiet_stderr:
    """Ray's C++ core writes its own log lines to this process's stderr (no logger can silence
    them): unless --verbose, they go to a temporary file while Ray runs, shown only when the run
    fails with something other than sentmtl's own one-line error."""

    def __init__(self, verbose: bool):
        self.verbose = verbose

    def __enter__(self):
        import os
        import sys
        import tempfile

        if self.verbose:
            return self
        sys.stderr.flush()
        self.log = tempfile.NamedTemporaryFile(prefix="sentmtl-ray-", suffix=".log", delete=False)
        self.saved = os.dup(2)
        os.dup2(self.log.fileno(), 2)
        return self

    def __exit__(self, kind, exc, tb):
        import os
        import sys

        if self.verbose:
            return False
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.log.close()
        if kind is None or issubclass(kind, SentmtlError):
            os.unlink(self.log.name)
        else:
            print(f"Ray's log of this run: {self.log.name}", file=sys.stderr)
        return False


def _import_ray(verbose: bool = False):
    import logging
    import os
    import warnings

    # sentmtl never uses the network: Ray's usage-statistics reporter stays off (a user's own setting wins)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise SentmtlError("--engine ray needs Ray: pip install 'sentmtl[ray]'") from None
    if not verbose:
        # Ray Data logs its plan and progress at INFO, and warns of its own settings; a user asks
        # for them with --verbose. sentmtl's own progress and its one-line errors stay.
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        warnings.filterwarnings("ignore", module=r"ray(\..*)?$")
    return ray


def _run_on_ray(ray, job: BatchJob, tasks: list[str], todo, worker_class=None) -> set[str]:
    """The units on a Ray Data actor pool of `workers` actors, one CPU and one thread each. Ray
    restarts an actor that dies and retries its unit (the default for actor pools); a unit written
    twice is the same shard written twice, whole each time."""
    from .worker import ShardWriter

    started = not ray.is_initialized()
    if started:
        ray.init(
            address=job.address,
            num_cpus=None if job.address else job.workers,
            include_dashboard=False,
            logging_level="INFO" if job.verbose else "ERROR",
            log_to_driver=job.verbose,
        )
    try:
        items = [{"unit": json.dumps(u.to_dict())} for u in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            worker_class or ShardWriter,
            fn_constructor_kwargs={
                "config": str(job.config) if job.config is not None else None,
                "tasks": tasks,
                "output": str(Path(job.output).resolve()),
                "text_column": job.text_column,
                "id_column": job.id_column,
                "on_error": job.on_error,
                "batch_size": job.batch_size,
                "backend": job.backend,
                "extra_heads": job.extra_heads,
                "overflow": job.overflow,
            },
            batch_size=1,
            num_cpus=1,
            # one unit an actor at a time: else the first actor up queues every unit while the
            # others start, and the pool runs on one CPU
            compute=ray.data.ActorPoolStrategy(size=job.workers, max_tasks_in_flight_per_actor=1),
        )
        nodes = set()
        for row in ds.iter_rows():
            if row["error"]:
                raise SentmtlError(str(row["error"]))
            nodes.add(row["node"])
        return nodes
    finally:
        if started:
            ray.shutdown()
