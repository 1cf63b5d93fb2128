"""Logits -> labels and probabilities; BIO tags -> entity spans with character offsets."""
from __future__ import annotations

import numpy as np


def decode_sentence(labels: list[str], probs: np.ndarray, top_k: int, multi_label: bool) -> dict:
    order = np.argsort(-probs, kind="stable")
    out = {
        "label": labels[int(order[0])],
        "score": float(probs[order[0]]),
        "scores": {lab: float(p) for lab, p in zip(labels, probs)},
    }
    if multi_label:
        out["labels"] = [labels[i] for i in order if probs[i] >= 0.5]
    if top_k > 1:
        out["top"] = [{"label": labels[int(i)], "score": float(probs[i])} for i in order[:top_k]]
    return out


def decode_entities(
    text: str, word_spans: list[tuple[int, int]], tags: list[str], tag_probs: list[float]
) -> list[dict]:
    """Group word tags into entities. An I- tag that does not continue an entity of its type
    starts one (lenient, as conlleval does). Score: mean probability of the entity's word tags."""
    entities: list[dict] = []
    cur: dict | None = None
    for (s, e), tag, p in zip(word_spans, tags, tag_probs):
        if tag == "O":
            cur = None
            continue
        prefix, typ = tag.split("-", 1)
        if prefix == "I" and cur is not None and cur["label"] == typ:
            cur["end"] = e
            cur["_p"].append(p)
            continue
        cur = {"label": typ, "start": s, "end": e, "_p": [p]}
        entities.append(cur)
    return [
        {"text": text[x["start"] : x["end"]], "label": x["label"], "start": x["start"], "end": x["end"],
         "score": float(np.mean(x["_p"]))}
        for x in entities
    ]


def bio_viterbi(probs: np.ndarray, tags: list[str]) -> list[int]:
    """The most probable tag sequence that is valid BIO: I-X only after B-X or I-X.

    Per-word argmax lets a stray I- tag open an entity (and run on through the next words);
    a constrained path removes those, at the cost of a loop over words with K*K steps."""
    n = len(probs)
    if n == 0:
        return []
    best = probs.argmax(-1).tolist()
    if _valid_bio(best, tags):  # the unconstrained optimum is valid, so it is the answer
        return best
    logp = np.log(np.clip(probs, 1e-12, None))
    k = len(tags)
    allowed = np.ones((k, k), dtype=bool)  # allowed[prev, cur]
    start_ok = np.ones(k, dtype=bool)
    for j, t in enumerate(tags):
        if t.startswith("I-"):
            start_ok[j] = False
            for i, p in enumerate(tags):
                allowed[i, j] = p in (f"B-{t[2:]}", t)
    trans = np.where(allowed, 0.0, -np.inf)
    score = np.where(start_ok, logp[0], -np.inf)
    back = np.zeros((n, k), dtype=np.int64)
    for w in range(1, n):
        cand = score[:, None] + trans  # [prev, cur]
        back[w] = cand.argmax(0)
        score = cand.max(0) + logp[w]
    path = [int(score.argmax())]
    for w in range(n - 1, 0, -1):
        path.append(int(back[w, path[-1]]))
    return path[::-1]


def _valid_bio(path: list[int], tags: list[str]) -> bool:
    prev = "O"
    for k in path:
        t = tags[k]
        if t.startswith("I-") and prev not in (f"B-{t[2:]}", t):
            return False
        prev = t
    return True
