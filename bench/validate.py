"""`make validate` (run by `make heads`): the shipped heads scored on data unlike what they trained on,
written to configs/heads/heldout.json (the README and docs/DISCUSSION.md quote it).

Training's own validation (configs/heads/val_report.json) already holds out AG News and tweets by a
seeded split and scores NER on the UNER English Web Treebank dev set, which it never trains on. This
adds what that cannot show:

- sentiment on SST-2 movie-review phrases the head never saw: the rows after those training reads (the
  first `limit`, per configs/train_default.yaml), minus any that occur inside a training phrase or
  that a training phrase covers half or more of (SST-2 holds many phrases of each sentence, so a
  plain slice would repeat training text: of the rows after the first 12,000, half occur inside one
  of those 12,000);
- NER and its calibration on text from another domain: tweets (social.conll, never trained on).

Needs ../shared/data; reports, never asserts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent
OUT = ROOT / "build" / "heldout"
SST2_N = 2000
SOCIAL_N = 2000


def sst2_trained() -> int:
    """How many SST-2 rows the shipped recipe trains on (its `limit`)."""
    import yaml

    recipe = yaml.safe_load((ROOT / "configs" / "train_default.yaml").read_text(encoding="utf-8"))
    (sst2,) = [d for d in recipe["tasks"]["sent"]["extra_data"] if "sst2" in d["path"]]
    if sst2.get("skip") or not sst2.get("limit"):
        sys.exit("validate: the recipe's SST-2 rows must be the first `limit` rows for this check")
    return int(sst2["limit"])


def sst2_unseen(path: Path, out: Path, n_trained: int) -> int:
    """Write SST-2 rows unseen in training (see the module docstring) as text<TAB>label; their count."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    rows = [(t.strip(), lab.strip()) for t, lab in (line.split("\t") for line in lines)]
    trained = [t for t, _ in rows[:n_trained]]
    joined = "\n".join(trained)
    kept = []
    for text, label in rows[n_trained:]:
        if len(kept) == SST2_N:
            break
        if text in joined:
            continue
        if any(len(t) * 2 >= len(text) and t in text for t in trained):
            continue
        kept.append(f"{text}\t{label}")
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return len(kept)


def conll_head(path: Path, out: Path, n: int) -> int:
    """The first n sentences of a CoNLL file."""
    blocks = [b for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()][:n]
    out.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return len(blocks)


def evaluate(task: str, data: Path, *args: str) -> dict:
    cmd = [str(BIN / "sentmtl"), "evaluate", "--task", task, "--data", str(data), "--format", "json", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def main() -> None:
    if not DATA.is_dir():
        sys.exit(f"validate: {DATA} not found (the datasets live outside the project)")
    OUT.mkdir(parents=True, exist_ok=True)
    sst2 = OUT / "sst2_unseen.tsv"
    n_trained = sst2_trained()
    n_sst2 = sst2_unseen(DATA / "sst2" / "train.tsv", sst2, n_trained)
    social = OUT / "social_2000.conll"
    n_social = conll_head(DATA / "ner_sentences" / "social.conll", social, SOCIAL_N)
    reports = {
        "sent_sst2_unseen": evaluate("sent", sst2, "--label-map", "0=negative,1=positive"),
        "ner_social": evaluate("ner", social),
        "ner_ewt_dev": evaluate("ner", DATA / "ner_sentences" / "dev_uner_ewt.conll"),
    }
    keep = ("accuracy", "macro_recall", "macro_f1", "entity_f1", "precision", "recall", "ece")
    keep += ("false_alarm_rate", "entity_free", "n")
    summary = {
        "sent_sst2_unseen": {
            "data": f"SST-2 train.tsv: {n_sst2:,} phrases after the first {n_trained:,} (trained on), unseen in them"
        },
        "ner_social": {"data": f"ner_sentences/social.conll, first {n_social:,} tweets (not trained on)"},
        "ner_ewt_dev": {
            "data": "ner_sentences/dev_uner_ewt.conll (web text; not trained on, but the head's validation set, "
            "which chose its epoch, temperature and min_score)"
        },
    }
    for name, rep in reports.items():
        rep = rep.get("report", rep)
        summary[name].update({k: rep[k] for k in keep if k in rep})
    path = ROOT / "configs" / "heads" / "heldout.json"
    path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
