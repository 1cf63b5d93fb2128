"""`sentmtl index` and `sentmtl search --index` (issue 20): the index's answers equal an exact
search over the same vectors; --where and --entity filter by the heads' stored outputs; --add
appends; a batch output is taken as it is (no second backbone pass) and refused when another model
made it; a build or --add killed at seeded random points leaves the index as it was before or
after; a second writer, a damaged or foreign folder and another model are refused in one line."""

import json
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import QUIET_ENV as ENV
from conftest import ROOT, invoke, run_then_kill, sentmtl_exe, write_config

CORPUS = [
    "The central bank cut interest rates by half a point.",
    "Tesla shares fell after the earnings report.",
    "The striker scored twice in the derby.",
    "Tesla recalls cars over a software fault.",
    "Apple unveils a new phone with a faster chip.",
    "Stocks slumped as Tesla missed its delivery target.",
    "Floods forced thousands from their homes in Bangladesh.",
    "The senate passed the budget after a long debate.",
    "Scientists found water ice on the moon's south pole.",
    "Microsoft buys a gaming studio for two billion dollars.",
    "The marathon was won in record time in Berlin.",
    "Oil prices rose as OPEC agreed to cut output.",
    "A new vaccine trial shows strong results.",
    "Police arrested two men after the bank robbery in Paris.",
    "The chef opened a restaurant in Lisbon.",
    "Google faces a fine from the European Commission.",
]
QUERIES = ["car maker in trouble", "rate cut by the central bank", "football match", "space discovery"]


def _corpus(tmp_path: Path, lines=CORPUS, name="c.txt") -> Path:
    p = tmp_path / name
    p.write_text("".join(t + "\n" for t in lines), encoding="utf-8")
    return p


def _index(runner, src: Path, idx: Path, *extra):
    return invoke(runner, ["index", str(src), str(idx), *map(str, extra)])


def _search(runner, idx: Path, query: str, *extra):
    r = invoke(runner, ["search", query, "--index", str(idx), "--format", "json", *map(str, extra)])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _exact(model, query: str, lines: list[str], keep=None) -> list[tuple[str, float]]:
    """(id, cosine) of every kept line, best first: numpy over the model's own vectors."""
    emb = model.embed([query] + lines)
    scores = emb[1:] @ emb[0]
    order = np.argsort(-scores, kind="stable")
    return [(str(i), float(scores[i])) for i in order if keep is None or keep(i)]


def test_search_equals_exact_search_and_keeps_every_heads_output(runner, tmp_path, model):
    idx = tmp_path / "idx"
    r = _index(runner, _corpus(tmp_path), idx)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["built"] == rep["rows"] == len(CORPUS) and rep["tasks"] == ["cls", "sent", "ner"] and not rep["ann"]
    want_rows = {
        json.loads(line)["text"]: json.loads(line)
        for line in invoke(
            runner, ["predict", "--tasks", "cls,sent,ner", "--format", "jsonl", *CORPUS]
        ).stdout.splitlines()
    }
    for q in QUERIES:
        got = _search(runner, idx, q, "--top-k", 5)
        assert got["query"] == q and got["index"] == str(idx)
        exact = _exact(model, q, CORPUS)[:5]
        assert [h["id"] for h in got["results"]] == [i for i, _ in exact]
        np.testing.assert_allclose([h["score"] for h in got["results"]], [s for _, s in exact], atol=1e-5)
        for rank, h in enumerate(got["results"], 1):
            assert list(h) == ["rank", "score", "id", "text", "cls", "sent", "ner"] and h["rank"] == rank
            w = want_rows[h["text"]]
            assert h["cls"]["label"] == w["cls"]["label"] and h["sent"]["label"] == w["sent"]["label"]
            assert h["cls"]["scores"] == pytest.approx(w["cls"]["scores"], abs=1e-6)
            assert [(e["label"], e["start"], e["end"]) for e in h["ner"]["entities"]] == [
                (e["label"], e["start"], e["end"]) for e in w["ner"]["entities"]
            ]


