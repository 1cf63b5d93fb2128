"""Zero-shot labels: a head whose parameters are its labels' own embeddings, made through the
backbone from the label names (and descriptions), so it needs no training and runs in the same
forward pass as every other head: a text's scores are the softmax of its cosine to each label
plus how well the label's name is matched in the text's own tokens (late interaction, below),
over a temperature fitted once on labelled data.

A label's vector is the mean of its prompts' normalized embeddings: each template ("{}" is the
label) with the label's name, and again with its description when it has one. Measured over the
six few-shot sets' train splits (`bench/fewshot.py`, 2,000 texts a set), mean accuracy with the
bare label names: "This text is about {}." alone 46.1, the bare name 47.0, both 47.2 (the
default). Label priors estimated from background text and prompt sets of five or seven templates
were measured too and left out, and so were centering on a background, content-free calibration,
EM over the scored texts and label names widened with their nearest vocabulary words
(bench/zero_shot_variants.py; docs/DISCUSSION.md says what each gave).

Late interaction (`late_interaction`, on unless a config says false): each label's name is also
matched word-piece by word-piece against the text, as ColBERT matches a query (Khattab and
Zaharia, 2020): for each of the name's word-pieces, its best cosine to any of the text's, at the
backbone's last layer (special tokens left out), averaged over the name's pieces and added to the
cosine above. A text's label then rests on the words that say it ("how many" for "number",
"wish" for "counterfactual"), which the mean over the text's tokens blurs. On the same held-out
texts, mean accuracy 47.8 -> 52.0, mean recall per label 51.2 -> 53.7: TREC 42.0 -> 48.3,
Amazon counterfactual 49.4 -> 64.7, Emotion 43.8 -> 46.4, CR 66.5 -> 69.0, SST-5 22.8 -> 23.7,
Banking77 62.5 -> 60.1 (its labels are phrases the whole-text cosine already matches). The two
terms are added as they are, not weighted: a weight tuned on these six sets would be fitted to
the figures that report it.
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
# default templates (bench/fewshot.py); expected calibration error there 0.03-0.12 per set.
# TEMPERATURE is that of the cosine alone (late_interaction: false; `sentmtl fit`'s label prior
# is scaled by it), LATE_TEMPERATURE that of the cosine plus the word-piece match, fitted the same
# way (`bench/fewshot.py --zero-shot-only`: log-loss 1.300, calibration error 0.02-0.11 per set)
TEMPERATURE = 0.064
LATE_TEMPERATURE = 0.15
MAX_NAME_PIECES = 16  # the word-pieces of a label's name that late interaction matches


def prompts(name: str, description: str, templates: list[str] | tuple[str, ...]) -> list[str]:
    """A label's prompts: its name, readable ("card_arrival" -> "card arrival"), and its
    description, each in every template."""
    words = [readable(name)] + ([description.strip()] if description.strip() else [])
    return [t.format(w) for w in words for t in templates]


def readable(name: str) -> str:
    """A label's name as words: "card_arrival" -> "card arrival"."""
    return " ".join(name.replace("_", " ").replace("-", " ").split()) or name


def content_tokens(hidden: np.ndarray, mask: np.ndarray, special: list[list[int]]) -> list[np.ndarray]:
    """Per row of a batch, its tokens' vectors at one layer ([T_i, D] float32, unit rows), the
    special tokens left out (all of them kept for a row that has nothing else)."""
    out = []
    for b in range(hidden.shape[0]):
        real = np.asarray(mask[b], dtype=bool)
        flags = np.zeros(len(real), dtype=bool)
        flags[: len(special[b])] = np.asarray(special[b], dtype=bool)
        keep = real & ~flags
        rows = hidden[b][keep if keep.any() else real].astype(np.float32)
        out.append(rows / np.clip(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12, None))
    return out


def late_scores(texts: list[np.ndarray], names: np.ndarray, owner: np.ndarray, n_labels: int) -> np.ndarray:
    """[N, labels]: for each label, the mean over its name's word-pieces (rows of `names` whose
    `owner` is the label) of the best cosine to any of the text's tokens (unit rows, texts[i])."""
    counts = np.bincount(owner, minlength=n_labels).astype(np.float64)
    out = np.zeros((len(texts), n_labels), dtype=np.float64)
    for i, t in enumerate(texts):
        best = (names @ t.T).max(1).astype(np.float64)  # [name pieces]
        out[i] = np.bincount(owner, weights=best, minlength=n_labels) / counts
    return out


