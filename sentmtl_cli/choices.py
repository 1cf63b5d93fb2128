"""Every set of named choices the config, the API and the CLI share, declared once. Light: the CLI
imports it for `--help`, the config uses it for validation."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A str enum that prints as its value (in f-strings and errors alike)."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = str.__format__  # type: ignore[assignment]


class Backend(Choice):
    """What runs the backbone: auto = the ONNX export when a fresh one exists, else torch."""

    auto = "auto"
    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"


class Metric(Choice):
    """How two embeddings are compared."""

    cosine = "cosine"
    dot = "dot"
    euclidean = "euclidean"


class Fmt(Choice):
    """Output of commands that print rows: a table for people, json or jsonl for scripts."""

    table = "table"
    json = "json"
    jsonl = "jsonl"


class EmbedFmt(Choice):
    """`embed` output: the row formats, or npy (a float32 matrix)."""

    table = "table"
    json = "json"
    jsonl = "jsonl"
    npy = "npy"


class ReportFmt(Choice):
    """Output of commands that print one document (info, evaluate)."""

    table = "table"
    json = "json"


class Overflow(Choice):
    """What a text longer than the backbone's max_seq_length gets: read in overlapping windows
    whose outputs are merged, cut to its first tokens (as the model was trained), or refused."""

    window = "window"
    truncate = "truncate"
    error = "error"


class FitPool(Choice):
    """What a head `sentmtl fit` makes reads: auto = attention with 16+ examples a label, 6 labels
    at most and no unlabeled texts, else mean_max (docs/DISCUSSION.md, section 6)."""

    auto = "auto"
    attention = "attention"  # each token's vectors of layers 2 and 4, weighted by a learned query
    mean_max = "mean_max"  # the linear head over the embedding, pooled layers, first token, word-pieces