def test_where_and_entity_filter_by_the_stored_outputs(runner, tmp_path, model):
    idx = tmp_path / "idx"
    assert _index(runner, _corpus(tmp_path), idx).exit_code == 0
    rows = {h["id"]: h for h in _search(runner, idx, "news", "--top-k", 100)["results"]}
    assert len(rows) == len(CORPUS)
    business = {i for i, h in rows.items() if h["cls"]["label"] == "business"}
    tesla = {
        i
        for i, h in rows.items()
        if any(e["label"] == "ORG" and e["text"].lower() == "tesla" for e in h["ner"]["entities"])
    }
    assert business and tesla and len(business) < len(CORPUS)  # the filters have something to do
    q = QUERIES[0]
    got = _search(runner, idx, q, "--top-k", 100, "--where", "cls_label = 'business'")
    assert [h["id"] for h in got["results"]] == [i for i, _ in _exact(model, q, CORPUS, lambda i: str(i) in business)]
    got = _search(runner, idx, q, "--top-k", 100, "--entity", "org:TESLA")
    assert [h["id"] for h in got["results"]] == [i for i, _ in _exact(model, q, CORPUS, lambda i: str(i) in tesla)]
    both = _search(runner, idx, q, "--top-k", 100, "--entity", "ORG:Tesla", "--where", "cls_score > 0.0")
    assert {h["id"] for h in both["results"]} == tesla
    none = _search(runner, idx, q, "--entity", "PER:Nobody At All")
    assert none["results"] == []
    for bad, words in [
        (["--where", "no_such_column = 1"], "--where"),
        (["--entity", "Tesla"], "LABEL:TEXT"),
    ]:
        r = invoke(runner, ["search", q, "--index", str(idx), *bad])
        assert r.exit_code == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
        assert ".rs:" not in r.stderr, r.stderr  # lance's Rust source location says nothing to a user
    r = invoke(runner, ["search", q, "--corpus", str(tmp_path / "c.txt"), "--where", "cls_label = 'x'"])
    assert r.exit_code == 2 and "--index" in r.stderr


def test_add_appends_rows_in_one_commit_and_refuses_other_tasks(runner, tmp_path, model):
    idx = tmp_path / "idx"
    first, more = CORPUS[:10], CORPUS[10:]
    assert _index(runner, _corpus(tmp_path, first), idx).exit_code == 0
    extra = tmp_path / "more.jsonl"
    extra.write_text(
        "".join(json.dumps({"doc": f"m{i}", "text": t}) + "\n" for i, t in enumerate(more)), encoding="utf-8"
    )
    r = _index(runner, extra, idx, "--add", "--id-column", "doc")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["added"] == len(more) and json.loads(r.stdout)["rows"] == len(CORPUS)
    got = _search(runner, idx, "a city marathon", "--top-k", 3)["results"]
    assert got[0]["id"] == "m0" and got[0]["text"] == more[0]
    r = _index(runner, extra, idx, "--add", "--tasks", "cls")
    assert r.exit_code == 2 and "same" in r.stderr
    r = _index(runner, _corpus(tmp_path, first), idx)  # a build over it, without --force
    assert r.exit_code == 2 and "--add" in r.stderr and "--force" in r.stderr
    r = _index(runner, _corpus(tmp_path, first), idx, "--force", "--tasks", "cls")
    assert r.exit_code == 0 and json.loads(r.stdout)["rows"] == len(first)
    assert list(_search(runner, idx, "x")["results"][0]) == ["rank", "score", "id", "text", "cls"]


