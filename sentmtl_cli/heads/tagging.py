"""Token classification: BIO entity tags for each word, read from one or more backbone layers (a
learned softmax mix), decoded to valid BIO (Viterbi) and then to entity spans with character
offsets. A word is tagged at its first sub-token; its other pieces are ignored."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config.model import HeadConfig
from ..registry import HEADS
from .base import BatchView, TrainingRows, softmax
from .bio import bio_paths, bio_tags, bio_viterbi, decode_entities, word_entities
from .mlp import MLPHead

if TYPE_CHECKING:
    import torch

    from ..config.data import DataConfig


_DIGIT, _ALNUM, _UPPER = re.compile("[0-9]"), re.compile("[0-9A-Za-z]"), re.compile("[A-Z]")  # ASCII words

SHAPES = ("initial capital", "all capitals", "lower case", "has a digit", "punctuation only", "inner capital")


def word_shapes(text: str, spans: list[tuple[int, int]]) -> np.ndarray:
    """Six 0/1 flags per word ([n, 6] float32): what an uncased backbone cannot see. An ASCII word
    (most of them) is tested with compiled patterns, others character by character; both give
    what str.isdigit, isalnum and isupper say."""
    rows = []
    for s, e in spans:
        w = text[s:e]
        digit: bool
        alnum: bool
        inner: bool
        if w.isascii():
            digit, alnum = _DIGIT.search(w) is not None, _ALNUM.search(w) is not None
            inner = _UPPER.search(w, 1) is not None
        else:
            digit = any(c.isdigit() for c in w)
            alnum = any(c.isalnum() for c in w)
            inner = any(c.isupper() for c in w[1:])
        rows.append((w[:1].isupper(), w.isupper(), w.islower(), digit, not alnum, inner))
    return np.array(rows, dtype=np.float32).reshape(len(spans), len(SHAPES))


@HEADS.register("token_classification")
class TokenClassificationHead(MLPHead):
    metrics = ("entity_f1", "precision", "recall")
    default_metric = "entity_f1"

    @classmethod
    def check_config(cls, cfg: HeadConfig) -> str | None:
        if problem := cls.zero_shot_keys(cfg):
            return problem
        bio = [lab for lab in cfg.labels if lab == "O" or lab[:2] in ("B-", "I-", "E-", "S-", "L-", "U-")]
        if bio:
            return (
                f"labels: give entity types (e.g. [PER, ORG]), not BIO tags ({', '.join(bio)}): "
                "the B-/I-/O tags are made from the types"
            )
        if cfg.multi_label:
            return "multi_label: a token head gives one tag per word"
        if cfg.pool_layers:
            return "pool_layers: a token head reads `layers:`; pool_layers is for sentence heads"
        if cfg.pool != "mean_max":
            return "pool: pooling over tokens is for sentence heads"
        if cfg.with_embedding:
            return "with_embedding: the sentence embedding is for sentence heads"
        return None

    def drop_weak(
        self, text: str, spans: list[tuple[int, int]], tags: list[str], probs: list[float], rows: np.ndarray
    ) -> tuple[list[str], list[float]]:
        """Tags and their probabilities with each entity under its min_score (min_score_capitals
        for one written in capitals) made O, at O's probability (rows: the words' tag probabilities)."""
        low, caps = self.cfg.min_score, self.cfg.min_score_capitals
        if not (low or caps):
            return tags, probs
        out, p = list(tags), list(probs)
        o = self.outputs.index("O")
        for s, e, _, score in word_entities(tags, probs):
            written = text[spans[s][0] : spans[e - 1][1]]
            floor = max(low, caps) if written.isupper() and len(written) > 1 else low
            if score < floor:
                out[s:e] = ["O"] * (e - s)
                p[s:e] = rows[s:e, o].tolist()
        return out, p

    @property
    def outputs(self) -> list[str]:
        key = tuple(self.cfg.labels)
        if getattr(self, "_tags_key", None) != key:  # computed once per label set, not per word
            self._tags_key, self._tags = key, bio_tags(self.cfg.labels)
        return self._tags

    def hidden_layers(self) -> list[int]:
        return self.resolve_layers(self.cfg.layers, "layers")

    def mixed_layers(self) -> int:
        return len(self.cfg.layers)

    def extra_features(self) -> int:
        return len(SHAPES) if self.cfg.word_shape else 0

    def sequence_size(self) -> int:
        return self.cfg.lstm

    # ---- inference -----------------------------------------------------------------------------------
    def token_features(self, features: dict, rows: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
        """The vectors at (batch, position) `rows`, one per layer read: gathered before the layers
        are mixed, so padding and word pieces cost nothing."""
        return [features["hidden_states"][i][rows] for i in self.hidden_layers()]

    def reads_words(self) -> bool:
        return True

    def word_logits(self, view: BatchView) -> tuple[list[int], np.ndarray]:
        """Each row's word count, and the logits [words, tags] of all rows' words in order."""
        words = view.words
        rows_b = np.array([b for b, ws in enumerate(words) for _ in ws], dtype=np.int64)
        rows_t = np.array([t for ws in words for _, t in ws], dtype=np.int64)
        lengths = [len(ws) for ws in words]
        if not len(rows_b):
            return lengths, np.zeros((0, len(self.outputs)), dtype=np.float32)
        shapes = None
        if self.cfg.word_shape:
            shapes = np.concatenate([word_shapes(t, [sp for sp, _ in ws]) for t, ws in zip(view.texts, words)])
        return lengths, self.forward_numpy(self.token_features(view.features, (rows_b, rows_t)), shapes, lengths)

    def predict_batch(self, view: BatchView, top_k: int = 1, word_tags: bool = False) -> list[dict]:
        lengths, logits = self.word_logits(view)
        spans = [[sp for sp, _ in ws] for ws in view.words]
        return self.decode_words(view.texts, spans, lengths, logits, word_tags)

    def decode_words(
        self,
        texts: list[str],
        spans: list[list[tuple[int, int]]],
        lengths: list[int],
        logits: np.ndarray,
        word_tags: bool,
    ) -> list[dict]:
        """Valid BIO paths over each text's words, then its entities (and, asked, every word's tag)."""
        names = self.outputs
        probs = softmax(logits / self.temperature) if len(logits) else np.zeros((0, len(names)))
        paths = bio_paths(probs, lengths, names)
        path_probs = probs[np.arange(len(probs)), np.concatenate(paths)].tolist() if len(probs) else []
        out, pos = [], 0
        for b, text in enumerate(texts):
            n = lengths[b]
            tags, word_probs = self.drop_weak(
                text, spans[b], [names[k] for k in paths[b].tolist()], path_probs[pos : pos + n], probs[pos : pos + n]
            )
            r: dict = {"entities": decode_entities(text, spans[b], tags, word_probs)}
            if word_tags:  # per word (start, end, BIO tag, the tag's probability)
                r["words"] = [(s, e, t, p) for (s, e), t, p in zip(spans[b], tags, word_probs)]
            out.append(r)
            pos += n
        return out

    def window_outputs(self, view: BatchView) -> list:
        """Per window: its words' spans, their logits, and how far (in tokens) each word's first
        sub-token sits from the window's nearer edge."""
        from ..text.windows import special_ends

        lengths, logits = self.word_logits(view)
        out, pos = [], 0
        for b, ws in enumerate(view.words):
            lead, tail = special_ends(view.batch.special[b])
            last = len(view.batch.special[b]) - tail - 1
            margin = [min(t - lead, last - t) for _, t in ws]
            out.append(([sp for sp, _ in ws], logits[pos : pos + lengths[b]], margin))
            pos += lengths[b]
        return out

    def merge_windows(self, text: str, parts: list, sizes: list[int], top_k: int = 1, word_tags: bool = False) -> dict:
        """Each word's logits from the window where it sits farthest from an edge; then a BIO
        path over the words, one across overlapping windows (spans stay valid across the join)
        and a new one where a window starts a sentence of its own (no entity runs from one
        sentence into the next); no word, so no entity, is reported twice."""
        best: dict[int, tuple[int, tuple[int, int], np.ndarray]] = {}
        breaks, last = set(), -1
        for spans, logits, margin in parts:
            if spans and spans[0][0] > last >= 0:  # shares no word with the window before
                breaks.add(spans[0][0])
            for sp, row, m in zip(spans, logits, margin):
                seen = best.get(sp[0])
                if seen is None or m > seen[0]:
                    best[sp[0]] = (m, sp, row)
            if spans:
                last = max(last, spans[-1][0])
        keys = sorted(best)
        spans = [best[k][1] for k in keys]
        names = self.outputs
        if not keys:
            return self.decode_words([text], [spans], [0], np.zeros((0, len(names)), dtype=np.float32), word_tags)[0]
        probs = softmax(np.stack([best[k][2] for k in keys]) / self.temperature)
        cut = [i for i, k in enumerate(keys) if k in breaks]
        lengths = np.diff([0] + cut + [len(keys)]).tolist()
        path = np.concatenate(bio_paths(probs, lengths, names))
        tags, path_probs = self.drop_weak(
            text, spans, [names[k] for k in path.tolist()], probs[np.arange(len(probs)), path].tolist(), probs
        )
        r: dict = {"entities": decode_entities(text, spans, tags, path_probs)}
        if word_tags:
            r["words"] = [(s, e, t, p) for (s, e), t, p in zip(spans, tags, path_probs)]
        return r

    # ---- data and training ---------------------------------------------------------------------------
    def read_examples(self, data: DataConfig):
        from ..data.examples import token_examples
        from ..data.readers import read_token_data

        d = read_token_data(data, self.outputs, self.task)
        return token_examples(d.words, d.tags, self.outputs)

    def training_rows(self, ex: Any, idx: Any, batch: Any, out: dict, row0: int) -> TrainingRows:
        """One row per word that kept a first sub-token, [n, L*D (+6 shape flags)] over the layers
        read; y is [n, 2]: the word's tag and its index among the example's words (for scoring)."""
        import torch

        from ..text.words import align_first_subtokens

        hs = out["hidden_states"]
        b_idx, t_idx, targets, counts, shapes = [], [], [], [], []
        for r, i in enumerate(idx):
            first = align_first_subtokens(ex.spans[i], batch.offsets[row0 + r], batch.special[row0 + r])
            kept = [w for w, t in enumerate(first) if t >= 0]
            b_idx += [row0 + r] * len(kept)
            t_idx += [first[w] for w in kept]
            targets += [(int(ex.tags[i][w]), w) for w in kept]
            counts.append(len(kept))
            if self.cfg.word_shape:
                shapes.append(word_shapes(ex.texts[i], [ex.spans[i][w] for w in kept]))
        b = torch.tensor(b_idx, dtype=torch.long)
        tt = torch.tensor(t_idx, dtype=torch.long)
        parts = [hs[layer][b, tt] for layer in self.hidden_layers()]
        if self.cfg.word_shape:
            parts.append(torch.from_numpy(np.concatenate(shapes) if shapes else np.zeros((0, len(SHAPES)), np.float32)))
        x = torch.cat(parts, dim=1)
        return TrainingRows(x, torch.tensor(targets, dtype=torch.long).reshape(-1, 2), counts)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(output, y[:, 0]) if len(y) else output.sum() * 0.0

    def decode_rows(self, output: np.ndarray, y: np.ndarray, counts: list[int]) -> list:
        """Each example's words tagged as predict tags them (valid BIO), as {word index: (tag, its
        probability)}."""
        probs = softmax(output / self.temperature) if len(output) else output
        preds, pos = [], 0
        for n in counts:
            p = probs[pos : pos + n]
            path = bio_viterbi(p, self.outputs) if n else []
            preds.append(
                {int(w): (self.outputs[k], float(p[j, k])) for j, (w, k) in enumerate(zip(y[pos : pos + n, 1], path))}
            )
            pos += n
        return preds

    def calibration_loss(self, output: np.ndarray, y: np.ndarray, temperature: float) -> float:
        """Per-word NLL of the gold tag (y[:, 0])."""
        z = output.astype(np.float64) / temperature
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-logp[np.arange(len(y)), y[:, 0]].mean())

    def predictions_from_results(self, ex: Any, results: list[dict]) -> list:
        preds = []
        for i, r in enumerate(results):
            by_start = {s: (t, p) for s, e, t, p in r[self.task]["words"]}
            preds.append({w: by_start[s] for w, (s, e) in enumerate(ex.spans[i]) if s in by_start})
        return preds

    def score(self, ex: Any, predictions: list, metric: str | None = None) -> dict:
        """Entity P/R/F1 on the data's own tokens (CoNLL-style): a token's tag is its first word's;
        a word the model did not tag (cut by truncation) counts as O."""
        from ..data.examples import to_conll_tags
        from ..metrics import entity_report, expected_calibration_error

        metric = self.check_metric(metric)
        gold, pred, confidence, correct = [], [], [], []
        for i, p in enumerate(predictions):
            tags = [p[w][0] if w in p else "O" for w in range(len(ex.spans[i]))]
            pred.append(to_conll_tags(ex.owner[i], len(ex.gold[i]), tags))
            gold.append(ex.gold[i])
            # calibration per predicted entity (on the words the model sees): its score, as predict
            # gives it, against whether the gold has exactly that entity
            gold_ents = {(s, e, t) for s, e, t, _ in word_entities([self.outputs[k] for k in ex.tags[i]])}
            word_probs = [p[w][1] if w in p else 1.0 for w in range(len(ex.spans[i]))]
            for s, e, t, score in word_entities(tags, word_probs):
                confidence.append(score)
                correct.append((s, e, t) in gold_ents)
        rep = entity_report(gold, pred, list(self.cfg.labels))
        # how far entity scores are from being right as often as they say (0 = calibrated)
        rep["ece"] = expected_calibration_error(np.array(confidence), np.array(correct))
        # how often the head finds an entity in a sentence that has none: what ordinary text meets
        free = [i for i, g in enumerate(gold) if all(t == "O" for t in g)]
        rep["entity_free"] = len(free)
        rep["false_alarm_rate"] = sum(any(t != "O" for t in pred[i]) for i in free) / len(free) if free else 0.0
        rep["score"], rep["metric"] = rep[metric], metric
        return rep

    # ---- rendering -----------------------------------------------------------------------------------
    def table_columns(self, top_k: int) -> list[str]:
        return ["entities"]

    def table_cells(self, result: dict, top_k: int) -> list[str]:
        ents = result["entities"]
        return ["; ".join(f"{e['text']} [{e['label']} {e['score']:.2f}]" for e in ents) or "—"]

    def report_title(self, rep: dict) -> str:
        alarms = (
            f"; an entity found in {rep['false_alarm_rate']:.1%} of the {rep['entity_free']} sentences with none"
            if rep.get("entity_free")
            else ""
        )
        return (
            f"entity F1 {rep['entity_f1']:.4f} (P {rep['precision']:.4f}, R {rep['recall']:.4f}, "
            f"{rep['n']} sentences{alarms}" + (f"; calibration error {rep['ece']:.3f}" if "ece" in rep else "") + ")"
        )

    def report_rows(self, rep: dict) -> dict[str, dict]:
        return rep["per_type"]

    def arrow_fields(self) -> list:
        import pyarrow as pa

        entity = pa.struct(
            [
                pa.field("text", pa.string()),
                pa.field("label", pa.string()),
                pa.field("start", pa.int32()),
                pa.field("end", pa.int32()),
                pa.field("score", pa.float32()),
            ]
        )
        return [pa.field(f"{self.task}_entities", pa.list_(entity))]

    def arrow_columns(self, results: list[dict]) -> list:
        import pyarrow as pa

        return [pa.array([r["entities"] for r in results], self.arrow_fields()[0].type)]
