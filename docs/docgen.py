"""Helpers for the generated parts of the docs (run by cog: `make docs` writes them, `make lint`
checks them). Each generated block is the output of a command the project runs: a results file
that `make bench` or `make experiments` wrote, or `sentmtl COMMAND --help`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    import cog  # present when cog runs this file
except ImportError:  # `python docs/docgen.py pictures` (make docs)
    cog = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent


def include(path: str, skip_title: bool = False) -> None:
    """A results file, as written; skip_title drops its "### title" line and the blank after it
    (the doc gives its own heading)."""
    lines = (ROOT / path).read_text(encoding="utf-8").strip("\n").split("\n")
    if skip_title and lines and lines[0].startswith("#"):
        lines = lines[2:] if len(lines) > 1 and not lines[1].strip() else lines[1:]
    cog.outl("\n".join(lines))


def cli_help(*command: str) -> None:
    """`sentmtl COMMAND --help`, as a fenced block (at a fixed width, so it does not depend on the terminal)."""
    from typer.testing import CliRunner

    from sentmtl_cli.cli import app

    os.environ["COLUMNS"] = "100"
    os.environ["TERMINAL_WIDTH"] = "100"
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="sentmtl", terminal_width=100)
    if result.exit_code != 0:
        raise RuntimeError(f"sentmtl {' '.join(command)} --help failed: {result.output}")
    cog.outl(" ".join(["$ sentmtl", *command, "--help"]))
    cog.outl(result.output.rstrip())


# the quality issue's targets for the shipped heads (issue 8), on data the README names
TARGETS = [
    # (report, task, key, what, data, target, at least?)
    (
        "val",
        "cls",
        "accuracy",
        "topic accuracy",
        "AG News: {n:,} held-out descriptions (seeded 10% of train_10k)",
        90,
        True,
    ),
    (
        "val",
        "sent",
        "macro_recall",
        "sentiment macro-recall",
        "TweetEval: {n:,} held-out tweets (seeded 10%)",
        66,
        True,
    ),
    ("heldout", "sent_sst2_unseen", "accuracy", "sentiment accuracy", "{data}", 86, True),
    (
        "heldout",
        "ner_ewt_dev",
        "entity_f1",
        "entity F1",
        "UNER English-EWT dev: {n:,} web-text sentences (never trained on)",
        77,
        True,
    ),
    (
        "heldout",
        "ner_ewt_dev",
        "false_alarm_rate",
        "entity found where there is none",
        "its {entity_free:,} sentences with no entity",
        3,
        False,
    ),
]


def shipped_scores() -> None:
    """The shipped heads against their targets, from what `make heads` wrote: configs/heads/
    val_report.json (training's validation) and heldout.json (bench/validate.py)."""
    import json

    reports = {
        "val": json.loads((ROOT / "configs/heads/val_report.json").read_text(encoding="utf-8")),
        "heldout": json.loads((ROOT / "configs/heads/heldout.json").read_text(encoding="utf-8")),
    }
    cog.outl("| measure | validation data | target | measured | calibration error | met |")
    cog.outl("|---|---|---|---|---|---|")
    for report, task, key, what, data, target, at_least in TARGETS:
        rep = reports[report][task]
        value = 100 * rep[key]
        met = value >= target if at_least else value <= target
        unit = "%" if key == "false_alarm_rate" else ""
        ece = f"{rep['ece']:.3f}" if "ece" in rep and key != "false_alarm_rate" else ""
        cog.outl(
            f"| {what} | {data.format(**rep)} | {'≥' if at_least else '≤'} {target}{unit} | "
            f"{value:.1f}{unit} | {ece} | {'yes' if met else '**no**'} |"
        )
    social = reports["heldout"]["ner_social"]
    cog.outl(
        f"| entity F1, another domain (no target) | {social['data']} | | {100 * social['entity_f1']:.1f} "
        f"(P {100 * social['precision']:.1f}, R {100 * social['recall']:.1f}) | {social['ece']:.3f} | |"
    )


def scale_figures(texts: float = 1e8) -> None:
    """What `texts` short texts cost, from the per-core rates `make bench` measured (bench/batch.json)."""
    import math

    data = __import__("json").loads((ROOT / "bench" / "batch.json").read_text(encoding="utf-8"))
    rate, rss = data["rows_per_s"], data.get("peak_rss_mb", {})
    cog.outl("| engine, per core | rows/s per core | core-hours for 10^8 texts | workers to finish in 1 hour |")
    cog.outl("|---|---|---|---|")
    for name, key in (
        ("fp32 (onnx), embed", "batch local, embed, 1 thread"),
        ("int8 (onnx-int8), embed", "batch local, embed, int8, 1 thread"),
    ):
        r = rate[key]
        hours = texts / r / 3600
        cog.outl(f"| {name} | {r:,.0f} | {hours:,.0f} | {math.ceil(hours):,} |")
    if "batch local, embed, 1 thread" in rss:
        cog.outl("")
        cog.outl(
            f"Peak memory of one 1-thread `sentmtl batch` process (the model loaded once, as in one Ray actor, "
            f"whose Ray worker adds its own runtime on top): {rss['batch local, embed, 1 thread']:.0f} MB."
        )


def index_figures(path: str = "docs/experiments/index_1m.json") -> None:
    """bench/index_bench.py's results (make bench) as a table, each against its target and, for
    latency, against numpy's exact search over the same vectors in the same run."""
    import json

    r = json.loads((ROOT / path).read_text(encoding="utf-8"))
    a, f = r["all"], r["filtered"]
    share = f"`cls_label = '{r['filter']}'`, {r['filter_fraction']:.0%} of the rows"
    rows = [
        ("build beyond embedding", f"{r['build_s']:.0f} s", "at most 5 minutes"),
        ("on disk", f"{r['disk_vs_float32']:.2f}x the float32 vectors", "at most 1.5x"),
        ("recall@10 against exact search", f"{a['recall_at_10']:.3f}", "at least 0.95"),
        (f"recall@10, filtered ({share})", f"{f['recall_at_10']:.3f}", "at least 0.95"),
        (
            f"warm query p50 / p99 (medians of {len(a.get('p50_ms_rounds', [0]))} rounds of the queries)",
            f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f} ms (numpy exact: {a['exact_numpy_p50_ms']:.0f} ms, "
            f"{a['exact_numpy_p50_ms'] / a['p50_ms']:.1f}x slower)",
            "at most 15 / 50 ms",
        ),
        ("warm query p50 / p99, filtered", f"{f['p50_ms']:.1f} / {f['p99_ms']:.1f} ms", "at most 15 / 50 ms"),
        (
            "one-shot `sentmtl search --index`, whole command (medians of 11, in turn with the three below)",
            f"{r['oneshot_index_s']:.2f} s"
            + (
                f" (in one process, without the forked helper: {r['oneshot_index_one_process_s']:.2f} s, "
                f"{r['oneshot_index_s'] / r['oneshot_index_one_process_s']:.2f}x)"
                if "oneshot_index_one_process_s" in r
                else ""
            ),
            "at most 0.5 s",
        ),
        ("one-shot `sentmtl search --corpus` on 20,000 of the lines", f"{r['oneshot_corpus_20k_s']:.1f} s", ""),
        ("one-shot `sentmtl similarity a b`, whole command", f"{r['oneshot_similarity_s']:.2f} s", "at most 0.5 s"),
        ("`sentmtl --help`", f"{r['help_s']:.2f} s", "under 0.3 s"),
    ]
    if "index_rows_per_s_ray" in r:
        local, ray = r["index_rows_per_s_local"], r["index_rows_per_s_ray"]
        rows.append(
            (
                "`sentmtl index --engine ray --workers 2` on 20,000 texts, whole command",
                f"{ray:.0f} rows/s = {ray / local:.2f}x the local engine's {local:.0f}",
                "at least 0.8x",
            )
        )
    where = f", on {r['machine']}" if "machine" in r else ""
    if r.get("startup_machine", r.get("machine")) != r.get("machine"):
        where += f" (the one-shot rows on {r['startup_machine']})"
    cog.outl(f"`bench/index_bench.py` on {r['rows']:,} rows ({path}{where}):")
    cog.outl("")
    cog.outl("| measure | result | target |")
    cog.outl("|---|---|---|")
    for row in rows:
        cog.outl("| " + " | ".join(row) + " |")


def window_figures(path: str = "docs/experiments/windows.json") -> None:
    """bench/windows_bench.py's results (make bench): long texts read in windows, against the same
    sentences one by one, against truncation and against 256-token windows; then how the sentence
    heads' windows are merged."""
    import json

    r = json.loads((ROOT / path).read_text(encoding="utf-8"))
    n = r["ner"]
    cog.outl(
        f"NER on {n['documents']} texts of {n['mean_doc_tokens']:.0f} word pieces on average ({n['data']}; "
        f"{n['gold_entities']} gold entities, {n['gold_after_256']} past the 256th token; {path}):"
    )
    cog.outl("")
    cog.outl(
        "| how the texts are read | entity F1 | recall before / after token 256 | backbone tokens per text token | tokens/s against the sentences one by one |"
    )
    cog.outl("|---|---|---|---|---|")

    def row(name: str, d: dict, part: str = "window") -> None:
        s = d[part]
        cost = f"{d['tokens_processed_per_doc_token']:.2f}x" if part == "window" else ""
        speed = f"{d['throughput_ratio']:.2f}x" if part == "window" else ""
        cog.outl(
            f"| {name} | {s['all']['f1']:.4f} | {s['recall_before_256']:.3f} / {s['recall_after_256']:.3f} | {cost} | {speed} |"
        )

    row("the sentences one by one (the reference)", n, "sentences_one_by_one")
    row(f"one window a sentence (ships; {n['mean_windows']:.0f} windows a text)", n)
    row("the same, sentences joined by a space, not a line break", r["ner_run_on"])
    row("windows of 256 tokens, sentences ignored", r["ner_token_windows"])
    row("truncated at 256 tokens (before windows)", n, "truncate")
    cog.outl("")
    names = {
        "token_weighted_probabilities": "token-weighted mean of probabilities (ships)",
        "mean_probabilities": "mean of probabilities",
        "token_weighted_logits": "token-weighted mean of logits",
        "mean_logits": "mean of logits",
        "most_confident_window": "the most confident window",
        "first_window": "the first window alone",
    }
    c, s = r["cls"], r["sent"]
    cog.outl(
        f"Sentence heads: {c['documents']} long texts a task, each 60% of one label and 40% of others "
        f"(sentiment: {s['data']}; topic: {c['data']}); accuracy / log-loss against the majority label:"
    )
    cog.outl("")
    cog.outl(
        "| merge | sent, one window a sentence | cls, one window a sentence | sent, 256-token windows | cls, 256-token windows |"
    )
    cog.outl("|---|---|---|---|---|")
    for key, name in names.items():
        cells = [
            f"{d['merges'][key]['accuracy']:.3f} / {d['merges'][key]['log_loss']:.3f}"
            for d in (s, c, r["sent_token_windows"], r["cls_token_windows"])
        ]
        cog.outl(f"| {name} | " + " | ".join(cells) + " |")


# ---- pictures: made from the results files, so they cannot drift (tests/test_docs_examples.py) ----
def peer_ratios() -> list[tuple[str, str, float, str]]:
    """(what, peer, ratio: how many times better sentmtl is, how) from the bench results files."""
    import json
    import statistics

    r = json.loads((ROOT / "bench/results.json").read_text(encoding="utf-8"))
    s = json.loads((ROOT / "bench/serve.json").read_text(encoding="utf-8"))
    f = json.loads((ROOT / "docs/experiments/setfit_k8.json").read_text(encoding="utf-8"))
    one = r["one_shot"]
    st_one = one["sentence-transformers one-liner (similarity)"]["median_s"]
    fit = statistics.median(v["setfit"]["seconds"] / v["sentmtl"]["seconds"] for v in f.values())
    fit_acc = statistics.mean(v["sentmtl"]["accuracy"] for v in f.values())
    setfit_acc = statistics.mean(v["setfit"]["accuracy"] for v in f.values())
    return [
        ("embed, bulk (ONNX)", "sentence-transformers", r["bulk"]["onnx"]["vs_st"]["median"], "texts per second"),
        ("embed, bulk (int8)", "sentence-transformers", r["bulk"]["onnx-int8"]["vs_st"]["median"], "texts per second"),
        (
            "`similarity a b`, one shot",
            "sentence-transformers",
            st_one / one["sentmtl similarity a b"]["median_s"],
            "whole command",
        ),
        (
            "three heads and the embedding",
            "three single-task passes",
            r["bulk"]["three_passes_vs_predict"],
            "time for all tasks",
        ),
        ("serve, 16 clients", "FastAPI + sentence-transformers", s["sentmtl_to_peer"], "texts per second"),
        (
            "serve, one text: p99 latency",
            "FastAPI + sentence-transformers",
            s["peer_latency_ms"]["p99"] / s["sentmtl_latency_ms"]["p99"],
            "lower latency",
        ),
        (
            f"`fit`, 8 examples a label (accuracy {fit_acc:.1f} vs {setfit_acc:.1f}; SetFit timed in an earlier run)",
            "SetFit 1.2",
            fit,
            "training time",
        ),
    ]


def peer_table() -> None:
    """The ratios against the peers, as a table, then the chart of them."""
    cog.outl("| sentmtl | against | how many times better | measured as |")
    cog.outl("|---|---|---|---|")
    for what, peer, ratio, how in peer_ratios():
        cog.outl(f"| {what} | {peer} | {ratio:.1f}x | {how} |")


def _svg(fig, path: Path) -> None:
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "sentmtl"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")


def ratio_chart(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt

    rows = peer_ratios()[::-1]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels = [f"{w.replace('`', '')}\nvs {p}" for w, p, _, _ in rows]
    ax.barh(labels, [r for _, _, r, _ in rows], color="#3f51b5")
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for i, (_, _, r, _) in enumerate(rows):
        ax.text(r * 1.05, i, f"{r:.1f}x", va="center", fontsize=9)
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel("times better than the peer, same machine, same run (log scale; 1x = a tie)")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlim(0.5, max(r for _, _, r, _ in rows) * 2.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    _svg(fig, path)
    plt.close(fig)


def pass_diagram(path: Path) -> None:
    """One backbone pass feeding every head."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(9, 3.4))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4)
    ax.axis("off")

    def box(x, y, w, text, color):
        ax.add_patch(FancyBboxPatch((x, y), w, 0.55, boxstyle="round,pad=0.05", fc=color, ec="#333333"))
        ax.text(x + w / 2, y + 0.27, text, ha="center", va="center", fontsize=8)

    def arrow(x0, y0, x1, y1):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": "#333333"})

    box(0.1, 1.7, 1.3, "texts\n(long: windows)", "#eeeeee")
    box(1.8, 1.7, 1.2, "tokenizer", "#eeeeee")
    box(3.4, 1.7, 1.8, "backbone\none forward pass", "#c5cae9")
    arrow(1.45, 1.97, 1.75, 1.97)
    arrow(3.05, 1.97, 3.35, 1.97)
    outs = [
        (3.3, "sentence embedding -> embed, similarity, search"),
        (2.55, "cls: topic (layers 2, 4, 6)"),
        (1.8, "sent: sentiment (layers 2, 4, 6)"),
        (1.05, "zero_shot, fit heads: your labels"),
        (0.3, "ner: entities (layers 2-4, per word)"),
    ]
    for y, text in outs:
        box(5.9, y, 4.0, text, "#e8f5e9")
        arrow(5.25, 1.97, 5.95, y + 0.27)
    _svg(fig, path)
    plt.close(fig)


def pictures(folder: str = "docs/img") -> None:
    """Write the pictures (a cog block calls this; the test compares them with a fresh copy)."""
    ratio_chart(ROOT / folder / "ratios.svg")
    pass_diagram(ROOT / folder / "one_pass.svg")


if __name__ == "__main__" and sys.argv[1:] == ["pictures"]:
    pictures()
