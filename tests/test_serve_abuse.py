"""`sentmtl serve` against a hostile client or a careless operator (issue 18): a chunked body past
the byte limit, clients that send work and leave, SIGTERM with more queued work than the grace
period, a request whose tokenizing would stall the event loop, an empty API key, bodies that fail to
parse, the security headers and the Host check (DNS rebinding), and one log line per request, not
per long text. The real-server tests start `sentmtl serve` on a free loopback port and stop it."""

import gzip
import json
import re
import socket
import threading
import time
import urllib.request

import pytest
from fastapi.testclient import TestClient
from test_serve import _histogram_sum, _wait_until, running_server

from sentmtl_cli.serve.app import Settings, create_app
from sentmtl_cli.serve.batcher import MicroBatcher

LONG = " ".join(["The central bank raised its key rate again after inflation surprised the markets."] * 30)


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))
    return float(line.split()[-1])


def _is_error_shape(r) -> dict:
    doc = r.json()
    assert set(doc) == {"error"}, r.text
    assert set(doc["error"]) == {"message", "type", "param", "code"}, r.text
    assert isinstance(doc["error"]["message"], str) and "\n" not in doc["error"]["message"]
    return doc["error"]


# ---- in process ---------------------------------------------------------------------------------------
def test_a_chunked_body_past_the_limit_gets_413_as_it_arrives(model):
    """No Content-Length to check: the bytes are counted as they come, and reading stops at the limit."""
    app = create_app(Settings(max_texts_per_request=2, max_chars_per_text=100), model=model)
    sent = []

    def body():  # 1 MB in 64 KB chunks; the limit is 66,368 bytes
        yield b'{"texts": ["'
        for _ in range(16):
            sent.append(1)
            yield b"a" * 65536
        yield b'"]}'

    with TestClient(app) as c:
        r = c.post("/predict", content=body(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413, r.text
        assert "over 66,368 bytes" in _is_error_shape(r)["message"]
        small = c.post("/predict", content=iter([b'{"texts": ', b'["a chunked request"]}']))
        assert small.status_code == 200, small.text


def test_every_error_answer_has_the_one_json_shape(model):
    """Bodies that fail to parse, FastAPI's own 404 and 405, a compressed body, another charset."""
    with TestClient(create_app(Settings(), model=model)) as c:
        json_type = {"Content-Type": "application/json"}
        cases = [
            ("post", "/predict", b'{"texts": ["\xff\xfe bad utf-8"]}', json_type, 422),
            ("post", "/predict", b'{"texts": ' + b"[" * 2000 + b"]" * 2000 + b"}", json_type, 422),
            ("post", "/predict", b'{"texts": ["a"], "tasks": ' + b"9" * 5000 + b"}", json_type, 422),
            (
                "post",
                "/predict",
                gzip.compress(b'{"texts": ["a"]}'),
                {**json_type, "Content-Encoding": "gzip"},
                415,
            ),
            (
                "post",
                "/predict",
                '{"texts": ["caf\xe9"]}'.encode("latin-1"),
                {"Content-Type": "application/json; charset=latin-1"},
                415,
            ),
            ("post", "/predict", b"texts=a", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
            ("get", "/no/such/route", None, {}, 404),
            ("get", "/predict", None, {}, 405),
            ("put", "/health", b"{}", json_type, 405),
        ]
        for method, path, content, headers, status in cases:
            r = c.request(method.upper(), path, content=content, headers=headers)
            assert r.status_code == status, (path, content and content[:40], r.status_code, r.text[:200])
            err = _is_error_shape(r)
            assert "detail" not in r.text and "Traceback" not in r.text
            if status == 422:
                assert "not valid JSON" in err["message"], err
        ok = c.post(
            "/predict",
            content=b'{"texts": ["caf\xc3\xa9"]}',
            headers={"Content-Type": "application/json; charset=UTF-8"},
        )
        assert ok.status_code == 200 and ok.json()["results"][0]["text"] == "café"


def test_security_headers_and_the_host_check(model):
    app = create_app(Settings(allowed_hosts=["localhost", "127.0.0.1", "::1"]), model=model)
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        page = c.get("/")
        assert page.status_code == 200
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        api = c.post("/predict", json={"texts": ["a"]})
        assert api.status_code == 200 and api.headers["x-content-type-options"] == "nosniff"
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert c.get("/health", headers={"Host": host}).status_code == 200, host
        # a page on another site that rebinds its name to 127.0.0.1 still sends its own name
        for host in ("evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example"):
            r = c.post("/predict", json={"texts": ["a"]}, headers={"Host": host})
            assert r.status_code == 400 and "--allowed-hosts" in _is_error_shape(r)["message"], host
    with TestClient(create_app(Settings(allowed_hosts=["*"]), model=model)) as c:
        assert c.get("/health", headers={"Host": "anything.example"}).status_code == 200


def test_tokenizing_and_parsing_run_off_the_event_loop(model, monkeypatch):
    """The tokenizer is held until /health has answered: had the tokenizing run on the event loop,
    /health could not answer while it waits, and the request would time out instead."""
    started, health_answered = threading.Event(), threading.Event()
    real = model.tokenizer.encode_raw

    def held(texts, **kw):
        started.set()
        assert health_answered.wait(20), "/health did not answer while a request was being tokenized"
        return real(texts, **kw)

    monkeypatch.setattr(model.tokenizer, "encode_raw", held)
    with TestClient(create_app(Settings(), model=model)) as c:
        result: list = []
        t = threading.Thread(target=lambda: result.append(c.post("/predict", json={"texts": [LONG] * 8})))
        t.start()
        assert started.wait(20)
        assert c.get("/health").status_code == 200
        health_answered.set()
        t.join(60)
        assert result and result[0].status_code == 200

    from sentmtl_cli.serve import guard

    gate = threading.Event()
    real_parse = guard.parse

    def held_parse(raw, kind):
        assert gate.wait(20), "/health did not answer while a body was being parsed"
        return real_parse(raw, kind)

    monkeypatch.setattr(guard, "parse", held_parse)
    monkeypatch.setattr(model.tokenizer, "encode_raw", real)
    from sentmtl_cli.serve import app as app_module

    monkeypatch.setattr(app_module, "parse", held_parse)
    with TestClient(create_app(Settings(), model=model)) as c:
        result = []
        t = threading.Thread(target=lambda: result.append(c.post("/predict", json={"texts": ["a"]})))
        t.start()
        time.sleep(0.2)
        assert c.get("/health").status_code == 200
        gate.set()
        t.join(60)
        assert result and result[0].status_code == 200


def test_long_texts_are_counted_with_one_log_line_per_request(model, capfd):
    """Cut texts ("overflow": "truncate", /embed's default) are counted, one log line a request;
    /predict reads them whole by default (in windows: nothing cut, nothing logged)."""
    with TestClient(create_app(Settings(max_chars_per_text=len(LONG) + 1), model=model)) as c:
        capfd.readouterr()
        r = c.post("/predict", json={"texts": [LONG] * 12 + ["short"], "overflow": "truncate"})
        assert r.status_code == 200
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if "max_seq_length" in line]
        assert len(lines) == 1 and "12 of 13" in lines[0], err
        assert _metric(c.get("/metrics").text, "sentmtl_truncated_texts_total") == 12
        r = c.post("/predict", json={"texts": [LONG, "short"], "tasks": ["ner"]})
        assert r.status_code == 200 and "max_seq_length" not in capfd.readouterr().err
        whole, short = r.json()["results"]
        assert whole["windows"] == 30 and "windows" not in short  # one window a sentence
        assert _metric(c.get("/metrics").text, "sentmtl_truncated_texts_total") == 12
        r = c.post("/v1/embeddings", json={"input": [LONG], "overflow": "error"})
        assert r.status_code == 422 and "texts[0]" in r.json()["error"]["message"], r.text


def test_a_cancelled_job_leaves_the_queue_and_a_running_batch_drops_it(model):
    """One worker held inside the model; three jobs queued behind it; two are cancelled (their
    clients left). Released, the worker runs the third only: the cancelled texts never reach it."""
    import asyncio

    gate = threading.Event()
    seen: list[list[str]] = []

    class Held:
        dim = model.dim

        def run(self, texts, tasks, **k):
            seen.append(list(texts))
            if len(seen) == 1:
                gate.wait(20)
            return model.run(texts, tasks, **k)

    batcher = MicroBatcher(Held(), max_batch_tokens=64, max_queue=8, batch_size=64, workers=1)

    async def go():
        enc = model.tokenizer.encode_raw
        first = batcher.submit(["held"], [], True, enc(["held"]))
        await asyncio.to_thread(_wait_until, lambda: len(seen) == 1)
        jobs = {name: batcher.submit([name] * 3, [], True, enc([name] * 3)) for name in ("gone-1", "gone-2", "kept")}
        assert batcher.depth() == 3
        jobs["gone-1"].cancel()
        jobs["gone-2"].cancel()
        await asyncio.sleep(0)  # the done callbacks run
        assert batcher.depth() == 1 and batcher.dropped == 2
        gate.set()
        await first
        return await jobs["kept"]

    try:
        answer = asyncio.run(go())
    finally:
        batcher.close()
    assert answer.embeddings.shape == (3, model.dim)
    assert not any(t.startswith("gone") for texts in seen for t in texts), seen
    assert batcher.live() == 0


# ---- the CLI --------------------------------------------------------------------------------------------
def test_an_empty_api_key_is_refused_not_read_as_no_auth(runner, monkeypatch):
    from conftest import invoke

    for args, env in ((["--api-key", ""], None), (["--api-key", "   "], None), ([], "")):
        if env is None:
            monkeypatch.delenv("SENTMTL_API_KEY", raising=False)
        else:
            monkeypatch.setenv("SENTMTL_API_KEY", env)
        r = invoke(runner, ["serve", "--port", "0", *args])
        assert r.exit_code == 2, (args, env, r.output)
        assert "API key is empty" in r.output and len(r.output.strip().splitlines()) == 1
        assert "serving on" not in r.output


# ---- real servers ---------------------------------------------------------------------------------------
def _raw_request(port: int, path: str, body: bytes, close_after_send: bool = False, host: str = "127.0.0.1"):
    """One HTTP/1.1 request on a raw socket; the status code, or None when it closed first."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    s.sendall(head + body)
    if close_after_send:
        s.close()
        return None
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    m = re.match(rb"HTTP/1.1 (\d+)", data)
    return int(m.group(1)) if m else None


@pytest.mark.slow
def test_a_real_server_drops_the_work_of_clients_that_left_and_checks_host_and_chunks():
    server = running_server("--threads", "1", "--max-batch-tokens", "512", "--max-texts-per-request", "128")
    with server as base:
        port = server.port
        body = json.dumps({"texts": [f"{LONG[:600]} ({i})" for i in range(128)]}).encode()
        for _ in range(8):  # each sends 128 texts and hangs up at once
            _raw_request(port, "/predict", body, close_after_send=True)
        time.sleep(1.0)
        with urllib.request.urlopen(
            urllib.request.Request(
                f"{base}/predict", data=b'{"texts": ["still answered"]}', headers={"Content-Type": "application/json"}
            ),
            timeout=60,
        ) as r:
            assert r.status == 200
        _wait_until(lambda: _metric(_get(f"{base}/metrics"), "sentmtl_abandoned_requests_total") == 8, timeout=30)
        computed = _histogram_sum(_get(f"{base}/metrics"), "sentmtl_batch_texts")
        assert computed < 8 * 128 / 4, f"{computed:.0f} of the {8 * 128} abandoned texts were computed"
        # loopback by default answers loopback names only (DNS rebinding)
        assert _raw_request(port, "/predict", b'{"texts": ["a"]}', host="attacker.example:80") == 400
        assert _raw_request(port, "/predict", b'{"texts": ["a"]}', host=f"localhost:{port}") == 200
        # a chunked body past the limit (128 texts' worth): 413 before the rest is read
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"a" * 1_000_000
        reply = b""
        try:
            for _ in range(64):  # 64 MB at most, far past the 10 MB limit
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server answered and closed
        try:
            reply = s.recv(65536)
        except OSError:
            pass
        s.close()
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        code, err = server.stop()
        assert code == 0 and "Traceback" not in err


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


@pytest.mark.slow
def test_sigterm_answers_every_request_200_or_503_within_the_grace_period():
    """One worker, 16 requests of 64 long texts (many seconds of work), SIGTERM once the first is
    answered, a 1 s grace period: every client gets an answer, 200 with its results or 503 in the
    JSON error shape with Retry-After; no 500, no dropped connection, no traceback; exit 0, soon."""
    server = running_server("--threads", "1", "--grace-period", "1", "--max-texts-per-request", "64")
    with server as base:
        body = json.dumps({"texts": [f"{LONG} ({i})" for i in range(64)]}).encode()
        answers: list = []
        first = threading.Event()

        def call():
            req = urllib.request.Request(f"{base}/predict", data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=90) as r:
                    answers.append((r.status, dict(r.headers), json.loads(r.read())))
            except urllib.error.HTTPError as e:
                answers.append((e.code, dict(e.headers), json.loads(e.read())))
            except OSError as e:
                answers.append(("dropped", {}, repr(e)))
            first.set()

        threads = [threading.Thread(target=call) for _ in range(16)]
        for t in threads:
            t.start()
        assert first.wait(120)
        t0 = time.monotonic()
        server.proc.send_signal(15)
        code, err = server.proc.wait(timeout=60), server.proc.communicate(timeout=30)[1]
        took = time.monotonic() - t0
        for t in threads:
            t.join(60)
    assert code == 0, err
    assert "Traceback" not in err and "Internal Server Error" not in err
    assert len(answers) == 16
    statuses = [a[0] for a in answers]
    assert set(statuses) <= {200, 503}, [a for a in answers if a[0] not in (200, 503)]
    assert 200 in statuses and 503 in statuses, statuses
    for status, headers, doc in answers:
        if status == 200:
            assert len(doc["results"]) == 64
        else:
            assert set(doc) == {"error"} and "shutting down" in doc["error"]["message"]
            assert {k.lower(): v for k, v in headers.items()}["retry-after"].isdigit()
    assert took < 20, f"exit took {took:.1f} s after SIGTERM with a 1 s grace period"