def test_force_through_a_symlink_rebuilds_the_index_it_names(runner, tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    assert _index(runner, _corpus(tmp_path), real).exit_code == 0
    link.symlink_to(real)
    r = _index(runner, _corpus(tmp_path, CORPUS[:3], "three.txt"), link, "--force")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["index"] == str(link)  # the report names it as the user did
    assert link.is_symlink() and len(_search(runner, real, "x", "--top-k", 10)["results"]) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no stale `.link.N.old`


def test_a_batch_output_is_taken_as_it_is_and_refused_from_another_model(runner, tmp_path, monkeypatch):
    src = _corpus(tmp_path)
    out = tmp_path / "b"
    r = invoke(runner, ["batch", str(src), str(out), "--tasks", "embed,cls,ner"])
    assert r.exit_code == 0, r.output
    import sentmtl_cli.model as model_mod

    def no_backbone(*a, **k):
        raise AssertionError("the backbone ran on a batch output")

    monkeypatch.setattr(model_mod.MultiTaskModel, "run", no_backbone)
    idx = tmp_path / "idx"
    r = _index(runner, out, idx)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["computed"] is False and rep["tasks"] == ["cls", "ner"] and rep["rows"] == len(CORPUS)
    monkeypatch.undo()
    stored = {str(x["id"]): x for x in pq.read_table(out).to_pylist()}
    got = _search(runner, idx, QUERIES[0], "--top-k", 3)["results"]
    for h in got:
        assert h["cls"]["label"] == stored[h["id"]]["cls_label"]
        assert h["ner"]["entities"] == stored[h["id"]]["ner_entities"]
    other = write_config(
        tmp_path,
        (ROOT / "configs" / "default.yaml")
        .read_text()
        .replace("max_seq_length: 256", "max_seq_length: 128")
        .replace("weights: heads/", f"weights: {ROOT / 'configs' / 'heads'}/"),
    )
    r = invoke(runner, ["index", str(out), str(tmp_path / "idx2"), "--config", str(other)])
    assert r.exit_code == 2 and "another model" in r.stderr, r.output
    r = invoke(runner, ["search", "x", "--index", str(idx), "--config", str(other)])
    assert r.exit_code == 2 and "another model" in r.stderr and "max_seq_length" in r.stderr, r.output
    r = invoke(runner, ["batch", str(src), str(tmp_path / "b2"), "--tasks", "cls"])
    assert r.exit_code == 0
    r = _index(runner, tmp_path / "b2", tmp_path / "idx3")
    assert r.exit_code == 2 and "embed" in r.stderr


def test_refused_folders_are_one_line_and_exit_2(runner, tmp_path):
    src = _corpus(tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [
        (["index", str(src), str(foreign)], "not a sentmtl index"),
        (["search", "x", "--index", str(foreign)], "not a sentmtl index"),
        (["search", "x", "--index", str(tmp_path / "nope")], "no such folder"),
        (["index", str(src), str(foreign), "--add"], "not a sentmtl index"),
        (["index", str(tmp_path / "missing.txt"), str(tmp_path / "i")], "no such file"),
        (["index", str(src), str(tmp_path / "i"), "--tasks", "nope"], "unknown task"),
        (["search", "x"], "--corpus FILE or --index INDEX"),
    ]
    for args, words in cases:
        r = invoke(runner, args)
        assert r.exit_code == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.output)
    assert (foreign / "notes.txt").read_text() == "mine"  # never touched
    idx = tmp_path / "idx"
    assert _index(runner, src, idx).exit_code == 0
    (idx / "sentmtl-index.json").write_text("{broken")
    r = invoke(runner, ["search", "x", "--index", str(idx)])
    assert r.exit_code == 2 and "damaged" in r.stderr
    shutil.rmtree(idx)
    assert _index(runner, src, idx).exit_code == 0
    shutil.rmtree(idx / "rows.lance")
    r = invoke(runner, ["search", "x", "--index", str(idx)])
    assert r.exit_code == 2 and "damaged" in r.stderr


def test_a_second_writer_is_refused(runner, tmp_path):
    from sentmtl_cli.errors import SentmtlError
    from sentmtl_cli.index.store import WriteLock

    idx = tmp_path / "idx"
    src = _corpus(tmp_path)
    assert _index(runner, src, idx).exit_code == 0
    with WriteLock(idx):
        r = _index(runner, src, idx, "--add")
        assert r.exit_code == 2 and "another process" in r.stderr, r.output
        with pytest.raises(SentmtlError, match="another process"):
            with WriteLock(idx):
                pass
    assert _index(runner, src, idx, "--add").exit_code == 0  # released


# ---- SIGKILL during a build and an --add ---------------------------------------------------------------
def _rows(idx: Path) -> int | None:
    """The index's row count through the public search path; None when there is no index."""
    if not idx.exists():
        return None
    from sentmtl_cli.index.store import Index

    ix = Index(idx)
    got = ix.search(np.ones(384, np.float32) / np.sqrt(384), top_k=10_000)
    assert len(got) == ix.current().count_rows()
    return len(got)


@pytest.mark.slow
def test_build_and_add_killed_anywhere_leave_the_index_before_or_after(tmp_path):
    exe = sentmtl_exe()
    lines = [f"{t} (item {i})" for i in range(120) for t in CORPUS[:10]]  # 1,200 rows, several batches
    big = _corpus(tmp_path, lines, "big.txt")
    idx = tmp_path / "idx"
    t0 = time.monotonic()
    subprocess.run([exe, "index", str(big), str(idx), "--tasks", "cls"], check=True, env=ENV, capture_output=True)
    full = time.monotonic() - t0
    assert _rows(idx) == len(lines)
    rng = random.Random(11)
    for _ in range(3):  # a build over it (--force) killed: the old index, whole, or the new one
        run_then_kill([exe, "index", str(big), str(idx), "--tasks", "cls", "--force"], rng.uniform(0.5, full))
        assert _rows(idx) == len(lines)
    for _ in range(3):  # --add killed: before or after, never part of the rows
        before = _rows(idx)
        run_then_kill([exe, "index", str(big), str(idx), "--add"], rng.uniform(0.5, full))
        assert _rows(idx) in (before, before + len(lines))
    fresh = tmp_path / "fresh"
    run_then_kill([exe, "index", str(big), str(fresh), "--tasks", "cls"], full / 2)
    assert _rows(fresh) in (None, len(lines))
    subprocess.run(
        [exe, "index", str(big), str(fresh), "--tasks", "cls", "--force"], check=True, env=ENV, capture_output=True
    )
    assert _rows(fresh) == len(lines)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fresh.")]  # the killed build's folder: cleaned


def test_serve_search_answers_as_the_cli_and_sees_rows_added_while_it_runs(runner, tmp_path, model):
    from fastapi.testclient import TestClient

    from sentmtl_cli.serve.app import Settings, create_app

    idx = tmp_path / "idx"
    assert _index(runner, _corpus(tmp_path, CORPUS[:10]), idx).exit_code == 0
    with TestClient(create_app(Settings(index=str(idx)), model=model)) as c:
        for q in QUERIES[:2]:
            r = c.post("/search", json={"query": q, "top_k": 4, "where": "cls_label != 'sports'"})
            assert r.status_code == 200, r.text
            cli = _search(runner, idx, q, "--top-k", 4, "--where", "cls_label != 'sports'")
            assert r.json()["query"] == q
            assert [h["id"] for h in r.json()["results"]] == [h["id"] for h in cli["results"]]
            assert [h["score"] for h in r.json()["results"]] == pytest.approx(
                [h["score"] for h in cli["results"]], abs=1e-6
            )
        r = c.post("/search", json={"query": "x", "where": "nope = 1"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "where", r.text
        r = c.post("/search", json={"query": "x", "entities": ["Tesla"]})
        assert r.status_code == 422 and r.json()["error"]["param"] == "entities", r.text
        r = c.post("/search", json={"query": "  "})
        assert r.status_code == 422 and r.json()["error"]["param"] == "query", r.text
        r = c.post("/search", json={"query": "x", "top_k": 0})
        assert r.status_code == 422
        r = c.post("/search", json={"query": "x", "where": "cls_score > 0 " + "OR cls_score > 0 " * 200})
        assert r.status_code == 422 and r.json()["error"]["param"] == "where", r.text
        r = c.post("/search", json={"query": "x", "entities": ["ORG:" + "x" * 600]})
        assert r.status_code == 422 and r.json()["error"]["param"] == "entities", r.text
        assert _index(runner, _corpus(tmp_path, CORPUS[10:], "more.txt"), idx, "--add").exit_code == 0
        r = c.post("/search", json={"query": "x", "top_k": 100})
        assert len(r.json()["results"]) == len(CORPUS)  # the committed rows, seen without a restart
    with TestClient(create_app(Settings(), model=model)) as c:
        r = c.post("/search", json={"query": "x"})
        assert r.status_code == 404 and "--index" in r.json()["error"]["message"]


def test_the_python_api_opens_an_index_with_its_model(runner, tmp_path, model):
    import sentmtl_cli

    idx = tmp_path / "idx"
    assert _index(runner, _corpus(tmp_path), idx).exit_code == 0
    ix = sentmtl_cli.open_index(idx, model=model)
    hits = ix.query(QUERIES[0], top_k=3, entities=["ORG:Tesla"])
    assert [h["id"] for h in hits] == [
        h["id"] for h in _search(runner, idx, QUERIES[0], "--top-k", 3, "--entity", "ORG:Tesla")["results"]
    ]
    r = invoke(runner, ["serve", "--index", str(tmp_path / "c.txt"), "--port", "0"])
    assert r.exit_code == 2 and "not a folder" in r.stderr


def test_the_vector_index_of_a_large_table_finds_what_exact_search_finds(tmp_path, monkeypatch, model):
    """Past ANN_ROWS (lowered here to 2,000 rows), the table gets its vector index; its answers,
    filtered or not, are the exact ones for nearly every query, and --add folds new rows in."""
    import pyarrow as pa

    from sentmtl_cli.index import store

    monkeypatch.setattr(store, "ANN_ROWS", 2000)
    monkeypatch.setattr(store, "partitions", lambda n: 8)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, model.dim))
    n = 6000
    vectors = centres[rng.integers(0, 40, n)] + rng.normal(scale=0.6, size=(n, model.dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    labels = np.array(["business", "world", "sports", "sci_tech"])[rng.integers(0, 4, n)]

    class LabelOnly:
        def arrow_fields(self):
            return [pa.field("cls_label", pa.string())]

    def source(lo, hi):
        flat = pa.array(vectors[lo:hi].reshape(-1), pa.float32())
        batch = pa.RecordBatch.from_arrays(
            [pa.array(np.arange(lo, hi)), pa.array([f"row {i}" for i in range(lo, hi)]),
             pa.FixedSizeListArray.from_arrays(flat, model.dim), pa.array(labels[lo:hi])],
            names=["id", "text", "embedding", "cls_label"],
        )  # fmt: skip
        return store.Source(iter([batch]), ["cls"], hi - lo, False, {"cls": ["cls_label"]})

    monkeypatch.setattr(model, "heads", {"cls": LabelOnly()})
    idx = tmp_path / "idx"
    store._write_new(idx, model, source(0, 5000), force=False)
    ix = store.Index(idx, model, fresh=True)
    assert store.has_ann(ix.current())
    kinds = sorted(i.index_type for i in ix.current().describe_indices())
    assert kinds == ["Bitmap", "IVF_RQ"], kinds  # cls_label is indexed for --where
    vector_index = next(i.name for i in ix.current().describe_indices() if i.index_type == "IVF_RQ")
    codes = ix.current().stats.index_stats(vector_index)["indices"][0]["sub_index"]
    assert codes["num_bits"] == store.RQ_BITS == 3, codes["num_bits"]
    stored = ix.current().to_table(columns=["id", "cls_label"])
    assert stored["cls_label"].to_pylist() == sorted(labels[:5000])  # one label's rows after another
    pure = [set(f.to_table(columns=["cls_label"])["cls_label"].to_pylist()) for f in ix.current().get_fragments()]
    assert sorted(min(p) for p in pure) == sorted(set(labels)) and all(len(p) == 1 for p in pure), pure
    assert sorted(map(int, stored["id"].to_pylist())) == list(range(5000))  # every row, once
    assert len(ix.search(vectors[0], top_k=50)) == 50  # more than the graph's default candidates
    queries = vectors[rng.choice(5000, 50, replace=False)] + rng.normal(scale=0.05, size=(50, model.dim)).astype(
        np.float32
    )
    for where, keep in [(None, np.ones(5000, bool)), ("cls_label = 'sports'", labels[:5000] == "sports")]:
        found = []
        for q in queries:
            exact = set(np.flatnonzero(keep)[np.argsort(-(vectors[:5000][keep] @ q))[:10]].tolist())
            hits = ix.search(q, top_k=10, where=where)
            assert all(labels[int(h["id"])] == "sports" for h in hits) if where else len(hits) == 10
            found.append(len(exact & {int(h["id"]) for h in hits}) / 10)
        assert np.mean(found) >= 0.9, (where, np.mean(found))
    with store.WriteLock(idx):
        store._append(idx, model, source(5000, 6000))
    assert ix.current().count_rows() == 6000 and store.has_ann(ix.current())
    hits = ix.search(vectors[5500], top_k=1)
    assert hits[0]["id"] == "5500"


def test_a_bad_row_is_one_line_and_an_add_it_stops_commits_nothing(runner, tmp_path, model):
    from sentmtl_cli.errors import SentmtlError
    from sentmtl_cli.index import store

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a fine text"}\n{"text": 5}\n', encoding="utf-8")
    r = _index(runner, bad, tmp_path / "new")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert "row 2" in r.stderr and "leaves such rows out" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "new").exists()
    r = _index(runner, bad, tmp_path / "new", "--on-error", "skip")
    assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == 1 and json.loads(r.stdout)["rows"] == 1, r.output
    idx = tmp_path / "idx"
    assert _index(runner, _corpus(tmp_path), idx).exit_code == 0
    good = store.computed_source(
        model, _corpus(tmp_path, CORPUS[:3], "more.txt"), ["cls", "sent", "ner"], "text", None, 32, "fail"
    )

    def rows_then_a_bad_one(first):  # the first rows are handed to lance before the error
        yield from first
        raise SentmtlError("more.txt row 9: a bad row")

    good.batches = rows_then_a_bad_one(good.batches)
    with pytest.raises(SentmtlError, match="row 9"):
        store._append(idx, model, good)
    assert store.Index(idx).current().count_rows() == len(CORPUS)  # nothing of the stopped --add


def test_a_one_shot_search_imports_lance_without_pandas_and_pandas_still_works_after():
    """`sentmtl search --index` keeps pandas (0.15-0.3 s of imports) out of its process, and
    pyarrow.compute until it is used; pyarrow's own to_pandas still finds pandas when something
    asks for it later, and pyarrow.compute is the real module once used."""
    import sys

    code = (
        "import sys\n"
        "from sentmtl_cli.index import store\n"
        "store.import_for_one_shot()\n"
        "assert 'lance' in sys.modules and 'pandas' not in sys.modules, sorted(sys.modules)[:5]\n"
        "assert not any(type(f).__name__ == '_NoPandas' for f in sys.meta_path)\n"
        # pyarrow.compute waits for its first use, and is then the real module for everyone
        "assert type(sys.modules['pyarrow.compute']).__name__ == '_LaterCompute'\n"
        "import pyarrow as pa\n"
        "assert pa.table({'a': [1, 2]}).to_pandas()['a'].sum() == 3\n"
        "import pyarrow.compute as pc, pyarrow.dataset as ds\n"
        "assert str(ds.field('a')) == 'a' and pc.add(1, 2).as_py() == 3\n"
        "assert type(sys.modules['pyarrow.compute']).__name__ == 'module' and pa.compute.sum([1, 2]).as_py() == 3\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_a_one_shot_search_process_answers_as_the_api_does(runner, tmp_path):
    """The CLI's own process (lance without pandas, pyarrow.compute not yet imported, os._exit at
    the end) gives the answer an in-process search gives, filters included."""
    idx = tmp_path / "idx"
    assert _index(runner, _corpus(tmp_path), idx).exit_code == 0
    for extra in ([], ["--where", "cls_label = 'business'"], ["--entity", "ORG:Tesla"]):
        args = ["search", "car maker in trouble", "--index", str(idx), "--format", "json", "--top-k", "3", *extra]
        r = subprocess.run([sentmtl_exe(), *args], capture_output=True, text=True, env=ENV, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout) == _search(runner, idx, "car maker in trouble", "--top-k", "3", *extra), extra


def test_rows_are_regrouped_a_fragment_a_label_or_in_one_past_the_limit(tmp_path, monkeypatch):
    """store._rows_by writes the rows again one label after another: a fragment of their own for
    each label (a filter on it then keeps whole fragments), or, past GROUP_FRAGMENTS labels, in
    one run of fragments; no row lost or doubled either way, and a NULL label last."""
    import pyarrow as pa

    from sentmtl_cli.index import store

    labels = ["b", None, "a", "c", "a", "b", "c", "a", None, "b"]
    src = store._lance().write_dataset(
        pa.table({"id": [str(i) for i in range(10)], "cls_label": labels}), str(tmp_path / "src.lance")
    )
    order = sorted(range(10), key=lambda i: (labels[i] is None, labels[i] or ""))
    for limit, fragments in [(store.GROUP_FRAGMENTS, 4), (2, 1)]:
        monkeypatch.setattr(store, "GROUP_FRAGMENTS", limit)
        out = store._rows_by(src, str(tmp_path / f"out{limit}.lance"), "cls_label")
        got = out.to_table(columns=["id", "cls_label"])
        assert got["cls_label"].to_pylist() == [labels[i] for i in order]
        assert sorted(got["id"].to_pylist(), key=int) == [str(i) for i in range(10)]
        assert len(out.get_fragments()) == fragments


def test_lance_errors_lose_their_rust_source_location():
    from sentmtl_cli.index.store import lance_message

    e = ValueError("Invalid user input: No field named no_such_column, /home/runner/lance/src/sql.rs:109:22\nmore")
    assert lance_message(e) == "Invalid user input: No field named no_such_column"
    assert lance_message(ValueError("")) == "ValueError"
    assert lance_message(ValueError("plain words, kept")) == "plain words, kept"
