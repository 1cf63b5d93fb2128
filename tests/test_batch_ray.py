"""`sentmtl batch --engine ray` and `sentmtl_cli.ray.Predictor` on a local Ray (2 CPUs, started once
for this module and shut down after it): the same rows as the local engine; a worker killed mid-job
loses and duplicates nothing; a simulated two-node cluster joined by --address; the Predictor in a
user's own Ray Data pipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_batch import check_matches_api, read_output

from conftest import invoke
from toydata import TEXTS

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network: Ray's usage reporter stays off
ray = pytest.importorskip("ray", reason="Ray is not installed (make setup installs it: pip install 'sentmtl[ray]')")
from sentmtl_cli.ray import ShardWriter  # noqa: E402 (after the skip)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    import ray.cloudpickle

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    # the test's own worker classes travel to Ray's workers by value (tests/ is not on their path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def sentmtl(args: list[str], address: str) -> subprocess.CompletedProcess:
    """The real command, joining a running Ray by --address (a CliRunner would leave Ray Data's log
    handler holding a stream it closes)."""
    exe = Path(sys.executable).parent / "sentmtl"
    if not exe.exists():
        pytest.skip("the sentmtl console script is not installed in this environment")
    env = dict(os.environ, SENTMTL_NO_PROGRESS="1")
    return subprocess.run(
        [str(exe), *args, "--engine", "ray", "--address", address], capture_output=True, text=True, env=env, timeout=600
    )


def _address() -> str:
    return ray.get_runtime_context().gcs_address


def _corpus(tmp_path: Path, n: int = 60) -> tuple[Path, list[str]]:
    texts = [f"{TEXTS[i % len(TEXTS)]} ({i})" for i in range(n)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return src, texts


def test_the_ray_engine_writes_what_the_local_engine_writes(local_ray, tmp_path, runner, model):
    src, texts = _corpus(tmp_path)
    r = sentmtl(["batch", str(src), str(tmp_path / "ray"), "--workers", "2", "--shard-rows", "7"], _address())
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == "" and "60 rows" in r.stderr.strip().splitlines()[-1]
    r = invoke(runner, ["batch", str(src), str(tmp_path / "local"), "--shard-rows", "25"])
    assert r.exit_code == 0, r.stderr
    got, want = read_output(tmp_path / "ray"), read_output(tmp_path / "local")
    assert [x["id"] for x in got] == list(range(len(texts)))
    check_matches_api(model, got, texts)
    for a, b in zip(got, want):
        assert a["cls_label"] == b["cls_label"] and a["sent_label"] == b["sent_label"]
        assert [(e["start"], e["end"], e["label"]) for e in a["ner_entities"]] == [
            (e["start"], e["end"], e["label"]) for e in b["ner_entities"]
        ]
    manifest = json.loads((tmp_path / "ray" / "_SUCCESS").read_text())
    assert manifest["engine"] == "ray" and manifest["rows"] == len(texts) and manifest["shards"] == 9


def test_a_bad_row_on_a_ray_worker_is_one_line_not_a_remote_traceback(local_ray, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"fine\n\xff\xfe broken\n")
    r = sentmtl(["batch", str(src), str(tmp_path / "out"), "--workers", "1"], _address())
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]  # after Ray Data's own progress lines
    assert last.startswith("error: ") and "in.txt row 2 (id 1): not valid UTF-8" in last
    assert "Traceback" not in r.stderr and r.stdout == ""


class DiesOnce(ShardWriter):
    """A worker whose process exits (as a crash would) before the job's third unit, once."""

    def before_unit(self, unit):
        marker = self.output / ".died"  # a dot file: never taken for a shard
        if unit.index == 2 and not marker.exists():
            marker.touch()
            os._exit(1)


