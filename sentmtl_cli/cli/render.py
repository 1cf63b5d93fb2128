"""Output for people: rich tables on stdout, progress bars on stderr; json/jsonl for scripts (streamed
writers are in files/sink.py). Machine output goes to stdout clean; everything else goes to stderr.
A head's table columns and report rows come from the head (heads/*.py): nothing here branches on a
head's kind."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from ..files.sink import dumps

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


def write_json(obj) -> None:
    sys.stdout.write(dumps(obj) + "\n")


def write_jsonl(objs) -> None:
    for o in objs:
        sys.stdout.write(dumps(o) + "\n")
    sys.stdout.flush()


# ---- embed --------------------------------------------------------------------------------------
def embed_table(texts: list[str], emb: np.ndarray) -> rich.table.Table:
    t = new_table(title=f"embeddings ({emb.shape[1]} dimensions)")
    for col in ("#", "text", "dim", "norm", "first values"):
        t.add_column(col, justify="right" if col in ("#", "dim", "norm") else "left")
    for i, (text, e) in enumerate(zip(texts, emb)):
        head = " ".join(f"{v:+.4f}" for v in e[:4]) + " …"
        t.add_row(str(i + 1), clip(text), str(e.shape[0]), f"{np.linalg.norm(e):.4f}", head)
    return t


# ---- similarity ---------------------------------------------------------------------------------
def similarity_table(metric: str, texts: list[str], matrix: np.ndarray) -> rich.table.Table:
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
def predict_tables(results: list[dict], tasks: list[str], heads: dict, top_k: int) -> list[rich.table.Table]:
    tables = []
    for task in tasks:
        head = heads[task]
        desc = f" — {head.cfg.description}" if head.cfg.description else ""
        untrained = any(r[task].get("untrained") for r in results)
        t = new_table(title=f"{task}{desc}")
        t.add_column("#", justify="right")
        t.add_column("text")
        for col in head.table_columns(top_k):
            t.add_column(col, justify="right" if col in ("score", "value") else "left")
        if untrained:
            t.add_column("untrained")
        for i, r in enumerate(results):
            row = [str(i + 1), clip(r["text"]), *head.table_cells(r[task], top_k)]
            if untrained:
                row.append("yes (not a prediction)" if r[task].get("untrained") else "")
            t.add_row(*row)
        tables.append(t)
    return tables


# ---- search -------------------------------------------------------------------------------------
def search_table(query: str, hits: list[dict], key: str = "line") -> rich.table.Table:
    """Search results: rank, score, the line (--corpus) or id (--index), the text."""
    t = new_table(title=f"nearest {'lines' if key == 'line' else 'rows'} to: {clip(query, 50)}")
    for col in ("rank", "score", key, "text"):
        t.add_column(col, justify="right" if col != "text" else "left")
    for h in hits:
        t.add_row(str(h["rank"]), f"{h['score']:.4f}", str(h[key]), clip(h["text"], 70))
    return t


# ---- evaluate -----------------------------------------------------------------------------------
def print_evaluation(rep: dict, head=None) -> None:
    """An `evaluate` report for people: the headline on its own line (a table title would wrap it to
    the table's width), then the table."""
    con = stdout_console()
    if head is not None:
        flag = " — UNTRAINED head" if rep.get("untrained") else ""
        con.print(f"{rep['task']} on {rep['data']}: {head.report_title(rep)}{flag}", soft_wrap=True)
    con.print(evaluation_table(rep, head))


def evaluation_table(rep: dict, head=None) -> rich.table.Table:
    """An `evaluate` report: STS correlations (no head), or the head's per-label rows."""
    if head is None:
        t = new_table(title=f"similarity on {rep['data']} ({rep['pairs']} pairs)")
        t.add_column("Spearman x100", justify="right")
        t.add_column("Pearson x100", justify="right")
        t.add_row(f"{rep['spearman']:.2f}", f"{rep['pearson']:.2f}")
        return t
    t = new_table()
    rows = head.report_rows(rep)
    for col in ("label", "precision", "recall", "f1", "support"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for lab, r in rows.items():
        t.add_row(lab, f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", str(int(r["support"])))
    return t


# ---- info ---------------------------------------------------------------------------------------
def print_info(doc: dict) -> None:
    con = stdout_console()
    con.print(f"config:   {doc['config']}")
    bb = doc["backbone"]
    con.print(
        f"backbone: {bb['source']} ({bb['dimension']} dims, {bb['layers']} layers, {bb['pooling']} pooling, "
        f"{'normalized' if bb['normalize'] else 'not normalized'}, max {bb['max_seq_length']} tokens)"
    )
    con.print(f"folder:   {bb['folder']}")
    con.print(f"backend:  {bb['backend_in_use']} (config: {bb['backend']}{'; ' + bb['onnx'] if bb['onnx'] else ''})")
    q = doc["int8"]
    con.print(f"int8:     {q['weights']} weights on this CPU ({q['cpu']}): {q['note']}")
    t = new_table(title="heads")
    for col in ("task", "type", "labels", "parameters", "trained"):
        t.add_column(col)
    for task, h in doc["heads"].items():
        t.add_row(
            task, h["type"], ", ".join(h["labels"]), f"{h['parameters']:,}", "yes" if h["trained"] else "no (untrained)"
        )
    con.print(t)


# ---- progress -----------------------------------------------------------------------------------
class Progress:
    """A rich progress bar on stderr (rate and time left), only for more than a screenful of texts."""

    def __init__(self, total: int, label: str, threshold: int = 40):
        self.bar = None
        if total > threshold and os.environ.get("SENTMTL_NO_PROGRESS") is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                ProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress
            from rich.text import Text

            class Rate(ProgressColumn):
                def render(self, task):
                    return Text(f"{task.speed:,.0f} texts/s" if task.speed else "")

            self.bar = RichProgress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                Rate(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.bar.add_task(label, total=total)

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)

    def __call__(self, n: int) -> None:
        if self.bar:
            self.bar.advance(self.task, n)


class TrainProgress:
    """Rich progress on stderr with the running loss of each task."""

    def __init__(self, total: int, label: str):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RP

        self.bar = RP(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.bar.add_task(label, total=total, losses="")

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def __call__(self, n: int, losses: dict | None = None) -> None:
        text = " ".join(f"{t} {v:.3f}" for t, v in (losses or {}).items())
        self.bar.update(self.task, advance=n, losses=f"loss {text}" if text else "")
