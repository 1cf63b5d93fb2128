"""Features of every text of the six few-shot sets (../shared/data/fewshot), cached under
build/fewshot/ (not committed): the sentence embedding, the mean and max of layers 2, 4 and 6,
and the first word-piece's vector at layer 4, all by the inference path (`model.head_inputs`). bench/fewshot.py reads them."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "fewshot"
CACHE = ROOT / "build" / "fewshot"
SETS = ["sst5", "emotion", "cr", "amazon_cf", "trec", "banking77"]
# the head whose inputs are cached (its config's keys), and the columns kept
VIEWS = {
    "emb": ({}, slice(None)),
    "mid": ({"pool_layers": [2, 4, 6]}, slice(None)),
    "first": ({"pool_layers": [4], "first_token_layers": [4]}, slice(-384, None)),  # the first token, layer 4
}


def read_set(name: str) -> tuple[list[str], list[str]]:
    with open(DATA / f"{name}.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[0] for r in rows], [r[1] for r in rows]


def features(name: str, view: str, model=None) -> np.ndarray:
    path = CACHE / f"{name}.{view}.npy"
    if path.is_file():
        return np.load(path).astype(np.float32)
    from sentmtl_cli.config.model import HeadConfig
    from sentmtl_cli.heads.classification import SentenceClassificationHead

    model = model or _model()
    texts, _ = read_set(name)
    keys, cols = VIEWS[view]
    head = SentenceClassificationHead(
        "probe", HeadConfig(type="sentence_classification", labels=["a", "b"], **keys), model.dim, model.num_layers
    )
    x = np.ascontiguousarray(model.head_inputs(texts, head)[:, cols])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, x.astype(np.float16))
    # what a later run loads from the cache: the first run's numbers are the same as every other's
    return x.astype(np.float16).astype(np.float32)


_M = None


def _model():
    global _M
    if _M is None:
        import sentmtl_cli

        _M = sentmtl_cli.load()
    return _M


if __name__ == "__main__":
    if not DATA.is_dir():
        sys.exit(f"no few-shot data at {DATA}")
    for s in SETS:
        for v in VIEWS:
            print(s, v, features(s, v).shape, flush=True)
