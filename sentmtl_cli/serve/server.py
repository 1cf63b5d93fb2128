"""The process around the app: uvicorn on a socket the CLI bound, and what SIGTERM does.

On SIGTERM (or the first Ctrl+C): stop accepting connections, answer new requests on open ones 503
(with Retry-After and Connection: close), give the requests already received `grace_period`
seconds to finish, answer what is left 503 in the JSON error shape, then let uvicorn close the
connections and exit 0. A second signal exits at once. uvicorn's own graceful timeout (which would cancel the
handlers, answering 500 text/plain) is only a backstop past the grace period.
"""

from __future__ import annotations

import asyncio
import signal

import uvicorn


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain, grace_period: float):
        super().__init__(config)
        self.drain, self.grace_period = drain, grace_period
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Future | None = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig, frame) -> None:
        if self._draining or self._loop is None:  # the second signal, or before the loop runs
            return super().handle_exit(sig, frame)
        self._draining = True
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        for server in self.servers:  # no new connections
            server.close()
        try:
            await self.drain(self.grace_period)
        finally:
            await asyncio.sleep(0.05)  # the 503s just decided reach their connections
            self.should_exit = True


def run(app, sock, grace_period: float) -> None:
    """Serve `app` on the bound socket until SIGTERM or Ctrl+C; returns after the drain."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # a backstop only: the drain answers everything within the grace period
        timeout_graceful_shutdown=10,
    )
    server = Server(config, app.state.drain, grace_period)
    # uvicorn raises a captured signal again once it is done; by then the work is over: exit 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
