"""Inference commands: embed, similarity, predict, search, info. Each reads its arguments, calls the
Python API (model.py), and hands the result to a sink or to render."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import SentmtlError
from .options import (
    Backend,
    BackendOpt,
    BatchOpt,
    ConfigOpt,
    EmbedFmt,
    FileOpt,
    Fmt,
    LabelsFileOpt,
    LabelsOpt,
    Metric,
    MultiLabelOpt,
    OutputOpt,
    Overflow,
    ReportFmt,
    TemplateOpt,
    TextsArg,
    ThreadsOpt,
    ThresholdOpt,
    WindowOverlapOpt,
    default_format,
    exit_quickly,
    fmt_option,
    handles_errors,
    overflow_option,
    zero_shot_head,
)

CHUNK = 4096  # texts read, embedded and written at a time: memory stays flat on any input size


def gather_texts(texts: Optional[list[str]], file: Optional[str]) -> list[str]:
    """All input texts at once (for commands that need them together, like similarity)."""
    from ..files.read import TextSource

    source = TextSource(texts, file)
    source.count()  # a clear error when there is no text
    return list(source)


def load_model(
    config: Optional[Path],
    threads: Optional[int],
    backend=None,
    window_overlap: Optional[int] = None,
    one_shot: bool = False,
):
    """one_shot: a command that will run the backbone and then end (embed, similarity, predict,
    search) starts building it now, in a thread, while the tokenizer and heads are read
    (MultiTaskModel.open_backbone_soon), and ends the process without its teardown once done
    (exit_quickly)."""
    from ..model import load

    m = load(config, threads=threads, backend=backend.value if backend else None, soon=one_shot)
    if one_shot:
        exit_quickly()
    if window_overlap is not None:
        m.cfg.backbone.window_overlap = window_overlap
    if m.backend == "torch" and (backend is None or backend.value == "auto") and m.cfg.backbone.backend == "auto":
        src = m.cfg.source
        typer.echo(
            f"note: no ONNX export beside {src}, so this runs on torch (seconds slower to start); "
            f"`sentmtl export --config {src} --int8` makes the fast path",
            err=True,
        )
    return m


def refuse_long(m, source, overflow) -> None:
    """--overflow error: every text is checked before anything is written, so stdout never holds
    half a JSON document."""
    if overflow != Overflow.error:
        return
    from ..text.windows import pieces_of

    L = m.tokenizer.max_seq_length
    for start, chunk in source.chunks(CHUNK):
        for i, (t, item) in enumerate(zip(chunk, m.tokenizer.encode_raw(chunk, truncate=False))):
            pieces_of(start + i, t, item, L, Overflow.error, 0)


@handles_errors
def embed(
    texts: Optional[list[str]] = TextsArg,
    file: Optional[str] = FileOpt,
    config: Optional[Path] = ConfigOpt,
    fmt: Optional[EmbedFmt] = fmt_option(EmbedFmt),
    output: Optional[str] = OutputOpt,
    overflow: Overflow = overflow_option(Overflow.truncate),
    window_overlap: Optional[int] = WindowOverlapOpt,
    batch_size: int = BatchOpt,
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Embed texts into fixed-length vectors. A text past max_seq_length is cut to it, as the
    model was trained and as sentence-transformers does, unless --overflow window."""
    from ..files.read import TextSource
    from ..files.sink import Sink
    from ..shapes import embeddings_head
    from . import render

    f = default_format(fmt, output)
    if f == "npy" and output is None:
        raise SentmtlError("--format npy needs --output FILE (or --output - for stdout)")
    source = TextSource(texts, file)
    total = source.count()
    m = load_model(config, threads, backend, window_overlap, one_shot=True)
    refuse_long(m, source, overflow)
    head = embeddings_head(m.name, m.dim, m.cfg.backbone.normalize)
    with (
        Sink(f, output, json_head=head, json_key="embeddings", rows=total, dim=m.dim) as out,
        render.Progress(total, "embedding") as p,
    ):
        for start, chunk in source.chunks(CHUNK):
            emb, res = m.run(chunk, [], batch_size=batch_size, progress=p, offset=start, overflow=overflow)
            assert emb is not None
            if f == "npy":
                out.matrix(emb)
            else:  # a text read in windows says how many
                out.rows(
                    {"text": t, "embedding": e.tolist(), **({"windows": r["windows"]} if "windows" in r else {})}
                    for t, e, r in zip(chunk, emb, res)
                )
    if f == "table":
        import numpy as np

        kept = out.kept
        render.stdout_console().print(
            render.embed_table([k["text"] for k in kept], np.array([k["embedding"] for k in kept], dtype=np.float32))
        )


