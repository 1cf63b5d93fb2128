"""The probe behind the sentence_ensemble head (docs/DISCUSSION.md §6): on the bench's samples and
held-out parts (bench/fewshot.py), sentmtl fit's linear head and its attention head, then their
calibrated probabilities mixed at shares 0, 0.25, 0.5, 0.75 and 1 of the attention head: each
share's held-out accuracy ("linear", "mean" for 0.5, "attention"), the choice of one head by the
folds' loss ("auto", fit before the ensemble), and the share the folds' log-loss of the mixture
picks among 0, 0.5, 1 ("auto3", what fit ships) and among all five ("auto5").

    python bench/fewshot_blend_probe.py --k 64 --sets trec cr --seeds 5 --json build/blend_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot import TokenRows, label_vectors, pieces_after, sample, set_inputs, split  # noqa: E402

from sentmtl_cli.heads.mlp import TorchMLP  # noqa: E402
from sentmtl_cli.training.fit import (  # noqa: E402
    FitOptions,
    attention_logits,
    fit_attention_oof,
    fit_features,
    piece_vocabulary,
    softmax,
)

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-300)).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--sets", nargs="+", default=["sst5", "emotion", "cr", "amazon_cf", "trec"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict = {}
    for name in args.sets:
        texts, labels, y, emb, x, lead, ids = set_inputs(name)
        C = len(labels)
        held, rest = split(len(y))
        E = label_vectors(labels)
        unl = np.random.default_rng(7).choice(rest, size=min(1000, len(rest) // 2), replace=False)
        pool = np.setdiff1d(rest, unl)
        tokens = TokenRows(texts, labels)
        hr, hc = tokens.get(held)
        for k in args.k:
            res: dict[str, list[float]] = {}
            for seed in range(args.seeds):
                tr = sample(y, pool, k, C, seed)
                vocab = {v: j for j, v in enumerate(piece_vocabulary([ids[i] for i in tr], FitOptions()))}
                wp = partial(pieces_after, ids=ids, vocab=vocab)
                opts = FitOptions()
                f = fit_features(wp(tr, x), y[tr], C, emb.shape[1], opts, E, None, lead, len(vocab))
                zl = (wp(held, x) if f.word_piece_scale else x[held]) @ f.weight.T + f.bias
                rows, counts = tokens.get(tr)
                params, ta, la, oofa = fit_attention_oof(tokens.head, rows, counts, y[tr], C, opts)
                tokens.head.params = params
                za = attention_logits(tokens.head, TorchMLP(tokens.head), hr, hc)
                assert f.oof_logits is not None and f.oof_loss is not None and oofa is not None and la is not None
                both = np.isfinite(f.oof_loss) & np.isfinite(la)
                yt = y[tr][both]
                pl_o, pa_o = softmax(f.oof_logits[both] / f.temperature), softmax(oofa[both] / ta)
                pl, pa = softmax(zl / f.temperature), softmax(za / ta)
                cand = {
                    w: (
                        nll(w * pa_o + (1 - w) * pl_o, yt),
                        float((((w * pa + (1 - w) * pl).argmax(1)) == y[held]).mean() * 100),
                    )
                    for w in SHARES
                }
                auto = cand[1.0][1] if cand[1.0][0] < cand[0.0][0] else cand[0.0][1]
                auto3 = min([0.0, 1.0, 0.5], key=lambda w: cand[w][0])
                auto5 = min(SHARES, key=lambda w: cand[w][0])
                r = {
                    "linear": cand[0.0][1],
                    "attention": cand[1.0][1],
                    "mean": cand[0.5][1],
                    "auto": auto,
                    "auto3": cand[auto3][1],
                    "auto5": cand[auto5][1],
                    "auto5 share": auto5,
                }
                for key, v in r.items():
                    res.setdefault(key, []).append(v)
                print(name, k, seed, {key: round(v, 2) for key, v in r.items()}, flush=True)
            out[f"{name} k={k}"] = {key: float(np.mean(v)) for key, v in res.items()}
            print("MEAN", name, k, {key: round(v, 2) for key, v in out[f"{name} k={k}"].items()}, flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
