"""SetFit from a checkpoint of its contrastive phase, for a run too long to finish (issue 19, k=64 on
the 6-label sets: 6,680 steps, hours on 2 cores). The checkpoint's body gets SetFit's own head phase
(Trainer.train_classifier, default arguments) on the same k-shot sample that bench/setfit_bench.py
draws, and is scored on the same held-out part; the step and the loss logged there are kept beside
the accuracy, so a series of checkpoints shows whether the score still moves; `sentmtl fit` runs on
the same sample once.

    python bench/setfit_checkpoint.py --set trec --k 64 --seed 0 CHECKPOINT... [--json FILE]

CHECKPOINT: a `checkpoints/checkpoint-N` folder that SetFit's trainer writes every 500 steps into
its working folder (bench/setfit_bench.py runs it in a temporary one: copy them out as they come).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot import sample, split  # noqa: E402
from fewshot_features import read_set  # noqa: E402
from setfit_bench import PY, ROOT, mcc, run_sentmtl, setfit_venv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "setfit_checkpoints.json")
    args = ap.parse_args()
    setfit_venv()
    texts, raw = read_set(args.set)
    names = sorted(set(raw))
    y = np.array([names.index(v) for v in raw])
    held, rest = split(len(y))
    unl = np.random.default_rng(7).choice(rest, size=min(1000, len(rest) // 2), replace=False)
    pool = np.setdiff1d(rest, unl)  # as bench/setfit_bench.py draws
    tr = sample(y, pool, args.k, len(names), args.seed)
    gold = y[held]
    results: dict = json.loads(args.json.read_text()) if args.json.is_file() else {}
    mine = f"{args.set} k={args.k} seed={args.seed} sentmtl"
    if mine not in results:  # sentmtl fit on the same sample, as a whole command
        seconds, pred = run_sentmtl([texts[i] for i in tr], y[tr], [texts[i] for i in held], names)
        results[mine] = {"accuracy": float((pred == gold).mean() * 100), "mcc": mcc(gold, pred), "seconds": seconds}
        print(mine, json.dumps(results[mine]), flush=True)
    for ckpt in args.checkpoints:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        logged = [h for h in state["log_history"] if "embedding_loss" in h]
        job = {
            "texts": [texts[i] for i in tr],
            "labels": [int(v) for v in y[tr]],
            "eval_texts": [texts[i] for i in held],
            "body": str(ckpt.resolve()),
        }
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run(
                [str(PY), str(Path(__file__).with_name("setfit_worker.py"))],
                input=json.dumps(job), capture_output=True, text=True, cwd=d,
            )  # fmt: skip
        if r.returncode != 0:
            raise SystemExit(f"SetFit failed: {r.stderr[-2000:]}")
        pred = np.array(json.loads(r.stdout)["predictions"])
        key = f"{args.set} k={args.k} seed={args.seed} step={state['global_step']}"
        results[key] = {
            "step": state["global_step"],
            "max_steps": state["max_steps"],
            "embedding_loss": logged[-1]["embedding_loss"] if logged else None,
            "accuracy": float((pred == gold).mean() * 100),
            "mcc": mcc(gold, pred),
        }
        print(key, json.dumps(results[key]), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
