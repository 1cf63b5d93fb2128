"""Readers for task data, one function per format in registry.READERS (tsv, csv, jsonl, text + a
label file, conll). Bad rows are counted and reported, and fail the run past a threshold; they are
never silently dropped. A sentence reader gives (text, raw label) rows; a head type turns the raw
labels into its targets."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.data import DataConfig
from ..errors import SentmtlError
from ..files.read import read_text
from ..registry import READERS


@dataclass
class SentenceData:
    texts: list[str]
    labels: list[int]
    bad: dict[str, int] = field(default_factory=dict)


@dataclass
class TokenData:
    words: list[list[str]]
    tags: list[list[int]]  # indices into the BIO tag list
    bad: dict[str, int] = field(default_factory=dict)


def infer_format(path: Path) -> str:
    suffix = path.suffix.lower()
    return {
        ".tsv": "tsv",
        ".csv": "csv",
        ".jsonl": "jsonl",
        ".json": "jsonl",
        ".conll": "conll",
        ".txt": "text",
        ".iob": "conll",
        ".bio": "conll",
    }.get(suffix, "tsv")


def _read_text(path: Path) -> str:
    return read_text(path, "data file")


def _column(row, col, names: list[str] | None, path: Path):
    if isinstance(row, dict):
        return row.get(str(col))
    if isinstance(col, str) and not col.lstrip("-").isdigit():
        if names is None or col not in names:
            raise SentmtlError(f"{path}: column {col!r} not found (columns: {names})")
        col = names.index(col)
    col = int(col)
    return row[col] if -len(row) <= col < len(row) else None


def _check_bad(bad: dict[str, int], total: int, cfg: DataConfig, task: str) -> None:
    n_bad = sum(bad.values())
    if not n_bad:
        return
    detail = ", ".join(f"{v} {k}" for k, v in bad.items())
    frac = n_bad / max(total, 1)
    msg = f"{task}: {n_bad} of {total} rows in {cfg.path} are bad ({detail})"
    if frac > cfg.max_bad_fraction:
        raise SentmtlError(
            f"{msg}: {frac:.1%} is over max_bad_fraction={cfg.max_bad_fraction:.1%}; fix the data or the label_map"
        )
    print(f"warning: {msg}; they are skipped", file=sys.stderr)


Row = tuple[Any, Any]  # (text, raw label) as read; either may be missing (None)


@READERS.register("text")
def read_text_rows(cfg: DataConfig, task: str) -> list[Row]:
    """A text file, one text a line, and a parallel file of labels (labels_path)."""
    if cfg.labels_path is None:
        raise SentmtlError(f"{task}: format text needs labels_path (a parallel file of labels)")
    texts = _read_text(cfg.path).split("\n")
    labs = _read_text(cfg.labels_path).split("\n")
    if texts and texts[-1] == "":
        texts.pop()
    if labs and labs[-1] == "":
        labs.pop()
    if len(texts) != len(labs):
        raise SentmtlError(f"{task}: {cfg.path} has {len(texts)} lines but {cfg.labels_path} has {len(labs)}")
    return list(zip(texts, labs))


@READERS.register("jsonl")
def read_jsonl(cfg: DataConfig, task: str) -> list[Row]:
    """One JSON object a line; the text and label keys are the named columns (default text, label)."""
    rows: list[Row] = []
    tc = cfg.text_column if isinstance(cfg.text_column, str) and not str(cfg.text_column).isdigit() else "text"
    lc = cfg.label_column if isinstance(cfg.label_column, str) and not str(cfg.label_column).isdigit() else "label"
    for n, line in enumerate(_read_text(cfg.path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise SentmtlError(f"{cfg.path}:{n}: not valid JSON") from None
        if not isinstance(obj, dict):
            raise SentmtlError(f"{cfg.path}:{n}: each line must be a JSON object")
        rows.append((obj.get(tc), obj.get(lc)))
    return rows


def _table_rows(cfg: DataConfig, table: list[list[str]]) -> list[Row]:
    named = any(isinstance(c, str) and not c.lstrip("-").isdigit() for c in (cfg.text_column, cfg.label_column))
    header = cfg.header if cfg.header is not None else named
    names = [c.strip() for c in table[0]] if header and table else None
    body = table[1:] if header else table
    return [(_column(r, cfg.text_column, names, cfg.path), _column(r, cfg.label_column, names, cfg.path)) for r in body]


@READERS.register("tsv")
def read_tsv(cfg: DataConfig, task: str) -> list[Row]:
    """Plain TSV: no quoting (quotes are part of the text in SST-2 and AG News)."""
    text = _read_text(cfg.path)
    return _table_rows(cfg, [line.split("\t") for line in text.splitlines() if line.strip()])


@READERS.register("csv")
def read_csv(cfg: DataConfig, task: str) -> list[Row]:
    text = _read_text(cfg.path)
    # csv's default field limit (128 KiB) would fail on one long document; a text may be as long as the file
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    try:
        table = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise SentmtlError(f"{cfg.path}: malformed CSV ({e})") from None
    return _table_rows(cfg, table)


def read_rows(cfg: DataConfig, task: str) -> list[Row]:
    """(text, raw label) rows from a sentence-level data file, by its format's reader."""
    fmt = infer_format(cfg.path) if cfg.format == "auto" else cfg.format
    if fmt == "conll":
        raise SentmtlError(f"{task}: format {fmt!r} is for token tasks; a sentence task reads tsv, csv, jsonl or text")
    return READERS.get(fmt)(cfg, task)


