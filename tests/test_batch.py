"""`sentmtl batch`: the numbers equal `embed` and `predict`'s whatever the shard size, batch size or
input format; ids are positions in the input, each once; bad rows fail the run or are listed, never
dropped; a run killed by SIGKILL resumes without redoing or duplicating a shard; OUTPUT holding
another job, or anything else, is refused. The Ray engine is in test_batch_ray.py."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import invoke
from toydata import TEXTS


def read_output(folder: Path) -> list[dict]:
    rows = pq.read_table(folder).to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def check_matches_api(model, rows: list[dict], texts: list[str], tasks=("cls", "sent", "ner")):
    """Each row equals what the Python API (the same code `embed` and `predict` print) gives alone."""
    want_emb = model.embed(texts)
    want = model.predict(texts, tasks=list(tasks))
    assert [r["text"] for r in rows] == texts
    for r, e, p in zip(rows, want_emb, want):
        got = np.array(r["embedding"], dtype=np.float32)
        assert float(got @ e / np.linalg.norm(got) / np.linalg.norm(e)) > 0.99999
        for t in tasks:
            if "entities" in p[t]:
                assert [(x["start"], x["end"], x["label"], x["text"]) for x in r[f"{t}_entities"]] == [
                    (x["start"], x["end"], x["label"], x["text"]) for x in p[t]["entities"]
                ]
                assert np.allclose(
                    [x["score"] for x in r[f"{t}_entities"]], [x["score"] for x in p[t]["entities"]], atol=1e-4
                )
            else:
                assert r[f"{t}_label"] == p[t]["label"]
                assert r[f"{t}_score"] == pytest.approx(p[t]["score"], abs=1e-4)
                assert r[f"{t}_scores"] == pytest.approx(p[t]["scores"], abs=1e-4)


@pytest.mark.parametrize("shard_rows,batch_size", [(3, 2), (1000, 64), (1, 1)])
def test_rows_equal_embed_and_predict_whatever_the_shards_and_batches(tmp_path, runner, model, shard_rows, batch_size):
    src = tmp_path / "in.txt"
    src.write_text(
        "\n".join(TEXTS[:4]) + "\n\n" + "\n".join(TEXTS[4:]) + "\n", encoding="utf-8"
    )  # a blank line: not a row
    out = tmp_path / "out"
    r = invoke(runner, ["batch", str(src), str(out), "--shard-rows", str(shard_rows), "--batch-size", str(batch_size)])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""  # the summary is on stderr
    assert "8 rows" in r.stderr
    rows = read_output(out)
    assert [r["id"] for r in rows] == list(range(8))
    check_matches_api(model, rows, TEXTS)
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["rows"] == 8 and manifest["errors"] == 0 and manifest["tasks"] == ["embed", "cls", "sent", "ner"]
    assert manifest["shards"] == -(-8 // shard_rows) == len(list(out.glob("part-*.parquet")))


def test_types_are_columns_not_json_strings(tmp_path, runner, model):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert invoke(runner, ["batch", str(src), str(out), "--tasks", "embed,cls,ner"]).exit_code == 0
    sch = pq.read_schema(out / "part-000000.parquet")
    assert sch.field("id").type == pa.int64()
    assert sch.field("embedding").type == pa.list_(pa.float32(), model.dim)
    assert sch.field("cls_label").type == pa.string() and sch.field("cls_score").type == pa.float32()
    assert [f.name for f in sch.field("cls_scores").type] == list(model.heads["cls"].cfg.labels)
    ent = sch.field("ner_entities").type.value_type
    assert [(f.name, f.type) for f in ent] == [
        ("text", pa.string()),
        ("label", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("score", pa.float32()),
    ]
    assert "sent_label" not in sch.names  # only the tasks asked for


def _write_inputs(folder: Path) -> list[str]:
    """One corpus as three shards of three formats; the texts in id order."""
    folder.mkdir()
    with open(folder / "a.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "text"])
        w.writerow(["x1", TEXTS[0]])
        w.writerow(["x2", "A text over\ntwo lines, quoted."])  # a record that spans lines
        w.writerow(["x3", TEXTS[1]])
    with open(folder / "b.jsonl", "w", encoding="utf-8") as f:
        for k, t in enumerate(TEXTS[2:5]):
            f.write(json.dumps({"text": t, "key": f"y{k}"}) + "\n")
    table = pa.table({"key": [f"z{k}" for k in range(3)], "text": TEXTS[5:8]})
    pq.write_table(table, folder / "c.parquet", row_group_size=2)  # shards cut across row groups
    (folder / "notes.md").write_text("not an input")
    return [TEXTS[0], "A text over\ntwo lines, quoted.", TEXTS[1], *TEXTS[2:8]]


@pytest.mark.parametrize("shard_rows", [1, 2, 100])
def test_a_folder_of_csv_jsonl_and_parquet_shards(tmp_path, runner, model, shard_rows):
    texts = _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    r = invoke(runner, ["batch", str(tmp_path / "in"), str(out), "--shard-rows", str(shard_rows)])
    assert r.exit_code == 0, r.stderr
    rows = read_output(out)
    assert [r["id"] for r in rows] == list(range(9))  # file order, then row order
    check_matches_api(model, rows, texts)
    # with --id-column, the input's own ids are kept (as strings)
    out2 = tmp_path / "out2"
    r = invoke(runner, ["batch", str(tmp_path / "in"), str(out2), "--id-column", "key", "--tasks", "cls"])
    assert r.exit_code == 0, r.stderr
    got = pq.read_table(out2).to_pylist()
    assert [x["id"] for x in got] == ["x1", "x2", "x3", "y0", "y1", "y2", "z0", "z1", "z2"]
    assert pq.read_schema(out2 / "part-000000.parquet").field("id").type == pa.string()


def test_bad_rows_fail_the_run_or_are_listed_never_dropped(tmp_path, runner):
    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"text": "A good row."}),
        json.dumps({"text": ""}),
        json.dumps({"body": "no text key"}),
        json.dumps({"text": 42}),
        "{not json",
        json.dumps({"text": "Another good row."}),
    ]
    src.write_bytes(("\n".join(lines) + "\n").encode() + json.dumps({"text": "x"}).encode()[:-3] + b'\xff\xfe"}\n')
    out = tmp_path / "out"
    r = invoke(runner, ["batch", str(src), str(out), "--tasks", "cls"])
    assert r.exit_code == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "in.jsonl row 2 (id 1): empty" in err[0] and "Traceback" not in r.stderr
    assert not (out / "_SUCCESS").exists()
    r = invoke(runner, ["batch", str(src), str(out), "--tasks", "cls", "--on-error", "skip"])  # resumes the same job
    assert r.exit_code == 0, r.stderr
    rows = read_output(out)
    assert [(x["id"], x["text"]) for x in rows] == [(0, "A good row."), (5, "Another good row.")]
    errors = [json.loads(x) for x in (out / "_errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["row"]) for e in errors] == [(1, 2), (2, 3), (3, 4), (4, 5), (6, 7)]
    reasons = [e["reason"] for e in errors]
    assert "empty" in reasons[0] and "no 'text'" in reasons[1] and "not a string" in reasons[2]
    assert "JSON" in reasons[3] and "UTF-8" in reasons[4]
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["rows"] == 2 and manifest["errors"] == 5 and manifest["input_rows"] == 7


def test_output_that_holds_another_job_or_anything_else_is_refused(tmp_path, runner):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS[:3]) + "\n")
    out = tmp_path / "out"
    assert invoke(runner, ["batch", str(src), str(out), "--tasks", "cls"]).exit_code == 0
    r = invoke(runner, ["batch", str(src), str(out), "--tasks", "cls"])
    assert r.exit_code == 0 and "already holds this batch" in r.stderr
    r = invoke(runner, ["batch", str(src), str(out), "--tasks", "sent"])
    assert r.exit_code == 2 and "other tasks" in r.stderr and "--force" in r.stderr
    r = invoke(runner, ["batch", str(src), str(out), "--tasks", "sent", "--force"])
    assert r.exit_code == 0, r.stderr
    assert "sent_label" in pq.read_schema(out / "part-000000.parquet").names
    src.write_text("\n".join(TEXTS[:4]) + "\n")  # the input changed: another job
    r = invoke(runner, ["batch", str(src), str(out), "--tasks", "sent"])
    assert r.exit_code == 2 and "other inputs" in r.stderr
    other = tmp_path / "home"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    for extra in ([], ["--force"]):
        r = invoke(runner, ["batch", str(src), str(other), *extra])
        assert r.exit_code == 2 and "not a sentmtl batch output" in r.stderr
    assert (other / "thesis.tex").read_text() == "precious"
    r = invoke(runner, ["batch", str(src), str(other / "thesis.tex")])
    assert r.exit_code == 2 and "not a folder" in r.stderr
    for bad, msg in [
        (["--tasks", "cls,nope"], "unknown task 'nope'"),
        (["--on-error", "ignore"], "--on-error"),
        (["--engine", "spark"], "--engine"),
        (["--text-column", "body"], None),
    ]:
        r = invoke(runner, ["batch", str(src), str(tmp_path / "o2"), *bad])
        if msg:
            assert r.exit_code == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = invoke(runner, ["batch", str(tmp_path / "missing.txt"), str(tmp_path / "o3")])
    assert r.exit_code == 2 and "input not found" in r.stderr
    (tmp_path / "data.xml").write_text("<a/>")
    r = invoke(runner, ["batch", str(tmp_path / "data.xml"), str(tmp_path / "o3")])
    assert r.exit_code == 2 and "unknown format" in r.stderr
    jl = tmp_path / "x.jsonl"
    jl.write_text(json.dumps({"body": "a"}) + "\n")
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "x.parquet")
    r = invoke(runner, ["batch", str(tmp_path / "x.parquet"), str(tmp_path / "o4")])
    assert r.exit_code == 2 and "no column 'text'" in r.stderr


def test_without_ray_the_ray_engine_says_how_to_install_it(tmp_path, runner, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("a text\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    r = invoke(runner, ["batch", str(src), str(tmp_path / "out"), "--engine", "ray"])
    assert r.exit_code == 2 and "pip install 'sentmtl[ray]'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_gives_each_id_once(tmp_path):
    """Killed (SIGKILL, no cleanup) at seeded moments and started again with the same arguments:
    the shards already complete are not redone, and the ids are exactly 0..N-1, once each."""
    exe = Path(sys.executable).parent / "sentmtl"
    if not exe.exists():
        pytest.skip("the sentmtl console script is not installed in this environment")
    n = 1200
    src = tmp_path / "in.txt"
    src.write_text("".join(f"text {i} about a quiet afternoon in the park\n" for i in range(n)))
    out = tmp_path / "out"
    args = [str(exe), "batch", str(src), str(out), "--tasks", "embed,cls", "--shard-rows", "100"]
    env = dict(os.environ, SENTMTL_NO_PROGRESS="1")
    kills = 0
    for delay in (0.2, 2.5, 0.8, 3.5):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
            kills += 1
    parts_before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} if out.exists() else {}
    time.sleep(0.05)
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert kills >= 1 and parts_before, "no kill landed mid-run: the test proved nothing"
    for name, mtime in parts_before.items():  # complete shards were not redone
        assert (out / name).stat().st_mtime_ns == mtime
    ids = pq.read_table(out, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == list(range(n))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((out / "_SUCCESS").read_text())["rows"] == n
