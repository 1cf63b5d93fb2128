"""Few-shot and zero-shot heads measured on the six sets in ../shared/data/fewshot (issue 19):
for each set a fixed held-out part (2,000 texts, or half a small set) is scored; k examples per
label are sampled from the rest (several seeds). Methods: the zero-shot head; logistic regression
on the embedding; the same pulled toward the label names' zero-shot weights (sentmtl fit's
default); on the mean and max of layers 2, 4, 6; the label names as extra examples; self-training
on 1,000 unlabeled texts of the rest. Features: bench/fewshot_features.py (cached under build/).

    python bench/fewshot.py [--k 8 64] [--seeds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot_features import SETS, _model, features, read_set  # noqa: E402

from sentmtl_cli.heads.zero_shot import TEMPERATURE, ZeroShotHead, zero_shot_config  # noqa: E402
from sentmtl_cli.training.fit import FitOptions, fit_head, fit_linear  # noqa: E402


def split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The held-out part and the rest, fixed for a set."""
    perm = np.random.default_rng(seed).permutation(n)
    held = min(2000, n // 2)
    return perm[:held], perm[held:]


def sample(y: np.ndarray, pool: np.ndarray, k: int, n_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + seed)
    out = []
    for c in range(n_classes):
        idx = pool[y[pool] == c]
        out += rng.choice(idx, size=min(k, len(idx)), replace=False).tolist()
    return np.array(out)


def label_vectors(labels: list[str]) -> np.ndarray:
    m = _model()
    head = ZeroShotHead("zs", zero_shot_config(labels), m.dim, m.num_layers)
    head.init_params(0)
    head.attach(m.embed_for_heads)
    return head.label_vectors()


def standardize(train: np.ndarray, *others: np.ndarray):
    mu, sd = train.mean(0), train.std(0) + 1e-3
    return [(a - mu) / sd for a in (train, *others)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sets", nargs="+", default=SETS)
    ap.add_argument("--l2", type=float, nargs="+", default=[0.01])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    table: dict = {}
    for name in args.sets:
        texts, labels_raw = read_set(name)
        labels = sorted(set(labels_raw))
        y = np.array([labels.index(v) for v in labels_raw])
        emb, mid = features(name, "emb"), features(name, "mid")
        held, rest = split(len(y))
        E = label_vectors(labels)
        zs = (emb[held] @ E.T).argmax(1)
        table.setdefault(name, {})["zero_shot"] = float((zs == y[held]).mean() * 100)
        rng = np.random.default_rng(7)
        unl = rng.choice(rest, size=min(1000, len(rest) // 2), replace=False)
        for k in args.k:
            scores: dict[str, list[float]] = {}
            for seed in range(args.seeds):
                tr = sample(y, np.setdiff1d(rest, unl), k, len(labels), seed)
                C = len(labels)

                def acc(W, b, X, gold=y[held]):
                    return float(((X @ W.T + b).argmax(1) == gold).mean() * 100)

                for l2 in args.l2:
                    W, b = fit_linear(emb[tr], y[tr], C, l2)
                    scores.setdefault(f"lr_emb l2={l2}", []).append(acc(W, b, emb[held]))
                    W, b = fit_linear(emb[tr], y[tr], C, l2, E / TEMPERATURE)
                    scores.setdefault(f"prior_emb l2={l2}", []).append(acc(W, b, emb[held]))
                    xs = np.concatenate([emb[tr], E])
                    ys = np.concatenate([y[tr], np.arange(C)])
                    W, b = fit_linear(xs, ys, C, l2)
                    scores.setdefault(f"names_as_examples l2={l2}", []).append(acc(W, b, emb[held]))
                    mtr, mheld = standardize(mid[tr], mid[held])
                    W, b = fit_linear(mtr, y[tr], C, l2)
                    scores.setdefault(f"lr_mid l2={l2}", []).append(acc(W, b, mheld))
                    opts = FitOptions(l2=l2)
                    f = fit_head(emb[tr], y[tr], C, opts, E / TEMPERATURE, unlabeled=emb[unl])
                    scores.setdefault(f"prior_emb+self_training l2={l2}", []).append(acc(f.weight, f.bias, emb[held]))
            for method, vals in scores.items():
                table[name][f"k={k} {method}"] = float(np.mean(vals))
        print(name, json.dumps({m: round(v, 1) for m, v in table[name].items()}), flush=True)
    methods = sorted({m for t in table.values() for m in t})
    print("\nmean over sets")
    for m in methods:
        vals = [table[s][m] for s in args.sets if m in table[s]]
        print(f"  {m:45s} {np.mean(vals):5.1f}   " + " ".join(f"{v:5.1f}" for v in vals))
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
