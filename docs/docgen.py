"""Helpers for the generated parts of the docs (run by cog: `make docs` writes them, `make lint`
checks them). Each generated block is the output of a command the project runs: a results file
that `make bench` or `make experiments` wrote, or `sentmtl COMMAND --help`."""

from __future__ import annotations

import os
from pathlib import Path

import cog

ROOT = Path(__file__).resolve().parent.parent


def include(path: str, skip_title: bool = False) -> None:
    """A results file, as written; skip_title drops its "### title" line and the blank after it
    (the doc gives its own heading)."""
    lines = (ROOT / path).read_text(encoding="utf-8").strip("\n").split("\n")
    if skip_title and lines and lines[0].startswith("#"):
        lines = lines[2:] if len(lines) > 1 and not lines[1].strip() else lines[1:]
    cog.outl("\n".join(lines))


def cli_help(*command: str) -> None:
    """`sentmtl COMMAND --help`, as a fenced block (at a fixed width, so it does not depend on the terminal)."""
    from typer.testing import CliRunner

    from sentmtl_cli.cli import app

    os.environ["COLUMNS"] = "100"
    os.environ["TERMINAL_WIDTH"] = "100"
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="sentmtl", terminal_width=100)
    if result.exit_code != 0:
        raise RuntimeError(f"sentmtl {' '.join(command)} --help failed: {result.output}")
    cog.outl(" ".join(["$ sentmtl", *command, "--help"]))
    cog.outl(result.output.rstrip())
