"""What stands between a socket and a route: the one JSON error shape, and one plain ASGI middleware
that checks the Host header and the API key, reads the body while counting its bytes, watches for
the client going away, refuses new work while the server drains, adds the security headers, and
records every request's metrics.

Why the body is read here, not by the route: the byte limit must hold for a chunked body too (which
has no Content-Length), so the bytes are counted as they arrive and reading stops at the limit. The
route gets the bytes whole (`body_of`) and parses them off the event loop (`parse`). After the body,
the real `receive` only ever says that the client disconnected: a watcher awaits it and sets an
event that the route's wait for the model also waits on, so abandoned work leaves the queue.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

BODY = "sentmtl.body"  # scope keys the middleware sets for the route
GONE = "sentmtl.gone"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# the page needs no inline script or style, no frames, and talks to its own origin only
PAGE_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
ALWAYS_HEADERS = [(b"x-content-type-options", b"nosniff")]
PUBLIC = ("/health", "/")  # and /static/*: the page and its files hold no data, and a page load sends no key


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error", headers=None
) -> JSONResponse:
    """The one error shape (OpenAI's): {"error": {"message", "type", "param", "code"}}."""
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status, headers=headers
    )


def shutting_down(message: str = "the server is shutting down; retry on another instance or in a moment"):
    return error_response(503, message, None, "server_error", {"Retry-After": "5", "Connection": "close"})


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """pydantic's first error as one line naming the field ("texts[0]: ..."), and the field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    # the field and its list indices ("texts[0]"); pydantic's union-member tags ("str") are not fields
    loc = [x for x in first.get("loc", ()) if x != "body"]
    param = (str(loc[0]) + "".join(f"[{x}]" for x in loc[1:] if isinstance(x, int))) if loc else None
    msg = first.get("msg", "invalid")
    if len(loc) > 1 and isinstance(loc[1], str):  # a union: say what it accepts
        msg = "give a string or a list of strings"
    return f"{param or 'body'}: {msg}", param


def parse(raw: bytes, model: type[BaseModel]):
    """The body as `model`, or ApiError(422) naming what is wrong. Runs off the event loop: a body
    of the size limit takes tens of milliseconds to parse and validate."""
    try:
        obj = orjson.loads(raw)  # invalid UTF-8, nesting past 1,024 and huge numbers are errors here
    except orjson.JSONDecodeError as e:
        try:  # JSON may escape a lone surrogate ("\ud800"), which orjson refuses: the text check names it
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError(422, f"the request body is not valid JSON ({str(e).split(':')[0]})") from None
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        message, param = validation_message([dict(x) for x in e.errors(include_url=False)])
        raise ApiError(422, message, param) from None


def openapi_body(model: type[BaseModel]) -> dict:
    """The route's request body in the OpenAPI document (the route reads the body itself)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _host_name(value: bytes) -> str:
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass
class Policy:
    body_limit: int
    api_key: str | None = None
    allowed_hosts: list[str] | None = None  # None or "*": any Host
    draining: Callable[[], bool] = field(default=lambda: False)
    active: int = 0  # requests past the checks and not yet answered (the drain waits for them)


class Guard:
    """The middleware (see the module's docstring). `record(scope, status, seconds)` gets every
    request, refused ones included (499: the client left before its answer)."""

    def __init__(self, app, policy: Policy, record):
        self.app, self.policy, self.record = app, policy, record
        self.bearer = f"Bearer {policy.api_key}".encode() if policy.api_key else None
        hosts = policy.allowed_hosts
        self.hosts = None if hosts is None or "*" in hosts else {h.strip().lower().strip("[]") for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        status = 500  # unless a response starts
        extra = ALWAYS_HEADERS + (PAGE_HEADERS if scope["path"] == "/" or scope["path"].startswith("/static/") else [])

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        watcher = None
        counted = False
        try:
            refused = self.refuse(scope)
            if refused is None:
                body = await self.read_body(receive)
                if isinstance(body, JSONResponse):
                    refused = body
                elif body is None:  # the client left while sending
                    status = 499
                    return
            if refused is not None:
                return await refused(scope, receive, send_and_note)
            scope[BODY] = body
            self.policy.active += 1
            counted = True
            gone = scope[GONE] = asyncio.Event()
            watcher = asyncio.ensure_future(_watch(receive, gone))

            async def replay():
                await gone.wait()
                return {"type": "http.disconnect"}

            await self.app(scope, replay, send_and_note)
        finally:
            if counted:
                self.policy.active -= 1
            if watcher is not None:
                watcher.cancel()
            self.record(scope, status, time.perf_counter() - t)

    def refuse(self, scope) -> JSONResponse | None:
        """The Host, the API key, then what the headers say of the body: a response that refuses
        the request, or None."""
        headers = dict(scope["headers"])
        if self.hosts is not None and b"host" in headers and _host_name(headers[b"host"]) not in self.hosts:
            return error_response(
                400, "this Host is not allowed (sentmtl serve --allowed-hosts names the ones that are)", None
            )
        path = scope["path"]
        if self.bearer is not None and not (path in PUBLIC or path.startswith("/static/")):
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.bearer):
                return error_response(
                    401, "a valid API key is needed: Authorization: Bearer KEY", None, "authentication_error",
                    {"WWW-Authenticate": "Bearer"},
                )  # fmt: skip
        if self.policy.draining() and path != "/health":
            return shutting_down()
        size = headers.get(b"content-length", b"")
        if size.isdigit() and int(size) > self.policy.body_limit:
            return self.too_big()
        encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if encoding not in ("", "identity"):
            return error_response(415, f"Content-Encoding {encoding} is not supported: send the body uncompressed")
        if scope["method"] in ("POST", "PUT", "PATCH"):
            kind = headers.get(b"content-type", b"application/json").decode("latin-1").lower()
            media, _, params = kind.partition(";")
            if media.strip() != "application/json":
                return error_response(415, f"send the body as application/json, not {media.strip() or 'nothing'}")
            charset = next((p.split("=", 1)[1].strip(' "') for p in params.split(";") if "charset=" in p), "utf-8")
            if charset not in ("utf-8", "utf8"):
                return error_response(415, f"send the body as UTF-8 JSON, not charset={charset}")
        return None

    def too_big(self) -> JSONResponse:
        limit = self.policy.body_limit
        return error_response(413, f"the request body is over {limit:,} bytes", None, headers={"Connection": "close"})

    async def read_body(self, receive) -> bytes | JSONResponse | None:
        """The whole body, counted as it arrives: 413 past the limit (chunked or not), None when the
        client disconnected."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.policy.body_limit:
                return self.too_big()
            if chunk:
                parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


async def _watch(receive, gone: asyncio.Event) -> None:
    """After the body, the server's receive returns only when the client has gone (or the answer
    is sent; the watcher is cancelled then)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return
