"""Reading input: text files and text sources (arguments, a file, stdin), each failure one line."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import SentmtlError
from ..text.inputs import check_texts

# A line of input longer than this is refused: no text is that long, and a device or a file with no
# newlines (/dev/zero, a binary) would otherwise be read into memory whole. 16 MiB is ~3M words.
MAX_LINE_BYTES = 16 << 20
SMALL_FILE_BYTES = 16 << 20  # the most a config or a label list may hold


def refuse_device(path: Path, what: str) -> None:
    """One line for a character or block device (/dev/zero, a disk): reading one never ends, or
    reads what is not text. Pipes are read (a shell's `<(...)`); a path that is not there is left
    to the reader, whose error says so."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise SentmtlError(f"{what} {path} is a device, not a file")


def read_text(path: Path, what: str = "file", limit: int | None = None) -> str:
    """A UTF-8 text file, with a one-line error naming it for each way reading can fail; `limit`:
    the most bytes it may hold (a config, a label list), refused past that."""
    path = Path(path)
    refuse_device(path, what)
    try:
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise SentmtlError(f"{what} {path} is over {limit >> 20} MiB: is it the right file?")
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
                refuse_device(self.path, "input")
                if not os.access(self.path, os.R_OK):
                    raise SentmtlError(f"cannot read {self.path}: permission denied")
                if not self.path.is_file():  # a pipe (`--file <(...)`) reads once: spool it as stdin is
                    try:
                        with open(self.path, "rb") as f:
                            self._spool = self._spooled(f)
                    except OSError as e:
                        raise SentmtlError(f"cannot read {self.path}: {e.strerror}") from None
            elif file == "-" or (sys.stdin is not None and not isatty(sys.stdin)):
                # stdin is read once; spool it so it can be counted and read like a file
                self._spool = self._spooled(sys.stdin.buffer)
            else:
                raise SentmtlError("no input text given (pass texts, --file PATH, or pipe them on stdin)")
        self._count: int | None = None

    def _spooled(self, stream):
        """The stream copied into a temporary file, a line over MAX_LINE_BYTES refused on the way
        (`cat /dev/zero | sentmtl embed` would fill the disk, then memory)."""
        spool, run = tempfile.TemporaryFile(), 0  # run: bytes since the last newline
        for block in iter(lambda: stream.read(1 << 20), b""):
            end = block.rfind(b"\n")  # lines wholly inside a block are shorter than it, so under the cap
            longest = run + len(block) if end < 0 else run + block.find(b"\n")
            run = longest if end < 0 else len(block) - end - 1
            if max(longest, run) > MAX_LINE_BYTES:
                spool.close()
                raise SentmtlError(f"{self.name}: a line is over {MAX_LINE_BYTES >> 20} MiB: is it a text file?")
            spool.write(block)
        spool.seek(0)
        return spool

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
            for n, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 2), b""), 1):
                if len(raw) - raw.endswith(b"\n") > MAX_LINE_BYTES:  # the cap is on the text, not its newline
                    raise SentmtlError(f"{self.name}: line {n} is over {MAX_LINE_BYTES >> 20} MiB: is it a text file?")
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
