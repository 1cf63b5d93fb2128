"""Sentence classification: an MLP on the pooled sentence embedding. Single-label heads train with
softmax cross-entropy; multi-label heads (`multi_label: true`) with a sigmoid per label and binary
cross-entropy, and predict every label at 0.5 or more."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..registry import HEADS
from .base import BatchView, TrainingRows, sigmoid, softmax
from .mlp import MLPHead

if TYPE_CHECKING:
    import torch

    from ..config.data import DataConfig


def decode_sentences(labels: list[str], probs: np.ndarray, top_k: int, multi_label: bool) -> list[dict]:
    """One result per row of probs [N, labels]: the label, its score, every label's score, and the
    top k (and, multi-label, every label at 0.5 or more). Sorted once for the whole batch."""
    order = np.argsort(-probs, axis=1, kind="stable").tolist()
    rows = probs.tolist()
    out = []
    for ps, o in zip(rows, order):
        r = {"label": labels[o[0]], "score": ps[o[0]], "scores": dict(zip(labels, ps))}
        if multi_label:
            r["labels"] = [labels[i] for i in o if ps[i] >= 0.5]
        if top_k > 1:
            r["top"] = [{"label": labels[i], "score": ps[i]} for i in o[:top_k]]
        out.append(r)
    return out


@HEADS.register("sentence_classification")
class SentenceClassificationHead(MLPHead):
    metrics = ("accuracy", "macro_f1", "macro_recall")
    default_metric = "accuracy"

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits) if self.cfg.multi_label else softmax(logits)

    def logits(self, features: dict) -> np.ndarray:
        return self.forward_numpy(features["sentence_embedding"])

    def predict_batch(self, view: BatchView, top_k: int = 1, word_tags: bool = False) -> list[dict]:
        probs = self.probabilities(self.logits(view.features))
        return decode_sentences(self.outputs, probs, top_k, self.cfg.multi_label)

    # ---- data and training ---------------------------------------------------------------------------
    def read_examples(self, data: DataConfig):
        from ..data.examples import SentenceExamples
        from ..data.readers import read_sentence_data

        d = read_sentence_data(data, self.cfg.labels, self.task, multi_label=self.cfg.multi_label)
        if self.cfg.multi_label:  # [N, labels] 0/1 targets
            targets = np.zeros((len(d.labels), len(self.cfg.labels)), dtype=np.float32)
            for i, labs in enumerate(d.labels):
                targets[i, labs] = 1.0
            return SentenceExamples(d.texts, targets)
        return SentenceExamples(d.texts, np.array(d.labels, dtype=np.int64))

    def training_rows(self, ex: Any, idx: Any, batch: Any, out: dict, row0: int) -> TrainingRows:
        import torch

        x = out["sentence_embedding"][row0 : row0 + len(idx)]
        return TrainingRows(x, torch.from_numpy(ex.labels[np.asarray(idx, dtype=np.int64)]), [1] * len(idx))

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if self.cfg.multi_label:
            return F.binary_cross_entropy_with_logits(output, y)
        return F.cross_entropy(output, y)

    def decode_rows(self, output: np.ndarray, y: np.ndarray, counts: list[int]) -> list:
        if self.cfg.multi_label:  # sigmoid(z) >= 0.5 exactly when z >= 0
            return [set(np.flatnonzero(row >= 0).tolist()) for row in output]
        return output.argmax(-1).tolist()

    def predictions_from_results(self, ex: Any, results: list[dict]) -> list:
        index = {lab: i for i, lab in enumerate(self.cfg.labels)}
        r = [res[self.task] for res in results]
        if self.cfg.multi_label:
            return [{index[lab] for lab in x["labels"]} for x in r]
        return [index[x["label"]] for x in r]

    def score(self, ex: Any, predictions: list, metric: str | None = None) -> dict:
        from ..eval.metrics import classification_report, multilabel_report

        metric = self.check_metric(metric)
        if self.cfg.multi_label:
            gold = [set(np.flatnonzero(row > 0.5).tolist()) for row in ex.labels]
            rep = multilabel_report(gold, predictions, list(self.cfg.labels))
        else:
            rep = classification_report(ex.labels.tolist(), predictions, list(self.cfg.labels))
        rep["score"], rep["metric"] = rep[metric], metric
        return rep

    # ---- rendering -----------------------------------------------------------------------------------
    def table_columns(self, top_k: int) -> list[str]:
        return ["label", "score"] + ([f"top {top_k}"] if top_k > 1 else [])

    def table_cells(self, result: dict, top_k: int) -> list[str]:
        cells = [result["label"], f"{result['score']:.3f}"]
        if top_k > 1:
            cells.append(", ".join(f"{x['label']} {x['score']:.2f}" for x in result["top"]))
        return cells

    def report_title(self, rep: dict) -> str:
        return (
            f"accuracy {rep['accuracy']:.4f}, macro-F1 {rep['macro_f1']:.4f}, "
            f"macro-recall {rep['macro_recall']:.4f} ({rep['n']} examples)"
        )

    def report_rows(self, rep: dict) -> dict[str, dict]:
        return rep["per_label"]
