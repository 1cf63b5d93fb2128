"""`sentmtl evaluate`: score a model's head on a labelled file, or its embeddings on STS pairs.
A head reads its own examples and scores its own predictions (the same scoring training's
validation uses); this module only runs the model between the two."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config.data import DataConfig
from ..errors import SentmtlError
from ..files.read import read_text
from ..metrics import pearson, spearman
from ..model import MultiTaskModel, normalize_rows
from ..progress import NullProgress


def evaluate_task(
    model: MultiTaskModel, task: str, data: DataConfig, batch_size: int = 64, progress_factory=NullProgress
) -> dict:
    model.resolve_tasks([task])
    head = model.heads[task]
    ex = head.read_examples(data)
    with progress_factory(len(ex), f"evaluating {task}") as progress:
        _, res = model.run(
            ex.texts, [task], batch_size=batch_size, want_embeddings=False, progress=progress, word_tags=True
        )
    rep = head.score(ex, head.predictions_from_results(ex, res))
    rep.pop("score", None)  # the report names each metric; "score" is training's selection
    rep.pop("metric", None)
    rep.update({"task": task, "data": str(data.path), "untrained": not head.trained})
    return rep


def read_sts(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """STS Benchmark rows (genre, file, year, id, score, s1, s2[, extra]) or plain s1<TAB>s2<TAB>score."""
    a, b, gold = [], [], []
    for n, line in enumerate(read_text(Path(path), "data file").splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        try:
            if len(cols) >= 7:
                score, s1, s2 = float(cols[4]), cols[5], cols[6]
            elif len(cols) == 3:
                s1, s2, score = cols[0], cols[1], float(cols[2])
            else:
                raise ValueError
        except ValueError:
            if n == 1:
                continue  # a header row
            raise SentmtlError(f"{path}:{n}: expected an STS-B row or sentence1<TAB>sentence2<TAB>score") from None
        if not s1.strip() or not s2.strip():
            raise SentmtlError(f"{path}:{n}: empty sentence")
        a.append(s1)
        b.append(s2)
        gold.append(score)
    if len(gold) < 2:
        raise SentmtlError(f"{path}: needs at least two scored pairs")
    return a, b, np.array(gold)


def evaluate_similarity(model: MultiTaskModel, path: Path, batch_size: int = 64, progress_factory=NullProgress) -> dict:
    a, b, gold = read_sts(path)
    with progress_factory(len(a) * 2, "embedding pairs") as progress:
        emb = model.embed(a + b, batch_size=batch_size, progress=progress)
    ea, eb = emb[: len(a)], emb[len(a) :]
    cos = np.einsum("ij,ij->i", normalize_rows(ea), normalize_rows(eb))
    return {
        "data": str(path),
        "pairs": len(gold),
        "spearman": 100 * spearman(cos, gold),
        "pearson": 100 * pearson(cos, gold),
    }
