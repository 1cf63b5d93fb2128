"""What a training run reports after each epoch, as small callbacks the loop calls: the history
in metrics.jsonl, the curves in curves.png, and one line on stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..files.atomic import atomic_write_bytes, atomic_write_text


class MetricsLog:
    """metrics.jsonl: one row per epoch so far (rewritten whole, so a resumed run has each once)."""

    def __init__(self, output: Path):
        self.path = output / "metrics.jsonl"

    def __call__(self, history: list[dict], val: dict) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in history))


class CurvesPlot:
    def __init__(self, output: Path):
        self.path = output / "curves.png"

    def __call__(self, history: list[dict], val: dict) -> None:
        plot_curves(history, self.path)


class StderrLine:
    def __call__(self, history: list[dict], val: dict) -> None:
        row = history[-1]
        parts = ", ".join(f"{t} {val[t]['score']:.4f}" for t in val)
        print(f"epoch {row['epoch']}: {parts} (score {row['score']:.4f})", file=sys.stderr)


def default_loggers(output: Path, quiet: bool) -> list:
    return [MetricsLog(output), CurvesPlot(output)] + ([] if quiet else [StderrLine()])


def plot_curves(history: list[dict], path: Path) -> None:
    """Per-task training loss and validation score per epoch."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in history]
    tasks = sorted({t for r in history for t in r["val"]})
    for t in tasks:
        losses = [r["train_loss"].get(t) for r in history]
        if any(v is not None for v in losses):
            a.plot(epochs, [v if v is not None else float("nan") for v in losses], marker="o", label=t)
        b.plot(
            epochs,
            [r["val"][t]["score"] for r in history],
            marker="o",
            label=f"{t} ({history[0]['val'][t].get('metric', '')})".replace(" ()", ""),
        )
    a.set(title="training loss", xlabel="epoch")
    b.set(title="validation score", xlabel="epoch")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
