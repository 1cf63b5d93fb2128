"""`sentmtl serve`: the model behind an HTTP API (sentmtl_cli/serve/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import SentmtlError
from .options import Backend, BackendOpt, ConfigOpt, exit_quickly, handles_errors


@handles_errors
def serve(
    config: Optional[Path] = ConfigOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free port, printed)."),
    backend: Optional[Backend] = BackendOpt,
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="Model workers, a core each, side by side (default: all cores)."
    ),
    max_batch_tokens: int = typer.Option(8192, "--max-batch-tokens", min=1, help="Tokens per merged backbone batch."),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Requests waiting before 429."),
    max_texts_per_request: int = typer.Option(
        256, "--max-texts-per-request", min=1, help="Texts a request may send (413 above)."
    ),
    max_chars_per_text: int = typer.Option(
        20_000,
        "--max-chars-per-text",
        min=1,
        help="Characters a text may have (413 above); a text past the model's 256 tokens is read in windows.",
    ),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        envvar="SENTMTL_API_KEY",
        help="Require Authorization: Bearer KEY on the API (not /health, nor the page, which asks for it).",
    ),
    allowed_hosts: Optional[str] = typer.Option(
        None,
        "--allowed-hosts",
        help="Comma-separated Host names to answer ('*': any). Default: loopback names when bound to "
        "loopback (no DNS rebinding), any otherwise.",
    ),
    index: Optional[Path] = typer.Option(
        None, "--index", help="An index built by `sentmtl index`: POST /search answers from it."
    ),
    grace_period: float = typer.Option(
        20.0,
        "--grace-period",
        min=0,
        help="Seconds after SIGTERM for queued requests to finish; the rest are answered 503 with Retry-After.",
    ),
):
    """Serve the model over HTTP: OpenAI-style /v1/embeddings, /predict, /similarity, /search (--index), and a page at /."""
    import os
    import socket

    from ..serve.app import Settings, create_app
    from ..serve.server import run

    if api_key is not None and not api_key.strip() or (api_key is None and "SENTMTL_API_KEY" in os.environ):
        # click reads an empty SENTMTL_API_KEY as unset: either way, an empty key would turn auth off
        raise SentmtlError("the API key is empty (--api-key or SENTMTL_API_KEY): give a key, or neither")
    if index is not None:  # a folder that is not an index fails now, in one line, not at the first search
        from ..index.store import read_meta

        read_meta(index)
    hosts = [h.strip() for h in allowed_hosts.split(",") if h.strip()] if allowed_hosts is not None else None
    if hosts is None and _loopback(host):
        hosts = ["localhost", "127.0.0.1", "::1", host]
    settings = Settings(
        config=str(config) if config else None,
        backend=backend.value if backend else None,
        threads=threads,
        max_batch_tokens=max_batch_tokens,
        max_queue=max_queue,
        max_texts_per_request=max_texts_per_request,
        max_chars_per_text=max_chars_per_text,
        api_key=api_key,
        allowed_hosts=hosts,
        grace_period=grace_period,
        index=str(index) if index is not None else None,
    )
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: a response's header and body segments go out at once,
        # not 40 ms apart (Nagle waiting on the client's delayed ACK, on every keep-alive request)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as e:
        raise SentmtlError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    bound = sock.getsockname()[1]
    app = create_app(settings)
    typer.echo(f"serving on http://{host}:{bound} (the model loads now; GET /health says when it is ready)", err=True)
    run(app, sock, grace_period)
    typer.echo("stopped", err=True)
    # a batch of requests already answered 503 may still be inside the backbone (close() waits
    # 5 s for it after a drain): the interpreter's teardown under a running ONNX Runtime call
    # aborts the process ("terminate called without an active exception", exit -6), so the
    # process ends here, its output flushed; a server writes no file
    exit_quickly()


def _loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
