"""`sentmtl fit` (issue 19, part 2): a head from 8 examples per label, written as a model folder
whose model.yaml keeps the base config's heads by reference; it runs beside them in one pass
(`predict`, `batch`), leaves the base config and its weights untouched, is the same bytes on every
run, and refuses bad input in one line with exit 2."""

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, invoke

EXAMPLES = {
    "sports": [
        "The goalkeeper saved a penalty in the last minute.",
        "She won the marathon in record time.",
        "The team lost the derby after extra time.",
        "He hit three home runs in one game.",
        "The coach was sacked after five defeats.",
        "Our club signed a new striker this summer.",
        "The tennis final went to a fifth set.",
        "The cyclists climbed the mountain stage in the rain.",
    ],
    "cooking": [
        "Chop the onions and fry them in butter.",
        "Bake the bread for forty minutes at 200 degrees.",
        "Season the soup with salt and a little pepper.",
        "Whisk the cream until it forms soft peaks.",
        "Marinate the chicken overnight in yogurt and spices.",
        "Simmer the tomato sauce for an hour.",
        "Knead the dough until it is smooth.",
        "Roast the vegetables with olive oil and garlic.",
    ],
    "money": [
        "The bank cut its interest rate by half a point.",
        "Shares fell sharply after the earnings report.",
        "Inflation rose to four percent last month.",
        "The company raised two million in its first round.",
        "Mortgage payments are going up again.",
        "The currency weakened against the dollar.",
        "Investors sold bonds as yields climbed.",
        "The budget deficit widened this quarter.",
    ],
}
UNSEEN = [
    ("The striker scored twice before half time.", "sports"),
    ("Add the flour slowly and stir until thick.", "cooking"),
    ("Stock markets rallied after the rate decision.", "money"),
]


