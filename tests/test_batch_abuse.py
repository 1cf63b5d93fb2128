"""`sentmtl batch` against a careless user (issue 18): an input inside OUTPUT is never deleted by
--force; a CSV field of megabytes, a JSONL row nested 5,000 deep or holding a 5,000-digit number
are rows like any other (kept, or bad rows named by file and row); parquet id columns of dates,
timestamps, decimals and binary are read as text; dictionary-encoded and view text columns are
text; an input edited between a kill and the resume (size and mtime unchanged) is noticed; and
repeated ids are refused, or warned of, naming the rows. The Ray engine's one-line errors are in
test_batch_ray.py."""

import datetime
import decimal
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_batch import read_output

from conftest import invoke


def _run(runner, *args):
    return invoke(runner, ["batch", *map(str, args), "--tasks", "embed,cls"])


def _one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output and "internal error" not in r.output
    return lines[0]


def test_an_input_inside_output_is_refused_with_force_or_not(runner, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("one text\nanother text\n", encoding="utf-8")
    prev = tmp_path / "prev"
    assert _run(runner, src, prev).exit_code == 0
    shards = sorted(p.name for p in prev.iterdir())
    for args in ([prev, prev, "--force"], [prev, prev], [prev / "part-000000.parquet", prev, "--force"]):
        line = _one_error_line(_run(runner, *args))
        assert "inside OUTPUT" in line, line
        assert sorted(p.name for p in prev.iterdir()) == shards  # nothing deleted
    assert len(read_output(prev)) == 2


def test_a_pipe_as_input_is_refused_not_waited_on(runner, tmp_path):
    fifo = tmp_path / "rows.txt"
    os.mkfifo(fifo)  # counted, then opened again for its rows: that open would wait for a writer forever
    line = _one_error_line(_run(runner, fifo, tmp_path / "out"))
    assert "not a plain file" in line and not (tmp_path / "out").exists(), line
    r = invoke(runner, ["index", str(fifo), str(tmp_path / "idx")])
    assert r.exit_code == 2 and "not a plain file" in r.stderr, r.output
    assert not (tmp_path / "idx").exists()


def test_a_csv_field_of_megabytes_is_a_text_like_any_other(runner, tmp_path):
    big = tmp_path / "big.csv"
    big.write_text("text\n" + "a" * 5_242_880 + "\nsmall one\n", encoding="utf-8")
    for extra in ([], ["--on-error", "skip"]):
        out = tmp_path / f"out{len(extra)}"
        r = _run(runner, big, out, *extra)
        assert r.exit_code == 0, r.output
        rows = read_output(out)
        assert [len(x["text"]) for x in rows] == [5_242_880, 9]


def test_json_that_nests_too_deep_or_holds_a_huge_number_is_a_bad_row(runner, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"text": "first"}\n'
        + '{"text": '
        + "[" * 5000
        + "]" * 5000
        + "}\n"
        + '{"text": "x", "n": '
        + "9" * 5000
        + "}\n"
        + '{"text": "last"}\n',
        encoding="utf-8",
    )
    line = _one_error_line(_run(runner, src, tmp_path / "failed"))
    assert "row 2" in line and "nested too deeply" in line, line
    r = _run(runner, src, tmp_path / "out", "--on-error", "skip")
    assert r.exit_code == 0, r.output
    assert [x["text"] for x in read_output(tmp_path / "out")] == ["first", "last"]
    errors = [json.loads(x) for x in (tmp_path / "out" / "_errors.jsonl").read_text().splitlines()]
    assert [e["row"] for e in errors] == [2, 3]
    assert "nested too deeply" in errors[0]["reason"] and "digit" in errors[1]["reason"], errors


