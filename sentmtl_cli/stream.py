"""Streaming input and output, so `embed` and `predict` over a file of a million lines keep
memory flat: texts are read and processed in chunks, and results are written as they come."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import SentmtlError


class TextSource:
    """Texts from arguments, a file, or stdin; read lazily, blank lines skipped."""

    def __init__(self, texts: list[str] | None, file: str | None):
        from .model import check_texts

        if texts and file:
            raise SentmtlError("give texts as arguments or --file, not both")
        self.texts = check_texts(texts) if texts else None
        self.path: Path | None = None
        self._spool = None
        if self.texts is None:
            if file and file != "-":
                self.path = Path(file)
                if not self.path.exists():
                    raise SentmtlError(f"file not found: {self.path}")
                if self.path.is_dir():
                    raise SentmtlError(f"is a folder, not a file: {self.path}")
                if not os.access(self.path, os.R_OK):
                    raise SentmtlError(f"cannot read {self.path}: permission denied")
            elif file == "-" or not sys.stdin.isatty():
                # stdin is read once; spool it so it can be counted and read like a file
                self._spool = tempfile.TemporaryFile()
                for block in iter(lambda: sys.stdin.buffer.read(1 << 20), b""):
                    self._spool.write(block)
                self._spool.seek(0)
            else:
                raise SentmtlError("no input text given (pass texts, --file PATH, or pipe them on stdin)")
        self._count: int | None = None

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "stdin"

    def _binary(self):
        if self._spool is not None:
            self._spool.seek(0)
            return self._spool
        return open(self.path, "rb")

    def __iter__(self) -> Iterator[str]:
        if self.texts is not None:
            yield from self.texts
            return
        f = self._binary()
        try:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise SentmtlError(f"{self.name} is not UTF-8 text (line {n}, byte {e.start + 1})") from None
                if line.strip():
                    yield line
        finally:
            if f is not self._spool:
                f.close()

    def count(self) -> int:
        """The number of texts (one quick pass over a file)."""
        if self._count is None:
            self._count = sum(1 for _ in self)
            if self._count == 0:
                raise SentmtlError(f"no input text in {self.name} (it has no non-empty lines)")
        return self._count

    def chunks(self, size: int) -> Iterator[tuple[int, list[str]]]:
        buf, start = [], 0
        for text in self:
            buf.append(text)
            if len(buf) == size:
                yield start, buf
                start += len(buf)
                buf = []
        if buf or start == 0:
            if not buf:
                raise SentmtlError(f"no input text in {self.name} (it has no non-empty lines)")
            yield start, buf


class NpyWriter:
    """A float32 [N, D] .npy written chunk by chunk with plain file writes (a memory map would keep
    every written page in the process's resident memory), renamed into place only when complete."""

    def __init__(self, path: Path, rows: int, dim: int):
        import numpy as np

        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as e:
            raise SentmtlError(f"cannot write {self.path}: {e.strerror}") from None
        self.f = os.fdopen(fd, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (rows, dim)}
        np.lib.format.write_array_header_1_0(self.f, header)
        self.offset, self.row_bytes, self.rows = self.f.tell(), 4 * dim, rows

    def write(self, start: int, emb) -> None:
        import numpy as np

        self.f.seek(self.offset + start * self.row_bytes)
        self.f.write(np.ascontiguousarray(emb, dtype="<f4").tobytes())

    def close(self, ok: bool) -> None:
        self.f.truncate(self.offset + self.rows * self.row_bytes)
        self.f.close()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)


class JsonArrayWriter:
    """One JSON document whose `key` array is written item by item."""

    def __init__(self, head: dict, key: str, tail: dict | None = None):
        self.first = True
        prefix = json.dumps(head, ensure_ascii=False)[:-1]
        sep = ", " if head else ""
        sys.stdout.write(f"{prefix}{sep}\"{key}\": [")
        self.tail = tail

    def write(self, obj) -> None:
        sys.stdout.write(("" if self.first else ", ") + json.dumps(obj, ensure_ascii=False))
        self.first = False

    def close(self) -> None:
        end = "]"
        if self.tail:
            end += ", " + json.dumps(self.tail, ensure_ascii=False)[1:-1]
        sys.stdout.write(end + "}\n")
        sys.stdout.flush()
