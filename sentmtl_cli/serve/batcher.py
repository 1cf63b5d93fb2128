"""Dynamic micro-batching: requests that arrive together share backbone batches, on every core.

Handlers submit jobs (texts, the tasks they want, whether they want embeddings, the texts'
`tokenizer.encode_raw`, done once in the handler) and await a future. A job is cut into pieces of texts of similar length (a small request is
one piece). `workers` threads, each running the model on one core, take queued pieces in arrival
order and run them as one call of the model: one forward pass for the embedding and every head any
of them asked for. A job's future is resolved when its last piece is done, with its own rows only.

Why several one-core workers rather than one worker whose forward pass spans the cores: a server's
batches are small and mixed, and a multi-threaded pass over a small batch spends much of its time
handing work between threads; one-core passes side by side do not. And so that every worker has
work, a worker takes no more than its share of what is queued (the queue split over the idle
workers), up to `max_batch_tokens`: a burst is spread over the cores, and a big request (cut into
pieces) too.

A job's answer is its own texts' results: heads and pooling work text by text, so what it was
batched with changes at most the last float bits (tests/test_serve.py checks labels, spans and
scores against the CLI's). The queue is bounded: a full queue refuses new jobs at once (the handler
answers 429), so a burst never grows memory or latency without bound. An exception inside a batch
fails that batch's jobs only; the workers go on.

Abandoned work is dropped: a job whose future is cancelled (its client went away, or its handler
was cancelled) leaves the queue at once, and a worker that took its pieces already runs them no
further than the batch in progress. On shutdown, `abort` fails whatever is left when the grace
period is over, and refuses new jobs from then on (ShuttingDown).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The queue holds max_queue jobs already."""


class ShuttingDown(Exception):
    """The server is stopping: the job was not accepted, or not finished within the grace period."""


@dataclass
class Answer:
    embeddings: np.ndarray | None  # [n, dim] for the job's texts, in its order
    results: list[dict]


@dataclass(eq=False)
class Job:
    texts: list[str]
    tasks: list[str]
    want_embeddings: bool
    encoded: list
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    overflow: str = "truncate"  # what a text past max_seq_length gets (model.run's overflow)
    extra: list = field(default_factory=list)  # heads of this request's own (model.run's extra), by their task
    pieces_left: int = 0  # pieces not yet run
    queued_pieces: int = 0  # pieces still in the queue
    failed: bool = False  # failed, dropped or aborted: its other pieces are not run
    embeddings: np.ndarray | None = None
    results: list = field(default_factory=list)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class Piece:
    job: Job
    rows: list[int]  # the job's text indices
    tokens: int


