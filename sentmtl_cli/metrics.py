"""Scores. Accuracy, macro-F1/recall and per-label P/R/F1 come from scikit-learn, rank correlation
from scipy; what is ours is entity-level scoring (exact spans, conlleval's lenient I- handling; tested
against conlleval-style expectations) and the report dicts' shape, which `evaluate` prints."""

from __future__ import annotations

import numpy as np


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def _per_label(gold, pred, labels: list[str]) -> dict:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        gold, pred, labels=list(range(len(labels))), average=None, zero_division=0
    )
    return {
        lab: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
        for k, lab in enumerate(labels)
    }


def classification_report(gold: list[int], pred: list[int], labels: list[str]) -> dict:
    """Accuracy, and F1 and recall averaged over the labels present in gold (all labels if none)."""
    from sklearn.metrics import accuracy_score

    per = _per_label(np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64), labels)
    present = [lab for lab in labels if per[lab]["support"] > 0] or labels
    return {
        "n": len(gold),
        "accuracy": float(accuracy_score(gold, pred)) if len(gold) else 0.0,
        "macro_f1": float(np.mean([per[lab]["f1"] for lab in present])),
        "macro_recall": float(np.mean([per[lab]["recall"] for lab in present])),
        "per_label": per,
    }


def multilabel_report(gold: list[set[int]], pred: list[set[int]], labels: list[str]) -> dict:
    """Multi-label: accuracy is exact-set match; macro-F1/recall over labels present in gold."""
    from sklearn.metrics import precision_recall_fscore_support
    from sklearn.preprocessing import MultiLabelBinarizer

    mlb = MultiLabelBinarizer(classes=list(range(len(labels))))
    g, p = mlb.fit_transform(gold), mlb.transform(pred)
    pr, rc, f1, sup = precision_recall_fscore_support(g, p, average=None, zero_division=0)
    per = {
        lab: {"precision": float(pr[k]), "recall": float(rc[k]), "f1": float(f1[k]), "support": int(sup[k])}
        for k, lab in enumerate(labels)
    }
    present = [lab for lab in labels if per[lab]["support"] > 0] or labels
    return {
        "n": len(gold),
        "accuracy": float(np.mean([a == b for a, b in zip(gold, pred)])) if gold else 0.0,
        "macro_f1": float(np.mean([per[lab]["f1"] for lab in present])),
        "macro_recall": float(np.mean([per[lab]["recall"] for lab in present])),
        "per_label": per,
    }


def bio_spans(tags: list[str]) -> set[tuple[int, int, str | None]]:
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
    for t, (tp_t, fp_t, fn_t) in counts.items():
        pt, rt, ft = _prf(tp_t, fp_t, fn_t)
        per[t] = {"precision": pt, "recall": rt, "f1": ft, "support": tp_t + fn_t}
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    prec, rec, f1 = _prf(tp, fp, fn)
    return {"n": len(gold), "precision": prec, "recall": rec, "entity_f1": f1, "per_type": per}


def pearson(a, b) -> float:
    """Pearson's r; 0 where either side is constant (scipy would give NaN)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return 0.0
    from scipy.stats import pearsonr

    return float(pearsonr(a, b).statistic)


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties averaged); 0 where either side is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between how sure the predictions say they are and how often they are right, in
    equal-width confidence bins, weighted by each bin's share of predictions (Guo et al. 2017)."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)
