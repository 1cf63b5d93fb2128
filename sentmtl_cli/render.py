"""Output: rich tables for people, json/jsonl for scripts (streamed writers are in stream.py). Machine output goes to stdout
clean; everything else (progress, warnings) goes to stderr."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import rich.table


def stdout_console():
    from rich.console import Console

    return Console(soft_wrap=False)


def new_table(*args, **kwargs):
    """A rich Table; rich is imported only when a table is drawn (JSON output never loads it)."""
    from rich.table import Table

    return Table(*args, **kwargs)


def clip(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps(obj) -> str:
    """JSON on one line, UTF-8 kept readable, but with the three characters that str.splitlines()
    and many JSONL readers take for line breaks (NEL, LINE and PARAGRAPH SEPARATOR) escaped. JSON's
    own syntax is ASCII, so they can only occur inside strings, where the escape means the same."""
    return json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)


def write_json(obj) -> None:
    sys.stdout.write(dumps(obj) + "\n")


def write_jsonl(objs) -> None:
    for o in objs:
        sys.stdout.write(dumps(o) + "\n")
    sys.stdout.flush()


# ---- embed --------------------------------------------------------------------------------------
def embed_table(texts: list[str], emb: np.ndarray) -> "rich.table.Table":
    t = new_table(title=f"embeddings ({emb.shape[1]} dimensions)")
    for col in ("#", "text", "dim", "norm", "first values"):
        t.add_column(col, justify="right" if col in ("#", "dim", "norm") else "left")
    for i, (text, e) in enumerate(zip(texts, emb)):
        head = " ".join(f"{v:+.4f}" for v in e[:4]) + " …"
        t.add_row(str(i + 1), clip(text), str(e.shape[0]), f"{np.linalg.norm(e):.4f}", head)
    return t


# ---- similarity ---------------------------------------------------------------------------------
def similarity_json(metric: str, texts: list[str], matrix: np.ndarray) -> dict:
    doc = {"metric": metric, "texts": texts, "matrix": [[float(x) for x in row] for row in matrix]}
    if len(texts) == 2:
        doc["score"] = float(matrix[0, 1])
    return doc


def similarity_pairs(texts: list[str], matrix: np.ndarray) -> list[dict]:
    return [
        {"a": texts[i], "b": texts[j], "score": float(matrix[i, j])}
        for i in range(len(texts))
        for j in range(i + 1, len(texts))
    ]


def similarity_table(metric: str, texts: list[str], matrix: np.ndarray) -> "rich.table.Table":
    if len(texts) == 2:
        t = new_table(title=f"{metric} similarity")
        t.add_column("a")
        t.add_column("b")
        t.add_column("score", justify="right")
        t.add_row(clip(texts[0], 40), clip(texts[1], 40), f"{matrix[0, 1]:.4f}")
        return t
    t = new_table(title=f"{metric} similarity matrix")
    t.add_column("#", justify="right")
    t.add_column("text")
    for j in range(len(texts)):
        t.add_column(str(j + 1), justify="right")
    for i, text in enumerate(texts):
        t.add_row(str(i + 1), clip(text, 30), *[f"{x:.3f}" for x in matrix[i]])
    return t


# ---- predict ------------------------------------------------------------------------------------
def predict_tables(results: list[dict], tasks: list[str], heads: dict, top_k: int) -> list["rich.table.Table"]:
    tables = []
    for task in tasks:
        head = heads[task]
        desc = f" — {head.cfg.description}" if head.cfg.description else ""
        untrained = any(r[task].get("untrained") for r in results)
        t = new_table(title=f"{task}{desc}")
        t.add_column("#", justify="right")
        t.add_column("text")
        if head.level == "sentence":
            t.add_column("label")
            t.add_column("score", justify="right")
            if top_k > 1:
                t.add_column(f"top {top_k}")
        else:
            t.add_column("entities")
        if untrained:
            t.add_column("untrained")
        for i, r in enumerate(results):
            out = r[task]
            if head.level == "sentence":
                row = [str(i + 1), clip(r["text"]), out["label"], f"{out['score']:.3f}"]
                if top_k > 1:
                    row.append(", ".join(f"{x['label']} {x['score']:.2f}" for x in out["top"]))
            else:
                ents = out["entities"]
                row = [str(i + 1), clip(r["text"]),
                       "; ".join(f"{e['text']} [{e['label']} {e['score']:.2f}]" for e in ents) or "—"]
            if untrained:
                row.append("yes (not a prediction)" if out.get("untrained") else "")
            t.add_row(*row)
        tables.append(t)
    return tables


# ---- search -------------------------------------------------------------------------------------
def search_table(query: str, hits: list[dict]) -> "rich.table.Table":
    t = new_table(title=f"nearest lines to: {clip(query, 50)}")
    for col in ("rank", "score", "line", "text"):
        t.add_column(col, justify="right" if col != "text" else "left")
    for h in hits:
        t.add_row(str(h["rank"]), f"{h['score']:.4f}", str(h["line"]), clip(h["text"], 70))
    return t


# ---- evaluate -----------------------------------------------------------------------------------
def evaluation_table(rep: dict) -> "rich.table.Table":
    if "spearman" in rep:
        t = new_table(title=f"similarity on {rep['data']} ({rep['pairs']} pairs)")
        t.add_column("Spearman x100", justify="right")
        t.add_column("Pearson x100", justify="right")
        t.add_row(f"{rep['spearman']:.2f}", f"{rep['pearson']:.2f}")
        return t
    flag = " — UNTRAINED head" if rep.get("untrained") else ""
    if "per_type" in rep:
        t = new_table(title=f"{rep['task']} on {rep['data']}: entity F1 {rep['entity_f1']:.4f} "
                        f"(P {rep['precision']:.4f}, R {rep['recall']:.4f}, {rep['n']} sentences){flag}")
        rows = rep["per_type"]
    else:
        t = new_table(title=f"{rep['task']} on {rep['data']}: accuracy {rep['accuracy']:.4f}, macro-F1 {rep['macro_f1']:.4f}, "
                        f"macro-recall {rep['macro_recall']:.4f} ({rep['n']} examples){flag}")
        rows = rep["per_label"]
    for col in ("label", "precision", "recall", "f1", "support"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for lab, r in rows.items():
        t.add_row(lab, f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", str(int(r["support"])))
    return t
