"""sentmtl: one sentence-transformer backbone, several task heads.

`import sentmtl_cli` is light; the model code (and torch) load on the first call of `load`.
"""
__version__ = "0.1.0"


def load(config=None, threads=None):
    """Load the multi-task model from a YAML config (default: the shipped configs/default.yaml)."""
    from .model import load as _load

    return _load(config, threads=threads)


__all__ = ["load", "__version__"]
