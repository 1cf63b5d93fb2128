"""Sentence classification: an MLP on the pooled sentence embedding. Single-label heads train with
softmax cross-entropy; multi-label heads (`multi_label: true`) with a sigmoid per label and binary
cross-entropy, and predict every label at 0.5 or more."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SentmtlError
from ..registry import HEADS
from .base import BatchView, TrainingRows, merge_windows_mean, sigmoid, softmax
from .mlp import MLPHead, mixed_attention_pool

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


def pool_mean_max(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[B, T, D] token vectors and their [B, T] mask -> [B, 2D]: the mean, then the max, over real tokens."""
    m = mask.astype(hidden.dtype)
    mean = np.matmul(m[:, None, :], hidden)[:, 0] / np.clip(m.sum(1, keepdims=True), 1.0, None)
    mx = np.max(hidden, axis=1, where=(mask > 0)[:, :, None], initial=np.float32(-1e4))
    return np.concatenate([mean, mx], axis=1)


@HEADS.register("sentence_classification")
class SentenceClassificationHead(MLPHead):
    """An MLP on the sentence embedding, or (`pool_layers: [2, 4, 6]`) on the mean and max over the
    text's tokens of chosen hidden layers, which carry more than the last layer's mean; or
    (`pool: attention`) on a learned mix of those layers, its tokens weighted by learned attention."""

    metrics = ("accuracy", "macro_f1", "macro_recall")
    default_metric = "accuracy"

    @classmethod
    def check_config(cls, cfg):
        if problem := cls.zero_shot_keys(cfg):
            return problem
        if cfg.word_shape:
            return "word_shape: word-shape features are for token heads"
        if cfg.lstm:
            return "lstm: a sequence layer over words is for token heads"
        if cfg.min_score or cfg.min_score_capitals:
            return "min_score: a floor on entity scores is for token heads"
        if cfg.pool == "attention" and not cfg.pool_layers:
            return "pool: attention pools pool_layers' tokens; give pool_layers (e.g. [2, 4, 6])"
        if cfg.with_embedding and (not cfg.pool_layers or cfg.pool != "mean_max"):
            return "with_embedding: adds the sentence embedding to pool_layers' mean and max (pool: mean_max)"
        if cfg.first_token_layers and (not cfg.pool_layers or cfg.pool != "mean_max"):
            return "first_token_layers: adds the first token's vectors to pool_layers' mean and max (pool: mean_max)"
        if cfg.word_pieces and (not cfg.pool_layers or cfg.pool != "mean_max"):
            return "word_pieces: adds word-piece features to pool_layers' mean and max (pool: mean_max)"
        return None

    def bind_tokenizer(self, tokenizer) -> None:
        """word_pieces' ids: a table from vocabulary id to the feature's column (-1: not read)."""
        self._piece_column = None
        if self.cfg.word_pieces:
            ids = tokenizer.piece_ids(list(self.cfg.word_pieces))
            table = np.full(max(tokenizer.vocab_size, int(ids.max()) + 1), -1, dtype=np.int64)
            table[ids] = np.arange(len(ids))
            self._piece_column = table

    def piece_features(self, input_ids: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
        """[B, len(word_pieces)]: 1 where the row's (unmasked) tokens hold the word-piece."""
        table = getattr(self, "_piece_column", None)
        if table is None or input_ids is None:
            raise SentmtlError(f"{self.task}: a head with word_pieces needs the model's tokenizer and the batch's ids")
        cols = table[np.clip(input_ids, 0, len(table) - 1)]
        rows, pos = np.nonzero((cols >= 0) & (mask > 0))
        out = np.zeros((input_ids.shape[0], len(self.cfg.word_pieces)), dtype=np.float32)
        out[rows, cols[rows, pos]] = 1.0
        return out

    def pooled_layers(self) -> list[int]:
        return self.resolve_layers(self.cfg.pool_layers, "pool_layers")

    def first_token_layers(self) -> list[int]:
        return self.resolve_layers(self.cfg.first_token_layers, "first_token_layers")

    def hidden_layers(self) -> list[int]:
        pooled = self.pooled_layers()
        return pooled + [i for i in self.first_token_layers() if i not in pooled]

    def attention_pooling(self) -> bool:
        return self.cfg.pool == "attention"

    def cache_dtype(self) -> str:
        # every token's vectors of every pooled layer: float32 would be about 10 GB for the shipped recipe
        return "float16" if self.attention_pooling() else "float32"

    def mixed_layers(self) -> int:
        return len(self.cfg.pool_layers) if self.attention_pooling() else 1

    def layer_dim(self) -> int:
        if self.attention_pooling() or not self.cfg.pool_layers:
            return self.input_dim
        return (
            2 * len(self.cfg.pool_layers) + self.cfg.with_embedding + len(self.cfg.first_token_layers)
        ) * self.input_dim + len(self.cfg.word_pieces)

    def inputs_numpy(self, features: dict, mask: np.ndarray, input_ids: np.ndarray | None = None) -> np.ndarray:
        if not self.cfg.pool_layers:
            return features["sentence_embedding"]
        if self.attention_pooling():  # [B, T, D]: the layers mixed, then the tokens pooled
            layers = [features["hidden_states"][i] for i in self.hidden_layers()]
            mix = softmax(self.params["mix"]) if len(layers) > 1 else np.ones(1, dtype=np.float32)
            return mixed_attention_pool(layers, mix, mask, self.params["attention"])
        # pooled once per batch, whichever heads read a layer (the shipped cls and sent both read 2, 4, 6)
        pooled = features.setdefault("mean_max", {})
        for i in self.pooled_layers():
            if i not in pooled:
                pooled[i] = pool_mean_max(features["hidden_states"][i], mask)
        first = [features["sentence_embedding"]] if self.cfg.with_embedding else []
        # position 1: the first word-piece ([SEP] for a text of no word-pieces); padding is on the right
        lead = [features["hidden_states"][i][:, 1] for i in self.first_token_layers()]
        pieces = [self.piece_features(input_ids, mask)] if self.cfg.word_pieces else []
        return np.concatenate(first + [pooled[i] for i in self.pooled_layers()] + lead + pieces, axis=1)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        z = logits / self.temperature
        return sigmoid(z) if self.cfg.multi_label else softmax(z)

    def calibration_loss(self, output: np.ndarray, y: np.ndarray, temperature: float) -> float:
        z = output.astype(np.float64) / temperature
        if self.cfg.multi_label:  # binary cross-entropy, stable form
            return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean())

    def view_logits(self, view: BatchView) -> np.ndarray:
        """The logits [B, labels] for a batch's rows (before the temperature)."""
        return self.forward_numpy(self.inputs_numpy(view.features, view.batch.attention_mask, view.batch.input_ids))

    def predict_batch(self, view: BatchView, top_k: int = 1, word_tags: bool = False) -> list[dict]:
        return self.decode_logits(self.view_logits(view), top_k)

    def decode_logits(self, logits: np.ndarray, top_k: int) -> list[dict]:
        """Result dicts from logits [N, labels], the temperature applied here."""
        return self.decode_probabilities(self.probabilities(logits), top_k)

    def decode_probabilities(self, probs: np.ndarray, top_k: int) -> list[dict]:
        return decode_sentences(self.outputs, probs, top_k, self.cfg.multi_label)

    def window_outputs(self, view: BatchView) -> list:
        """Per window, its calibrated probabilities."""
        return list(self.probabilities(self.view_logits(view)))

    def merge_windows(self, text: str, parts: list, sizes: list[int], top_k: int = 1, word_tags: bool = False) -> dict:
        return self.decode_probabilities(merge_windows_mean(parts, sizes)[None], top_k)[0]

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

    def class_of_examples(self, ex: Any) -> np.ndarray | None:
        return None if self.cfg.multi_label else np.asarray(ex.labels)

    def training_rows(self, ex: Any, idx: Any, batch: Any, out: dict, row0: int) -> TrainingRows:
        import torch

        rows = slice(row0, row0 + len(idx))
        y = torch.from_numpy(ex.labels[np.asarray(idx, dtype=np.int64)])
        if self.attention_pooling():  # one row per real token, each layer's vector side by side
            real = torch.from_numpy(batch.attention_mask[rows] > 0)
            counts = real.sum(1).tolist()
            x = torch.cat([out["hidden_states"][i][rows][real] for i in self.hidden_layers()], 1)
            return TrainingRows(x, y.repeat_interleave(torch.tensor(counts), dim=0), counts)
        if self.cfg.pool_layers:
            m = torch.from_numpy(batch.attention_mask[rows]).to(out["hidden_states"][0].dtype)[:, :, None]
            parts = [out["sentence_embedding"][rows]] if self.cfg.with_embedding else []
            for i in self.pooled_layers():
                h = out["hidden_states"][i][rows]
                parts += [(h * m).sum(1) / m.sum(1).clamp(min=1.0), h.masked_fill(m == 0, -1e4).max(1).values]
            parts += [out["hidden_states"][i][rows][:, 1] for i in self.first_token_layers()]
            if self.cfg.word_pieces:
                pieces = self.piece_features(batch.input_ids[rows], batch.attention_mask[rows])
                parts.append(torch.from_numpy(pieces).to(parts[0].dtype))
            x = torch.cat(parts, 1)
        else:
            x = out["sentence_embedding"][rows]
        return TrainingRows(x, y, [1] * len(idx))

    def targets(self, y: torch.Tensor, counts: list[int]) -> torch.Tensor:
        if not self.attention_pooling():
            return y
        import torch

        starts = np.cumsum(counts) - np.asarray(counts)  # every text has a token ([CLS] at least)
        return y[torch.from_numpy(starts.astype(np.int64))]

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if self.cfg.multi_label:
            return F.binary_cross_entropy_with_logits(output, y)
        return F.cross_entropy(output, y)

    def decode_rows(self, output: np.ndarray, y: np.ndarray, counts: list[int]) -> list:
        """Labels (single-label: with the calibrated probability of the label chosen)."""
        if self.cfg.multi_label:  # sigmoid(z) >= 0.5 exactly when z >= 0
            return [set(np.flatnonzero(row >= 0).tolist()) for row in output]
        probs = self.probabilities(output)
        best = probs.argmax(-1)
        return list(zip(best.tolist(), probs[np.arange(len(best)), best].tolist()))

    def predictions_from_results(self, ex: Any, results: list[dict]) -> list:
        index = {lab: i for i, lab in enumerate(self.cfg.labels)}
        r = [res[self.task] for res in results]
        if self.cfg.multi_label:
            return [{index[lab] for lab in x["labels"]} for x in r]
        return [(index[x["label"]], x["score"]) for x in r]

    def score(self, ex: Any, predictions: list, metric: str | None = None) -> dict:
        from ..metrics import classification_report, expected_calibration_error, multilabel_report

        metric = self.check_metric(metric)
        if self.cfg.multi_label:
            gold = [set(np.flatnonzero(row > 0.5).tolist()) for row in ex.labels]
            rep = multilabel_report(gold, predictions, list(self.cfg.labels))
        else:
            labels = [p for p, _ in predictions]
            rep = classification_report(ex.labels.tolist(), labels, list(self.cfg.labels))
            # how far the scores are from being right as often as they say (0 = calibrated)
            rep["ece"] = expected_calibration_error(
                np.array([c for _, c in predictions]), np.array(labels) == ex.labels
            )
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
        ece = f"; calibration error {rep['ece']:.3f}" if "ece" in rep else ""
        return (
            f"accuracy {rep['accuracy']:.4f}, macro-F1 {rep['macro_f1']:.4f}, "
            f"macro-recall {rep['macro_recall']:.4f} ({rep['n']} examples{ece})"
        )

    def report_rows(self, rep: dict) -> dict[str, dict]:
        return rep["per_label"]

    def arrow_fields(self) -> list:
        import pyarrow as pa

        t = self.task
        fields = [
            pa.field(f"{t}_label", pa.string()),
            pa.field(f"{t}_score", pa.float32()),
            pa.field(f"{t}_scores", pa.struct([pa.field(lab, pa.float32()) for lab in self.cfg.labels])),
        ]
        if self.cfg.multi_label:
            fields.append(pa.field(f"{t}_labels", pa.list_(pa.string())))
        return fields

    def arrow_columns(self, results: list[dict]) -> list:
        import pyarrow as pa

        labels = list(self.cfg.labels)
        scores = [
            pa.array(np.array([r["scores"][lab] for r in results], dtype=np.float32), pa.float32()) for lab in labels
        ]
        cols = [
            pa.array([r["label"] for r in results], pa.string()),
            pa.array(np.array([r["score"] for r in results], dtype=np.float32), pa.float32()),
            pa.StructArray.from_arrays(scores, fields=list(self.arrow_fields()[2].type)),
        ]
        if self.cfg.multi_label:
            cols.append(pa.array([r["labels"] for r in results], pa.list_(pa.string())))
        return cols
