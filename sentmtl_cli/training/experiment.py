"""`sentmtl experiment CONFIG`: train a set of recipe variants and write the markdown table
that docs/DISCUSSION.md quotes. Every number in the table is measured in the run that writes it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config.files import read_yaml, resolve_path, validate
from ..config.train import load_train_config
from ..errors import SentmtlError
from ..files.atomic import atomic_write_text

Column = Literal["scores", "stsb", "train_time", "params", "disk", "ms_per_text"]
DEFAULT_COLUMNS: tuple[Column, ...] = ("scores", "stsb", "train_time")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stage(_Strict):
    set: dict = Field(default_factory=dict)  # recipe overrides (dotted keys)


class Variant(_Strict):
    name: str
    set: dict = Field(default_factory=dict)
    model_set: dict = Field(default_factory=dict)  # overrides of the recipe's model config (heads.ner.lstm: 128)
    then: Stage | None = None  # a second stage starting from the first stage's model
    separate: bool = False  # one model per task instead of one shared model
    history: bool = False  # also tabulate every epoch's validation scores


class ExperimentConfig(_Strict):
    name: str
    title: str
    recipe: Path
    output: Path  # where the markdown table (and its JSON) are written
    workdir: Path = Path("../../build/experiments")
    stsb: Path | None = None  # STS pairs to measure how far the embeddings drifted
    stsb_limit: int = Field(500, ge=10)
    speed_texts: int = Field(0, ge=0)  # >0: measure predict time per text on this many validation texts
    columns: list[Column] = Field(default_factory=lambda: list(DEFAULT_COLUMNS))
    variants: list[Variant] = Field(min_length=1)


def load_experiment(path: Path) -> ExperimentConfig:
    path = Path(path)
    cfg = validate(ExperimentConfig, read_yaml(path), path)
    base = path.resolve().parent
    cfg.recipe = resolve_path(base, cfg.recipe)
    cfg.output = resolve_path(base, cfg.output)
    cfg.workdir = resolve_path(base, cfg.workdir)
    cfg.stsb = resolve_path(base, cfg.stsb)
    return cfg


def _sts_subset(path: Path, limit: int, dest: Path) -> Path:
    """`limit` scored pairs drawn with a fixed seed across the whole file (STS-B is ordered by
    genre, so its first rows alone would be one easy genre), as s1<TAB>s2<TAB>score."""
    import numpy as np

    from ..eval.evaluate import read_sts

    a, b, g = read_sts(path)
    idx = np.sort(np.random.default_rng(0).permutation(len(g))[:limit])
    dest.write_text("".join(f"{a[i]}\t{b[i]}\t{g[i]}\n" for i in idx), encoding="utf-8")
    return dest


def _disk_bytes(model) -> int:
    total = 0
    w = model.cfg.backbone.weights
    total += Path(w).stat().st_size if w else (model.folder / "model.safetensors").stat().st_size
    for h in model.heads.values():
        if h.cfg.weights:
            total += Path(h.cfg.weights).stat().st_size
    return total


def _params(model) -> int:
    n = sum(p.numel() for p in model.backbone.model.parameters())
    return int(n + sum(h.parameter_count() for h in model.heads.values()))


def run_variant(exp: ExperimentConfig, v: Variant, sts_file: Path | None, log) -> dict:
    from ..model import load
    from .loop import train

    row: dict = {"variant": v.name}
    t0 = time.perf_counter()
    base_over = {"output": str(exp.workdir / exp.name / v.name)}
    if v.model_set:
        base_over["model"] = str(variant_model(exp, v))
    recipe = load_train_config(exp.recipe, {**base_over, **v.set})
    runs = []
    if v.separate:
        for task in list(recipe.tasks):
            over = {**base_over, **v.set, "output": str(exp.workdir / exp.name / f"{v.name}-{task}")}
            cfg = load_train_config(exp.recipe, over)
            cfg.tasks = {task: cfg.tasks[task]}
            runs.append((task, train(cfg, force=True, quiet=True)))
    else:
        res = train(recipe, force=True, quiet=True)
        if v.then is not None:
            over = {
                **base_over,
                **v.then.set,
                "output": str(exp.workdir / exp.name / f"{v.name}-stage2"),
                "model": str(Path(res.output) / "model.yaml"),
                "init_heads": "weights",
            }
            res2 = train(load_train_config(exp.recipe, over), force=True, quiet=True)
            res2.history = res.history + res2.history
            res = res2
        runs.append(("", res))
    row["train_time_s"] = time.perf_counter() - t0
    scores, metrics, models = {}, {}, []
    for task, res in runs:
        for t, r in _best_row(res)["val"].items():
            if not task or t == task:
                scores[t] = r["score"]
                metrics[t] = r["metric"]
        models.append(load(Path(res.output) / "model.yaml"))
    row["scores"] = scores
    row["metrics"] = metrics  # which metric each score is (the head type's default unless the recipe chose)
    if v.history:
        row["history"] = [
            {"epoch": i + 1, **{t: r["score"] for t, r in h["val"].items()}} for i, h in enumerate(runs[0][1].history)
        ]
    if "stsb" in exp.columns and sts_file is not None:
        from ..eval.evaluate import evaluate_similarity

        row["stsb"] = [evaluate_similarity(m, sts_file)["spearman"] for m in models]
    if "params" in exp.columns:
        row["params"] = sum(_params(m) for m in models)
    if "disk" in exp.columns:
        row["disk_mb"] = sum(_disk_bytes(m) for m in models) / 1e6
    if "ms_per_text" in exp.columns and exp.speed_texts:
        texts = _speed_texts(recipe, exp.speed_texts)
        tasks_all = list(recipe.tasks)
        for m in models:
            m.predict(texts[:8])  # warm up
        t1 = time.perf_counter()
        for m in models:
            m.predict(texts, tasks=[t for t in tasks_all if t in m.heads])
        row["ms_per_text"] = 1000 * (time.perf_counter() - t1) / len(texts)
    log(f"{v.name}: {json.dumps({k: v for k, v in row.items() if k != 'history'}, default=str)}")
    return row


def variant_model(exp: ExperimentConfig, v: Variant) -> Path:
    """The recipe's model config with the variant's model_set applied, written beside its output
    (its relative paths made absolute, so they still point where the original's did)."""
    from ..config.files import apply_overrides

    src = load_train_config(exp.recipe).model
    data = apply_overrides(read_yaml(src), v.model_set, src)
    base = src.resolve().parent
    backbone = data.get("backbone") or {}
    for key in ("path", "weights"):
        if backbone.get(key):
            backbone[key] = str(resolve_path(base, Path(backbone[key])))
    for head in (data.get("heads") or {}).values():
        if isinstance(head, dict) and head.get("weights"):
            head["weights"] = str(resolve_path(base, Path(head["weights"])))
    out = exp.workdir / exp.name / f"{v.name}.model.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    atomic_write_text(out, yaml.safe_dump(data, sort_keys=False))
    return out


def _best_row(res) -> dict:
    rows = [r for r in res.history if r["epoch"] == res.best_epoch]
    return rows[-1] if rows else res.history[-1]


def _speed_texts(recipe, n: int) -> list[str]:
    """Real texts to time prediction on: the first lines of the first sentence task's data."""
    for t in recipe.tasks.values():
        if t.data.format != "conll" and t.data.path.suffix != ".conll":
            return _first_lines(t.data.path, n)
    raise SentmtlError("speed_texts: the recipe has no sentence task to take texts from")


def _first_lines(path: Path, n: int) -> list[str]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.split("\t")[0].strip()
        if text:
            out.append(text)
        if len(out) == n:
            break
    return out


def fmt(x, digits=1, scale=100.0) -> str:
    return "—" if x is None else f"{scale * x:.{digits}f}"


def trained_tasks(exp: ExperimentConfig) -> set[str]:
    """Tasks that some stage of some variant trains (a head that only ever watched is left out)."""
    out = set()
    for v in exp.variants:
        for over in [v.set] + ([v.then.set] if v.then else []):
            cfg = load_train_config(exp.recipe, over)
            out |= {t for t, c in cfg.tasks.items() if not c.eval_only}
    return out


def render_markdown(exp: ExperimentConfig, rows: list[dict], seconds: float, recipe) -> str:
    shown = trained_tasks(exp)
    tasks = sorted(
        {t for r in rows for t in r["scores"] if t in shown},
        key=lambda t: list(recipe.tasks).index(t) if t in recipe.tasks else 99,
    )
    metrics = {t: next(r["metrics"][t] for r in rows if t in r.get("metrics", {})) for t in tasks}
    head = ["variant"] + [f"{t} ({metrics[t].replace('_', '-')})" for t in tasks]
    if "stsb" in exp.columns:
        head.append("STS-B Spearman")
    if "params" in exp.columns:
        head.append("parameters (M)")
    if "disk" in exp.columns:
        head.append("disk (MB)")
    if "ms_per_text" in exp.columns:
        head.append("ms / text (all tasks)")
    if "train_time" in exp.columns:
        head.append("train time (s)")
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"]] + [fmt(r["scores"].get(t)) for t in tasks]
        if "stsb" in exp.columns:
            cells.append(" / ".join(f"{s:.1f}" for s in r.get("stsb", [])) or "—")
        if "params" in exp.columns:
            cells.append(f"{r['params'] / 1e6:.1f}")
        if "disk" in exp.columns:
            cells.append(f"{r['disk_mb']:.0f}")
        if "ms_per_text" in exp.columns:
            cells.append(f"{r.get('ms_per_text', float('nan')):.1f}")
        if "train_time" in exp.columns:
            cells.append(f"{r['train_time_s']:.0f}")
        lines.append(f"| {' | '.join(cells)} |")
    out = [f"### {exp.title}", "", *lines, ""]
    for r in rows:
        if r.get("history"):
            ts = [k for k in r["history"][0] if k != "epoch" and k in shown]
            out += [
                f"Per epoch, `{r['variant']}`:",
                "",
                "| epoch | " + " | ".join(ts) + " |",
                "|---|" + "---|" * len(ts),
            ]
            out += [f"| {h['epoch']} | " + " | ".join(fmt(h[t]) for t in ts) + " |" for h in r["history"]]
            out.append("")
    out.append(
        f"_Measured by `sentmtl experiment` from `{exp.name}` in {seconds / 60:.1f} min on this machine; "
        f"scores are x100 on the recipe's held-out validation split._"
    )
    return "\n".join(out) + "\n"


def run_experiment(path: Path, log=print) -> Path:
    import tempfile

    exp = load_experiment(path)
    recipe = load_train_config(exp.recipe)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sts_file = None
        if "stsb" in exp.columns and exp.stsb is not None:
            if not exp.stsb.exists():
                raise SentmtlError(f"stsb: {exp.stsb} not found (the shared data is absent)")
            sts_file = _sts_subset(exp.stsb, exp.stsb_limit, Path(tmp) / "sts.tsv")
        for v in exp.variants:
            rows.append(run_variant(exp, v, sts_file, log))
    seconds = time.perf_counter() - t0
    md = render_markdown(exp, rows, seconds, recipe)
    atomic_write_text(exp.output, md)
    atomic_write_text(
        exp.output.with_suffix(".json"),
        json.dumps({"experiment": exp.name, "seconds": seconds, "rows": rows}, indent=1),
    )
    return exp.output
