"""The Ray side of sentmtl: `Predictor`, public (imported as `sentmtl_cli.ray.Predictor`) for users'
own Ray Data pipelines, and `ShardWriter`, the worker `sentmtl batch --engine ray` runs. Each loads
the model once per actor; the task list is the one both engines accept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..defaults import BATCH_SIZE
from ..errors import SentmtlError


def load_model(config, threads: int, backend: str | None):
    from ..model import load

    return load(config, threads=threads, backend=backend)


def check_overflow(overflow: str) -> str:
    from ..choices import Overflow

    if str(overflow) not in {o.value for o in Overflow}:
        raise SentmtlError(f"--overflow must be window, truncate or error, not {overflow!r}")
    return str(overflow)


def add_extra_heads(model, extra_heads: dict | None) -> None:
    """Heads made on the fly (`batch --labels`: a zero-shot head), the same on every worker."""
    from ..config.model import HeadConfig

    for task, spec in (extra_heads or {}).items():
        model.add_head(task, HeadConfig.model_validate(spec))


def resolve_batch_tasks(model, tasks) -> list[str]:
    """`embed` and head names (a list, or one comma-separated string); None: embed and every head."""
    from .output import EMBED

    if tasks is None:
        return [EMBED, *model.heads]
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    names = list(dict.fromkeys(t.strip() for t in tasks if isinstance(t, str) and t.strip()))
    if not names:
        raise SentmtlError("no task given (the task list is empty)")
    unknown = [t for t in names if t != EMBED and t not in model.heads]
    if unknown:
        raise SentmtlError(
            f"unknown task {', '.join(map(repr, unknown))}: this config has embed, {', '.join(model.heads) or 'no heads'}"
        )
    return names


class Predictor:
    """A Ray Data callable class: each batch (a pyarrow Table, a pandas DataFrame or a dict of numpy
    arrays, with a text column) comes back as a pyarrow Table with the tasks' columns added."""

    def __init__(
        self,
        config: str | Path | None = None,
        tasks: list[str] | str | None = None,
        text_column: str = "text",
        backend: str | None = None,
        threads: int = 1,
        batch_size: int = BATCH_SIZE,
        overflow: str = "window",
    ):
        self.model = load_model(config, threads, backend)
        self.model.overflow = check_overflow(overflow)
        self.tasks = resolve_batch_tasks(self.model, tasks)
        self.text_column, self.batch_size = text_column, batch_size

    def __call__(self, batch: Any):
        import pyarrow as pa

        from .inputs import text_problem
        from .output import task_columns

        table = _as_table(batch)
        if self.text_column not in table.column_names:
            raise SentmtlError(f"no column {self.text_column!r} in the batch (it has {', '.join(table.column_names)})")
        texts = table.column(self.text_column).to_pylist()
        for k, t in enumerate(texts):
            why = text_problem(t, self.text_column)
            if why:
                raise SentmtlError(f"row {k} of the batch: {why}")
        fields, cols = task_columns(self.model, self.tasks, texts, self.batch_size)
        for f, c in zip(fields, cols):
            table = table.append_column(f, c)
        assert isinstance(table, pa.Table)
        return table


def _as_table(batch: Any):
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, dict):
        return pa.table(
            {k: list(v) if getattr(getattr(v, "dtype", None), "kind", "") == "O" else v for k, v in batch.items()}
        )
    return pa.Table.from_pandas(batch, preserve_index=False)


class ShardWriter:
    """`sentmtl batch --engine ray`'s worker: each input row names a unit of the plan; the worker
    reads that unit's rows itself (so ids are positions in the input), runs every task, and writes
    the unit's shard whole (see batch/output.py). A retried unit writes the same shard again."""

    def __init__(
        self,
        config,
        tasks,
        output,
        text_column,
        id_column,
        on_error,
        batch_size,
        backend,
        threads=1,
        extra_heads=None,
        overflow="window",
    ):
        self.model = load_model(config, threads, backend)
        self.model.overflow = check_overflow(overflow)
        add_extra_heads(self.model, extra_heads)
        self.tasks = resolve_batch_tasks(self.model, tasks)
        self.output = Path(output)
        self.text_column, self.id_column = text_column, id_column
        self.on_error, self.batch_size = on_error, batch_size

    def __call__(self, batch: dict) -> dict:
        import ray

        from .inputs import Unit, read_unit
        from .output import unit_table, write_unit

        node = ray.get_runtime_context().get_node_id()
        done: dict[str, list] = {"unit": [], "rows": [], "errors": [], "error": [], "node": []}
        for spec in batch["unit"]:
            unit = Unit.from_dict(json.loads(spec))
            try:
                self.before_unit(unit)
                rows = read_unit(unit, self.text_column, self.id_column)
                table, errors = unit_table(
                    self.model, self.tasks, unit, rows, self.on_error, self.batch_size, self.id_column
                )
                write_unit(self.output, unit, table, errors)
                message = ""
            except SentmtlError as e:  # reported by the driver as one line, not a remote traceback
                table, errors, message = None, [], str(e)
            except Exception as e:  # noqa: BLE001 (the same: one line naming the unit)
                table, errors = None, []
                message = f"internal error in unit {unit.index} ({unit.file}): {type(e).__name__}: {e}"
            done["unit"].append(unit.index)
            done["rows"].append(unit.rows)
            done["errors"].append(len(errors))
            done["error"].append(message)
            done["node"].append(node)
        return done

    def before_unit(self, unit) -> None:
        """Called before each unit (a test overrides it to kill the worker mid-job)."""
