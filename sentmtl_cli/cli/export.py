"""`sentmtl export`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import ConfigOpt, handles_errors


@handles_errors
def export(
    config: Optional[Path] = ConfigOpt,
    int8: bool = typer.Option(
        False, "--int8", help="Also write an int8 model (int8 weights; each token's activations quantized at run time)."
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Folder (default: <config>.onnx/ beside the config)."
    ),
):
    """Export the backbone (transformer, pooling, normalization) to ONNX for the fast path."""
    from ..backbone.folder import resolve_folder
    from ..config.model import load_config
    from ..export.onnx import export as run_export

    cfg = load_config(config)
    out = run_export(cfg, resolve_folder(cfg.backbone), int8, output, log=lambda s: typer.echo(s, err=True))
    typer.echo(f"wrote {out}", err=True)
