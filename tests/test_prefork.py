"""A one-shot `search --index` in two processes (sentmtl_cli/index/prefork.py): the process forked at
start-up answers as a search in this process does (filters, errors, a table with its vector index,
warmed), the console entry's own process then never imports lance, a helper that is gone leaves
the search to the caller, and the forked process never outlives its parent."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sentmtl_cli.index import prefork

from conftest import QUIET_ENV as ENV
from conftest import invoke, sentmtl_exe

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the forked helper is Linux only")

LINES = [
    "The central bank cut interest rates by half a point.",
    "Tesla shares fell after the earnings report.",
    "The striker scored twice in the derby.",
    "Tesla recalls cars over a software fault.",
    "Oil prices rose as OPEC agreed to cut output.",
    "Scientists found water ice on the moon's south pole.",
]

# one process: fork the helper first, as the console entry does, then ask it once
ASK = """
import json, sys
import numpy as np
from sentmtl_cli.index import prefork
prefork.start()
h = prefork.helper()
args = json.loads(sys.argv[1])
{before}
h.open(args["index"])
vector = np.asarray(args["vector"], dtype=np.float32)
try:
    hits = h.search(args["index"], vector, args["top_k"], args["where"], args["entities"])
    print(json.dumps({{"hits": hits, "lance": "lance" in sys.modules}}))
except Exception as e:
    print(json.dumps({{"error": str(e), "kind": type(e).__name__}}))
