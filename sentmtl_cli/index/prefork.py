"""A one-shot `search --index` in two processes: the console entry forks one at start-up, before
anything is imported, that imports lance, opens the index and loads its vector index, while this
one imports the CLI, reads the config and builds the backbone; the query's vector goes to it
through a pipe and the hits come back the same way. Both halves are mostly Python imports, which
one process runs one after the other (the GIL), and lance's import and the first query's loading
of the vector index's partitions were 0.17 s of the 0.5 s. On the 2-core machine the two processes
slow each other (two imports side by side each took 40% longer than one alone), so the command took
0.59-0.60 against 0.64-0.67 s (medians of 11 in turn, bench/index_bench.py --startup-only).

The answer is the same: the forked process runs Index.search, the code the one-process path runs,
on the same table, and the hits come back as JSON (floats round-trip exactly). What only the
caller can know is checked by the caller, in the order one process checks it: the index's record,
then that its model is the caller's (store.same_model), then the search. A SentmtlError in the forked process
(a damaged table, a bad --where) comes back as its one line; anything else, or the process gone,
and the caller searches in its own process, as it does without a helper.

Nothing outlives the command: the forked process dies with its parent (PR_SET_PDEATHSIG), ignores
Ctrl-C (the parent reports it), writes nothing to the terminal (its stdin, stdout and stderr are
/dev/null: a pipe the caller reads ends when the command does), and ends once it has answered, or
when the pipe closes. Linux only, with 2 or more usable cores; SENTMTL_NO_PRELOAD=1 turns it off."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<Q")
_helper: Helper | None = None


def wanted(argv: list[str]) -> bool:
    """A `search` with --index on a machine where a second process runs beside this one."""
    if len(argv) < 2 or argv[1] != "search" or not hasattr(os, "fork") or not sys.platform.startswith("linux"):
        return False
    if not any(a == "--index" or a.startswith("--index=") for a in argv[2:]):
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores >= 2


def _send(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _receive(fd: int):
    """The next message, or None when the other end has closed."""

    def exactly(n: int) -> bytes | None:
        parts, got = [], 0
        while got < n:
            part = os.read(fd, min(n - got, 1 << 20))
            if not part:
                return None
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    head = exactly(_HEADER.size)
    if head is None:
        return None
    body = exactly(_HEADER.unpack(head)[0])
    return None if body is None else json.loads(body)


class Helper:
    """The caller's end: open(index) as soon as the command knows it, search(...) once the vector
    is there."""

    def __init__(self, pid: int, to_child: int, from_child: int):
        self.pid, self.to_child, self.from_child = pid, to_child, from_child
        self.opened: str | None = None
        self.answered = False

    def open(self, index: Path) -> None:
        if self.opened is None:
            self.opened = str(index)
            try:
                _send(self.to_child, {"open": self.opened})
            except OSError:
                pass  # gone: search() finds out and the caller searches itself

    def search(self, index: Path, vector, top_k: int, where: str | None, entities: list[str]) -> list[dict] | None:
        """The hits, a SentmtlError raised as the forked process raised it, or None: search here."""
        from ..errors import SentmtlError

        if self.opened != str(index) or self.answered:
            return None
        self.answered = True
        try:
            _send(
                self.to_child,
                {"vector": [float(x) for x in vector], "top_k": top_k, "where": where, "entities": entities},
            )
            reply = _receive(self.from_child)
        except (OSError, ValueError):
            reply = None
        finally:
            self.close()
        if not isinstance(reply, dict):
            return None
        if "error" in reply:
            raise SentmtlError(reply["error"])
        return reply.get("hits")

    def close(self) -> None:
        for fd in (self.to_child, self.from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except OSError:
            pass


def helper() -> Helper | None:
    """The forked process's end here, when start() made one."""
    return _helper


def start() -> None:
    """Fork the helper. Call before any thread is started or any library is imported."""
    global _helper
    if _helper is not None:
        return
    parent = os.getpid()
    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        for fd in (down_r, down_w, up_r, up_w):
            os.close(fd)
        return
    if pid == 0:
        os.close(down_w)
        os.close(up_r)
        _child(parent, down_r, up_w)  # never returns
    os.close(down_r)
    os.close(up_w)
    _helper = Helper(pid, down_w, up_r)


def _child(parent: int, down: int, up: int) -> None:
    import ctypes
    import signal

    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent reports it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent
        except (OSError, AttributeError):
            pass  # the pipe's end still ends this process once its read returns
        if os.getppid() != parent:  # the parent ended before that
            return
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        _answer(down, up)
    except BaseException:  # noqa: BLE001 - no answer: the caller searches in its own process
        code = 1
    finally:
        os._exit(code)


def _answer(down: int, up: int) -> None:
    """Import lance, open the index named first and warm it in a thread, then answer the search."""
    import threading

    import numpy as np

    from ..errors import SentmtlError
    from .store import Index, import_for_one_shot, warm

    import_for_one_shot()
    first = _receive(down)
    if not isinstance(first, dict) or "open" not in first:
        return
    try:
        ix: Index | None = Index(Path(first["open"]))
        threading.Thread(target=warm, args=(ix,), daemon=True).start()
        failed = None
    except SentmtlError as e:
        ix, failed = None, str(e)
    ask = _receive(down)
    if not isinstance(ask, dict) or "vector" not in ask:
        return
    try:
        if ix is None:
            raise SentmtlError(failed or "the index did not open")
        vector = np.asarray(ask["vector"], dtype=np.float32)
        reply: dict[str, Any] = {"hits": ix.search(vector, int(ask["top_k"]), ask["where"], list(ask["entities"]))}
    except SentmtlError as e:
        reply = {"error": str(e)}
    _send(up, reply)
