"""Zero-shot labels: a head whose parameters are its labels' own embeddings, made through the
backbone from the label names (and descriptions), so it needs no training and runs in the same
forward pass as every other head: a text's scores are the softmax of its cosine to each label,
over a temperature fitted once on labelled data (below).

A label's vector is the mean of its prompts' normalized embeddings: each template ("{}" is the
label) with the label's name, and again with its description when it has one. Measured over the
six few-shot sets' train splits (`bench/fewshot.py`, 2,000 texts a set), mean accuracy with the
bare label names: "This text is about {}." alone 46.1, the bare name 47.0, both 47.2 (the
default). Label priors estimated from background text and prompt sets of five or seven templates
were measured too and left out, and so were centering on a background, content-free calibration,
EM over the scored texts and label names widened with their nearest vocabulary words
(bench/zero_shot_variants.py; docs/DISCUSSION.md says what each gave).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..registry import HEADS
from .base import BatchView, softmax
from .classification import SentenceClassificationHead

DEFAULT_TEMPLATES = ("{}", "This text is about {}.")
# softmax(cosine / T): the T with the least log-loss over the six sets' 12,000 texts with the
# default templates (bench/fewshot.py); expected calibration error there 0.03-0.12 per set
TEMPERATURE = 0.064


def prompts(name: str, description: str, templates: list[str] | tuple[str, ...]) -> list[str]:
    """A label's prompts: its name, readable ("card_arrival" -> "card arrival"), and its
    description, each in every template."""
    readable = " ".join(name.replace("_", " ").replace("-", " ").split()) or name
    words = [readable] + ([description.strip()] if description.strip() else [])
    return [t.format(w) for w in words for t in templates]


@HEADS.register("zero_shot")
class ZeroShotHead(SentenceClassificationHead):
    """Labels from their names; the sentence embedding's cosine to each label's vector."""

    @classmethod
    def check_config(cls, cfg):
        for key, value, empty in (
            ("hidden", cfg.hidden, []),
            ("pool_layers", cfg.pool_layers, []),
            ("with_embedding", cfg.with_embedding, False),
            ("weights", cfg.weights, None),
        ):
            if value != empty:
                return f"{key}: a zero_shot head has no trained layers (its labels' embeddings are its parameters)"
        if cfg.min_score or cfg.min_score_capitals:
            return "min_score: a floor on entity scores is for token heads"
        if cfg.word_shape or cfg.lstm:
            return "word_shape: a zero_shot head reads the sentence embedding only"
        if len(cfg.labels) < 2:
            return "labels: give at least two labels to choose between"
        return None

    def __init__(self, task, cfg, input_dim, num_layers):
        super().__init__(task, cfg, input_dim, num_layers)
        self.temperature = TEMPERATURE
        self.trained = True  # nothing to train: its predictions are real from the start
        self._embed: Any = None
        self._lock = threading.Lock()

    def attach(self, embed) -> None:
        """The model's embed(texts) -> [N, dim] normalized rows, to make the label vectors with."""
        self._embed = embed

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"label_embeddings": (len(self.cfg.labels), self.input_dim)}

    def init_params(self, seed: int) -> None:
        self.params = {}  # made from the label names on first use (label_vectors)
        self.trained = True
        self.temperature = TEMPERATURE

    def prompt_texts(self) -> list[list[str]]:
        """Each label's prompts, the texts its vector is the mean of."""
        templates = self.cfg.templates or DEFAULT_TEMPLATES
        return [prompts(label, self.cfg.descriptions.get(label, ""), templates) for label in self.cfg.labels]

    def use_prompt_embeddings(self, embeddings: np.ndarray) -> None:
        """The label vectors from the prompts' embeddings, in prompt_texts' order, flattened (a
        server computes them through its own batches)."""
        rows, at = [], 0
        for texts in self.prompt_texts():
            vecs = np.asarray(embeddings[at : at + len(texts)], dtype=np.float64)
            at += len(texts)
            vecs = vecs / np.clip(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12, None)
            mean = vecs.mean(0)
            rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        if at != len(embeddings):
            raise ValueError(f"{len(embeddings)} prompt embeddings for {at} prompts")
        self.params["label_embeddings"] = np.stack(rows).astype(np.float32)

    def label_vectors(self) -> np.ndarray:
        """[labels, dim], unit rows: made once, through the backbone, on first use."""
        with self._lock:
            if "label_embeddings" not in self.params:
                if self._embed is None:
                    raise RuntimeError("a zero_shot head must be attached to a model before use")
                self.use_prompt_embeddings(self._embed([t for texts in self.prompt_texts() for t in texts]))
            return self.params["label_embeddings"]

    def forward_numpy(self, x, extra=None, counts=None) -> np.ndarray:
        """Cosines [N, labels] of sentence embeddings x [N, dim] to the labels."""
        x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
        return (x @ self.label_vectors().T).astype(np.float32)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits / self.temperature)

    def predict_batch(self, view: BatchView, top_k: int = 1, word_tags: bool = False) -> list[dict]:
        return self.predict_embeddings(view.features["sentence_embedding"], top_k)

    def predict_embeddings(self, embeddings: np.ndarray, top_k: int = 1) -> list[dict]:
        """The results for sentence embeddings [N, dim] computed already (the server's requests
        with labels of their own share the backbone batches and score them after)."""
        return self.decode_logits(self.forward_numpy(np.asarray(embeddings, dtype=np.float32)), top_k)

    def decode_probabilities(self, probs: np.ndarray, top_k: int) -> list[dict]:
        from .classification import decode_sentences

        out = decode_sentences(self.outputs, probs, top_k, False)
        for r in out:
            if self.cfg.multi_label:  # every label whose probability reaches the threshold (the best one at least)
                ranked = sorted(r["scores"].items(), key=lambda kv: -kv[1])
                r["labels"] = [lab for lab, p in ranked if p >= self.cfg.threshold] or [r["label"]]
            r["untrained"] = False
        return out

    def saves_weights(self) -> bool:  # nothing to save: the labels are in the config
        return False

    def torch_module(self):
        from ..errors import SentmtlError

        raise SentmtlError(
            f"heads.{self.task}: a zero_shot head is not trained; `sentmtl fit` trains a head from examples"
        )