class TokenStates:
    """Not a task: what a model run gives back for each text under this probe's task name, its
    last layer's token vectors (content_tokens). The zero-shot head's label names go through the
    model's one forward path (the server's batches included) as this."""

    trained = True

    def __init__(self, task: str, layer: int):
        self.task, self.layer = task, layer

    def hidden_layers(self) -> list[int]:
        return [self.layer]

    def reads_words(self) -> bool:
        return False

    def predict_batch(self, view: BatchView, top_k: int = 1, word_tags: bool = False) -> list[dict]:
        hidden = view.features["hidden_states"][self.layer]
        return [{"states": t} for t in content_tokens(hidden, view.batch.attention_mask, view.batch.special)]


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
        self.late = cfg.late_interaction is not False  # before the base's init, which calls init_params
        super().__init__(task, cfg, input_dim, num_layers)
        self.temperature = LATE_TEMPERATURE if self.late else TEMPERATURE
        self.trained = True  # nothing to train: its predictions are real from the start
        self._embed: Any = None
        self._tokens: Any = None
        self._lock = threading.Lock()

    def attach(self, embed, tokens=None) -> None:
        """The model's embed(texts) -> [N, dim] normalized rows, to make the label vectors with,
        and its token_states(texts) -> per text [T, D] unit rows, for the names' word-pieces."""
        self._embed, self._tokens = embed, tokens

    def hidden_layers(self) -> list[int]:
        return [self.num_layers] if self.late else []

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"label_embeddings": (len(self.cfg.labels), self.input_dim)}

    def init_params(self, seed: int) -> None:
        self.params = {}  # made from the label names on first use (label_vectors, name_pieces)
        self.trained = True
        self.temperature = LATE_TEMPERATURE if self.late else TEMPERATURE

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

    def name_texts(self) -> list[str]:
        """What late interaction matches: each label's name, as words."""
        return [readable(label) for label in self.cfg.labels]

    def use_name_states(self, states: list[np.ndarray]) -> None:
        """The names' word-piece vectors (content_tokens' rows, one array a label, in labels'
        order), made by the model's forward path (a server's through its batches). A name's first
        MAX_NAME_PIECES only: label names are short (the six few-shot sets' longest, a Banking77
        intent, has 9), and a request's long names must not cost a server more than that."""
        if len(states) != len(self.cfg.labels):
            raise ValueError(f"{len(states)} name states for {len(self.cfg.labels)} labels")
        states = [s[:MAX_NAME_PIECES] for s in states]
        self.params["name_pieces"] = np.concatenate(states).astype(np.float32)
        self.params["name_owner"] = np.repeat(np.arange(len(states)), [len(s) for s in states])

    def name_pieces(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if "name_pieces" not in self.params:
                if self._tokens is None:
                    raise RuntimeError("a zero_shot head must be attached to a model before use")
                self.use_name_states(self._tokens(self.name_texts()))
            return self.params["name_pieces"], self.params["name_owner"]

    def forward_numpy(self, x, extra=None, counts=None) -> np.ndarray:
        """Cosines [N, labels] of sentence embeddings x [N, dim] to the labels; with `extra`
        (late interaction: each text's tokens, content_tokens' rows), the names' match added."""
        x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
        logits = (x @ self.label_vectors().T).astype(np.float64)
        if self.late and extra is not None:
            names, owner = self.name_pieces()
            logits += late_scores(extra, names, owner, len(self.cfg.labels))
        return logits.astype(np.float32)

    def logits(self, view: BatchView) -> np.ndarray:
        """[rows, labels] for a backbone batch (whole texts, or windows of long ones)."""
        tokens = None
        if self.late:
            hidden = view.features["hidden_states"][self.num_layers]
            tokens = content_tokens(hidden, view.batch.attention_mask, view.batch.special)
        return self.forward_numpy(view.features["sentence_embedding"], tokens)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits / self.temperature)

    def predict_batch(self, view: BatchView, top_k: int = 1, word_tags: bool = False) -> list[dict]:
        return self.decode_logits(self.logits(view), top_k)

    def window_outputs(self, view: BatchView) -> list:
        """Per window, its calibrated probabilities (merged as a sentence head's)."""
        return list(self.probabilities(self.logits(view)))

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
    late_interaction: bool | None = None,
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
            late_interaction=late_interaction,
        )
    except ValidationError as e:
        first = e.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SentmtlError(f"{'.'.join(map(str, first['loc'])) or 'labels'}: {message}") from None