def parse_rows(rows: list[Row], cfg: DataConfig, task: str, parse: Callable[[str], Any]) -> tuple[list[str], list[Any]]:
    """Texts and parsed targets; a row with no text or no label, or one `parse` refuses (ValueError,
    with the reason as its message), is counted as bad. skip/limit apply after."""
    out_t: list[str] = []
    out_l: list[Any] = []
    bad: dict[str, int] = {}
    for text, lab in rows:
        if text is None or not str(text).strip():
            bad["empty text"] = bad.get("empty text", 0) + 1
            continue
        if lab is None or (not isinstance(lab, list) and str(lab).strip() == ""):
            bad["missing label"] = bad.get("missing label", 0) + 1
            continue
        try:
            value = parse(lab)
        except ValueError as e:
            bad[str(e)] = bad.get(str(e), 0) + 1
            continue
        out_t.append(str(text).strip())
        out_l.append(value)
    _check_bad(bad, len(rows), cfg, task)
    if not out_t:
        raise SentmtlError(f"{task}: no usable rows in {cfg.path}")
    end = cfg.skip + cfg.limit if cfg.limit else None
    out_t, out_l = out_t[cfg.skip : end], out_l[cfg.skip : end]
    if not out_t:
        raise SentmtlError(f"{task}: skip={cfg.skip} leaves no rows in {cfg.path}")
    return out_t, out_l


def read_sentence_data(
    cfg: DataConfig, labels: list[str], task: str = "task", multi_label: bool = False
) -> SentenceData:
    """Texts and label indices (multi_label: lists of indices, from a JSON list or "a,b")."""
    index = {lab: i for i, lab in enumerate(labels)}

    def one(lab: str) -> int:
        lab = str(lab).strip()
        lab = cfg.label_map.get(lab, lab)
        if lab not in index:
            raise ValueError("label outside the task's labels")
        return index[lab]

    def many(lab: Any) -> list[int]:
        parts = lab if isinstance(lab, list) else [p for p in str(lab).split(",") if p.strip()]
        return sorted({one(p) for p in parts})

    texts, targets = parse_rows(read_rows(cfg, task), cfg, task, many if multi_label else one)
    return SentenceData(texts, targets)


def read_token_data(cfg: DataConfig, tags: list[str], task: str = "task") -> TokenData:
    fmt = infer_format(cfg.path) if cfg.format == "auto" else cfg.format
    if fmt != "conll":
        raise SentmtlError(f"{task}: a token task reads CoNLL (token<TAB>tag, blank line between sentences), not {fmt}")
    return READERS.get("conll")(cfg, tags, task)


@READERS.register("conll")
def read_conll(cfg: DataConfig, tags: list[str], task: str = "task") -> TokenData:
    """token<TAB>tag (or space-separated, tag last) a line, a blank line between sentences."""
    index = {t: i for i, t in enumerate(tags)}
    sentences: list[tuple[list[str], list[int]]] = []
    bad: dict[str, int] = {}
    total = 0
    words: list[str] = []
    wtags: list[str] = []
    ok = True

    def flush():
        nonlocal words, wtags, ok, total
        if words:
            total += 1
            if ok:
                sentences.append((words, [index[t] for t in wtags]))
        words, wtags, ok = [], [], True

    for n, line in enumerate(_read_text(cfg.path).splitlines(), 1):
        if not line.strip():
            flush()
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise SentmtlError(f"{cfg.path}:{n}: expected token<TAB>tag, got {line[:40]!r}")
        tok, tag = parts[0], cfg.label_map.get(parts[-1].strip(), parts[-1].strip())
        if cfg.token_prefix and tok.startswith(cfg.token_prefix):
            tok = tok[len(cfg.token_prefix) :]
        if not tok.strip():
            if ok:
                bad["empty token"] = bad.get("empty token", 0) + 1
            ok = False
        if tag not in index:
            if ok:
                bad["tag outside the task's labels"] = bad.get("tag outside the task's labels", 0) + 1
            ok = False
        words.append(tok.strip() or tok)
        wtags.append(tag)
    flush()
    _check_bad(bad, total, cfg, task)
    if not sentences:
        raise SentmtlError(f"{task}: no usable sentences in {cfg.path}")
    sentences = sentences[cfg.skip : cfg.skip + cfg.limit if cfg.limit else None]
    if not sentences:
        raise SentmtlError(f"{task}: skip={cfg.skip} leaves no sentences in {cfg.path}")
    return TokenData([s[0] for s in sentences], [s[1] for s in sentences], bad)
