"""The `sentmtl` command line: one thin function per command over the Python API.

Nothing heavy is imported at module level (torch, transformers, numpy): `sentmtl --help` stays
instant. Bad input raises SentmtlError, which becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import errno
import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from . import BATCH_SIZE, __version__
from .errors import SentmtlError

app = typer.Typer(
    name="sentmtl",
    help="One sentence-transformer backbone, several task heads: embed, compare, classify, tag entities.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Fmt(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"


class EmbedFmt(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    npy = "npy"


class Metric(str, Enum):
    cosine = "cosine"
    dot = "dot"
    euclidean = "euclidean"


def fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handles_errors(fn):
    """Turn SentmtlError (and a full disk, a closed pipe, exhausted memory) into one line on stderr
    and exit 2; never a traceback. After SIGTERM, whatever reaches here exits 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except BaseException as e:
            if _TERMINATING:
                _exit_terminated()
            _report(e)

    return wrapper


def _report(exc: BaseException) -> None:
    """The one-line report (or quiet exit) for an exception; anything else is re-raised."""
    try:
        raise exc
    except SentmtlError as e:
        fail(str(e), e.exit_code)
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly
        _silence_stdout()
        raise typer.Exit(0)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)
    except MemoryError:
        fail("out of memory (a config asking for a huge head, or a batch too large: try --batch-size)")
    except OSError as e:  # a disk filling up, a file vanishing mid-run: one line, never a traceback
        if e.errno == errno.ENOSPC:
            _silence_stdout()
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        fail(f"cannot complete:{where} {e.strerror or e}")


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what could not be written
    does not print a second error (or a traceback) on the way out."""
    try:
        fd = sys.stdout.fileno()
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    except (AttributeError, ValueError, OSError):
        pass


class _ClosedStdout:
    """Stands in for a closed stdout (`sentmtl embed hi >&-`): writing to it is a one-line error."""

    encoding = "utf-8"
    buffer = property(lambda self: self)

    def write(self, data):
        raise SentmtlError("standard output is closed; give --output FILE or leave stdout open")

    def flush(self):
        pass

    def isatty(self):
        return False

    def fileno(self):
        raise ValueError("stdout is closed")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that every cleanup SIGINT runs also runs for it:
    temporary files removed, a model that --force was replacing put back."""


_TERMINATING = False


def _on_sigterm(signum, frame):
    """The first SIGTERM raises Terminated where the process is; later ones are ignored, so a
    second signal cannot interrupt the cleanup the first one started."""
    global _TERMINATING
    if _TERMINATING:
        return
    _TERMINATING = True
    raise Terminated()


