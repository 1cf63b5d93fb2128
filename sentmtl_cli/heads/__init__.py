"""Task heads, one file per head type; each registers itself in registry.HEADS under its `type:`."""

from .base import BatchView, Examples, Head, TrainingRows

__all__ = ["BatchView", "Examples", "Head", "TrainingRows"]