"""


def _ask(index: Path, vector, top_k=3, where=None, entities=(), before=""):
    args = {"index": str(index), "vector": [float(x) for x in vector], "top_k": top_k, "where": where}
    args["entities"] = list(entities)
    code = ASK.format(before=before)
    r = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    from typer.testing import CliRunner

    runner = CliRunner()
    folder = tmp_path_factory.mktemp("prefork")
    src = folder / "c.txt"
    src.write_text("".join(t + "\n" for t in LINES), encoding="utf-8")
    assert invoke(runner, ["index", str(src), str(folder / "idx")]).exit_code == 0
    return folder / "idx"


def test_wanted_only_for_a_search_with_an_index():
    cores = len(os.sched_getaffinity(0))
    for argv in (["sentmtl", "search", "q", "--index", "i"], ["sentmtl", "search", "--index=i", "q"]):
        assert prefork.wanted(argv) is (cores >= 2)
    for argv in (["sentmtl", "search", "q", "--corpus", "f"], ["sentmtl", "predict", "--index", "i"], ["sentmtl"]):
        assert prefork.wanted(argv) is False


def test_the_forked_process_answers_as_this_one_does(small_index, model):
    from sentmtl_cli.index.store import Index

    ix = Index(small_index, model)
    vector = model.embed(["car maker in trouble"])[0]
    for where, entities in ((None, []), ("cls_label = 'business'", []), (None, ["ORG:Tesla"])):
        got = _ask(small_index, vector, 3, where, entities)
        assert got["hits"] == ix.search(vector, 3, where, entities), (where, entities)
        assert got["hits"] and got["lance"] is False  # all of lance's work was the helper's


def test_its_errors_are_this_ones_in_one_line(small_index, tmp_path, model):
    from sentmtl_cli.errors import SentmtlError
    from sentmtl_cli.index.store import Index

    vector = model.embed(["x"])[0]
    got = _ask(small_index, vector, where="nope = 1")
    with pytest.raises(SentmtlError) as here:
        Index(small_index).search(vector, 3, "nope = 1", [])
    assert got == {"error": str(here.value), "kind": "SentmtlError"}
    damaged = tmp_path / "damaged"
    shutil.copytree(small_index, damaged)
    for f in (damaged / "rows.lance" / "_versions").iterdir():
        f.unlink()
    got = _ask(damaged, vector)
    with pytest.raises(SentmtlError) as here:
        Index(damaged)
    assert got == {"error": str(here.value), "kind": "SentmtlError"}


def test_a_table_with_its_vector_index_warmed_answers_the_same(tmp_path, monkeypatch, model):
    """warm() (every partition loaded before the vector comes) changes no answer."""
    import pyarrow as pa

    from sentmtl_cli.index import store

    monkeypatch.setattr(store, "ANN_ROWS", 1000)
    monkeypatch.setattr(store, "partitions", lambda n: 8)
    rng = np.random.default_rng(3)
    n = 3000
    vectors = rng.normal(size=(n, model.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    flat = pa.array(vectors.reshape(-1), pa.float32())
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(np.arange(n)),
            pa.array([f"row {i}" for i in range(n)]),
            pa.FixedSizeListArray.from_arrays(flat, model.dim),
        ],
        names=["id", "text", "embedding"],
    )
    monkeypatch.setattr(model, "heads", {})
    idx = tmp_path / "idx"
    store._write_new(idx, model, store.Source(iter([batch]), [], n, False, {}), force=False)
    cold = store.Index(idx)
    assert store.has_ann(cold.table)
    queries = vectors[:5] + rng.normal(scale=0.3, size=(5, model.dim)).astype(np.float32)
    expected = [cold.search(q / np.linalg.norm(q), 10) for q in queries]
    warmed = store.Index(idx)
    store.warm(warmed)
    assert [warmed.search(q / np.linalg.norm(q), 10) for q in queries] == expected
    q = queries[0] / np.linalg.norm(queries[0])
    assert _ask(idx, q, 10)["hits"] == expected[0]  # the forked process warms in a thread, then answers


def test_a_helper_that_is_gone_leaves_the_search_here(small_index, model):
    vector = model.embed(["x"])[0]
    gone = "import os, signal; os.kill(h.pid, signal.SIGKILL); os.waitpid(h.pid, 0)"
    assert _ask(small_index, vector, before=gone)["hits"] is None


def test_the_forked_process_ends_with_its_parent():
    code = (
        "import os, sys\n"
        "from sentmtl_cli.index import prefork\n"
        "prefork.start()\n"
        "print(prefork.helper().pid, flush=True)\n"
        "os._exit(0)\n"  # no word to the helper, no wait: as a command that fails early ends
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    pid = int(r.stdout)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0].lower()
    except (OSError, IndexError):
        return "gone"


def test_the_console_entry_answers_the_same_with_the_helper_and_without(small_index):
    exe = sentmtl_exe()
    base = {k: v for k, v in ENV.items() if k != "SENTMTL_NO_PRELOAD"}
    for extra in ([], ["--where", "cls_label = 'business'"], ["--where", "nope = 1"]):
        args = [exe, "search", "car maker in trouble", "--index", str(small_index), "--format", "json", *extra]
        runs = [
            subprocess.run(args, capture_output=True, text=True, env={**base, **env}, timeout=120)
            for env in ({}, {"SENTMTL_NO_PRELOAD": "1"})
        ]
        assert [(r.returncode, r.stdout, r.stderr) for r in runs[:1]] == [
            (r.returncode, r.stdout, r.stderr) for r in runs[1:]
        ], extra
    assert runs[0].returncode == 2 and runs[0].stderr.count("\n") == 1


def test_the_console_entrys_own_process_leaves_lance_to_the_helper(small_index):
    """The search command's path through the console entry asks the helper: lance is never
    imported in the process that prints the answer."""
    code = (
        "import sys\n"
        "import sentmtl_cli.cli.options as o\n"
        "o.quick_exit = lambda c: sys.stderr.write('lance here: %s\\n' % ('lance' in sys.modules))\n"
        f"sys.argv = ['sentmtl', 'search', 'car maker', '--index', {str(small_index)!r}, '--format', 'json']\n"
        "from sentmtl_cli.launch import main\n"
        "main()\n"
    )
    base = {k: v for k, v in ENV.items() if k != "SENTMTL_NO_PRELOAD"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=base, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["results"] and "lance here: False" in r.stderr
