"""Dynamic micro-batching: requests that arrive together share backbone batches.

Handlers submit jobs (texts, the tasks they want, whether they want embeddings) and await a future.
One worker thread takes queued jobs in arrival order while their tokens fit `max_batch_tokens`
(always at least one job), runs them as one call of the model (one forward pass for the embedding
and every head any of them asked for), and hands each job back its own rows. A job's answer is its
own texts' results: heads and pooling work text by text, so what it was batched with changes at most
the last float bits (tests/test_serve.py checks labels, spans and scores against the CLI's).

The queue is bounded: a full queue refuses new jobs at once (the handler answers 429), so a burst
never grows memory or latency without bound. An exception inside a batch fails that batch's jobs
only; the worker goes on with the next.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


class QueueFull(Exception):
    """The queue holds max_queue jobs already."""


@dataclass
class Job:
    texts: list[str]
    tasks: list[str]
    want_embeddings: bool
    tokens: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Answer:
    embeddings: object  # numpy [n, dim] or None
    results: list[dict]


class MicroBatcher:
    def __init__(
        self,
        model,
        max_batch_tokens: int,
        max_queue: int,
        on_batch: Callable[[int, int], None] | None = None,
        batch_size: int = 64,
    ):
        self.model = model
        self.max_batch_tokens, self.max_queue, self.batch_size = max_batch_tokens, max_queue, batch_size
        self.on_batch = on_batch  # (texts, jobs) of each batch run: for the metrics
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="sentmtl-batcher", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return len(self._queue)

    def submit(self, texts: list[str], tasks: list[str], want_embeddings: bool, tokens: int) -> asyncio.Future:
        """Queue a job; its future gets an Answer (or the batch's exception). QueueFull when full."""
        loop = asyncio.get_running_loop()
        job = Job(texts, tasks, want_embeddings, tokens, loop.create_future(), loop)
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the queue holds {self.max_queue} requests")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def close(self, timeout: float = 60.0) -> None:
        """Finish the jobs already queued, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            jobs = [self._queue.popleft()]
            total = jobs[0].tokens
            while self._queue and total + self._queue[0].tokens <= self.max_batch_tokens:
                total += self._queue[0].tokens
                jobs.append(self._queue.popleft())
            return jobs

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            texts = [t for j in jobs for t in j.texts]
            tasks = list(dict.fromkeys(t for j in jobs for t in j.tasks))
            want = any(j.want_embeddings for j in jobs)
            try:
                emb, results = self.model.run(texts, tasks, batch_size=self.batch_size, want_embeddings=want)
            except BaseException as e:  # noqa: BLE001 (any failure fails this batch's jobs, not the server)
                for j in jobs:
                    j.loop.call_soon_threadsafe(_fail, j.future, e)
                continue
            if self.on_batch:
                self.on_batch(len(texts), len(jobs))
            start = 0
            for j in jobs:
                rows = slice(start, start + len(j.texts))
                start += len(j.texts)
                mine = [{"text": r["text"], **{t: r[t] for t in j.tasks}} for r in results[rows]]
                answer = Answer(emb[rows] if (emb is not None and j.want_embeddings) else None, mine)
                j.loop.call_soon_threadsafe(_resolve, j.future, answer)


def _resolve(fut: asyncio.Future, value) -> None:
    if not fut.done():  # the client may have gone away (cancelled)
        fut.set_result(value)


def _fail(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
