"""sentmtl: one sentence-transformer backbone, several task heads.

`import sentmtl_cli` is light; the model code (and torch) load on the first call of `load`.
"""
__version__ = "0.1.0"
# texts per backbone forward unless told otherwise: 64 ran faster than 16, 32 and 128 with both
# backends on 2 cores (inputs are sorted by length, so larger batches add little padding)
BATCH_SIZE = 64


def load(config=None, threads=None, backend=None):
    """Load the multi-task model from a YAML config (default: the shipped configs/default.yaml).
    backend: torch | onnx | onnx-int8 | auto (the ONNX export when one exists, else torch)."""
    from .model import load as _load

    return _load(config, threads=threads, backend=backend)


__all__ = ["load", "__version__"]
