"""`sentmtl serve`: the OpenAI embeddings API (the official client works unchanged), /predict and
/similarity equal to the CLI's JSON, micro-batching that never changes an answer (64 concurrent
clients x 10 requests), backpressure (429 with Retry-After), size limits (413), named 422s, the API
key, metrics, a batch that fails without taking the server down, and one real `sentmtl serve`
process on a free loopback port that stops cleanly on SIGTERM. The page in a real browser is in
test_serve_page.py."""

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sentmtl_cli.serve.app import Settings, create_app

from toydata import TEXTS


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(Settings(max_texts_per_request=16, max_chars_per_text=2000), model=model)) as c:
        yield c


def _cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def same_prediction(got: dict, want: dict) -> None:
    """One text's results: the same labels and spans, scores equal to float32 noise."""
    assert got.keys() == want.keys()
    assert got["text"] == want["text"]
    for task in want:
        if task == "text":
            continue
        g, w = got[task], want[task]
        if "entities" in w:
            assert [(e["start"], e["end"], e["label"]) for e in g["entities"]] == [
                (e["start"], e["end"], e["label"]) for e in w["entities"]
            ]
            assert np.allclose([e["score"] for e in g["entities"]], [e["score"] for e in w["entities"]], atol=1e-5)
        else:
            assert g["label"] == w["label"] and abs(g["score"] - w["score"]) < 1e-5
            assert np.allclose(list(g["scores"].values()), list(w["scores"].values()), atol=1e-5)


def test_embeddings_in_openais_shape_float_and_base64(client, model):
    r = client.post("/v1/embeddings", json={"input": TEXTS[:3], "model": "sentmtl"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "list" and doc["model"] == model.cfg.name
    assert [d["index"] for d in doc["data"]] == [0, 1, 2] and {d["object"] for d in doc["data"]} == {"embedding"}
    want = model.embed(TEXTS[:3])
    for d, w in zip(doc["data"], want):
        assert len(d["embedding"]) == model.dim and _cos(d["embedding"], w) > 0.99999
    n = sum(len(ids) for ids, *_ in model.tokenizer.encode_raw(TEXTS[:3]))
    assert doc["usage"] == {"prompt_tokens": n, "total_tokens": n}
    one = client.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (model.dim,) and _cos(vec, want[0]) > 0.99999


def test_the_official_openai_client_works_unchanged(model):
    """The openai package, pointed at a real server's /v1: it asks for base64 by default and decodes."""
    openai = pytest.importorskip("openai")
    with running_server() as base:
        c = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        got = c.embeddings.create(input=TEXTS[:2], model="sentmtl")
        assert [d.index for d in got.data] == [0, 1]
        want = model.embed(TEXTS[:2])
        assert all(_cos(d.embedding, w) > 0.99999 for d, w in zip(got.data, want))
        assert got.usage.prompt_tokens > 0
        with pytest.raises(openai.UnprocessableEntityError) as e:
            c.embeddings.create(input=["fine", "  "], model="sentmtl")
        assert "input[1]" in str(e.value)


def test_predict_and_similarity_are_the_clis_json(client, runner, model):
    from conftest import invoke

    r = client.post("/predict", json={"texts": TEXTS[:3], "tasks": ["ner", "cls"]})
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    cli = invoke(runner, ["predict", "--tasks", "ner,cls", "--format", "jsonl", *TEXTS[:3]])
    want = [json.loads(line) for line in cli.stdout.splitlines()]
    for g, w in zip(got, want, strict=True):
        same_prediction(g, w)
    assert list(got[0]) == ["text", "ner", "cls"]  # the tasks asked for, in that order, like the CLI
    sim = client.post("/similarity", json={"texts": TEXTS[:2]}).json()
    cli = json.loads(invoke(runner, ["similarity", *TEXTS[:2], "--format", "json"]).stdout)
    assert sim.keys() == cli.keys() and sim["texts"] == cli["texts"] and abs(sim["score"] - cli["score"]) < 1e-5
    three = client.post("/similarity", json={"texts": TEXTS[:3], "metric": "dot"}).json()
    assert np.asarray(three["matrix"]).shape == (3, 3) and "score" not in three


def test_an_answer_never_depends_on_what_it_was_batched_with(model):
    """64 concurrent clients x 10 requests of mixed sizes and tasks; each answer equals the text's
    answer alone. The server must have merged requests for the test to mean anything."""
    app = create_app(Settings(max_batch_tokens=4096, max_queue=1024), model=model)
    alone = {t: r for t, r in zip(TEXTS, model.predict(TEXTS))}
    emb_alone = {t: e for t, e in zip(TEXTS, model.embed(TEXTS))}
    with TestClient(app) as c:
        import httpx

        async def one_client(k: int, http: httpx.AsyncClient) -> list:
            out = []
            for i in range(10):
                texts = [TEXTS[(k + i + j) % len(TEXTS)] for j in range(1 + (k * 7 + i) % 4)]
                if (k + i) % 3 == 0:
                    r = await http.post("/v1/embeddings", json={"input": texts})
                else:
                    r = await http.post("/predict", json={"texts": texts})
                out.append((texts, r.status_code, r.json()))
            return out

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await asyncio.gather(*(one_client(k, http) for k in range(64)))

        answers = [a for per in asyncio.run(main()) for a in per]
        metrics = c.get("/metrics").text
    assert len(answers) == 640
    for texts, status, doc in answers:
        assert status == 200, doc
        if "results" in doc:
            for t, got in zip(texts, doc["results"], strict=True):
                same_prediction(got, alone[t])
        else:
            for t, d in zip(texts, doc["data"], strict=True):
                assert _cos(d["embedding"], emb_alone[t]) > 0.99999
    merged = _histogram_sum(metrics, "sentmtl_batch_requests") - _histogram_count(metrics, "sentmtl_batch_requests")
    assert merged > 0, "no two requests were ever merged into one batch: the test proved nothing"


def _histogram_sum(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(f"{name}_sum")))


def _histogram_count(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(f"{name}_count")))


