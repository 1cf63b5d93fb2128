"""Atomic writes and input reading: nothing half-written, every bad file a one-line error."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .errors import SentmtlError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SentmtlError(f"{what} {path} is not UTF-8 text (bad byte at offset {e.start})") from None


def read_lines(path: str) -> list[str]:
    """One text a line from a file, or stdin for '-'. Blank lines are skipped."""
    if path == "-":
        try:
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as e:
            raise SentmtlError(f"stdin is not UTF-8 text (bad byte at offset {e.start})") from None
    else:
        text = read_text(Path(path))
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    return [ln for ln in lines if ln.strip()]


class NullProgress:
    """Stands in for a progress bar where none is shown: a context manager yielding None."""

    def __init__(self, *args):
        pass

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
