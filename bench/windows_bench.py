"""Long texts read in windows (issue 21): does every head read the whole text, and what does it cost?

Documents are made by joining consecutive sentences of data the shipped heads were not trained on:
- NER: Universal NER English-EWT dev (web text; the NER head's validation set, not its training
  data), sentences joined into texts of at least --doc-tokens word pieces. Entity F1 (exact char
  span and type) on the joined texts against the same sentences predicted one by one; recall on
  gold entities before and after the 256th token; backbone tokens processed per document token;
  predict's tokens per second on the documents against on the sentences.
- Sentence heads: how the windows' outputs are merged. Texts of one label joined into long ones
  (SST-2 phrases past the 40,000 the sentiment head trained on; AG News, which the topic head did
  train on: read its numbers as a comparison between merges, not as accuracy), scored under
  each merge: the token-weighted mean of the windows' probabilities (what ships), their plain
  mean, the token-weighted and plain means of their logits, the most confident window, and the
  first window alone (truncation). A document's label is the one most of its tokens have (60%),
  the rest from other labels, so reading a part of it is often wrong.

Writes docs/experiments/windows.json; needs ../shared/data (exits 0 with a message without it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from bisect import bisect_right
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "docs" / "experiments" / "windows.json"


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    sents, words, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if words:
                sents.append((words, tags))
            words, tags = [], []
            continue
        w, t = line.split("\t")[:2]
        words.append(w)
        tags.append(t)
    if words:
        sents.append((words, tags))
    return sents


def entities(spans: list[tuple[int, int]], tags: list[str]) -> set[tuple[int, int, str]]:
    """Gold (start, end, type) char spans from BIO tags over word spans (the heads' own grouping)."""
    from sentmtl_cli.heads.bio import word_entities

    return {(spans[s][0], spans[e - 1][1], t) for s, e, t, _ in word_entities(tags)}


def prf(gold: set, pred: set) -> dict:
    tp = len(gold & pred)
    p = tp / len(pred) if pred else 0.0
    r = tp / len(gold) if gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "gold": len(gold)}


def make_docs(sents, tokenizer, doc_tokens: int, join: str = "\n"):
    """Consecutive sentences joined (one space) into texts of at least doc_tokens word pieces:
    each doc's text, its sentences' texts and char starts, and its gold entities."""
    docs, cur = [], []
    lengths = [len(ids) - 2 for ids, *_ in tokenizer.encode_raw([" ".join(w) for w, _ in sents], truncate=False)]
    total = 0
    for (words, tags), n in zip(sents, lengths):
        cur.append((words, tags))
        total += n
        if total >= doc_tokens:
            docs.append(cur)
            cur, total = [], 0
    out = []
    for group in docs:
        text, pos, starts, gold, sent_texts = "", 0, [], set(), []
        for words, tags in group:
            spans, p = [], pos
            for w in words:
                spans.append((p, p + len(w)))
                p += len(w) + 1
            s = " ".join(words)
            sent_texts.append(s)
            starts.append(pos)
            gold |= entities(spans, tags)
            text += ("" if not text else join) + s
            pos = len(text) + 1
        out.append({"text": text, "sentences": sent_texts, "starts": starts, "gold": gold})
    return out