def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(local_ray, tmp_path, model):
    from sentmtl_cli.batch.run import BatchJob, run_batch

    src, texts = _corpus(tmp_path, 40)
    out = tmp_path / "out"
    out.mkdir()
    job = BatchJob(input=src, output=out, engine="ray", workers=2, shard_rows=5, tasks="embed,cls")
    m = run_batch(job, worker_class=DiesOnce)
    assert (out / ".died").exists(), "the worker never died: the test proved nothing"
    ids = pq.read_table(out, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == list(range(40)) and len(ids) == 40
    assert m["rows"] == 40 and m["errors"] == 0
    check_matches_api(model, read_output(out), texts, tasks=("cls",))


def test_the_predictor_in_a_users_own_ray_data_pipeline(local_ray, model):
    import ray.data

    from sentmtl_cli.ray import Predictor

    texts = TEXTS * 3
    ds = ray.data.from_items([{"text": t, "n": i} for i, t in enumerate(texts)])
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"tasks": ["embed", "sent", "ner"]},
        batch_size=5,
        num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=2),
    )
    rows = sorted(ds.take_all(), key=lambda r: r["n"])
    assert [r["n"] for r in rows] == list(range(len(texts)))  # the input's own columns are kept
    check_matches_api(model, rows, texts, tasks=("sent", "ner"))
    assert isinstance(rows[0]["sent_scores"], dict) and np.asarray(rows[0]["embedding"]).shape == (model.dim,)


def test_a_simulated_two_node_cluster_joined_by_address(tmp_path, model):
    """Two Ray nodes of one CPU each on this machine (ray.cluster_utils.Cluster): the driver joins
    by --address and the two actors land on both nodes."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the module's local Ray: a driver joins one cluster at a time
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        src, texts = _corpus(tmp_path, 30)
        r = sentmtl(
            ["batch", str(src), str(tmp_path / "out"), "--workers", "2", "--shard-rows", "5", "--tasks", "embed,ner"],
            cluster.address,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        manifest = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
        assert manifest["nodes"] == 2 and manifest["workers"] == 2  # one actor on each node
        check_matches_api(model, read_output(tmp_path / "out"), texts, tasks=("ner",))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_a_bad_row_on_ray_is_one_line_with_no_ray_logs(local_ray, tmp_path):
    """Ray Data's plan and progress lines, its warnings and the C++ core's log stay quiet unless
    --verbose: the user sees the one error line, naming the file and row (a row nested 5,000 deep
    here, which once raised a RecursionError inside the worker)."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{"text": ' + "[" * 5000 + "]" * 5000 + "}\n", encoding="utf-8")
    r = sentmtl(["batch", str(src), str(tmp_path / "out"), "--workers", "1"], _address())
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "row 2" in lines[0], r.stderr[-3000:]
    assert "nested too deeply" in lines[0]
    r = sentmtl(["batch", str(src), str(tmp_path / "out2"), "--workers", "1", "--on-error", "skip"], _address())
    assert r.returncode == 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]
    r = sentmtl(["batch", str(src), str(tmp_path / "out3"), "--workers", "1", "--verbose"], _address())
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) > 1  # asked for: Ray's own lines


def test_index_on_ray_holds_what_a_local_index_holds(local_ray, tmp_path, runner):
    """`sentmtl index --engine ray`: the rows computed by Ray Data actors, the same index rows as a
    local build, and the shards it made on the way removed."""
    src, texts = _corpus(tmp_path)
    r = sentmtl(["index", str(src), str(tmp_path / "ray.idx"), "--workers", "2", "--tasks", "cls,ner"], _address())
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout)
    assert rep["built"] == rep["rows"] == len(texts) and rep["computed"] is True
    assert invoke(runner, ["index", str(src), str(tmp_path / "local.idx"), "--tasks", "cls,ner"]).exit_code == 0
    query = ["search", texts[3], "--format", "json", "--top-k", "10"]
    got = json.loads(invoke(runner, [*query, "--index", str(tmp_path / "ray.idx")]).stdout)["results"]
    want = json.loads(invoke(runner, [*query, "--index", str(tmp_path / "local.idx")]).stdout)["results"]
    assert [(h["id"], h["cls"]["label"]) for h in got] == [(h["id"], h["cls"]["label"]) for h in want]
    assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-5)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".batch")]