def test_bad_requests_get_a_named_422_or_413_never_a_traceback(client):
    cases = [
        ("/v1/embeddings", {"input": []}, 422, "input"),
        ("/v1/embeddings", {"input": ["ok", ""]}, 422, "input[1]"),
        ("/v1/embeddings", {"input": 5}, 422, "input"),
        ("/v1/embeddings", {"input": "ok", "encoding_format": "int8"}, 422, "encoding_format"),
        ("/v1/embeddings", {"input": "ok", "dimensions": 12}, 422, "dimensions"),
        ("/v1/embeddings", {"input": ["x"] * 17}, 413, "input"),
        ("/v1/embeddings", {"input": "x" * 2001}, 413, "input[0]"),
        ("/predict", {"texts": ["ok"], "tasks": ["nope"]}, 422, "tasks"),
        ("/predict", {"texts": ["ok"], "extra": 1}, 422, "extra"),
        ("/predict", {"texts": [None]}, 422, "texts[0]"),
        ("/predict", {"texts": ["\ud800"]}, 422, "texts[0]"),
        ("/similarity", {"texts": ["only one"]}, 422, "texts"),
        ("/similarity", {"texts": ["a", "b"], "metric": "jaccard"}, 422, "metric"),
    ]
    for path, body, status, param in cases:
        r = client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert r.status_code == status, (path, body, r.status_code, r.text)
        err = r.json()["error"]
        assert err["param"] == param and err["message"].startswith(param + ":"), (body, err)
        assert "Traceback" not in r.text
    r = client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post(
        "/predict", content=b"x" * 10, headers={"Content-Type": "application/json", "Content-Length": "999999999"}
    )
    assert r.status_code == 413


