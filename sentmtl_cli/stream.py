"""Streaming input and output, so `embed` and `predict` over a file of a million lines keep
memory flat: texts are read and processed in chunks, and results are written as they come."""
from __future__ import annotations

import io as _io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import SentmtlError
from .io import AtomicFile
from .render import dumps


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
            elif file == "-" or (sys.stdin is not None and not _isatty(sys.stdin)):
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
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n")
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


class Sink:
    """Where `embed` and `predict` results go, chunk by chunk: stdout, or a file (`--output`) that is
    written beside its target and renamed into place only when complete (symlinks are written
    through; folders, devices and FIFOs are refused; `-` is stdout). Formats: json (one document
    whose `key` array is streamed item by item), jsonl, npy (a float32 matrix, written in row
    blocks), or table (collected, then printed by the caller).

        with Sink("jsonl", output) as out:  # a failure or a signal removes the temporary file
            out.rows(dicts)"""

    def __init__(self, fmt: str, output: str | Path | None, *, json_head: dict | None = None, json_key: str = "",
                 rows: int = 0, dim: int = 0):
        self.fmt, self.key, self.count = fmt, json_key, 0
        self.kept: list = []
        self.file: AtomicFile | None = None
        to_stdout = output is None or str(output) == "-"
        if fmt == "table" and not to_stdout:
            raise SentmtlError("--format table prints to the terminal; use --format json, jsonl or npy with --output")
        if fmt == "npy" and output is None:
            raise SentmtlError("--format npy needs --output FILE (or --output - for stdout)")
        if fmt == "npy" and to_stdout and _isatty(sys.stdout):
            raise SentmtlError("--format npy writes binary data; give --output FILE, or pipe --output - elsewhere")
        if not to_stdout:
            self.file = AtomicFile(output, "wb" if fmt == "npy" else "w")
            self.out = self.file.file
        else:
            self.out = sys.stdout.buffer if fmt == "npy" else sys.stdout
        if fmt == "npy":
            import numpy as np

            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (rows, dim)}
            buf = _io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, header)
            self._write(buf.getvalue())
        elif fmt == "json":
            prefix = dumps(json_head or {})[:-1]
            self._write(f"{prefix}{', ' if json_head else ''}\"{json_key}\": [")

    def _write(self, data) -> None:
        try:
            self.out.write(data)
        except OSError as e:
            if isinstance(e, BrokenPipeError):
                raise
            where = self.file.path if self.file else "standard output"
            raise SentmtlError(f"cannot write {where}: {e.strerror or e}") from None

    def rows(self, objs) -> None:
        """Result dicts (json, jsonl) or items kept for a table."""
        if self.fmt == "table":
            self.kept.extend(objs)
            return
        for o in objs:
            line = dumps(o)
            if self.fmt == "json":
                self._write(("" if self.count == 0 else ", ") + line)
            else:
                self._write(line + "\n")
            self.count += 1
        if self.fmt == "jsonl" and self.file is None:
            self._flush()

    def matrix(self, emb) -> None:
        """The next rows of the npy matrix (chunks arrive in input order)."""
        import numpy as np

        self._write(np.ascontiguousarray(emb, dtype="<f4").tobytes())

    def _flush(self) -> None:
        try:
            self.out.flush()
        except OSError as e:
            if isinstance(e, BrokenPipeError):
                raise
            raise SentmtlError(f"cannot write standard output: {e.strerror or e}") from None

    def close(self) -> None:
        if self.fmt == "json":
            self._write("]}\n")
        if self.file is not None:
            self.file.commit()
        elif self.fmt != "table":
            self._flush()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        elif self.file is not None:
            self.file.discard()
        return False


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
