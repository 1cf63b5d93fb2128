"""Scores: accuracy, macro-F1/recall, per-label P/R/F1, entity-level P/R/F1 (exact span), Spearman."""
from __future__ import annotations

import numpy as np


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def classification_report(gold: list[int], pred: list[int], labels: list[str]) -> dict:
    gold_a, pred_a = np.asarray(gold), np.asarray(pred)
    per = {}
    for k, lab in enumerate(labels):
        tp = float(((pred_a == k) & (gold_a == k)).sum())
        fp = float(((pred_a == k) & (gold_a != k)).sum())
        fn = float(((pred_a != k) & (gold_a == k)).sum())
        p, r, f = _prf(tp, fp, fn)
        per[lab] = {"precision": p, "recall": r, "f1": f, "support": int((gold_a == k).sum())}
    present = [lab for lab in labels if per[lab]["support"] > 0] or labels
    return {
        "n": int(len(gold_a)),
        "accuracy": float((gold_a == pred_a).mean()) if len(gold_a) else 0.0,
        "macro_f1": float(np.mean([per[lab]["f1"] for lab in present])),
        "macro_recall": float(np.mean([per[lab]["recall"] for lab in present])),
        "per_label": per,
    }


def bio_spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """(start word, end word exclusive, type) for each entity; lenient I- handling as conlleval."""
    spans, start, typ = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, t = tag.partition("-")
        continues = prefix == "I" and typ == t
        if start is not None and not continues:
            spans.add((start, i, typ))
            start, typ = None, None
        if prefix in ("B", "I") and not continues:
            start, typ = i, t
    return spans


def entity_report(gold: list[list[str]], pred: list[list[str]], types: list[str]) -> dict:
    counts = {t: [0, 0, 0] for t in types}  # tp, fp, fn
    for g, p in zip(gold, pred):
        gs, ps = bio_spans(g), bio_spans(p)
        for s in ps:
            if s[2] in counts:
                counts[s[2]][0 if s in gs else 1] += 1
        for s in gs - ps:
            if s[2] in counts:
                counts[s[2]][2] += 1
    per = {}
    for t, (tp, fp, fn) in counts.items():
        p, r, f = _prf(tp, fp, fn)
        per[t] = {"precision": p, "recall": r, "f1": f, "support": tp + fn}
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    p, r, f = _prf(tp, fp, fn)
    return {"n": len(gold), "precision": p, "recall": r, "entity_f1": f, "per_type": per}


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return ranks


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d else 0.0


def spearman(a, b) -> float:
    return pearson(rank(a), rank(b))