def test_a_full_queue_answers_429_with_retry_after(model):
    """A model that blocks until released, behind two workers: two requests run (a worker each),
    one waits (max_queue=1), the fourth is refused at once with 429 and Retry-After; released, the
    first three complete."""
    gate = threading.Event()
    running: list[int] = []

    class Slow:
        def __init__(self, m):
            self.m = m

        def __getattr__(self, name):
            return getattr(self.m, name)

        def run(self, *a, **k):
            running.append(1)
            gate.wait(30)
            return self.m.run(*a, **k)

    app = create_app(Settings(max_queue=1, threads=2), model=Slow(model))
    with TestClient(app) as c:
        results: list = []
        threads = [
            threading.Thread(target=lambda: results.append(c.post("/predict", json={"texts": ["a"]}).status_code))
            for _ in range(3)
        ]
        threads[0].start()
        _wait_until(lambda: len(running) == 1)  # one worker is in the model...
        threads[1].start()
        _wait_until(lambda: len(running) == 2)  # ...and the other: the queue is empty
        assert app.state.sentmtl.batcher.depth() == 0
        threads[2].start()
        _wait_until(lambda: app.state.sentmtl.batcher.depth() == 1)
        r = c.post("/predict", json={"texts": ["b"]})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1" and "busy" in r.json()["error"]["message"]
        gate.set()
        for t in threads:
            t.join(30)
        assert results == [200, 200, 200]
        assert 'route="/predict",status="429"' in c.get("/metrics").text


def _wait_until(cond, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def test_a_failing_batch_fails_its_requests_only(model):
    class Flaky:
        def __init__(self, m):
            self.m, self.calls = m, 0

        def __getattr__(self, name):
            return getattr(self.m, name)

        def run(self, texts, *a, **k):
            if "explode" in texts:
                raise RuntimeError("the backbone fell over")
            return self.m.run(texts, *a, **k)

    with TestClient(create_app(Settings(), model=Flaky(model))) as c:
        r = c.post("/predict", json={"texts": ["explode"]})
        assert r.status_code == 500 and "the backbone fell over" in r.json()["error"]["message"]
        assert "Traceback" not in r.text
        assert c.post("/predict", json={"texts": ["fine"]}).status_code == 200  # still serving


def test_the_api_key_guards_every_route_but_health_and_the_page(model):
    """The page and its files hold no data, and a page load cannot send a bearer header: they are
    public, and the page asks for the key (test_serve_page.py). Everything else needs it."""
    with TestClient(create_app(Settings(api_key="s3cret"), model=model)) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200
        routes = [("post", "/v1/embeddings"), ("post", "/predict"), ("post", "/similarity")]
        for method, path in routes + [("get", "/info"), ("get", "/metrics"), ("get", "/openapi.json")]:
            r = getattr(c, method)(path, **({"json": {"input": "x"}} if method == "post" else {}))
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", path
            r = getattr(c, method)(
                path,
                headers={"Authorization": "Bearer wrong"},
                **({"json": {"input": "x"}} if method == "post" else {}),
            )
            assert r.status_code == 401
        ok = c.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_health_info_metrics_and_the_page(client, model):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["heads"].keys() == model.heads.keys() and info["backbone"]["dimension"] == model.dim
    client.post("/predict", json={"texts": ["a text"]})
    m = client.get("/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    for name in (
        "sentmtl_requests_total",
        "sentmtl_request_seconds_bucket",
        "sentmtl_batch_texts_bucket",
        "sentmtl_queue_depth",
    ):
        assert name in m.text
    page = client.get("/")
    assert page.status_code == 200 and "<textarea" in page.text and "/static/app.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: it works offline
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/v1/embeddings", "/predict", "/similarity"}


def test_health_is_503_until_the_model_is_loaded(monkeypatch):
    from sentmtl_cli import model as model_module

    gate = threading.Event()
    real = model_module.load

    def slow_load(*a, **k):
        gate.wait(30)
        return real(*a, **k)

    monkeypatch.setattr(model_module, "load", slow_load)
    with TestClient(create_app(Settings())) as c:
        assert c.get("/health").status_code == 503
        r = c.post("/predict", json={"texts": ["a"]})
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        gate.set()
        _wait_until(lambda: c.get("/health").status_code == 200, timeout=60)


# ---- one real server process -----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class running_server:
    """`sentmtl serve` on a free loopback port, waited for until healthy, stopped by SIGTERM."""

    def __init__(self, *args: str):
        self.args = args

    def __enter__(self) -> str:
        exe = Path(sys.executable).parent / "sentmtl"
        if not exe.exists():
            pytest.skip("the sentmtl console script is not installed in this environment")
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{self.port}"
        end = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        return base
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                self.proc.kill()
                raise AssertionError(f"the server did not come up: {self.proc.communicate()[1][-2000:]}")
            time.sleep(0.1)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)
        return False


