"""`sentmtl serve`: the model behind an HTTP API (sentmtl_cli/serve/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import SentmtlError
from .options import Backend, BackendOpt, ConfigOpt, handles_errors


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
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="SENTMTL_API_KEY", help="Require Authorization: Bearer KEY (all routes but /health)."
    ),
):
    """Serve the model over HTTP: OpenAI-style /v1/embeddings, /predict, /similarity, and a page at /."""
    import signal
    import socket

    import uvicorn

    from ..serve.app import Settings, create_app

    settings = Settings(
        config=str(config) if config else None,
        backend=backend.value if backend else None,
        threads=threads,
        max_batch_tokens=max_batch_tokens,
        max_queue=max_queue,
        max_texts_per_request=max_texts_per_request,
        api_key=api_key,
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
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30, access_log=False, lifespan="on")
    )
    typer.echo(f"serving on http://{host}:{bound} (the model loads now; GET /health says when it is ready)", err=True)
    # uvicorn handles SIGTERM itself (stop accepting, finish in-flight requests), then raises it again
    # once done: by then the work is over, so exit 0 rather than the signal's status
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    typer.echo("stopped", err=True)
