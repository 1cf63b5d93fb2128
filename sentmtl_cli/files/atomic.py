"""Atomic writes: a file is replaced whole or not at all, and never a folder, device or FIFO."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any

from ..errors import SentmtlError


def output_target(path: Path | str) -> Path:
    """The regular file a write to `path` should replace: a symlink is followed to its target (so
    the link stays a link), and a folder, device, FIFO or socket is refused with one line."""
    real = Path(os.path.realpath(Path(path).expanduser()))
    try:
        st = real.stat()
    except FileNotFoundError:
        return real
    except OSError as e:
        raise SentmtlError(f"cannot write {path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SentmtlError(f"cannot write {path}: it is a folder (give a file name)")
    if not stat.S_ISREG(st.st_mode):
        raise SentmtlError(f"cannot write {path}: not a regular file (a device, FIFO or socket is never replaced)")
    return real


def output_folder(path: Path | str) -> Path:
    """The folder a command that writes a whole folder (fit, train, index) should replace: a symlink
    is followed to its target, so the link stays a link and the folder it names is the one
    replaced (renamed aside, the link would be left as a stale `.old` and a real folder put in
    its place)."""
    return Path(os.path.realpath(Path(path).expanduser()))


class AtomicFile:
    """A file written beside its target under a temporary name, fsynced, then renamed over it:
    readers see the old file or the complete new one, never half of it. The new file keeps the
    old one's permissions (new files get the umask's). `commit()` publishes it, `discard()` (or
    leaving the `with` block by an exception) removes the temporary file."""

    def __init__(self, path: Path | str, mode: str = "wb"):
        self.path = output_target(path)
        try:
            old_mode = stat.S_IMODE(self.path.stat().st_mode)
        except FileNotFoundError:
            old_mode = 0o666 & ~_umask()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as e:
            raise SentmtlError(f"cannot write {path}: {e.strerror}") from None
        os.fchmod(fd, old_mode)
        self.file: IO[Any] = os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8", newline="")
        self.done = False

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.discard()
            raise SentmtlError(f"cannot write {self.path}: {e.strerror}") from None
        self.done = True

    def discard(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.file.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see AtomicFile)."""
    with AtomicFile(path) as f:
        try:
            f.file.write(data)
        except OSError as e:
            raise SentmtlError(f"cannot write {f.path}: {e.strerror}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file as bytes, laid out the same way every time (tensors by name, header keys
    sorted): the library's own writer orders metadata by a hash map, so two identical runs gave
    files with different sha256. Takes numpy arrays (or anything np.asarray accepts)."""
    import numpy as np

    dtypes = {
        np.dtype("float32"): "F32",
        np.dtype("float16"): "F16",
        np.dtype("float64"): "F64",
        np.dtype("int64"): "I64",
        np.dtype("int32"): "I32",
        np.dtype("uint8"): "U8",
        np.dtype("int8"): "I8",
    }
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(np.asarray(tensors[name]))
        if a.dtype not in dtypes:
            raise ValueError(f"tensor {name}: dtype {a.dtype} is not stored")
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)