@pytest.mark.slow
def test_a_real_server_finishes_in_flight_requests_on_sigterm_and_exits_0(model):
    server = running_server("--max-batch-tokens", "512")
    with server as base:
        body = json.dumps({"texts": TEXTS * 8}).encode()
        done: list = []

        def call():
            req = urllib.request.Request(f"{base}/predict", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                done.append((r.status, json.loads(r.read())))

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.15)  # the request is in flight
        code, err = server.stop()
        t.join(60)
        assert code == 0, err
        assert "Traceback" not in err
        assert done and done[0][0] == 200 and len(done[0][1]["results"]) == len(TEXTS) * 8
        assert "serving on http://127.0.0.1:" in err and "stopped" in err
    assert os.environ.get("SENTMTL_API_KEY") is None


def test_a_big_request_is_cut_into_pieces_that_run_on_every_worker(model):
    """A 96-text request, pieces of at most 16 texts, two workers: both run pieces, and the answer
    is the texts' own embeddings and results, in the request's order."""
    from sentmtl_cli.serve.batcher import MicroBatcher

    seen: list[tuple[str, int]] = []
    both = threading.Barrier(2, timeout=20)

    class Recording:
        dim = model.dim

        def run(self, texts, tasks, **k):
            seen.append((threading.current_thread().name, len(texts)))
            if len(seen) <= 2:
                both.wait()  # the first two pieces run at once, on different workers
            return model.run(texts, tasks, **k)

    texts = [f"{t} ({i})" for i, t in enumerate(TEXTS * 8)][:96]
    batcher = MicroBatcher(Recording(), max_batch_tokens=8192, max_queue=4, batch_size=16, workers=2)

    async def go():
        return await batcher.submit(texts, ["cls", "ner"], True, model.tokenizer.encode_raw(texts))

    try:
        answer = asyncio.run(go())
    finally:
        batcher.close()
    assert len({name for name, _ in seen}) == 2 and max(n for _, n in seen) <= 48
    want_emb, want = model.run(texts, ["cls", "ner"])
    assert np.allclose(answer.embeddings, want_emb, atol=1e-5)
    for got, w in zip(answer.results, want):
        same_prediction(got, w)


def test_a_failed_piece_fails_its_request_once_and_the_workers_go_on(model):
    from sentmtl_cli.serve.batcher import MicroBatcher

    class Flaky:
        dim = model.dim

        def run(self, texts, tasks, **k):
            if any("explode" in t for t in texts):
                raise RuntimeError("the backbone fell over")
            return model.run(texts, tasks, **k)

    batcher = MicroBatcher(Flaky(), max_batch_tokens=64, max_queue=4, batch_size=4, workers=2)
    bad = ["explode"] + [f"text number {i}" for i in range(20)]

    async def go():
        first = batcher.submit(bad, [], True, model.tokenizer.encode_raw(bad))
        with pytest.raises(RuntimeError, match="fell over"):
            await first
        return await batcher.submit(["fine"], [], True, model.tokenizer.encode_raw(["fine"]))

    try:
        answer = asyncio.run(go())
    finally:
        batcher.close()
    assert answer.embeddings.shape == (1, model.dim) and batcher.depth() == 0
