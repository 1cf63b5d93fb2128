"""Zero-shot variants on the six few-shot sets (issue 19's zero-shot target): what the shipped
head does (the cosine to each label's prompts) against ways of moving its scores without
examples, on the same held-out texts bench/fewshot.py scores (features cached by
bench/fewshot_features.py). Accuracy (%) with the bare label names.

- background centering / all-but-the-top: the texts' and labels' vectors centred on the mean of
  1,800 background texts (600 each of AG News, SST-2 and tweets), and then the top principal
  directions of that background removed as well;
- label-mean centering: the labels' vectors centred on their own mean;
- vocabulary expansion: each label's vector moved toward the mean of its m nearest whole words of
  the tokenizer's vocabulary (lower-case, 3 letters or more: about 21,000, each embedded alone);
  "discriminative" ranks words by how much nearer they are to this label than to any other;
- content-free calibration (Zhao et al., 2021): each label's mean score on a few strings with no
  content subtracted from its scores;
- EM prior adaptation: the label priors re-estimated on the scored texts themselves (Saerens et
  al., 2002), a transductive method: a text's label then depends on the others scored with it;
- oracle bias: one offset a label, tuned on the scored texts' own labels. Not a method: the most
  any prior correction could give.

`--late` runs the third round instead (docs/DISCUSSION.md §6): late interaction, each label
name's word-pieces matched against the text's at one layer (the best cosine for each piece,
averaged), alone or added to the cosine, at several layers and weights; accuracy and mean recall
per label.

    python bench/zero_shot_variants.py [--json docs/experiments/zero_shot_variants.json]
    python bench/zero_shot_variants.py --late [--json docs/experiments/zero_shot_late.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot import split  # noqa: E402
from fewshot_features import DATA, SETS, _model, features, read_set  # noqa: E402

from sentmtl_cli.heads.zero_shot import DEFAULT_TEMPLATES, TEMPERATURE, prompts  # noqa: E402

SHARED = DATA.parent


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.clip(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12, None)


def embed(texts: list[str]) -> np.ndarray:
    return np.asarray(_model().embed(texts), dtype=np.float64)


def label_vectors(labels: list[str]) -> np.ndarray:
    """The shipped head's: the mean of each label's prompts' unit embeddings."""
    return np.stack([unit(unit(embed(prompts(v, "", DEFAULT_TEMPLATES))).mean(0)) for v in labels])