def ner_part(m, doc_tokens: int, repeats: int, join: str = "\n") -> dict:
    sents = read_conll(DATA / "ner_sentences" / "dev_uner_ewt.conll")
    docs = make_docs(sents, m.tokenizer, doc_tokens, join)
    quiet = {"warn": False}
    texts = [d["text"] for d in docs]
    flat = [s for d in docs for s in d["sentences"]]
    full = m.tokenizer.encode_raw(texts, truncate=False)
    doc_tokens_total = sum(len(ids) for ids, *_ in full)
    sent_tokens_total = sum(len(ids) for ids, *_ in m.tokenizer.encode_raw(flat, truncate=False))
    pieces = m._pieces(texts, None, ["window"] * len(texts))
    processed = sum(len(p.item[0]) for p in pieces)

    def timed(inputs, **kw):
        best, res = float("inf"), None
        for _ in range(repeats):
            t = time.perf_counter()
            res = m.run(inputs, ["cls", "sent", "ner"], want_embeddings=False, **quiet, **kw)[1]
            best = min(best, time.perf_counter() - t)
        return best, res

    t_docs, whole = timed(texts)
    t_sents, alone = timed(flat)
    _, cut = timed(texts, overflow="truncate") if repeats else (0, None)
    pred_whole, pred_alone, pred_cut, gold = set(), set(), set(), set()
    before, after = set(), set()
    k = 0
    for i, d in enumerate(docs):

        def tag(ents, shift=0, i=i):
            return {(i, e["start"] + shift, e["end"] + shift, e["label"]) for e in ents}

        pred_whole |= tag(whole[i]["ner"]["entities"])
        pred_cut |= tag(cut[i]["ner"]["entities"])
        for start in d["starts"]:
            pred_alone |= tag(alone[k]["ner"]["entities"], start)
            k += 1
        token_starts = [s for (s, e), sp in zip(full[i][1], full[i][2]) if not sp]
        for s, e, t in d["gold"]:
            g = (i, s, e, t)
            gold.add(g)
            (before if bisect_right(token_starts, s) - 1 < 256 else after).add(g)

    def split(pred):
        return {
            "all": prf(gold, pred),
            "recall_before_256": prf(before, pred & before)["recall"],
            "recall_after_256": prf(after, pred & after)["recall"],
        }

    return {
        "data": "UNER English-EWT dev, consecutive sentences joined",
        "documents": len(docs),
        "sentences": len(flat),
        "doc_tokens_min": doc_tokens,
        "mean_doc_tokens": doc_tokens_total / len(docs),
        "mean_windows": float(np.mean([w.get("windows", 1) for w in whole])),
        "gold_entities": len(gold),
        "gold_after_256": len(after),
        "window": split(pred_whole),
        "sentences_one_by_one": split(pred_alone),
        "truncate": split(pred_cut),
        "tokens_processed_per_doc_token": processed / doc_tokens_total,
        "doc_tokens_per_s": doc_tokens_total / t_docs,
        "sentence_tokens_per_s": sent_tokens_total / t_sents,
        "throughput_ratio": (doc_tokens_total / t_docs) / (sent_tokens_total / t_sents),
    }


def window_logits(m, texts: list[str], task: str) -> list[tuple[list[np.ndarray], list[int]]]:
    """Each text's windows' logits and sizes, through the model's own pieces and head."""
    head = m.heads[task]
    pieces = m._pieces(texts, None, ["window"] * len(texts))
    per: list[tuple[list, list]] = [([], []) for _ in texts]
    for a in range(0, len(pieces), 16):
        group = pieces[a : a + 16]
        batch = m.tokenizer.pad([p.item for p in group])
        feats = m.backbone.encode(batch, set(head.hidden_layers()))
        logits = head.forward_numpy(head.inputs_numpy(feats, batch.attention_mask))
        for p, out in zip(group, logits):
            per[p.text][0].append(np.asarray(out, dtype=np.float64))
            per[p.text][1].append(p.window[2] if p.window else len(p.item[0]))
    return per


def merges(head, parts: list[np.ndarray], sizes: list[int]) -> dict[str, np.ndarray]:
    """Each merge's probabilities for one text."""
    T = head.temperature

    def sm(z):
        z = z - z.max()
        e = np.exp(z)
        return e / e.sum()

    w = np.asarray(sizes, dtype=np.float64) / sum(sizes)
    L = np.stack(parts)
    probs = np.stack([sm(z / T) for z in L])
    conf = probs.max(1)
    return {
        "token_weighted_logits": sm((L * w[:, None]).sum(0) / T),
        "mean_logits": sm(L.mean(0) / T),
        "mean_probabilities": probs.mean(0),
        "token_weighted_probabilities": (probs * w[:, None]).sum(0),
        "most_confident_window": probs[int(conf.argmax())],
        "first_window": probs[0],
    }


def sentence_docs(texts: list[str], labels: list[str], tokenizer, doc_tokens: int, limit: int, seed: int = 0):
    """Long texts whose label is the one most of their tokens have: texts of the document's
    label until 60% of doc_tokens, then texts of other labels to the rest, shuffled (seeded), so
    a reader of one part only (the first window) is often wrong."""
    rng = np.random.default_rng(seed)
    lengths = [len(i) - 2 for i, *_ in tokenizer.encode_raw(texts, truncate=False)]
    by: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by.setdefault(lab, []).append(i)
    pools = {lab: list(rng.permutation(idx)) for lab, idx in sorted(by.items())}
    names = sorted(pools)
    docs = []
    while len(docs) < limit:
        lab = names[len(docs) % len(names)]
        others = [n for n in names if n != lab]
        chosen, own, rest = [], 0, 0
        while own < 0.6 * doc_tokens and pools[lab]:
            i = pools[lab].pop()
            chosen.append(i)
            own += lengths[i]
        while own + rest < doc_tokens and any(pools[o] for o in others):
            o = others[int(rng.integers(len(others)))]
            if pools[o]:
                i = pools[o].pop()
                chosen.append(i)
                rest += lengths[i]
        if own < 0.6 * doc_tokens or not rest:
            break  # a label's texts ran out
        if rest >= own:  # one long text of another label outweighs the document's own: not kept
            continue
        order = rng.permutation(len(chosen))
        docs.append(("\n".join(texts[chosen[k]] for k in order), lab))
    return docs


