"""A regression head, defined here and nowhere else: one file plus its registry entry (the decorator).

It predicts one number per text from the sentence embedding, trains with mean squared error, and
is scored by Pearson's r. Importing this module registers the type `test_regression`; `sentmtl
train`, `evaluate` and `predict` then use it with no change to sentmtl itself."""

from __future__ import annotations

from typing import Any

import numpy as np

from sentmtl_cli.config import DataConfig, HeadConfig
from sentmtl_cli.data.examples import SentenceExamples
from sentmtl_cli.data.readers import parse_rows, read_rows
from sentmtl_cli.heads import BatchView, TrainingRows
from sentmtl_cli.heads.mlp import MLPHead
from sentmtl_cli.metrics import pearson
from sentmtl_cli.registry import HEADS


def _number(raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError("target is not a number") from None
    if not np.isfinite(value):
        raise ValueError("target is not finite")
    return value


@HEADS.register("test_regression")
class RegressionHead(MLPHead):
    metrics = ("pearson", "neg_mse")
    default_metric = "pearson"

    @classmethod
    def check_config(cls, cfg: HeadConfig) -> str | None:
        return None if len(cfg.labels) == 1 else "labels: a regression head has one output: give its name, e.g. [score]"

    def predict_batch(self, view: BatchView, top_k: int = 1, word_tags: bool = False) -> list[dict]:
        values = self.forward_numpy(view.features["sentence_embedding"])[:, 0]
        return [{"value": float(v)} for v in values]

    def read_examples(self, data: DataConfig) -> SentenceExamples:
        texts, values = parse_rows(read_rows(data, self.task), data, self.task, _number)
        return SentenceExamples(texts, np.array(values, dtype=np.float32))

    def training_rows(self, ex: Any, idx: Any, batch: Any, out: dict, row0: int) -> TrainingRows:
        import torch

        x = out["sentence_embedding"][row0 : row0 + len(idx)]
        return TrainingRows(x, torch.from_numpy(ex.labels[np.asarray(idx, dtype=np.int64)]), [1] * len(idx))

    def loss(self, output, y):
        import torch.nn.functional as F

        return F.mse_loss(output[:, 0], y)

    def decode_rows(self, output: np.ndarray, y: np.ndarray, counts: list[int]) -> list:
        return output[:, 0].tolist()

    def predictions_from_results(self, ex: Any, results: list[dict]) -> list:
        return [r[self.task]["value"] for r in results]

    def score(self, ex: Any, predictions: list, metric: str | None = None) -> dict:
        metric = self.check_metric(metric)
        pred, gold = np.asarray(predictions, np.float64), np.asarray(ex.labels, np.float64)
        rep = {"n": len(gold), "pearson": pearson(pred, gold), "neg_mse": -float(np.mean((pred - gold) ** 2))}
        rep["score"], rep["metric"] = rep[metric], metric
        return rep

    def table_columns(self, top_k: int) -> list[str]:
        return ["value"]

    def table_cells(self, result: dict, top_k: int) -> list[str]:
        return [f"{result['value']:.3f}"]

    def report_title(self, rep: dict) -> str:
        return f"Pearson {rep['pearson']:.4f}, MSE {-rep['neg_mse']:.4f} ({rep['n']} examples)"
