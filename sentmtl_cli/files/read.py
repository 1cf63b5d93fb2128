"""Reading input: text files and text sources (arguments, a file, stdin), each failure one line."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import SentmtlError
from ..text.inputs import check_texts


def read_text(path: Path, what: str = "file") -> str:
    """A UTF-8 text file, with a one-line error naming it for each way reading can fail."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SentmtlError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise SentmtlError(f"{path} is a folder, not a {what}") from None
    except OSError as e:
        raise SentmtlError(f"cannot read {what} {path}: {e.strerror}") from None
    return decode_utf8(data, f"{what} {path}")


def decode_utf8(data: bytes, what: str) -> str:
    """UTF-8 text; a byte-order mark (as spreadsheet exports write) is dropped, not kept as text."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SentmtlError(f"{what} is not UTF-8 text (bad byte at offset {e.start})") from None


def read_lines(path: str) -> list[tuple[int, str]]:
    """(line number, text) for each non-blank line of a file, or of stdin for '-'. The numbers are
    the file's own, 1-based, blank lines counted."""
    if path == "-":
        text = decode_utf8(sys.stdin.buffer.read(), "stdin")
    else:
        text = read_text(Path(path))
    lines = [ln.removesuffix("\r") for ln in text.split("\n")]  # a CRLF's CR; a lone CR is text
    return [(n, ln) for n, ln in enumerate(lines, 1) if ln.strip()]


class TextSource:
    """Texts from arguments, a file, or stdin; read lazily, blank lines skipped."""

    def __init__(self, texts: list[str] | None, file: str | None):
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
            elif file == "-" or (sys.stdin is not None and not isatty(sys.stdin)):
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
        assert self.path is not None  # texts or a spool otherwise
        return open(self.path, "rb")

    def __iter__(self) -> Iterator[str]:
        if self.texts is not None:
            yield from self.texts
            return
        f = self._binary()
        try:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8").removesuffix("\n").removesuffix("\r")
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


def isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
