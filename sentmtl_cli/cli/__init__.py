"""The `sentmtl` command line: thin Typer commands over the Python API, one module per stack
(infer.py, train.py, export.py), shared options and error handling in options.py, output in render.py.

Nothing heavy is imported at module level (torch, transformers, numpy): `sentmtl --help` stays
instant. Bad input raises SentmtlError, which becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import sys

import typer

from ..defaults import VERSION as __version__
from ..errors import SentmtlError
from . import batch, export, index, infer, options, serve, train

app = typer.Typer(
    name="sentmtl",
    help="One sentence-transformer backbone, several task heads: embed, compare, classify, tag entities.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def version_callback(value: bool):
    if value:
        typer.echo(f"sentmtl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version and exit."
    ),
):
    """sentmtl: multi-task sentence transformer, offline, from YAML configs."""


for command in (
    infer.embed,
    infer.similarity,
    infer.predict,
    infer.search,
    infer.info,
    train.train,
    train.fit,
    train.evaluate,
    export.export,
    train.experiment,
    batch.batch,
    index.index,
    serve.serve,
):
    app.command()(command)


def main() -> None:
    """Console entry point: no traceback reaches the user unless SENTMTL_DEBUG is set."""
    import signal

    # pydantic looks for plugins of its own in every installed package's metadata the first time a
    # config is read (15-30 ms of every command's start-up); the CLI's configs use none
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    signal.signal(signal.SIGTERM, options.on_sigterm)
    sys.unraisablehook = options.on_unraisable  # a SIGTERM caught inside a finalizer is delivered again
    if sys.stdout is None:  # started with stdout closed
        sys.stdout = options.ClosedStdout()
    try:
        app()
    except SystemExit as e:
        options.finished()  # exits 143 if SIGTERM came during the command
        options.quick_exit(e.code)
        raise
    except SentmtlError as e:  # raised outside a command (should not happen, but never a traceback)
        options.finished()
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        options.finished()
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        options.finished()
        if os.environ.get("SENTMTL_DEBUG"):
            raise
        typer.echo(f"internal error: {type(e).__name__}: {e} (set SENTMTL_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
    options.finished()


if __name__ == "__main__":
    main()