def _exit_terminated() -> None:
    """After SIGTERM, once every cleanup on the way out has run: exit 143 at once. The signal can
    land inside an import of a C extension, which then fails half-initialised; skipping the
    interpreter's shutdown keeps that from crashing on the way out."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError, SentmtlError):
        pass
    sys.stderr.write("terminated\n")
    sys.stderr.flush()
    os._exit(143)


def version_callback(value: bool):
    if value:
        typer.echo(f"sentmtl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, help="Print the version and exit."),
):
    """sentmtl: multi-task sentence transformer, offline, from YAML configs."""


# ---- shared option types -----------------------------------------------------------------------
TextsArg = typer.Argument(None, help="Texts. Or use --file, or pipe one text a line on stdin.", show_default=False)
FileOpt = typer.Option(None, "--file", "-f", help="Read texts from a file, one a line ('-' for stdin).")
ConfigOpt = typer.Option(None, "--config", "-c", help="Model config YAML (default: the shipped configs/default.yaml).")
BatchOpt = typer.Option(BATCH_SIZE, "--batch-size", "-b", min=1, help="Texts per backbone forward.")
ThreadsOpt = typer.Option(None, "--threads", min=1, help="CPU threads (default: all cores).")


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"


BackendOpt = typer.Option(None, "--backend", help="auto | torch | onnx | onnx-int8 (default: the config's backend).")


def gather_texts(texts: Optional[List[str]], file: Optional[str]) -> list[str]:
    """All input texts at once (for commands that need them together, like similarity)."""
    from .stream import TextSource

    source = TextSource(texts, file)
    source.count()  # a clear error when there is no text
    return list(source)


def default_format(fmt, output=None):
    """The format asked for; else JSON into a file or a pipe, a table on a terminal."""
    if fmt is not None:
        return fmt.value
    if output is not None and str(output) != "-":
        return "json"
    from .stream import _isatty

    return "table" if _isatty(sys.stdout) else "json"


class Progress:
    """A rich progress bar on stderr (rate and time left), only for more than a screenful of texts."""

    def __init__(self, total: int, label: str, threshold: int = 40):
        self.bar = None
        if total > threshold and os.environ.get("SENTMTL_NO_PROGRESS") is None:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, ProgressColumn,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)
            from rich.text import Text

            class Rate(ProgressColumn):
                def render(self, task):
                    return Text(f"{task.speed:,.0f} texts/s" if task.speed else "")

            self.bar = RichProgress(TextColumn(label), BarColumn(), MofNCompleteColumn(), Rate(),
                                    TimeElapsedColumn(), TimeRemainingColumn(),
                                    console=Console(stderr=True), transient=True)
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


def load_model(config: Optional[Path], threads: Optional[int], backend=None):
    from .model import load

    m = load(config, threads=threads, backend=backend.value if backend else None)
    if m.backend == "torch" and (backend is None or backend.value == "auto") and m.cfg.backbone.backend == "auto":
        src = m.cfg.source
        typer.echo(f"note: no ONNX export beside {src}, so this runs on torch (seconds slower to start); "
                   f"`sentmtl export --config {src} --int8` makes the fast path", err=True)
    return m


# ---- commands ------------------------------------------------------------------------------------
CHUNK = 4096  # texts read, embedded and written at a time: memory stays flat on any input size


OutputOpt = typer.Option(None, "--output", "-o",
                         help="Write to this file (atomically; '-' = stdout) instead of stdout. Needed for --format npy.")


@app.command()
@handles_errors
def embed(
    texts: Optional[List[str]] = TextsArg,
    file: Optional[str] = FileOpt,
    config: Optional[Path] = ConfigOpt,
    fmt: Optional[EmbedFmt] = typer.Option(None, "--format", help="table | json | jsonl | npy (default: table on a terminal, else json)."),
    output: Optional[str] = OutputOpt,
    batch_size: int = BatchOpt,
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Embed texts into fixed-length vectors."""
    from . import render
    from .stream import Sink, TextSource

    f = default_format(fmt, output)
    if f == "npy" and output is None:
        raise SentmtlError("--format npy needs --output FILE (or --output - for stdout)")
    source = TextSource(texts, file)
    total = source.count()
    m = load_model(config, threads, backend)
    head = {"model": m.name, "dimension": m.dim, "normalized": m.cfg.backbone.normalize}
    with Sink(f, output, json_head=head, json_key="embeddings", rows=total, dim=m.dim) as out, \
            Progress(total, "embedding") as p:
        for start, chunk in source.chunks(CHUNK):
            emb = m.embed(chunk, batch_size=batch_size, progress=p, offset=start)
            if f == "npy":
                out.matrix(emb)
            else:
                out.rows({"text": t, "embedding": e.tolist()} for t, e in zip(chunk, emb))
    if f == "table":
        import numpy as np

        kept = out.kept
        render.stdout_console().print(render.embed_table([k["text"] for k in kept],
                                                         np.array([k["embedding"] for k in kept], dtype=np.float32)))


