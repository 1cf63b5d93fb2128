"""sentmtl: one sentence-transformer backbone, several task heads.

`import sentmtl_cli` is light; the model code (and torch) load on the first call of `load`.
"""

from .defaults import BATCH_SIZE
from .defaults import VERSION as __version__


def load(config=None, threads=None, backend=None):
    """Load the multi-task model from a YAML config (default: the shipped configs/default.yaml).
    backend: torch | onnx | onnx-int8 | auto (the ONNX export when one exists, else torch)."""
    from .model import load as _load

    return _load(config, threads=threads, backend=backend)


__all__ = ["BATCH_SIZE", "__version__", "load"]