class MicroBatcher:
    def __init__(
        self,
        model,
        max_batch_tokens: int,
        max_queue: int,
        on_batch: Callable[[int, int], None] | None = None,
        batch_size: int = 64,
        workers: int = 1,
    ):
        self.model = model
        self.max_batch_tokens, self.max_queue, self.batch_size = max_batch_tokens, max_queue, batch_size
        self.on_batch = on_batch  # (texts, jobs) of each batch run: for the metrics
        self._queue: deque[Piece] = deque()
        self._queued_tokens = 0
        self._waiting_jobs = 0  # jobs with a piece still queued: what max_queue bounds
        self._idle = 0
        self._cond = threading.Condition()
        self._live: set[Job] = set()  # submitted, not yet answered
        self.dropped = 0  # jobs whose future was cancelled before their answer
        self._accepting = True
        self._stopping = False
        self._ready = False
        self._threads = [
            threading.Thread(target=self._work, name=f"sentmtl-batcher-{k}", daemon=True)
            for k in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()
        with self._cond:  # ready when every worker waits for work, so the first burst is shared out
            self._cond.wait_for(lambda: self._idle == len(self._threads), timeout=30)
            self._ready = True

    def depth(self) -> int:
        """Requests waiting for a worker."""
        return self._waiting_jobs

    def live(self) -> int:
        """Requests submitted and not yet answered (queued or running)."""
        return len(self._live)

    def submit(
        self,
        texts: list[str],
        tasks: list[str],
        want_embeddings: bool,
        encoded: list,
        overflow: str = "truncate",
        extra: list | None = None,
    ) -> asyncio.Future:
        """Queue a job; its future gets an Answer (or the batch's exception). QueueFull when full.
        `encoded`: the texts' tokens as model.run takes them (a text to be read in windows whole).
        `extra`: heads that are not the model's (a request's zero-shot labels), each with a task
        name of its own: run in the same batches, each text's result under that name."""
        loop = asyncio.get_running_loop()
        job = Job(
            texts,
            tasks,
            want_embeddings,
            encoded,
            loop.create_future(),
            loop,
            overflow,
            list(extra or []),
            results=[None] * len(texts),
        )
        if want_embeddings:  # filled by the pieces, maybe by several workers at once
            job.embeddings = np.empty((len(texts), self.model.dim), dtype=np.float32)
        pieces = self._cut(job, [len(e[0]) for e in encoded])
        job.pieces_left = job.queued_pieces = len(pieces)
        with self._cond:
            if self._stopping or not self._accepting:
                raise ShuttingDown("the server is shutting down")
            if self._waiting_jobs >= self.max_queue:
                raise QueueFull(f"the queue holds {self.max_queue} requests")
            self._queue.extend(pieces)
            self._queued_tokens += sum(p.tokens for p in pieces)
            self._waiting_jobs += 1
            self._live.add(job)
            self._cond.notify(len(pieces))
        job.future.add_done_callback(lambda f: self._settled(job, f))
        return job.future

    def _settled(self, job: Job, fut: asyncio.Future) -> None:
        """On the loop, once the job's future is done: answered, failed, or cancelled (dropped)."""
        with self._cond:
            self._live.discard(job)
            if not fut.cancelled() or job.failed:
                return
            job.failed = True
            self.dropped += 1
            if job.queued_pieces:
                kept = deque(p for p in self._queue if p.job is not job)
                self._queued_tokens -= sum(p.tokens for p in self._queue if p.job is job)
                self._queue = kept
                job.queued_pieces = 0
                self._waiting_jobs -= 1

    def abort(self, reason: str) -> int:
        """Fail every job not yet answered with ShuttingDown(reason); how many there were."""
        with self._cond:
            self._accepting = False
            jobs = [j for j in self._live if not j.failed]
            for job in jobs:
                job.failed = True
            self._queue.clear()
            self._queued_tokens = 0
            self._waiting_jobs = 0
        for job in jobs:
            job.loop.call_soon_threadsafe(_fail, job.future, ShuttingDown(reason))
        return len(jobs)

    def _cut(self, job: Job, tokens: list[int]) -> list[Piece]:
        """The job's texts by length, in runs of at most batch_size texts and a worker's share of
        the token budget (at least one text each)."""
        limit = max(1, self.max_batch_tokens // len(self._threads))
        order = sorted(range(len(tokens)), key=tokens.__getitem__)
        pieces: list[Piece] = []
        rows: list[int] = []
        total = 0
        for i in order:
            if rows and (len(rows) >= self.batch_size or total + tokens[i] > limit):
                pieces.append(Piece(job, rows, total))
                rows, total = [], 0
            rows.append(i)
            total += tokens[i]
        pieces.append(Piece(job, rows, total))
        return pieces

    def close(self, timeout: float = 60.0) -> None:
        """Finish the jobs already queued, then stop the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    def _take(self) -> list[Piece] | None:
        with self._cond:
            self._idle += 1
            try:
                if not self._ready:
                    self._cond.notify_all()  # __init__ waits for every worker to be here
                while not self._queue:
                    if self._stopping:
                        return None
                    self._cond.wait()
                # this worker's share: what is queued, split over the workers now free to take it
                share = math.ceil(self._queued_tokens / self._idle)
                budget = min(self.max_batch_tokens, share)
                pieces = [self._pop()]
                total = pieces[0].tokens
                while self._queue and total + self._queue[0].tokens <= budget:
                    total += self._queue[0].tokens
                    pieces.append(self._pop())
                return pieces
            finally:
                self._idle -= 1

    def _pop(self) -> Piece:  # under self._cond
        piece = self._queue.popleft()
        self._queued_tokens -= piece.tokens
        piece.job.queued_pieces -= 1
        if piece.job.queued_pieces == 0:
            self._waiting_jobs -= 1
        return piece

    def _work(self) -> None:
        while (pieces := self._take()) is not None:
            pieces = [p for p in pieces if not p.job.failed]  # a failed or dropped job's pieces: no need
            if not pieces:
                continue
            texts = [p.job.texts[i] for p in pieces for i in p.rows]
            encoded = [p.job.encoded[i] for p in pieces for i in p.rows]
            tasks = list(dict.fromkeys(t for p in pieces for t in p.job.tasks))
            want = any(p.job.want_embeddings for p in pieces)
            extra = list({id(h): h for p in pieces for h in p.job.extra}.values())
            try:
                emb, results = self.model.run(
                    texts,
                    tasks,
                    batch_size=self.batch_size,
                    want_embeddings=want,
                    encoded=encoded,
                    warn=False,
                    overflow=[p.job.overflow for p in pieces for _ in p.rows],
                    extra=extra,
                )
            except BaseException as e:  # noqa: BLE001 (any failure fails this batch's jobs, not the server)
                with self._cond:
                    for job in dict.fromkeys(p.job for p in pieces):
                        if not job.failed:
                            job.failed = True
                            job.loop.call_soon_threadsafe(_fail, job.future, e)
                continue
            if self.on_batch:
                self.on_batch(len(texts), len({id(p.job) for p in pieces}))
            start = 0
            done: list[Job] = []
            for p in pieces:
                job, n = p.job, len(p.rows)
                if job.failed:  # dropped or aborted while this batch ran
                    start += n
                    continue
                for i, r in zip(p.rows, results[start : start + n]):
                    windows = {"windows": r["windows"]} if "windows" in r else {}  # read in windows: how many
                    own = [*job.tasks, *(h.task for h in job.extra)]
                    job.results[i] = {"text": r["text"], **windows, **{t: r[t] for t in own}}
                if job.embeddings is not None and emb is not None:
                    job.embeddings[p.rows] = emb[start : start + n]
                start += n
                with self._cond:
                    job.pieces_left -= 1
                    if job.pieces_left == 0 and not job.failed:
                        done.append(job)
            for job in done:
                job.loop.call_soon_threadsafe(_resolve, job.future, Answer(job.embeddings, job.results))


def _resolve(fut: asyncio.Future, value) -> None:
    if not fut.done():  # the client may have gone away (cancelled)
        fut.set_result(value)


def _fail(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
