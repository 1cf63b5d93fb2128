"""`sentmtl evaluate`: score a model's head on a labelled file, or its embeddings on STS pairs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import DataConfig, _read_text
from .errors import SentmtlError
from .io import NullProgress
from .metrics import classification_report, entity_report, pearson, spearman
from .backbone import normalize_numpy
from .model import MultiTaskModel
from .taskdata import TokenExamples, load_examples, to_conll_tags


def evaluate_task(model: MultiTaskModel, task: str, data: DataConfig, batch_size: int = 64, progress_factory=NullProgress) -> dict:
    model.resolve_tasks([task])
    head = model.heads[task]
    ex = load_examples(head, data, task)
    with progress_factory(len(ex), f"evaluating {task}") as progress:
        return _evaluate_loaded(model, task, head, ex, data, batch_size, progress)


def _evaluate_loaded(model, task, head, ex, data, batch_size, progress) -> dict:
    if head.level == "sentence":
        res = model.predict(ex.texts, tasks=[task], batch_size=batch_size, progress=progress)
        index = {lab: i for i, lab in enumerate(head.cfg.labels)}
        pred = [index[r[task]["label"]] for r in res]
        rep = classification_report(ex.labels.tolist(), pred, list(head.cfg.labels))
    else:
        assert isinstance(ex, TokenExamples)
        _, res = model.run(ex.texts, [task], batch_size=batch_size, want_embeddings=False,
                           progress=progress, word_tags=True)
        gold, pred = [], []
        for i, r in enumerate(res):
            by_start = {s: t for s, e, t in r[task]["words"]}
            tags = [by_start.get(s, "O") for s, e in ex.spans[i]]
            pred.append(to_conll_tags(ex.owner[i], len(ex.gold[i]), tags))
            gold.append(ex.gold[i])
        rep = entity_report(gold, pred, list(head.cfg.labels))
    rep.update({"task": task, "data": str(data.path), "untrained": not head.trained})
    return rep


def read_sts(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """STS Benchmark rows (genre, file, year, id, score, s1, s2[, extra]) or plain s1<TAB>s2<TAB>score."""
    a, b, gold = [], [], []
    for n, line in enumerate(_read_text(Path(path)).splitlines(), 1):
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
    cos = np.einsum("ij,ij->i", normalize_numpy(ea), normalize_numpy(eb))
    return {"data": str(path), "pairs": len(gold), "spearman": 100 * spearman(cos, gold), "pearson": 100 * pearson(cos, gold)}
