"""What the lower layers call to report progress. The CLI passes rich bars (cli/render.py); the
Python API passes nothing, and these stand in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

# advanced by the number of texts (or steps) done; training bars also take the running losses
ProgressFn = Optional[Callable[..., None]]


class NullProgress:
    """Stands in for a progress bar where none is shown: a context manager yielding None."""

    def __init__(self, *args):
        pass

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
