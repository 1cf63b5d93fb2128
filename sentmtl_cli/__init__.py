"""sentmtl: one sentence-transformer backbone, several task heads.

`import sentmtl_cli` is light; the model code (and torch) load on the first call of `load`.
"""

from .defaults import BATCH_SIZE
from .defaults import VERSION as __version__


def load(config=None, threads=None, backend=None, soon=False):
    """Load the multi-task model from a YAML config (default: the shipped configs/default.yaml).
    backend: torch | onnx | onnx-int8 | auto (the ONNX export when one exists, else torch).
    soon: start building the ONNX backbone now, in a thread, rather than at the first call that
    needs it (what the CLI's one-shot commands do; its threads then sleep between runs)."""
    from .model import load as _load

    return _load(config, threads=threads, backend=backend, soon=soon)


def open_index(path, model=None, config=None):
    """An index built by `sentmtl index`, to search: `open_index("idx").query("rate cut", top_k=5,
    where="cls_label = 'business'", entities=["ORG:Tesla"])`. `model`: the loaded model that made it
    (else the one `config` names, loaded); another model is refused."""
    from .index.store import Index

    return Index(path, model if model is not None else load(config))


__all__ = ["BATCH_SIZE", "__version__", "load", "open_index"]