def _write(path: Path, rows, header: bool = True) -> Path:
    path.write_text(("text\tlabel\n" if header else "") + "".join(f"{t}\t{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


def _data(tmp_path: Path) -> Path:
    return _write(tmp_path / "examples.tsv", [(t, lab) for lab, ts in EXAMPLES.items() for t in ts])


def _fit(runner, tmp_path, *extra, task="topic2", out="fitted"):
    return invoke(
        runner,
        ["fit", task, "--data", str(_data(tmp_path)), "--output", str(tmp_path / out),
         "--text-column", "text", "--label-column", "label", *map(str, extra)],
    )  # fmt: skip


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_fitted_head_runs_beside_the_shipped_heads_in_one_pass(runner, tmp_path):
    base_files = [ROOT / "configs" / "default.yaml", *sorted((ROOT / "configs" / "heads").glob("*.safetensors"))]
    before = {p: _sha(p) for p in base_files}
    r = _fit(runner, tmp_path)
    assert r.exit_code == 0, r.output
    assert "24 examples (sports 8, cooking 8, money 8)" in r.stderr
    out = tmp_path / "fitted"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "heads/topic2.safetensors",
        "model.yaml",
        "sentmtl-train.json",
    ]
    assert {p: _sha(p) for p in base_files} == before  # the base config and its weights: untouched
    texts = [t for t, _ in UNSEEN]
    got = invoke(
        runner,
        ["predict", "--config", str(out / "model.yaml"), "--tasks", "topic2,cls,ner", "--format", "jsonl", *texts],
    )
    assert got.exit_code == 0, got.output
    assert "note: no ONNX export" not in got.stderr  # the base's export serves it
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    want = [
        json.loads(line)
        for line in invoke(runner, ["predict", "--tasks", "cls,ner", "--format", "jsonl", *texts]).stdout.splitlines()
    ]
    for row, w, (_, label) in zip(rows, want, UNSEEN, strict=True):
        assert list(row) == ["text", "topic2", "cls", "ner"]
        assert row["topic2"]["label"] == label and row["topic2"]["untrained"] is False, row
        assert set(row["topic2"]["scores"]) == {"sports", "cooking", "money"}
        assert row["cls"] == w["cls"] and row["ner"] == w["ner"]  # the shipped heads, to the last digit
    src = tmp_path / "in.txt"
    src.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    batch = invoke(
        runner, ["batch", str(src), str(tmp_path / "b"), "--config", str(out / "model.yaml"), "--tasks", "topic2"]
    )
    assert batch.exit_code == 0, batch.output
    table = sorted(pq.read_table(tmp_path / "b").to_pylist(), key=lambda x: x["id"])
    assert [x["topic2_label"] for x in table] == [lab for _, lab in UNSEEN]


def test_fit_is_the_same_bytes_every_run_and_the_prior_and_unlabeled_texts_matter(runner, tmp_path):
    assert _fit(runner, tmp_path, out="a").exit_code == 0
    assert _fit(runner, tmp_path, out="b").exit_code == 0
    head = "heads/topic2.safetensors"
    assert _sha(tmp_path / "a" / head) == _sha(tmp_path / "b" / head)
    assert _fit(runner, tmp_path, "--no-label-prior", out="c").exit_code == 0
    assert _sha(tmp_path / "c" / head) != _sha(tmp_path / "a" / head)
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("".join(t + "\n" for t, _ in UNSEEN * 3), encoding="utf-8")
    r = _fit(runner, tmp_path, "--unlabeled", str(unlabeled), out="d")
    assert r.exit_code == 0 and "unlabeled texts joined" in r.stderr, r.output


def test_force_replaces_only_a_model_folder(runner, tmp_path):
    assert _fit(runner, tmp_path).exit_code == 0
    r = _fit(runner, tmp_path)
    assert r.exit_code == 2 and "--force" in r.stderr
    assert _fit(runner, tmp_path, "--force").exit_code == 0
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    r = _fit(runner, tmp_path, "--force", out="notes")
    assert r.exit_code == 2 and "does not hold a sentmtl model" in r.stderr
    assert (other / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "rows, extra, task, words",
    [
        ([("a text", "x"), ("b text", "x")], [], "t", "one label only"),
        ([], [], "t", "no usable rows"),
        ([("a text", "x"), ("b text", "y")], ["--labels", "x,y,z"], "t", "have no examples"),
        ([("a text", "x"), ("b text", "y")], ["--labels", "x"], "t", "does not list"),
        ([("a text", "x"), ("b text", "y")], [], "cls", "head of the base config"),
        ([("a text", "x"), ("b text", "y")], [], "bad name!", "letters, digits"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runner, tmp_path, rows, extra, task, words):
    data = _write(tmp_path / "d.tsv", rows)
    r = invoke(runner, ["fit", task, "--data", str(data), "--output", str(tmp_path / "o"),
                        "--text-column", "text", "--label-column", "label", *extra])  # fmt: skip
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.output
    assert not (tmp_path / "o").exists()


def test_columns_are_found_by_name_in_a_header_or_jsonl_and_by_position_without(runner, tmp_path):
    rows = [(t, lab) for lab, ts in EXAMPLES.items() for t in ts]
    plain = _write(tmp_path / "plain.tsv", rows, header=False)
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"label": lab, "text": t}) + "\n" for t, lab in rows), encoding="utf-8")
    header = _data(tmp_path)
    for data in (plain, jsonl, header):
        out = tmp_path / f"out-{data.suffix[1:]}-{data.stem}"
        r = invoke(runner, ["fit", "t", "--data", str(data), "--output", str(out)])
        assert r.exit_code == 0, (data, r.output)
        assert "24 examples (sports 8, cooking 8, money 8)" in r.stderr, (data, r.stderr)


def test_a_missing_data_file_or_a_bad_format_is_one_line(runner, tmp_path):
    r = invoke(runner, ["fit", "t", "--data", str(tmp_path / "none.tsv"), "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such file" in r.stderr
    r = invoke(runner, ["fit", "t", "--data", str(_data(tmp_path)), "--output", str(tmp_path / "o"), "--format", "xml"])
    assert r.exit_code == 2 and "--format must be one of" in r.stderr and len(r.stderr.strip().splitlines()) == 1
