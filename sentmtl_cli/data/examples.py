"""Task examples ready for training and evaluation, with a seeded train/validation split.

Token tasks are re-split into the words the model sees at inference (text.split_words), so a
CoNLL token such as "R.H." trains its pieces the way predict will meet them: the first piece keeps
the token's tag, later pieces continue the entity (I-) or stay O. Evaluation maps predictions back
to the CoNLL tokens, so entity scores are CoNLL-style on the data's own tokenization."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..text.words import split_words, words_to_text


@dataclass
class SentenceExamples:
    texts: list[str]
    labels: np.ndarray  # [N] int64 label indices ([N, labels] 0/1 for a multi-label head; any target array)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx) -> SentenceExamples:
        return SentenceExamples([self.texts[i] for i in idx], self.labels[idx])

    def concat(self, other: SentenceExamples) -> SentenceExamples:
        return SentenceExamples(self.texts + other.texts, np.concatenate([self.labels, other.labels]))

    def key_bytes(self, i: int) -> bytes:
        """Example i's target, as bytes (what a feature cache's key hashes)."""
        return np.ascontiguousarray(self.labels[i]).tobytes()


@dataclass
class TokenExamples:
    texts: list[str]
    spans: list[list[tuple[int, int]]]  # split words' char spans
    tags: list[np.ndarray]  # per split word, tag index (training target)
    owner: list[np.ndarray]  # per split word, index of its CoNLL token
    gold: list[list[str]]  # per CoNLL token, gold tag (for CoNLL-style scores)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx) -> TokenExamples:
        return TokenExamples(*([getattr(self, f)[i] for i in idx] for f in self._fields))

    def concat(self, other: TokenExamples) -> TokenExamples:
        return TokenExamples(*(getattr(self, f) + getattr(other, f) for f in self._fields))

    def key_bytes(self, i: int) -> bytes:
        return np.asarray(self.spans[i], dtype=np.int64).tobytes() + self.tags[i].tobytes()

    _fields = ("texts", "spans", "tags", "owner", "gold")


def token_examples(words: list[list[str]], tags: list[list[int]], tag_names: list[str]) -> TokenExamples:
    index = {t: i for i, t in enumerate(tag_names)}
    out = TokenExamples([], [], [], [], [])
    for ws, ts in zip(words, tags):
        text, wspans = words_to_text(ws)
        pieces, ptags, owner = [], [], []
        for k, ((s, e), t) in enumerate(zip(wspans, ts)):
            name = tag_names[t]
            for j, (ps, pe) in enumerate(split_words(text[s:e])):
                pieces.append((s + ps, s + pe))
                owner.append(k)
                if j == 0 or name == "O":
                    ptags.append(t)
                else:
                    ptags.append(index["I-" + name.split("-", 1)[1]])
        out.texts.append(text)
        out.spans.append(pieces)
        out.tags.append(np.array(ptags, dtype=np.int64))
        out.owner.append(np.array(owner, dtype=np.int64))
        out.gold.append([tag_names[t] for t in ts])
    return out


def to_conll_tags(owner: np.ndarray, n_tokens: int, piece_tags: list[str]) -> list[str]:
    """A CoNLL token's predicted tag is that of its first piece (O if it had none)."""
    out = ["O"] * n_tokens
    seen = set()
    for k, tag in zip(owner.tolist(), piece_tags):
        if k not in seen:
            out[k] = tag
            seen.add(k)
    return out


def split_examples(ex, val_fraction: float, seed: int, max_val: int | None):
    """A seeded shuffle, then the first val_fraction (at most max_val) is held out."""
    n = len(ex)
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    n_val = int(round(n * val_fraction))
    if max_val:
        n_val = min(n_val, max_val)
    if val_fraction > 0 and n > 1:
        n_val = max(1, min(n_val, n - 1))
    return ex.subset(np.sort(perm[n_val:])), ex.subset(np.sort(perm[:n_val]))
