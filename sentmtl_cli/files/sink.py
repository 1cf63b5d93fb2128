"""Streaming output, so `embed` and `predict` over a file of a million lines keep memory flat:
results are written as they come, to stdout or atomically to a file."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from ..errors import SentmtlError
from .atomic import AtomicFile
from .read import isatty

_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps(obj) -> str:
    """JSON on one line, UTF-8 kept readable, but with the three characters that str.splitlines()
    and many JSONL readers take for line breaks (NEL, LINE and PARAGRAPH SEPARATOR) escaped. JSON's
    own syntax is ASCII, so they can only occur inside strings, where the escape means the same."""
    return json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)


class Sink:
    """Where `embed` and `predict` results go, chunk by chunk: stdout, or a file (`--output`) that is
    written beside its target and renamed into place only when complete (symlinks are written
    through; folders, devices and FIFOs are refused; `-` is stdout). Formats: json (one document
    whose `key` array is streamed item by item), jsonl, npy (a float32 matrix, written in row
    blocks), or table (collected, then printed by the caller).

        with Sink("jsonl", output) as out:  # a failure or a signal removes the temporary file
            out.rows(dicts)"""

    def __init__(
        self,
        fmt: str,
        output: str | Path | None,
        *,
        json_head: dict | None = None,
        json_key: str = "",
        rows: int = 0,
        dim: int = 0,
    ):
        self.fmt, self.key, self.count = fmt, json_key, 0
        self.kept: list = []
        self.file: AtomicFile | None = None
        to_stdout = output is None or str(output) == "-"
        if fmt == "table" and not to_stdout:
            raise SentmtlError("--format table prints to the terminal; use --format json, jsonl or npy with --output")
        if fmt == "npy" and output is None:
            raise SentmtlError("--format npy needs --output FILE (or --output - for stdout)")
        if fmt == "npy" and to_stdout and isatty(sys.stdout):
            raise SentmtlError("--format npy writes binary data; give --output FILE, or pipe --output - elsewhere")
        if output is not None and not to_stdout:
            self.file = AtomicFile(output, "wb" if fmt == "npy" else "w")
            self.out = self.file.file
        else:
            self.out = sys.stdout.buffer if fmt == "npy" else sys.stdout
        if fmt == "npy":
            import numpy as np

            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                "fortran_order": False,
                "shape": (rows, dim),
            }
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, header)
            self._write(buf.getvalue())
        elif fmt == "json":
            prefix = dumps(json_head or {})[:-1]
            self._write(f'{prefix}{", " if json_head else ""}"{json_key}": [')

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
