"""The encoder behind every head. Each backend is a class in the registry (`registry.BACKENDS`:
torch, onnx, onnx-int8) that satisfies `Backbone`; the model picks one by name."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..config.model import ModelConfig
    from ..text.tokenizer import Batch


class Backbone(Protocol):
    def encode(self, batch: Batch, layers: set[int]) -> dict:
        """Numpy features for a tokenized batch: "sentence_embedding" [B, dim] float32 and, for the
        hidden-state layers asked for, "hidden_states" {layer: [B, T, dim]}."""
        ...


class BackendClass(Protocol):
    @classmethod
    def unavailable(cls, cfg: ModelConfig, folder: Path) -> str | None:
        """Why this backend cannot run this config here, or None."""
        ...

    @classmethod
    def open(cls, cfg: ModelConfig, folder: Path, threads: int | None, num_layers: int, spin: bool = True) -> Backbone:
        """spin: let the backend's worker threads spin between runs (False: they sleep at once)."""
        ...
