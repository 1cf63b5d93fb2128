"""The HTTP API: `create_app()` builds the FastAPI app `sentmtl serve` runs.

Routes: POST /v1/embeddings (OpenAI's embeddings schema), POST /predict and POST /similarity (the
CLI's JSON), GET /health, /info, /metrics (Prometheus), and GET / (a page to try the model). The
model loads in a thread when the app starts, so /health says 503 until it is ready; every request
goes through the micro-batcher (batcher.py). Errors are JSON, `{"error": {"message", "type",
"param"}}` as OpenAI's clients expect: 422 for a bad field (named), 413 over the size limits, 429
with Retry-After when the queue is full, 401 without the API key, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import SentmtlError
from ..heads.zero_shot import ZERO_SHOT_TASK
from ..text.windows import truncate
from .batcher import MicroBatcher, QueueFull, ShuttingDown
from .guard import (
    BODY,
    GONE,
    ApiError,
    Guard,
    Policy,
    error_response,
    openapi_body,
    parse,
    shutting_down,
    validation_message,
)


@dataclass
class Settings:
    config: str | None = None
    backend: str | None = None
    threads: int | None = None  # model workers, one core each (default: every core)
    max_batch_tokens: int = 8192
    max_queue: int = 256
    max_texts_per_request: int = 256
    max_chars_per_text: int = 20_000
    api_key: str | None = None
    allowed_hosts: list[str] | None = None  # Host names accepted (None: any; the CLI sets loopback's)
    grace_period: float = 20.0  # seconds after SIGTERM for queued work to finish (server.py)
    index: str | None = None  # an index built by `sentmtl index`: POST /search


class FastJSON(JSONResponse):
    """JSON by orjson: numpy arrays written directly, each float32 as its shortest exact repr. For
    8 texts' embeddings that is 0.1 ms, not the 1.5 ms of tolist() and json.dumps, which the event
    loop would otherwise take from the cores the model runs on."""

    def render(self, content: Any) -> bytes:
        import orjson

        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients may send `user` and the like
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    # a text past max_seq_length: read in windows and merged | cut to it | refused (422)
    overflow: Literal["window", "truncate", "error"] = "truncate"


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str]
    tasks: list[str] | None = None
    labels: list[str] | None = None  # zero-shot labels of the request's own ("name" or "name: description")
    multi_label: bool = False
    threshold: float = 0.5
    # a text past max_seq_length: read in windows and merged | cut to it | refused (422)
    overflow: Literal["window", "truncate", "error"] = "window"


class SimilarityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str]
    metric: Literal["cosine", "dot", "euclidean"] = "cosine"
    # a text past max_seq_length: read in windows and merged | cut to it | refused (422)
    overflow: Literal["window", "truncate", "error"] = "truncate"


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    top_k: int = Field(5, ge=1, le=1000)
    # a filter on the stored columns, as `sentmtl search --where` (Lance's SQL expressions: read only)
    where: str | None = Field(None, max_length=2000)
    entities: list[str] = Field(default_factory=list, max_length=32)  # LABEL:TEXT, as --entity (each ≤ 500 chars)


class _State:
    def __init__(self):
        self.model = None
        self.index = None
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.draining = False


def create_app(settings: Settings | None = None, model=None) -> FastAPI:
    """The app; `model` (already loaded) skips loading, as the in-process tests do."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    settings = settings or Settings()
    state = _State()
    registry = CollectorRegistry()  # one per app: tests build several
    requests_total = Counter(
        "sentmtl_requests_total", "Requests by route and status.", ["route", "status"], registry=registry
    )
    latency = Histogram(
        "sentmtl_request_seconds",
        "Request latency by route.",
        ["route"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        registry=registry,
    )
    batch_texts = Histogram(
        "sentmtl_batch_texts",
        "Texts per backbone batch run.",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        registry=registry,
    )
    batch_requests = Histogram(
        "sentmtl_batch_requests",
        "Requests merged into one batch run.",
        buckets=(1, 2, 4, 8, 16, 32, 64),
        registry=registry,
    )
    queue_depth = Gauge("sentmtl_queue_depth", "Requests waiting for the model.", registry=registry)
    queue_depth.set_function(lambda: state.batcher.depth() if state.batcher else 0)
    abandoned = Counter(
        "sentmtl_abandoned_requests_total",
        "Requests whose client went away before the answer; their work left the queue.",
        registry=registry,
    )
    truncated = Counter(
        "sentmtl_truncated_texts_total", "Texts longer than max_seq_length, cut to it.", registry=registry
    )

    def on_batch(n_texts: int, n_jobs: int) -> None:
        batch_texts.observe(n_texts)
        batch_requests.observe(n_jobs)

    def ready(m) -> None:
        if settings.index is not None:  # checked against this model before the server says ok
            from ..index.store import Index

            state.index = Index(Path(settings.index), m, fresh=True)
        state.model = m
        state.batcher = MicroBatcher(
            m, settings.max_batch_tokens, settings.max_queue, on_batch=on_batch, workers=workers
        )

    workers = settings.threads or os.cpu_count() or 1

    def load_in_background() -> None:
        from threadpoolctl import threadpool_limits

        from ..backbone.onnx_backbone import OnnxBackbone
        from ..model import load

        OnnxBackbone.spinning = False  # see there: a server's cores are shared with its event loop
        # the workers run side by side, a core each (batcher.py): one thread per forward pass, and
        # numpy's BLAS (the heads) one thread for the whole process, so no worker oversubscribes
        threadpool_limits(limits=1, user_api="blas")
        try:
            m = load(settings.config, threads=1, backend=settings.backend)
            m.embed(["warm up"])  # the backbone's session is built now, not on the first request
            ready(m)
            if state.index is not None:  # the table's files opened now, not on the first search
                state.index.search(np.asarray(m.embed(["warm up"])[0]), top_k=1)
        except SentmtlError as e:
            state.load_error = str(e)
        except Exception as e:  # noqa: BLE001 (reported by /health, never a traceback)
            state.load_error = f"{type(e).__name__}: {e}"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if model is not None:
            ready(model)
        else:
            threading.Thread(target=load_in_background, name="sentmtl-load", daemon=True).start()
        yield
        if state.batcher is not None:
            # after the drain (server.py): what was queued is answered, or was aborted
            state.batcher.close(timeout=5.0 if state.draining else 60.0)

    app = FastAPI(
        title="sentmtl",
        summary="Embeddings, similarity, topic, sentiment and entities from one small model.",
        lifespan=lifespan,
    )
    app.state.sentmtl = state
    app.state.settings = settings

    # ---- errors: JSON in OpenAI's shape, a named field, never a traceback ------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(list(exc.errors()))
        return error_response(422, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):  # FastAPI's own: 404, 405
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        message = {404: f"no such route: {request.url.path}", 405: f"{request.method} is not allowed here"}
        return error_response(
            exc.status_code, message.get(exc.status_code, str(exc.detail)), None, kind, getattr(exc, "headers", None)
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        if exc.status == 503 and state.draining:
            return shutting_down(exc.message)
        return error_response(exc.status, exc.message, exc.param, exc.kind, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", None, "server_error")

    # ---- middleware ---------------------------------------------------------------------------------------
    limit = settings.max_texts_per_request * (settings.max_chars_per_text * 4 + 16) + 65536

    def record(scope, status: int, seconds: float) -> None:
        name = getattr(scope.get("route"), "path", "other")  # set by the router once it matched
        if status == 499:  # the client left before its answer (guard.py, or the wait in run())
            abandoned.inc()
        requests_total.labels(name, str(status)).inc()
        latency.labels(name).observe(seconds)

    policy = Policy(limit, settings.api_key, settings.allowed_hosts, lambda: state.draining)
    app.add_middleware(Guard, policy=policy, record=record)

    async def drain(grace: float) -> None:
        """SIGTERM (server.py): new requests get 503, the ones received have `grace` seconds to
        finish, then what is left is answered 503 with Retry-After."""
        state.draining = True  # the middleware refuses requests that arrive from now on
        batcher = state.batcher
        if batcher is None:
            return
        # requests already received (some still being parsed or tokenized) go on to the model
        end = time.monotonic() + grace
        while (policy.active or batcher.live()) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        left = batcher.abort(f"the server is shutting down: not finished within the {grace:g} s grace period")
        if left:
            print(f"shutdown: {left} request(s) not finished within {grace:g} s answered 503", file=sys.stderr)

    app.state.drain = drain

    # ---- helpers ------------------------------------------------------------------------------------------
    def loaded():
        if state.model is None or state.batcher is None:
            if state.load_error:
                raise ApiError(503, f"the model failed to load: {state.load_error}", None, "server_error")
            raise ApiError(503, "the model is loading; retry in a moment", None, "server_error")
        return state.model, state.batcher

    def check_texts(texts: list[str], param: str) -> None:
        if not texts:
            raise ApiError(422, f"{param}: give at least one text", param)
        if len(texts) > settings.max_texts_per_request:
            raise ApiError(
                413,
                f"{param}: {len(texts)} texts is over the limit of {settings.max_texts_per_request} a request",
                param,
            )
        for i, t in enumerate(texts):
            where = f"{param}[{i}]"
            if not t.strip():
                raise ApiError(422, f"{where}: the text is empty or whitespace only", where)
            if len(t) > settings.max_chars_per_text:
                raise ApiError(
                    413, f"{where}: {len(t):,} characters is over the limit of {settings.max_chars_per_text:,}", where
                )
            if not t.isascii():
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError:
                    raise ApiError(422, f"{where}: not valid Unicode (a lone surrogate)", where) from None

    async def body(request: Request, kind, field: str | None, texts_of=lambda r: r.texts):
        """The request's body parsed as `kind` and its texts checked, off the event loop."""

        def work():
            left(request)  # the thread pool may have had a queue: no work for a client that left
            req = parse(request.scope[BODY], kind)
            if field is not None:
                texts = texts_of(req)
                check_texts([texts] if isinstance(texts, str) else texts, field)
            return req

        return await asyncio.to_thread(work)

    def left(request: Request) -> None:
        gone = request.scope.get(GONE)
        if gone is not None and gone.is_set():
            raise ApiError(499, "the client closed the connection before the answer", None, "client_closed")

    def tokenize(request: Request, m, texts: list[str], overflow: str):
        """Every text's tokens (whole, or cut to max_seq_length with `truncate`); `error` refuses
        the first text past it."""
        left(request)
        encoded = m.tokenizer.encode_raw(texts, truncate=False)
        L = m.tokenizer.max_seq_length
        if overflow == "truncate":
            return [truncate(item, L) for item in encoded]
        if overflow == "error":
            for i, item in enumerate(encoded):
                if len(item[0]) > L:
                    raise ApiError(
                        422,
                        f"texts[{i}]: {len(item[0]):,} tokens is longer than max_seq_length={L} "
                        '("overflow": "window" reads it in windows; "truncate" cuts it)',
                        "overflow",
                    )
        return encoded

    async def run(
        request: Request, texts: list[str], tasks: list[str], want_embeddings: bool, overflow="truncate", extra=None
    ):
        m, batcher = loaded()
        # off the loop: long texts take seconds
        encoded = await asyncio.to_thread(tokenize, request, m, texts, overflow)
        left(request)
        tokens = [len(ids) for ids, *_ in encoded]
        cut = sum(1 for *_, dropped in encoded if dropped)
        if cut:  # counted, and one line per request at most (not one per text)
            truncated.inc(cut)
            print(
                f"warning: {request.url.path}: {cut} of {len(texts)} text(s) longer than "
                f"max_seq_length={m.tokenizer.max_seq_length} tokens were cut to it",
                file=sys.stderr,
            )
        try:
            fut = batcher.submit(texts, tasks, want_embeddings, encoded, overflow, extra)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy ({e}); retry shortly", None, "rate_limit_error") from None
        except ShuttingDown as e:
            raise ApiError(503, str(e), None, "server_error") from None
        gone = request.scope.get(GONE)
        if gone is not None:
            watch = asyncio.ensure_future(gone.wait())
            try:
                await asyncio.wait([fut, watch], return_when=asyncio.FIRST_COMPLETED)
            finally:  # a cancelled handler cancels the job too (the batcher drops it)
                watch.cancel()
                if not fut.done():
                    fut.cancel()
            if fut.cancelled():
                raise ApiError(499, "the client closed the connection before the answer", None, "client_closed")
        try:
            answer = await fut
        except ShuttingDown as e:
            raise ApiError(503, str(e), None, "server_error") from None
        except SentmtlError as e:
            raise ApiError(422, str(e), None) from None
        except Exception as e:  # this batch failed; the server goes on
            raise ApiError(500, f"internal error: {type(e).__name__}: {e}", None, "server_error") from None
        return answer, tokens

    zero_shot_heads: dict[tuple, Any] = {}  # the last label sets asked for, their vectors made once
    zero_shot_serial = itertools.count()
    MAX_LABELS, MAX_LABEL_CHARS = 128, 500
    MAX_CACHED_ROWS = 64 * 1024  # 100 MB of float32 vectors at 384 dimensions

    def zero_shot_head(m, specs: list[str], multi_label: bool, threshold: float):
        """A request's zero-shot head: the cached one for this label set, or a new one whose label
        vectors the route makes (through the batcher, like any texts) before using it."""
        from ..heads.zero_shot import parse_labels, zero_shot_config

        if len(specs) > MAX_LABELS:
            raise SentmtlError(f"labels: {len(specs)} labels is over the limit of {MAX_LABELS} a request")
        if any(len(x) > MAX_LABEL_CHARS for x in specs):
            raise SentmtlError(f"labels: a label (with its description) is over {MAX_LABEL_CHARS} characters")
        key = (tuple(specs), multi_label, threshold)
        head = zero_shot_heads.get(key)
        if head is None:
            names, descriptions = parse_labels(specs, "labels")
            # a task name of its own: requests with other labels may share its backbone batches
            task = f"{ZERO_SHOT_TASK}#{next(zero_shot_serial)}"
            head = m.build_head(task, zero_shot_config(names, descriptions, None, multi_label, threshold))
            head.cache_key = key
        return head

    def cached_rows(head) -> int:  # the vectors a cached label set holds: its labels' and its names' pieces
        return len(head.cfg.labels) + len(head.params.get("name_pieces", ()))

    def remember(head) -> None:
        """Keep the label set's vectors for its next request: the last 64 sets, and no more than
        MAX_CACHED_ROWS vectors in all (a label set of long names holds one per word-piece)."""
        zero_shot_heads.pop(head.cache_key, None)
        while zero_shot_heads and (
            len(zero_shot_heads) >= 64
            or sum(map(cached_rows, zero_shot_heads.values())) + cached_rows(head) > MAX_CACHED_ROWS
        ):
            zero_shot_heads.pop(next(iter(zero_shot_heads)))
        zero_shot_heads[head.cache_key] = head

    # ---- routes -----------------------------------------------------------------------------------------------
    @app.post("/v1/embeddings", openapi_extra=openapi_body(EmbeddingsRequest))
    async def embeddings(request: Request) -> FastJSON:
        """OpenAI's embeddings API: `input` one text or a list; `encoding_format` float or base64."""
        m, _ = loaded()
        req = await body(request, EmbeddingsRequest, "input", lambda r: r.input)
        texts = [req.input] if isinstance(req.input, str) else req.input
        if req.dimensions is not None and req.dimensions != m.dim:
            raise ApiError(422, f"dimensions: this model gives {m.dim} dimensions, not {req.dimensions}", "dimensions")
        answer, tokens = await run(request, texts, [], True, req.overflow)
        emb = np.asarray(answer.embeddings, dtype="<f4")
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(e.tobytes()).decode("ascii") if req.encoding_format == "base64" else e,
            }
            for i, e in enumerate(emb)
        ]
        n = int(sum(tokens))
        # a response directly: FastAPI's response-model pass over thousands of floats costs more
        # than the forward pass of a small request
        return FastJSON(
            {"object": "list", "data": data, "model": m.cfg.name, "usage": {"prompt_tokens": n, "total_tokens": n}}
        )

    @app.post("/predict", openapi_extra=openapi_body(PredictRequest))
    async def predict(request: Request) -> FastJSON:
        """Each text's results, exactly one JSONL line of `sentmtl predict`."""
        m, _ = loaded()
        req = await body(request, PredictRequest, "texts")
        zero_shot = None
        try:
            if req.labels is not None:
                check_texts(req.labels, "labels")
                zero_shot = zero_shot_head(m, req.labels, req.multi_label, req.threshold)
            tasks = m.resolve_tasks(req.tasks) if req.tasks is not None or zero_shot is None else []
        except SentmtlError as e:
            field = str(e).split(":", 1)[0]
            param = field if field in ("labels", "threshold") else "tasks"
            raise ApiError(422, f"{param}: {str(e).removeprefix(param + ': ')}", param) from None
        if zero_shot is not None and "label_embeddings" not in zero_shot.params:
            # a new label set: its prompts (their embeddings) and its names (their word-pieces'
            # vectors) go through the same bounded queue and batches as texts, in one job
            from ..heads.zero_shot import TokenStates

            prompts = [t for texts in zero_shot.prompt_texts() for t in texts]
            names = zero_shot.name_texts() if zero_shot.late else []
            probe = TokenStates(f"token_states#{zero_shot.task}", m.num_layers)
            made, _ = await run(request, prompts + names, [], True, extra=[probe] if names else None)
            zero_shot.use_prompt_embeddings(made.embeddings[: len(prompts)])
            if names:
                zero_shot.use_name_states([r[probe.task]["states"] for r in made.results[len(prompts) :]])
            remember(zero_shot)
        extra = [zero_shot] if zero_shot is not None else None
        answer, _ = await run(request, req.texts, tasks, False, req.overflow, extra)
        if zero_shot is not None:  # scored in the same pass as the other tasks, under its own name there
            for r in answer.results:
                r[ZERO_SHOT_TASK] = r.pop(zero_shot.task)
        return FastJSON({"results": answer.results})

    @app.post("/similarity", openapi_extra=openapi_body(SimilarityRequest))
    async def similarity(request: Request) -> FastJSON:
        """The same JSON as `sentmtl similarity --format json`."""
        from ..model import pairwise
        from ..shapes import similarity_json

        req = await body(request, SimilarityRequest, None)
        if len(req.texts) < 2:
            raise ApiError(422, "texts: give at least two texts to compare", "texts")
        await asyncio.to_thread(check_texts, req.texts, "texts")
        answer, _ = await run(request, req.texts, [], True, req.overflow)
        emb = np.asarray(answer.embeddings)
        return FastJSON(similarity_json(req.metric, req.texts, pairwise(emb, emb, req.metric)))

    @app.post("/search", openapi_extra=openapi_body(SearchRequest))
    async def search(request: Request) -> FastJSON:
        """The index's rows nearest the query, as `sentmtl search --index --format json`."""
        m, _ = loaded()
        if state.index is None:
            raise ApiError(404, "no index here: start the server with --index INDEX", None, "not_found")
        req = await body(request, SearchRequest, None)
        try:
            check_texts([req.query], "query")
        except ApiError as e:  # one query, not a list: named "query", not "query[0]"
            raise ApiError(e.status, e.message.replace("query[0]", "query"), "query", e.kind) from None
        answer, _ = await run(request, [req.query], [], True)
        vector = np.asarray(answer.embeddings)[0]
        try:
            hits = await asyncio.to_thread(state.index.search, vector, req.top_k, req.where, req.entities)
        except SentmtlError as e:
            param = "entities" if str(e).startswith("--entity") else "where"
            raise ApiError(422, f"{param}: {str(e).split(': ', 1)[-1]}", param) from None
        return FastJSON({"query": req.query, "results": hits})

    @app.get("/health")
    async def health():
        if state.draining:  # a load balancer stops sending work here
            return JSONResponse({"status": "draining"}, status_code=503)
        if state.model is None or state.batcher is None:
            return JSONResponse({"status": "failed" if state.load_error else "loading"}, status_code=503)
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        m, _ = loaded()
        doc = m.describe()
        doc["server"] = {
            "workers": workers,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_queue": settings.max_queue,
            "max_texts_per_request": settings.max_texts_per_request,
            "max_chars_per_text": settings.max_chars_per_text,
            "api_key": bool(settings.api_key),
        }
        return doc

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    page = resources.files("sentmtl_cli.serve").joinpath("static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page.joinpath("index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        types = {".js": "text/javascript", ".css": "text/css"}
        kind = next((t for ext, t in types.items() if name.endswith(ext)), None)
        f = page.joinpath(name)
        if kind is None or "/" in name or not f.is_file():
            raise ApiError(404, f"no such file: {name}", None, "not_found")
        return Response(f.read_text(encoding="utf-8"), media_type=kind)

    return app
