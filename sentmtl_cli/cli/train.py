"""Training commands: train, evaluate, experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..choices import FitPool
from ..errors import SentmtlError
from .infer import load_model
from .options import (
    Backend,
    BackendOpt,
    ConfigOpt,
    ReportFmt,
    ThreadsOpt,
    default_format,
    fmt_option,
    handles_errors,
)


def parse_overrides(pairs: Optional[list[str]]) -> dict:
    import yaml

    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise SentmtlError(f"--set {item!r}: expected KEY=VALUE (e.g. epochs=2)")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


@handles_errors
def train(
    config: Path = typer.Argument(..., help="Training recipe YAML (e.g. configs/train_default.yaml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the output folder's last checkpoint."),
    until_epoch: Optional[int] = typer.Option(
        None, "--until-epoch", min=1, help="Stop after this epoch (resume later)."
    ),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a recipe key: --set epochs=2 --set backbone.train=full."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Train task heads (and optionally the backbone) from a YAML recipe."""
    from ..config.train import load_train_config
    from ..training.loop import train as run_train
    from . import render

    cfg = load_train_config(config, parse_overrides(set_))
    res = run_train(
        cfg,
        force=force,
        resume=resume,
        stop_after=until_epoch,
        progress_factory=None if quiet else render.TrainProgress,
        quiet=quiet,
    )
    typer.echo(
        f"best epoch {res.best_epoch} (score {res.best_score:.4f}) -> {res.output} in {res.seconds:.0f}s", err=True
    )
    typer.echo(
        f"for the fast path (ONNX, under a second to start): sentmtl export --config {res.output / 'model.yaml'} --int8",
        err=True,
    )


@handles_errors
def fit(
    task: str = typer.Argument(..., help="The new task's name (not one of the base config's heads)."),
    data: Path = typer.Option(..., "--data", "-d", help="Examples: TSV/CSV (text, label) or JSONL, as `train` reads."),
    output: Path = typer.Option(..., "--output", "-o", help="A new folder: model.yaml and the new head's weights."),
    config: Optional[Path] = ConfigOpt,
    labels: Optional[str] = typer.Option(
        None, "--labels", help="Comma-separated: the label set and its order (default: as first seen in --data)."
    ),
    no_label_prior: bool = typer.Option(
        False, "--no-label-prior", help="Do not use the label names (by default the head starts from what they say)."
    ),
    unlabeled: Optional[Path] = typer.Option(
        None, "--unlabeled", help="Unlabeled texts, one a line: confident ones join the examples (self-training)."
    ),
    contrastive: bool = typer.Option(
        False,
        "--contrastive",
        help="SetFit's contrastive step on the frozen embedding first (measured worse on the six sets; seconds more).",
    ),
    unlabeled_prior: bool = typer.Option(
        False,
        "--unlabeled-prior",
        help="Use --unlabeled texts for the labels' prior among them (EM), not self-training: gains where labels are imbalanced.",
    ),
    no_word_pieces: bool = typer.Option(
        False,
        "--no-word-pieces",
        help="Never read the examples' word-pieces as features (by default: when 16+ a label and the folds say they help).",
    ),
    pool: FitPool = typer.Option(
        FitPool.auto,
        "--pool",
        help="attention: over each token of layers 2, 4; mean_max: the linear head over pooled layers; "
        "auto: both, and the one whose out-of-fold loss is lower, or the two averaged when that loses less "
        "(8+ a label, 6 labels at most), else mean_max.",
    ),
    text_column: Optional[str] = typer.Option(
        None, "--text-column", help="The text's column: a name or a 0-based index (default: 'text' if named, else 0)."
    ),
    label_column: Optional[str] = typer.Option(
        None,
        "--label-column",
        help="The label's column: a name or a 0-based index (default: 'label' if named, else 1).",
    ),
    data_format: str = typer.Option("auto", "--format", help="tsv | csv | jsonl | auto (by the file's extension)."),
    force: bool = typer.Option(False, "--force", help="Replace an output folder that holds a sentmtl model."),
):
    """Fit a head of your own from a handful of examples (seconds, over the frozen backbone); it runs
    beside the base config's heads in one pass: predict --config OUTPUT/model.yaml --tasks TASK,..."""
    from ..training.fit import FitJob, run_fit
    from . import render

    job = FitJob(
        task=task,
        data=data,
        output=output,
        config=config,
        labels=labels.split(",") if labels is not None else None,
        label_prior=not no_label_prior,
        unlabeled=unlabeled,
        contrastive=contrastive,
        word_pieces=not no_word_pieces,
        unlabeled_prior=unlabeled_prior,
        pool=pool.value,
        force=force,
        text_column=_column(text_column),
        label_column=_column(label_column),
        format=data_format,
    )
    rep = run_fit(job, progress=lambda total: render.Progress(total, "features"))
    counts = ", ".join(f"{lab} {n}" for lab, n in rep["labels"].items())
    extra = f"; {rep['unlabeled_used']} unlabeled texts joined" if unlabeled is not None else ""
    if rep["unlabeled_prior"] is not None:
        shares = ", ".join(f"{lab} {p:.2f}" for lab, p in rep["unlabeled_prior"].items())
        extra = f"; the labels' prior among the unlabeled texts: {shares}"
    kinds = {"attention": "an attention head over the tokens", "mean_max": "a linear head"}
    if rep["member_weights"]:
        share = rep["member_weights"]["attention"]
        kinds["blend"] = f"a linear and an attention head averaged ({1 - share:.2f}/{share:.2f})"
    kind = kinds[rep["pool"]]
    chosen = ""
    losses = rep["out_of_fold_loss"]
    if "attention" in losses and "mean_max" in losses:  # auto fitted both: say why this one
        names = {"mean_max": "the linear head", "attention": "the attention head", "blend": "the two averaged"}
        others = ", ".join(f"{names[k]} {losses[k]:.3g}" for k in names if k in losses and k != rep["pool"])
        chosen = f" (out-of-fold log-loss {losses[rep['pool']]:.3g}; {others})"
    typer.echo(
        f"{task}: {rep['examples']} examples ({counts}){extra}, {kind} -> {output} in {rep['seconds']:.1f} s{chosen}",
        err=True,
    )
    typer.echo(f"use it: sentmtl predict --config {Path(output) / 'model.yaml'} --tasks {task} TEXT", err=True)