def background(n: int = 600) -> np.ndarray:
    texts: list[str] = []
    for path in (SHARED / "ag_news" / "train_10k.tsv", SHARED / "sst2" / "train.tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            texts += [r[0] for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : n + 1]]
    texts += (SHARED / "sentiment" / "tweeteval_text.txt").read_text(encoding="utf-8").splitlines()[:n]
    return embed(texts)


def vocabulary() -> np.ndarray:
    path = next(Path(_model().folder).rglob("tokenizer.json"))
    vocab = list(json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"])
    words = [w for w in vocab if w.isascii() and w.isalpha() and w.islower() and len(w) >= 3]
    return unit(embed(words))


def expand(E: np.ndarray, V: np.ndarray, m: int, w: float, discriminative: bool) -> np.ndarray:
    S = V @ E.T
    out = []
    for i in range(len(E)):
        if discriminative:
            rank = S[:, i] - np.delete(S, i, 1).max(1)
            ok = np.where(S[:, i] >= 0.5)[0]
            idx = ok[np.argsort(-rank[ok])[:m]]
            weights = np.clip(rank[idx], 0, None)
            if weights.sum() <= 0:
                out.append(E[i])
                continue
            near = unit((V[idx] * weights[:, None]).sum(0))
        else:
            near = V[np.argsort(-S[:, i])[:m]].mean(0)
        out.append(unit(E[i] + w * near))
    return np.stack(out)


def em_prior(S: np.ndarray, T: float, iters: int = 100) -> np.ndarray:
    z = S / T
    P = np.exp(z - z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    C = P.shape[1]
    prior = np.full(C, 1 / C)
    Q = P
    for _ in range(iters):
        Q = P * prior * C
        Q /= Q.sum(1, keepdims=True)
        new = Q.mean(0)
        if np.abs(new - prior).max() < 1e-6:
            break
        prior = new
    return Q


def oracle_bias(S: np.ndarray, y: np.ndarray) -> np.ndarray:
    b = np.zeros(S.shape[1])
    for _ in range(3):
        for c in range(S.shape[1]):
            best = (((S + b).argmax(1) == y).mean(), b[c])
            for v in np.linspace(-0.3, 0.3, 61):
                trial = b.copy()
                trial[c] = v
                a = ((S + trial).argmax(1) == y).mean()
                if a > best[0]:
                    best = (a, v)
            b[c] = best[1]
    return S + b


def token_states(texts: list[str], layers: tuple[int, ...]) -> dict[int, list[np.ndarray]]:
    """Each text's token vectors at each layer (unit rows, special tokens left out), by the
    model's forward path: what the shipped head reads at the last layer."""
    from sentmtl_cli.heads.zero_shot import TokenStates

    m = _model()
    probes = [TokenStates(f"layer{L}", L) for L in layers]
    _, results = m.run(texts, [], want_embeddings=False, warn=False, overflow="truncate", extra=probes)
    return {L: [r[f"layer{L}"]["states"] for r in results] for L in layers}


def match(T: list[np.ndarray], names: list[np.ndarray]) -> np.ndarray:
    """[texts, labels]: per label, the mean over its name's pieces of their best cosine in the text."""
    return np.array([[float((n @ t.T).max(1).mean()) for n in names] for t in T])


def late_round(args) -> None:
    from sentmtl_cli.heads.zero_shot import readable

    layers = (3, 4, 5, 6)
    table: dict = {}
    for name in SETS:
        texts, raw = read_set(name)
        labels = sorted(set(raw))
        y = np.array([labels.index(v) for v in raw])
        held, _ = split(len(y))
        y = y[held]
        E = label_vectors(labels)
        cos = unit(features(name, "emb").astype(np.float64)[held]) @ E.T
        T = token_states([texts[i] for i in held], layers)
        N = token_states([readable(v) for v in labels], layers)
        P = [token_states(prompts(v, "", DEFAULT_TEMPLATES), (6,))[6] for v in labels]
        late = {L: match(T[L], N[L]) for L in layers}
        prompt_match = np.array(
            [[np.mean([(p @ t.T).max(1).mean() for p in P[c]]) for c in range(len(labels))] for t in T[6]]
        )
        variants = {"the cosine alone": cos}
        variants |= {f"name match alone, layer {L}": late[L] for L in layers}
        variants["name match against the prompts' tokens, layer 6"] = prompt_match
        variants |= {f"cosine + {w} x name match, layer 6": cos + w * late[6] for w in (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)}
        variants["cosine + name match, layer 4"] = cos + late[4]
        for variant, S in variants.items():
            pred = S.argmax(1)
            recall = np.mean([(pred[y == c] == c).mean() for c in range(len(labels)) if (y == c).any()])
            table.setdefault(variant, {})[name] = [float((pred == y).mean() * 100), float(recall * 100)]
    for variant, row in table.items():
        row["mean"] = [float(np.mean([row[s][0] for s in SETS])), float(np.mean([row[s][1] for s in SETS]))]
        print(
            f"{variant:52s} {row['mean'][0]:5.1f} / {row['mean'][1]:5.1f} | "
            + " ".join(f"{row[s][0]:5.1f}" for s in SETS),
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument("--late", action="store_true", help="the third round: late interaction")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"bench: no few-shot data at {DATA} (../shared/data/fewshot); skipped")
    if args.late:
        late_round(args)
        return
    B = background()
    mu = B.mean(0)
    top = np.linalg.svd(B - mu, full_matrices=False)[2]
    V = vocabulary()

    def abtt(Z: np.ndarray, k: int) -> np.ndarray:
        Z = Z - mu
        return Z - Z @ top[:k].T @ top[:k]

    def content_free(X: np.ndarray, E: np.ndarray, strings: list[str]) -> np.ndarray:
        return unit(X) @ E.T - (unit(embed(strings)) @ E.T).mean(0)

    variants = {
        "cosine to the prompts (the head of the first two rounds)": lambda X, E, y: unit(X) @ E.T,
        "background centering": lambda X, E, y: unit(X - mu) @ unit(E - mu).T,
        "all-but-the-top, 1 direction": lambda X, E, y: unit(abtt(X, 1)) @ unit(abtt(E, 1)).T,
        "all-but-the-top, 3 directions": lambda X, E, y: unit(abtt(X, 3)) @ unit(abtt(E, 3)).T,
        "label-mean centering": lambda X, E, y: unit(X) @ unit(E - E.mean(0)).T,
        "vocabulary expansion (30 words)": lambda X, E, y: unit(X) @ expand(E, V, 30, 1.0, False).T,
        "the same, background centering": lambda X, E, y: unit(X - mu) @ unit(expand(E, V, 30, 1.0, False) - mu).T,
        "discriminative expansion (30 words)": lambda X, E, y: unit(X) @ expand(E, V, 30, 1.0, True).T,
        'content-free "N/A", "none", "[MASK]"': lambda X, E, y: content_free(X, E, ["N/A", "none", "[MASK]"]),
        'content-free "N/A"': lambda X, E, y: content_free(X, E, ["N/A"]),
        'content-free "This text is about something."': lambda X, E, y: content_free(
            X, E, ["This text is about something."]
        ),
        f"EM prior on the scored texts, T={TEMPERATURE}": lambda X, E, y: em_prior(unit(X) @ E.T, TEMPERATURE),
        "EM prior on the scored texts, T=0.03": lambda X, E, y: em_prior(unit(X) @ E.T, 0.03),
        "oracle bias (not a method)": lambda X, E, y: oracle_bias(unit(X) @ E.T, y),
    }
    sets = {}
    for name in SETS:
        texts, raw = read_set(name)
        labels = sorted(set(raw))
        y = np.array([labels.index(v) for v in raw])
        held, _ = split(len(y))
        sets[name] = (features(name, "emb").astype(np.float64)[held], label_vectors(labels), y[held])
    table = {}
    for variant, score in variants.items():
        row = {s: float((score(X, E, y).argmax(1) == y).mean() * 100) for s, (X, E, y) in sets.items()}
        row["mean"] = float(np.mean(list(row.values())))
        table[variant] = row
        print(f"{variant:48s} {row['mean']:5.1f} | " + " ".join(f"{row[s]:5.1f}" for s in SETS), flush=True)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