ZERO_SHOT_TASK = "zero_shot"  # the task `predict --labels` adds


def parse_labels(specs: list[str], where: str) -> tuple[list[str], dict[str, str]]:
    """Label specs ("name" or "name: description") as names and descriptions; one line each for
    what is wrong (an empty name, a name twice, fewer than two labels)."""
    from ..errors import SentmtlError

    labels: list[str] = []
    descriptions: dict[str, str] = {}
    for spec in specs:
        name, _, description = spec.partition(":")
        name, description = name.strip(), description.strip()
        if not name:
            raise SentmtlError(f"{where}: a label has no name ({spec.strip()!r})")
        if name in labels:
            raise SentmtlError(f"{where}: label {name!r} is given twice")
        labels.append(name)
        if description:
            descriptions[name] = description
    if len(labels) < 2:
        raise SentmtlError(f"{where}: give at least two labels to choose between (got {len(labels)})")
    return labels, descriptions


def zero_shot_config(
    labels: list[str],
    descriptions: dict[str, str] | None = None,
    templates: list[str] | None = None,
    multi_label: bool = False,
    threshold: float = 0.5,
):
    """The HeadConfig of a zero_shot head, validated (a bad template is one line)."""
    from pydantic import ValidationError

    from ..config.model import HeadConfig
    from ..errors import SentmtlError

    try:
        return HeadConfig(
            type="zero_shot",
            labels=labels,
            descriptions=descriptions or {},
            templates=templates or [],
            multi_label=multi_label,
            threshold=threshold,
        )
    except ValidationError as e:
        first = e.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SentmtlError(f"{'.'.join(map(str, first['loc'])) or 'labels'}: {message}") from None
