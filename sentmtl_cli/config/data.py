"""Where a task's labelled data comes from and how to read it (the readers are in data/readers.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DATA_FORMATS = ("tsv", "csv", "jsonl", "text", "conll")


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: Path
    format: Literal["tsv", "csv", "jsonl", "text", "conll", "auto"] = "auto"
    labels_path: Path | None = None  # format text: a parallel file of labels
    text_column: str | int = 0  # a name (header row / JSON key) or a 0-based column index
    label_column: str | int = 1
    header: bool | None = None  # None: a header row if the columns are named
    label_map: dict[str, str] = Field(default_factory=dict)
    token_prefix: str = ""  # conll: a prefix to strip from tokens, such as "en:"
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    skip: int = Field(0, ge=0)  # drop the first N usable examples (e.g. to take validation from further on)
    limit: int | None = Field(None, ge=1)  # then keep the first N examples