def sentence_part(m, task: str, texts, labels, doc_tokens: int, limit: int, data: str) -> dict:
    docs = sentence_docs(texts, labels, m.tokenizer, doc_tokens, limit)
    head = m.heads[task]
    per = window_logits(m, [d for d, _ in docs], task)
    names = list(head.cfg.labels)
    scores: dict[str, dict] = {}
    for (_, lab), (parts, sizes) in zip(docs, per):
        for name, p in merges(head, parts, sizes).items():
            s = scores.setdefault(name, {"right": 0, "nll": 0.0})
            s["right"] += names[int(p.argmax())] == lab
            s["nll"] -= float(np.log(max(p[names.index(lab)], 1e-12)))
    return {
        "_texts": texts,
        "_labels": labels,
        "data": data,
        "documents": len(docs),
        "mean_windows": float(np.mean([len(s) for _, s in per])),
        "merges": {
            k: {"accuracy": v["right"] / len(docs), "log_loss": v["nll"] / len(docs)} for k, v in scores.items()
        },
    }


class token_windows:
    """Within the block, windows are plain runs of max_seq_length tokens (sharing the overlap),
    sentences ignored: the alternative to one window a sentence, for comparison."""

    def __enter__(self):
        from sentmtl_cli.text import windows as W
        from sentmtl_cli.text.words import split_words

        self.W, self.saved = W, W.window_bounds

        def bounds(text, offsets, size, overlap):
            starts = {s for s, _ in split_words(text)}
            ws = [j == 0 or offsets[j][0] in starts and offsets[j][0] >= offsets[j - 1][1] for j in range(len(offsets))]
            return W._split_long(ws, 0, len(offsets), size, overlap)

        W.window_bounds = bounds

    def __exit__(self, *exc):
        self.W.window_bounds = self.saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doc-tokens", type=int, default=600, help="Least word pieces in a joined document.")
    ap.add_argument("--repeats", type=int, default=3, help="Timing runs (the best is kept).")
    ap.add_argument("--docs", type=int, default=400, help="Joined documents per sentence task.")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if not (DATA / "ner_sentences" / "dev_uner_ewt.conll").is_file():
        print(f"windows bench: skipped ({DATA} is not here)")
        return
    import sentmtl_cli

    m = sentmtl_cli.load()
    res: dict = {"overlap": m.cfg.backbone.window_overlap, "max_seq_length": m.tokenizer.max_seq_length}
    m.predict(["a first call builds the backbone's session, outside the timings"])
    res["ner"] = ner_part(m, a.doc_tokens, a.repeats)
    res["ner_run_on"] = ner_part(m, a.doc_tokens, a.repeats, " ")
    res["ner_run_on"]["data"] += " with a space (no line breaks)"
    with token_windows():
        res["ner_token_windows"] = ner_part(m, a.doc_tokens, a.repeats)
        res["ner_token_windows"]["data"] += "; windows of max_seq_length tokens, sentences ignored"
    rows = [line.split("\t") for line in (DATA / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    rows = [r for r in rows[40_000:] if len(r) == 2]
    sst_labels = {"0": "negative", "1": "positive"}
    res["sent"] = sentence_part(
        m,
        "sent",
        [r[0] for r in rows],
        [sst_labels[r[1].strip()] for r in rows],
        a.doc_tokens,
        a.docs,
        "SST-2 phrases past the first 40,000 the head trained on",
    )
    rows = [line.split("\t") for line in (DATA / "ag_news" / "train_10k.tsv").read_text(encoding="utf-8").splitlines()]
    topic = {"World": "world", "Sports": "sports", "Business": "business", "Sci/Tech": "sci_tech"}
    rows = [r for r in rows if len(r) == 2 and r[1].strip() in topic]
    res["cls"] = sentence_part(
        m,
        "cls",
        [r[0] for r in rows],
        [topic[r[1].strip()] for r in rows],
        a.doc_tokens,
        a.docs,
        "AG News train_10k, which the topic head trained on",
    )
    with token_windows():
        for task in ("sent", "cls"):
            d = res[task]
            res[task + "_token_windows"] = sentence_part(
                m, task, d.pop("_texts"), d.pop("_labels"), a.doc_tokens, a.docs, d["data"] + "; token windows"
            )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    json.dump(res, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
