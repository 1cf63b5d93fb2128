"""BIO tagging: the tag set from entity types, valid-BIO decoding (Viterbi), and word tags -> entity
spans with character offsets."""

from __future__ import annotations

import numpy as np


def word_entities(tags: list[str], tag_probs: list[float] | None = None) -> list[tuple[int, int, str, float]]:
    """Group word tags into entities: (first word, last word + 1, type, score). An I- tag that
    does not continue an entity of its type starts one (lenient, as conlleval does). Score: the
    mean probability of the entity's word tags (1.0 when none are given)."""
    entities: list[list] = []
    cur: list | None = None
    for w, tag in enumerate(tags):
        p = 1.0 if tag_probs is None else tag_probs[w]
        if tag == "O":
            cur = None
            continue
        prefix, typ = tag.split("-", 1)
        if prefix == "I" and cur is not None and cur[2] == typ:
            cur[1] = w + 1
            cur[3].append(p)
            continue
        cur = [w, w + 1, typ, [p]]
        entities.append(cur)
    return [(s, e, t, sum(ps) / len(ps)) for s, e, t, ps in entities]


def decode_entities(
    text: str, word_spans: list[tuple[int, int]], tags: list[str], tag_probs: list[float]
) -> list[dict]:
    """Entities (word_entities) with their text and character offsets, as `predict` gives them."""
    out = []
    for s, e, label, score in word_entities(tags, tag_probs):
        start, end = word_spans[s][0], word_spans[e - 1][1]
        out.append({"text": text[start:end], "label": label, "start": start, "end": end, "score": score})
    return out


def _bio_rules(tags: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(start_ok[k], allowed[prev, cur]): which tags may open a sequence, and follow which."""
    key = tuple(tags)
    rules = _RULES.get(key)
    if rules is None:
        k = len(tags)
        allowed = np.ones((k, k), dtype=bool)
        start_ok = np.ones(k, dtype=bool)
        for j, t in enumerate(tags):
            if t.startswith("I-"):
                start_ok[j] = False
                for i, p in enumerate(tags):
                    allowed[i, j] = p in (f"B-{t[2:]}", t)
        rules = _RULES[key] = (start_ok, allowed)
    return rules


_RULES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def bio_paths(probs: np.ndarray, lengths: list[int], tags: list[str]) -> list[np.ndarray]:
    """bio_viterbi for many sequences stacked in `probs` ([sum(lengths), K]), one path per sequence.

    Where a sequence's per-word argmax is already valid BIO it is the answer (checked once over the
    whole stack). The rest run one Viterbi together, padded to the longest: a loop over word
    positions, not over sequences."""
    start_ok, allowed = _bio_rules(tags)
    best = probs.argmax(-1) if len(probs) else np.zeros(0, dtype=np.int64)
    ok = np.empty(len(best), dtype=bool)
    if len(best):
        ok[0] = True
        ok[1:] = allowed[best[:-1], best[1:]]
    starts = np.cumsum([0] + list(lengths[:-1])).astype(np.int64)
    nonempty = np.asarray(lengths) > 0
    ok[starts[nonempty]] = start_ok[best[starts[nonempty]]]
    out = [best[s : s + n] for s, n in zip(starts.tolist(), lengths)]
    redo = [j for j, (s, n) in enumerate(zip(starts.tolist(), lengths)) if n and not ok[s : s + n].all()]
    if redo:
        k, n_max = len(tags), max(lengths[j] for j in redo)
        n = np.array([lengths[j] for j in redo])
        # scatter the redo sequences' words into [R, n_max, K] with one index per word
        r_of = np.repeat(np.arange(len(redo)), n)
        w_of = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        src = np.repeat(starts[redo], n) + w_of
        logp = np.zeros((len(redo), n_max, k))
        logp[r_of, w_of] = np.log(np.clip(probs[src], 1e-12, None))
        trans = np.where(allowed, 0.0, -np.inf)
        score = np.where(start_ok, logp[:, 0], -np.inf)  # [R, K]
        back = np.broadcast_to(np.arange(k), (len(redo), n_max, k)).copy()  # padding: stay put
        for w in range(1, n_max):
            cand = score[:, :, None] + trans  # [R, prev, cur]
            live = (w < n)[:, None]
            back[:, w] = np.where(live, cand.argmax(1), back[:, w])
            score = np.where(live, cand.max(1) + logp[:, w], score)
        cur = score.argmax(1)
        paths = np.zeros((len(redo), n_max), dtype=np.int64)
        rows = np.arange(len(redo))
        for w in range(n_max - 1, 0, -1):
            paths[:, w] = cur
            cur = back[rows, w, cur]
        paths[:, 0] = cur
        for r, j in enumerate(redo):
            out[j] = paths[r, : lengths[j]]
    return out


def bio_viterbi(probs: np.ndarray, tags: list[str]) -> list[int]:
    """The most probable tag sequence that is valid BIO: I-X only after B-X or I-X.

    Per-word argmax lets a stray I- tag open an entity (and run on through the next words);
    a constrained path removes those, at the cost of a loop over words with K*K steps."""
    n = len(probs)
    if n == 0:
        return []
    best = probs.argmax(-1).tolist()
    if valid_bio(best, tags):  # the unconstrained optimum is valid, so it is the answer
        return best
    logp = np.log(np.clip(probs, 1e-12, None))
    k = len(tags)
    start_ok, allowed = _bio_rules(tags)
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


def valid_bio(path: list[int], tags: list[str]) -> bool:
    prev = "O"
    for k in path:
        t = tags[k]
        if t.startswith("I-") and prev not in (f"B-{t[2:]}", t):
            return False
        prev = t
    return True


def bio_tags(types: list[str]) -> list[str]:
    """O, then B-/I- for each entity type, in the order the types are given."""
    tags = ["O"]
    for t in types:
        tags += [f"B-{t}", f"I-{t}"]
    return tags