def test_parquet_ids_of_dates_timestamps_decimals_and_binary_are_text(runner, tmp_path):
    columns = {
        "timestamp": pa.array([datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.datetime(2024, 1, 3)]),
        "date": pa.array([datetime.date(2024, 1, 2), datetime.date(2024, 1, 3)]),
        "decimal": pa.array([decimal.Decimal("1.50"), decimal.Decimal("2.25")], pa.decimal128(6, 2)),
        "binary": pa.array([b"row-a", b"row-b"], pa.binary()),
        "category": pa.array(["a", "b"]).dictionary_encode(),
    }
    for name, ids in columns.items():
        src = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"text": ["first text", "second text"], "key": ids}), src)
        out = tmp_path / f"out-{name}"
        r = _run(runner, src, out, "--id-column", "key")
        assert r.exit_code == 0, (name, r.output)
        got = [x["id"] for x in pq.read_table(out).to_pylist()]
        assert all(isinstance(i, str) for i in got) and len(set(got)) == 2, (name, got)
    assert sorted(x["id"] for x in pq.read_table(tmp_path / "out-date").to_pylist()) == ["2024-01-02", "2024-01-03"]
    assert sorted(x["id"] for x in pq.read_table(tmp_path / "out-decimal").to_pylist()) == ["1.50", "2.25"]
    nested = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "key": pa.array([[1], [2]])}), nested)
    line = _one_error_line(_run(runner, nested, tmp_path / "out-nested", "--id-column", "key"))
    assert "'key'" in line and "id column" in line


def test_dictionary_encoded_and_view_text_columns_are_text(runner, tmp_path):
    texts = ["a first text", "a second text", "a first text"]
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"text": texts}), plain)
    assert _run(runner, plain, tmp_path / "plain").exit_code == 0
    want = read_output(tmp_path / "plain")
    kinds = {
        "category": pa.array(texts).dictionary_encode(),
        "large": pa.array(texts, pa.large_string()),
        "view": pa.array(texts, pa.string_view()),
    }
    for name, column in kinds.items():
        src = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"text": column}), src)
        r = _run(runner, src, tmp_path / name)
        assert r.exit_code == 0, (name, r.output)
        got = read_output(tmp_path / name)
        assert [x["text"] for x in got] == texts
        assert [x["cls_label"] for x in got] == [x["cls_label"] for x in want]
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    assert "not text" in _one_error_line(_run(runner, numbers, tmp_path / "numbers"))


def test_an_input_edited_before_the_resume_with_size_and_mtime_kept_is_noticed(runner, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("the first line\nthe second line\n", encoding="utf-8")
    out = tmp_path / "out"
    assert _run(runner, src, out, "--shard-rows", "1").exit_code == 0
    (out / "part-000001.parquet").unlink()  # as if killed before the second shard
    (out / "_SUCCESS").unlink()
    st = src.stat()
    src.write_text("the FIRST line\nthe second line\n", encoding="utf-8")  # same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    line = _one_error_line(_run(runner, src, out, "--shard-rows", "1"))
    assert "other inputs" in line, line
    r = _run(runner, src, out, "--shard-rows", "1", "--force")
    assert r.exit_code == 0 and [x["text"] for x in read_output(out)] == ["the FIRST line", "the second line"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_repeated_ids_are_refused_naming_the_rows_or_warned_of(runner, tmp_path, fmt):
    rows = [("a", "1"), ("b", "2"), ("c", "1"), ("d", "3")]
    src = tmp_path / f"in.{fmt}"
    if fmt == "jsonl":  # the number 1 and the string "1" are the same id once written
        src.write_text(
            "".join(json.dumps({"text": t, "key": int(k) if i == 0 else k}) + "\n" for i, (t, k) in enumerate(rows)),
            encoding="utf-8",
        )
    elif fmt == "csv":
        src.write_text("text,key\n" + "".join(f"{t},{k}\n" for t, k in rows), encoding="utf-8")
    else:
        pq.write_table(pa.table({"text": [t for t, _ in rows], "key": [k for _, k in rows]}), src)
    line = _one_error_line(_run(runner, src, tmp_path / "out", "--id-column", "key"))
    assert "'1'" in line and "row 1" in line and "row 3" in line and "--duplicate-ids warn" in line, line
    assert not (tmp_path / "out").exists()
    r = _run(runner, src, tmp_path / "out", "--id-column", "key", "--duplicate-ids", "warn")
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "row 3" in r.stderr
    assert len(read_output(tmp_path / "out")) == 4
