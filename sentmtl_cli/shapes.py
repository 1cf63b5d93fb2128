"""The JSON shapes that the command line, the server and batch share, in one place below all of
them: what `sentmtl similarity --format json|jsonl` prints and `POST /similarity` answers, and the
head of `sentmtl embed`'s JSON. They are a contract (tests/test_cli.py, tests/test_serve.py hold
them); the result dicts of predict and search are made by the model's heads and the index."""

from __future__ import annotations

import numpy as np


def similarity_json(metric: str, texts: list[str], matrix: np.ndarray) -> dict:
    """`{"metric", "texts", "matrix", "score"}`: `score` for two texts only."""
    doc: dict = {"metric": metric, "texts": texts, "matrix": [[float(x) for x in row] for row in matrix]}
    if len(texts) == 2:
        doc["score"] = float(matrix[0, 1])
    return doc


def similarity_pairs(texts: list[str], matrix: np.ndarray) -> list[dict]:
    """One `{"a", "b", "score"}` per pair of texts, each pair once (similarity's JSONL)."""
    return [
        {"a": texts[i], "b": texts[j], "score": float(matrix[i, j])}
        for i in range(len(texts))
        for j in range(i + 1, len(texts))
    ]


def embeddings_head(model: str, dimension: int, normalized: bool) -> dict:
    """What `sentmtl embed --format json` writes ahead of `"embeddings"`."""
    return {"model": model, "dimension": dimension, "normalized": normalized}
