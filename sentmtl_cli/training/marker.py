"""What marks a folder as a sentmtl model output (so that --force may replace it), with no heavy
imports: `train` and `fit` both write it first."""

from __future__ import annotations

from pathlib import Path

from ..model import MODEL_FOLDER_MARK

MARKER = "sentmtl-train.json"  # written first into every output folder: what --force may replace


def is_model_folder(folder: Path) -> bool:
    """Does this folder hold a sentmtl training output (its marker, or a model.yaml written by
    train before markers existed)?"""
    if (folder / MARKER).is_file():
        return True
    try:
        with open(folder / "model.yaml", encoding="utf-8") as f:
            return f.readline().startswith(MODEL_FOLDER_MARK)
    except OSError:
        return False