@app.command()
@handles_errors
def similarity(
    texts: Optional[List[str]] = TextsArg,
    file: Optional[str] = FileOpt,
    metric: Metric = typer.Option(Metric.cosine, "--metric", help="cosine | dot | euclidean."),
    config: Optional[Path] = ConfigOpt,
    fmt: Optional[Fmt] = typer.Option(None, "--format", help="table | json | jsonl."),
    batch_size: int = BatchOpt,
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Score how similar texts are: two texts print one score, more print the matrix."""
    from . import render
    from .model import pairwise

    texts = gather_texts(texts, file)
    if len(texts) < 2:
        raise SentmtlError("similarity needs at least two texts")
    m = load_model(config, threads, backend)
    with Progress(len(texts), "embedding") as p:
        emb = m.embed(texts, batch_size=batch_size, progress=p)
    matrix = pairwise(emb, emb, metric.value)
    f = default_format(fmt)
    if f == "json":
        render.write_json(render.similarity_json(metric.value, texts, matrix))
    elif f == "jsonl":
        render.write_jsonl(render.similarity_pairs(texts, matrix))
    else:
        render.stdout_console().print(render.similarity_table(metric.value, texts, matrix))


@app.command()
@handles_errors
def predict(
    texts: Optional[List[str]] = TextsArg,
    file: Optional[str] = FileOpt,
    tasks: Optional[str] = typer.Option(None, "--tasks", "-t", help="Comma-separated tasks (default: every task in the config)."),
    top_k: int = typer.Option(1, "--top-k", min=1, help="Labels to show per sentence task."),
    config: Optional[Path] = ConfigOpt,
    fmt: Optional[Fmt] = typer.Option(None, "--format", help="table | json | jsonl."),
    output: Optional[str] = OutputOpt,
    batch_size: int = BatchOpt,
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Run task heads (classification, sentiment, entities) from one shared forward pass."""
    from . import render
    from .stream import Sink, TextSource

    m = load_model(config, threads, backend)
    task_list = m.resolve_tasks(tasks.split(",") if tasks is not None else None)
    source = TextSource(texts, file)
    total = source.count()
    f = default_format(fmt, output)
    with Sink(f, output, json_head={"model": m.cfg.name, "tasks": task_list}, json_key="predictions") as out, \
            Progress(total, "predicting") as p:
        for start, chunk in source.chunks(CHUNK):
            out.rows(m.predict(chunk, tasks=task_list, top_k=top_k, batch_size=batch_size, progress=p, offset=start))
    if f == "table":
        con = render.stdout_console()
        for t in render.predict_tables(out.kept, task_list, m.heads, top_k):
            con.print(t)


@app.command()
@handles_errors
def search(
    query: str = typer.Argument(..., help="What to look for."),
    corpus: str = typer.Option(..., "--corpus", help="A file whose lines are searched ('-' for stdin)."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="How many lines to return."),
    config: Optional[Path] = ConfigOpt,
    fmt: Optional[Fmt] = typer.Option(None, "--format", help="table | json | jsonl."),
    batch_size: int = BatchOpt,
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Semantic search: the lines of a file nearest in meaning to a query."""
    from . import render
    from .io import read_lines
    from .model import check_texts

    check_texts([query])
    numbered = read_lines(corpus)
    if not numbered:
        raise SentmtlError(f"corpus {corpus} has no non-empty lines")
    m = load_model(config, threads, backend)
    with Progress(len(numbered) + 1, "embedding corpus") as p:
        hits = m.search(query, [t for _, t in numbered], top_k=top_k, batch_size=batch_size, progress=p,
                        line_numbers=[n for n, _ in numbered])
    f = default_format(fmt)
    if f == "json":
        render.write_json({"query": query, "corpus": corpus, "results": hits})
    elif f == "jsonl":
        render.write_jsonl(hits)
    else:
        render.stdout_console().print(render.search_table(query, hits))


@app.command()
@handles_errors
def info(
    config: Optional[Path] = ConfigOpt,
    fmt: Optional[Fmt] = typer.Option(None, "--format", help="table | json."),
):
    """Describe the model: backbone, heads (type, labels, parameters, trained or not), config path."""
    from rich.table import Table

    from . import render
    from .model import MultiTaskModel
    from .config import load_config

    cfg = load_config(config)
    m = MultiTaskModel(cfg)
    b = cfg.backbone
    doc = {
        "config": str(cfg.source),
        "name": cfg.name,
        "backbone": {
            "source": m.name, "folder": str(m.folder), "dimension": m.dim, "layers": m.num_layers,
            "pooling": b.pooling, "normalize": b.normalize, "max_seq_length": b.max_seq_length,
            "backend": b.backend, "backend_in_use": m.backend, "onnx": str(m.onnx_path) if m.onnx_path else None,
            "fine_tuned_weights": str(b.weights) if b.weights else None,
        },
        "int8": int8_status(),
        "heads": {
            task: {"type": h.type_name, "labels": list(h.cfg.labels), "outputs": len(h.outputs),
                   "parameters": h.parameter_count(), "trained": h.trained,
                   "weights": str(h.cfg.weights) if h.cfg.weights else None}
            for task, h in m.heads.items()
        },
    }
    if default_format(fmt) in ("json", "jsonl"):
        render.write_json(doc)
        return
    con = render.stdout_console()
    con.print(f"config:   {doc['config']}")
    bb = doc["backbone"]
    con.print(f"backbone: {bb['source']} ({bb['dimension']} dims, {bb['layers']} layers, {bb['pooling']} pooling, "
              f"{'normalized' if bb['normalize'] else 'not normalized'}, max {bb['max_seq_length']} tokens)")
    con.print(f"folder:   {bb['folder']}")
    con.print(f"backend:  {bb['backend_in_use']} (config: {bb['backend']}{'; ' + bb['onnx'] if bb['onnx'] else ''})")
    q = doc["int8"]
    con.print(f"int8:     {q['weights']} weights on this CPU ({q['cpu']}): {q['note']}")
    t = Table(title="heads")
    for col in ("task", "type", "labels", "parameters", "trained"):
        t.add_column(col)
    for task, h in doc["heads"].items():
        t.add_row(task, h["type"], ", ".join(h["labels"]), f"{h['parameters']:,}", "yes" if h["trained"] else "no (untrained)")
    con.print(t)


def int8_status() -> dict:
    """Which int8 encoding this CPU gets, and what that costs (docs/ARCHITECTURE.md has the numbers)."""
    from .quantize import cpu_class, weight_type_for

    cpu = cpu_class()
    wt = weight_type_for(cpu)
    note = ("int8 weights, exact with VNNI; the fastest int8" if wt == "s8" else
            "uint8 weights offset by 128, exact without VNNI; same labels and vectors as on a VNNI CPU")
    return {"cpu": cpu, "weights": wt, "weight_bits": 8, "note": note}


def parse_overrides(pairs: Optional[List[str]]) -> dict:
    import yaml

    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise SentmtlError(f"--set {item!r}: expected KEY=VALUE (e.g. epochs=2)")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


class TrainProgress:
    """Rich progress on stderr with the running loss of each task."""

    def __init__(self, total: int, label: str):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = RP(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                      TextColumn("{task.fields[losses]}"), console=Console(stderr=True), transient=False)
        self.task = self.bar.add_task(label, total=total, losses="")

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def __call__(self, n: int, losses: dict | None = None) -> None:
        text = " ".join(f"{t} {v:.3f}" for t, v in (losses or {}).items())
        self.bar.update(self.task, advance=n, losses=f"loss {text}" if text else "")


@app.command()
@handles_errors
def train(
    config: Path = typer.Argument(..., help="Training recipe YAML (e.g. configs/train_default.yaml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the output folder's last checkpoint."),
    until_epoch: Optional[int] = typer.Option(None, "--until-epoch", min=1, help="Stop after this epoch (resume later)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a recipe key: --set epochs=2 --set backbone.train=full."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Train task heads (and optionally the backbone) from a YAML recipe."""
    from .config import load_train_config
    from .train import train as run_train

    cfg = load_train_config(config, parse_overrides(set_))
    res = run_train(cfg, force=force, resume=resume, stop_after=until_epoch,
                    progress_factory=None if quiet else TrainProgress, quiet=quiet)
    typer.echo(f"best epoch {res.best_epoch} (score {res.best_score:.4f}) -> {res.output} in {res.seconds:.0f}s", err=True)
    typer.echo(f"for the fast path (ONNX, under a second to start): sentmtl export --config {res.output / 'model.yaml'} --int8",
               err=True)


@app.command()
@handles_errors
def evaluate(
    task: Optional[str] = typer.Option(None, "--task", help="The task (head) to score."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled data: TSV/CSV/JSONL, or CoNLL for token tasks."),
    similarity_file: Optional[Path] = typer.Option(None, "--similarity", help="STS pairs (STS-B rows or s1<TAB>s2<TAB>score)."),
    config: Optional[Path] = ConfigOpt,
    text_column: str = typer.Option("0", "--text-column", help="Text column: index or name."),
    label_column: str = typer.Option("1", "--label-column", help="Label column: index or name."),
    labels_file: Optional[Path] = typer.Option(None, "--labels-file", help="For a plain text file: the parallel label file."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help="Map raw labels to the head's: '0=negative,1=neutral'."),
    token_prefix: str = typer.Option("", "--token-prefix", help="CoNLL: strip this prefix from tokens (e.g. 'en:')."),
    skip: int = typer.Option(0, "--skip", min=0, help="Skip the first N examples."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score at most N examples (after --skip)."),
    fmt: Optional[Fmt] = typer.Option(None, "--format", help="table | json."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Score a head on labelled data (accuracy, macro-F1, per-label P/R/F1; entity P/R/F1), or embeddings on STS."""
    from . import render
    from .data import DataConfig
    from .evaluate import evaluate_similarity, evaluate_task

    if (similarity_file is None) == (task is None):
        raise SentmtlError("give either --task T --data FILE, or --similarity FILE")
    m = load_model(config, threads, backend)
    if similarity_file is not None:
        rep = evaluate_similarity(m, similarity_file, batch_size=batch_size, progress_factory=Progress)
    else:
        if data is None:
            raise SentmtlError("--task needs --data FILE")
        lm = {}
        for pair in (label_map or "").split(","):
            if pair.strip():
                if "=" not in pair:
                    raise SentmtlError(f"--label-map {pair!r}: expected RAW=LABEL")
                k, v = pair.split("=", 1)
                lm[k.strip()] = v.strip()
        fmt_name = "text" if labels_file else "auto"
        dc = DataConfig(path=data, format=fmt_name, labels_path=labels_file, text_column=text_column,
                        label_column=label_column, label_map=lm, token_prefix=token_prefix, skip=skip, limit=limit)
        m.resolve_tasks([task])
        rep = evaluate_task(m, task, dc, batch_size=batch_size, progress_factory=Progress)
    if default_format(fmt) in ("json", "jsonl"):
        render.write_json(rep)
    else:
        render.stdout_console().print(render.evaluation_table(rep))


@app.command()
@handles_errors
def export(
    config: Optional[Path] = ConfigOpt,
    int8: bool = typer.Option(False, "--int8", help="Also write an int8 model (int8 weights; each token's activations quantized at run time)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder (default: <config>.onnx/ beside the config)."),
):
    """Export the backbone (transformer, pooling, normalization) to ONNX for the fast path."""
    from .backbone import resolve_folder
    from .config import load_config
    from .onnx_backend import export as run_export

    cfg = load_config(config)
    out = run_export(cfg, resolve_folder(cfg.backbone), int8, output, log=lambda s: typer.echo(s, err=True))
    typer.echo(f"wrote {out}", err=True)


@app.command()
@handles_errors
def experiment(
    configs: List[Path] = typer.Argument(..., help="Experiment YAML(s), e.g. configs/experiments/q1_freeze.yaml."),
):
    """Train recipe variants and write the markdown table that docs/DISCUSSION.md quotes."""
    from .experiment import run_experiment

    for c in configs:
        out = run_experiment(c, log=lambda line: typer.echo(line, err=True))
        typer.echo(f"wrote {out}", err=True)


def main() -> None:
    """Console entry point: no traceback reaches the user unless SENTMTL_DEBUG is set."""
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    if sys.stdout is None:  # started with stdout closed
        sys.stdout = _ClosedStdout()
    try:
        app()
    except SystemExit:
        if _TERMINATING:  # SIGTERM outside a command (click turns it into an abort): still 143
            _exit_terminated()
        raise
    except SentmtlError as e:  # raised outside a command (should not happen, but never a traceback)
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        if _TERMINATING:
            _exit_terminated()
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if _TERMINATING:
            _exit_terminated()
        if os.environ.get("SENTMTL_DEBUG"):
            raise
        typer.echo(f"internal error: {type(e).__name__}: {e} (set SENTMTL_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
