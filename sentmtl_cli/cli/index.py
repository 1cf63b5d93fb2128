"""`sentmtl index`: a corpus (or a `sentmtl batch` output) into a persistent LanceDB index with
every head's outputs, searched by `sentmtl search --index` (sentmtl_cli/index/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import Backend, BackendOpt, BatchOpt, ConfigOpt, Overflow, ThreadsOpt, handles_errors, overflow_option


@handles_errors
def index(
    input: Path = typer.Argument(
        ...,
        help="What batch reads (.txt, .jsonl, .csv, .parquet, or a folder of them), or a sentmtl batch OUTPUT folder.",
        show_default=False,
    ),
    index_path: Path = typer.Argument(..., metavar="INDEX", help="The index folder.", show_default=False),
    tasks: Optional[str] = typer.Option(
        None, "--tasks", "-t", help="Comma-separated heads to store (default: every head; the embedding always)."
    ),
    add: bool = typer.Option(False, "--add", help="Append INPUT's rows to INDEX (one commit) instead of building it."),
    force: bool = typer.Option(False, "--force", help="Build again over an INDEX that holds a sentmtl index."),
    config: Optional[Path] = ConfigOpt,
    text_column: str = typer.Option("text", "--text-column", help="The text's column (.jsonl, .csv, .parquet)."),
    id_column: Optional[str] = typer.Option(
        None, "--id-column", help="A column of ids to keep (as strings); default: the row's position."
    ),
    on_error: str = typer.Option("fail", "--on-error", help="fail | skip: a bad row stops the build, or is left out."),
    overflow: Overflow = overflow_option(Overflow.window),
    engine: str = typer.Option("local", "--engine", help="local | ray: the rows computed here, or on Ray Data actors."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster to join (auto, ray://host:10001); default: a local Ray."
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Ray actors (one CPU each)."),
    batch_size: int = BatchOpt,
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Build a persistent search index of a corpus: its vectors and every head's outputs, as filters."""
    import json

    from ..errors import SentmtlError
    from ..index.store import IndexJob, build
    from . import render
    from .infer import load_model

    if on_error not in ("fail", "skip"):
        raise SentmtlError(f"--on-error must be fail or skip, not {on_error!r}")
    if add and force:
        raise SentmtlError("--add appends and --force builds again: give one")
    m = load_model(config, threads, backend)
    job = IndexJob(
        input=input,
        index=index_path,
        tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None,
        add=add,
        force=force,
        text_column=text_column,
        id_column=id_column,
        batch_size=batch_size,
        on_error=on_error,
        engine=engine,
        address=address,
        workers=workers,
        config=config,
        backend=backend.value if backend else None,
        overflow=overflow.value,
    )
    rep = build(m, job, progress=lambda total: render.Progress(total, "indexing"))
    typer.echo(json.dumps(rep))