@handles_errors
def similarity(
    texts: Optional[list[str]] = TextsArg,
    file: Optional[str] = FileOpt,
    metric: Metric = typer.Option(Metric("cosine"), "--metric", help=" | ".join(m.value for m in Metric) + "."),
    config: Optional[Path] = ConfigOpt,
    fmt: Optional[Fmt] = fmt_option(Fmt),
    overflow: Overflow = overflow_option(Overflow.truncate),
    batch_size: int = BatchOpt,
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Score how similar texts are: two texts print one score, more print the matrix."""
    from ..model import pairwise
    from ..shapes import similarity_json, similarity_pairs
    from . import render

    texts = gather_texts(texts, file)
    if len(texts) < 2:
        raise SentmtlError("similarity needs at least two texts")
    m = load_model(config, threads, backend, one_shot=True)
    with render.Progress(len(texts), "embedding") as p:
        emb = m.embed(texts, batch_size=batch_size, progress=p, overflow=overflow)
    matrix = pairwise(emb, emb, metric.value)
    f = default_format(fmt)
    if f == "json":
        render.write_json(similarity_json(metric.value, texts, matrix))
    elif f == "jsonl":
        render.write_jsonl(similarity_pairs(texts, matrix))
    else:
        render.stdout_console().print(render.similarity_table(metric.value, texts, matrix))


@handles_errors
def predict(
    texts: Optional[list[str]] = TextsArg,
    file: Optional[str] = FileOpt,
    tasks: Optional[str] = typer.Option(
        None, "--tasks", "-t", help="Comma-separated tasks (default: every task in the config)."
    ),
    top_k: int = typer.Option(1, "--top-k", min=1, help="Labels to show per sentence task."),
    labels: Optional[str] = LabelsOpt,
    labels_file: Optional[str] = LabelsFileOpt,
    template: Optional[list[str]] = TemplateOpt,
    multi_label: bool = MultiLabelOpt,
    threshold: float = ThresholdOpt,
    config: Optional[Path] = ConfigOpt,
    fmt: Optional[Fmt] = fmt_option(Fmt),
    output: Optional[str] = OutputOpt,
    overflow: Overflow = overflow_option(Overflow.window),
    window_overlap: Optional[int] = WindowOverlapOpt,
    batch_size: int = BatchOpt,
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Run task heads (classification, sentiment, entities) from one shared forward pass; --labels
    adds labels of your own (zero-shot), in the same pass."""
    from ..files.read import TextSource
    from ..files.sink import Sink
    from ..heads.zero_shot import ZERO_SHOT_TASK
    from . import render

    zero_shot = zero_shot_head(labels, labels_file, template, multi_label, threshold)
    m = load_model(config, threads, backend, window_overlap, one_shot=True)
    if zero_shot is not None:
        if ZERO_SHOT_TASK in m.heads:
            raise SentmtlError(f"the config has a task named {ZERO_SHOT_TASK!r} already: --labels would replace it")
        m.add_head(ZERO_SHOT_TASK, zero_shot)
        # --labels alone: its task only; with --tasks: those, then zero_shot, in one pass
        task_list = (m.resolve_tasks(tasks.split(",")) if tasks is not None else []) + [ZERO_SHOT_TASK]
    else:
        task_list = m.resolve_tasks(tasks.split(",") if tasks is not None else None)
    source = TextSource(texts, file)
    total = source.count()
    refuse_long(m, source, overflow)
    f = default_format(fmt, output)
    with (
        Sink(f, output, json_head={"model": m.cfg.name, "tasks": task_list}, json_key="predictions") as out,
        render.Progress(total, "predicting") as p,
    ):
        for start, chunk in source.chunks(CHUNK):
            out.rows(
                m.predict(
                    chunk,
                    tasks=task_list,
                    top_k=top_k,
                    batch_size=batch_size,
                    progress=p,
                    offset=start,
                    overflow=overflow,
                )
            )
    if f == "table":
        con = render.stdout_console()
        for t in render.predict_tables(out.kept, task_list, m.heads, top_k):
            con.print(t)


@handles_errors
def search(
    query: str = typer.Argument(..., help="What to look for."),
    corpus: Optional[str] = typer.Option(
        None, "--corpus", help="A file whose lines are searched ('-' for stdin), embedded on every call."
    ),
    index: Optional[Path] = typer.Option(None, "--index", help="An index built by `sentmtl index` (instant)."),
    where: Optional[str] = typer.Option(
        None, "--where", help="--index: a filter on the stored columns, e.g. \"cls_label = 'business'\"."
    ),
    entity: Optional[list[str]] = typer.Option(
        None, "--entity", help="--index: rows whose entities include LABEL:TEXT (e.g. ORG:Tesla); repeatable."
    ),
    top_k: int = typer.Option(5, "--top-k", min=1, help="How many results to return."),
    config: Optional[Path] = ConfigOpt,
    fmt: Optional[Fmt] = fmt_option(Fmt),
    batch_size: int = BatchOpt,
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Semantic search: the lines of a file (--corpus), or the rows of an index (--index), nearest
    in meaning to a query."""
    from ..text.inputs import check_texts
    from . import render

    check_texts([query])
    if (corpus is None) == (index is None):
        raise SentmtlError("give --corpus FILE or --index INDEX (one of them)")
    if index is None and (where is not None or entity):
        raise SentmtlError("--where and --entity filter an index's stored columns: give --index")
    f = default_format(fmt)
    if index is not None:
        from ..index import prefork
        from ..index.store import Index, import_for_one_shot, read_meta, same_model

        ahead = prefork.helper()  # the console entry's forked process: lance's half of the work
        if ahead is not None:
            ahead.open(index)
        m = load_model(config, threads, backend, one_shot=True)
        hits = None
        if ahead is not None:
            same_model(read_meta(index), m, index)
            hits = ahead.search(index, m.embed([query])[0], top_k, where, entity or [])
        if hits is None:
            import_for_one_shot()  # while ONNX Runtime builds the backbone's session in its thread
            ix = Index(index, m)
            hits = ix.search(m.embed([query])[0], top_k=top_k, where=where, entities=entity or [])
        if f == "json":
            render.write_json({"query": query, "index": str(index), "results": hits})
        elif f == "jsonl":
            render.write_jsonl(hits)
        else:
            render.stdout_console().print(render.search_table(query, hits, key="id"))
        return
    from ..files.read import read_lines

    assert corpus is not None
    numbered = read_lines(corpus)
    if not numbered:
        raise SentmtlError(f"corpus {corpus} has no non-empty lines")
    m = load_model(config, threads, backend, one_shot=True)
    with render.Progress(len(numbered) + 1, "embedding corpus") as p:
        hits = m.search(
            query,
            [t for _, t in numbered],
            top_k=top_k,
            batch_size=batch_size,
            progress=p,
            line_numbers=[n for n, _ in numbered],
        )
    if f == "json":
        render.write_json({"query": query, "corpus": corpus, "results": hits})
    elif f == "jsonl":
        render.write_jsonl(hits)
    else:
        render.stdout_console().print(render.search_table(query, hits))


@handles_errors
def info(
    config: Optional[Path] = ConfigOpt,
    fmt: Optional[ReportFmt] = fmt_option(ReportFmt),
):
    """Describe the model: backbone, heads (type, labels, parameters, trained or not), config path."""
    from ..config.model import load_config
    from ..model import MultiTaskModel
    from . import render

    doc = MultiTaskModel(load_config(config)).describe()
    if default_format(fmt) in ("json", "jsonl"):
        render.write_json(doc)
    else:
        render.print_info(doc)
