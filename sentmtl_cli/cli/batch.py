"""`sentmtl batch`: a corpus through embed and every head into typed parquet shards, on this
machine or a Ray cluster, resumable (sentmtl_cli/batch/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import (
    Backend,
    BackendOpt,
    BatchOpt,
    ConfigOpt,
    LabelsFileOpt,
    LabelsOpt,
    MultiLabelOpt,
    Overflow,
    TemplateOpt,
    ThreadsOpt,
    ThresholdOpt,
    handles_errors,
    overflow_option,
    zero_shot_head,
)


@handles_errors
def batch(
    input: Path = typer.Argument(
        ..., help="A .txt (a text a line), .jsonl, .csv or .parquet file, or a folder of them.", show_default=False
    ),
    output: Path = typer.Argument(..., help="A folder: parquet shards, then _SUCCESS.", show_default=False),
    tasks: Optional[str] = typer.Option(
        None, "--tasks", "-t", help="Comma-separated: embed and head names (default: embed and every head)."
    ),
    config: Optional[Path] = ConfigOpt,
    engine: str = typer.Option("local", "--engine", help="local | ray."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster to join (auto, ray://host:10001); default: a local Ray."
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Ray actors (one CPU each)."),
    text_column: str = typer.Option("text", "--text-column", help="The text's column (.jsonl, .csv, .parquet)."),
    id_column: Optional[str] = typer.Option(
        None, "--id-column", help="A column of ids to keep (as strings); default: the row's position."
    ),
    batch_size: int = BatchOpt,
    on_error: str = typer.Option(
        "fail", "--on-error", help="fail | skip: a bad row stops the run, or is listed in OUTPUT/_errors.jsonl."
    ),
    duplicate_ids: str = typer.Option(
        "fail", "--duplicate-ids", help="fail | warn: when --id-column repeats a value (the rows are named)."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Show Ray's own logs and progress (quiet by default)."),
    force: bool = typer.Option(False, "--force", help="Replace an OUTPUT that holds another batch."),
    shard_rows: int = typer.Option(10_000, "--shard-rows", min=1, help="Input rows per output shard."),
    overflow: Overflow = overflow_option(Overflow.window),
    labels: Optional[str] = LabelsOpt,
    labels_file: Optional[str] = LabelsFileOpt,
    template: Optional[list[str]] = TemplateOpt,
    multi_label: bool = MultiLabelOpt,
    threshold: float = ThresholdOpt,
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Run embed and the task heads over a corpus into parquet shards (resumable; local or Ray)."""
    from ..batch.run import BatchJob, run_batch
    from ..heads.zero_shot import ZERO_SHOT_TASK
    from . import render

    zero_shot = zero_shot_head(labels, labels_file, template, multi_label, threshold)

    job = BatchJob(
        input=input,
        output=output,
        tasks=tasks,
        config=config,
        engine=engine,
        address=address,
        workers=workers,
        text_column=text_column,
        id_column=id_column,
        batch_size=batch_size,
        on_error=on_error,
        duplicate_ids=duplicate_ids,
        verbose=verbose,
        force=force,
        shard_rows=shard_rows,
        backend=backend.value if backend else None,
        threads=threads,
        overflow=overflow.value,
        extra_heads={ZERO_SHOT_TASK: zero_shot.model_dump(mode="json")} if zero_shot is not None else None,
    )
    m = run_batch(job, progress=lambda total: render.Progress(total, "rows"))
    if m.get("already_complete"):
        typer.echo(f"{output} already holds this batch, complete: {m['rows']:,} rows (--force to redo it)", err=True)
        return
    size = m["bytes"] / 1e6
    resumed = f", {m['skipped_units']} shards already done" if m["skipped_units"] else ""
    typer.echo(
        f"{m['rows']:,} rows -> {output} ({m['shards']} shards, {size:,.1f} MB) in {m['elapsed_s']:.1f} s, "
        f"{m['rows_per_s']:,.0f} rows/s; {m['errors']} errors{resumed}",
        err=True,
    )