def _column(value: Optional[str]) -> str | int | None:
    return int(value) if value is not None and value.isdigit() else value


@handles_errors
def evaluate(
    task: Optional[str] = typer.Option(None, "--task", help="The task (head) to score."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled data: TSV/CSV/JSONL, or CoNLL for token tasks."),
    similarity_file: Optional[Path] = typer.Option(
        None, "--similarity", help="STS pairs (STS-B rows or s1<TAB>s2<TAB>score)."
    ),
    config: Optional[Path] = ConfigOpt,
    text_column: str = typer.Option("0", "--text-column", help="Text column: index or name."),
    label_column: str = typer.Option("1", "--label-column", help="Label column: index or name."),
    labels_file: Optional[Path] = typer.Option(
        None, "--labels-file", help="For a plain text file: the parallel label file."
    ),
    label_map: Optional[str] = typer.Option(
        None, "--label-map", help="Map raw labels to the head's: '0=negative,1=neutral'."
    ),
    token_prefix: str = typer.Option("", "--token-prefix", help="CoNLL: strip this prefix from tokens (e.g. 'en:')."),
    skip: int = typer.Option(0, "--skip", min=0, help="Skip the first N examples."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score at most N examples (after --skip)."),
    fmt: Optional[ReportFmt] = fmt_option(ReportFmt),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    threads: Optional[int] = ThreadsOpt,
    backend: Optional[Backend] = BackendOpt,
):
    """Score a head on labelled data (accuracy, macro-F1, per-label P/R/F1; entity P/R/F1), or embeddings on STS."""
    from ..config.data import DataConfig
    from ..eval.evaluate import evaluate_similarity, evaluate_task
    from . import render

    if (similarity_file is None) == (task is None):
        raise SentmtlError("give either --task T --data FILE, or --similarity FILE")
    m = load_model(config, threads, backend)
    if similarity_file is not None:
        rep = evaluate_similarity(m, similarity_file, batch_size=batch_size, progress_factory=render.Progress)
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
        dc = DataConfig(
            path=data,
            format="text" if labels_file else "auto",
            labels_path=labels_file,
            text_column=text_column,
            label_column=label_column,
            label_map=lm,
            token_prefix=token_prefix,
            skip=skip,
            limit=limit,
        )
        assert task is not None  # checked above: --task or --similarity
        rep = evaluate_task(m, task, dc, batch_size=batch_size, progress_factory=render.Progress)
    if default_format(fmt) in ("json", "jsonl"):
        render.write_json(rep)
    else:
        render.print_evaluation(rep, m.heads.get(rep["task"]) if "task" in rep else None)


@handles_errors
def experiment(
    configs: list[Path] = typer.Argument(..., help="Experiment YAML(s), e.g. configs/experiments/q1_freeze.yaml."),
):
    """Train recipe variants and write the markdown table that docs/DISCUSSION.md quotes."""
    from ..training.experiment import run_experiment

    for c in configs:
        out = run_experiment(c, log=lambda line: typer.echo(line, err=True))
        typer.echo(f"wrote {out}", err=True)
