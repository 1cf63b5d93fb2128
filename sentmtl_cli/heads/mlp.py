"""The math shared by the built-in heads, defined once for numpy (inference) and once for torch
(training), side by side so they stay the same function; tests/test_heads.py runs every
activation, layer-mix and extra-feature setting through both and compares.

    [softmax layer mix over L layers of D] ++ [k extra features] -> [Linear -> activation -> dropout]* -> Linear

Parameters: "mix" [L] (only when L > 1), "layers.{i}.weight"/"layers.{i}.bias", "out.weight"/"out.bias".
Training rows are flat, [n, L*D + k]: the L layers' vectors, then the k extra features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .base import Head, softmax

if TYPE_CHECKING:
    import torch


def activation(name: str, x: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0)
    if name == "tanh":
        return np.tanh(x)
    # tanh-approximated GELU (the torch module uses nn.GELU(approximate="tanh") to match),
    # computed in place: no temporaries the size of x beyond one
    y = x * x
    y *= x
    y *= 0.044715
    y += x
    y *= 0.7978845608028654
    np.tanh(y, out=y)
    y += 1.0
    y *= x
    y *= 0.5
    return y


class MLPHead(Head):
    """A head whose function is the MLP above; subclasses say what it reads and how it decodes."""

    def mixed_layers(self) -> int:
        """How many feature layers the head mixes (1: no mix parameter)."""
        return 1

    def layer_dim(self) -> int:
        """The size of each mixed layer's vector (the backbone's hidden size, unless a head pools)."""
        return self.input_dim

    def extra_features(self) -> int:
        """How many features the head appends after the mix (word shape, say)."""
        return 0

    def n_outputs(self) -> int:
        return len(self.outputs)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        if self.mixed_layers() > 1:
            shapes["mix"] = (self.mixed_layers(),)
        d = self.layer_dim() + self.extra_features()
        for i, h in enumerate(self.cfg.hidden):
            shapes[f"layers.{i}.weight"] = (h, d)
            shapes[f"layers.{i}.bias"] = (h,)
            d = h
        shapes["out.weight"] = (self.n_outputs(), d)
        shapes["out.bias"] = (self.n_outputs(),)
        return shapes

    def mix_numpy(self, layers: Sequence[np.ndarray]) -> np.ndarray:
        """L arrays [N, D] (or one [N, L, D] array) -> [N, D], weighted by softmax(mix)."""
        if isinstance(layers, np.ndarray) and layers.ndim == 3:
            layers = [layers[:, i] for i in range(layers.shape[1])]
        if len(layers) == 1:
            return layers[0]
        w = softmax(self.params["mix"])
        mixed: np.ndarray = sum(wi * h for wi, h in zip(w, layers))
        return mixed

    def forward_numpy(self, x, extra: np.ndarray | None = None) -> np.ndarray:
        """[N, D] rows, or L layers of them ([N, L, D] or a list of L [N, D]), and the k extra
        features [N, k] when the head has them -> logits [N, outputs]."""
        if not (isinstance(x, np.ndarray) and x.ndim == 2):
            x = self.mix_numpy(x)
        if self.extra_features():
            assert extra is not None and extra.shape == (len(x), self.extra_features())
            x = np.concatenate([x, extra.astype(x.dtype, copy=False)], axis=1)
        for i in range(len(self.cfg.hidden)):
            x = activation(
                self.cfg.activation, x @ self.params[f"layers.{i}.weight"].T + self.params[f"layers.{i}.bias"]
            )
        return x @ self.params["out.weight"].T + self.params["out.bias"]

    def torch_module(self) -> torch.nn.Module:
        return TorchMLP(self)


def _torch_mlp_class():
    import torch
    from torch import nn

    class _TorchMLP(nn.Module):
        """MLPHead.forward_numpy in torch, with dropout on the input and after each hidden layer."""

        def __init__(self, head: MLPHead):
            super().__init__()
            cfg = head.cfg
            self.act = {"relu": nn.ReLU(), "tanh": nn.Tanh()}.get(cfg.activation) or nn.GELU(approximate="tanh")
            self.drop = nn.Dropout(cfg.dropout)
            self.n_layers, self.dim, self.k = head.mixed_layers(), head.layer_dim(), head.extra_features()
            dims = [self.dim + self.k] + list(cfg.hidden)
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
            self.out = nn.Linear(dims[-1], head.n_outputs())
            self.mix = nn.Parameter(torch.zeros(head.mixed_layers())) if head.mixed_layers() > 1 else None
            if head.params:
                load_numpy(self, head.params)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """x: [N, L*D + k] rows: L layers' vectors, then k extra features."""
            L, D = self.n_layers, self.dim
            layers = x[:, : L * D].reshape(len(x), L, D)
            mixed = (
                (torch.softmax(self.mix, 0)[None, :, None] * layers).sum(1) if self.mix is not None else layers[:, 0]
            )
            x = torch.cat([mixed, x[:, L * D :]], 1) if self.k else mixed
            x = self.drop(x)
            for layer in self.layers:
                x = self.drop(self.act(layer(x)))
            return self.out(x)

    return _TorchMLP


def TorchMLP(head: MLPHead) -> torch.nn.Module:  # noqa: N802 (a class, built when torch is first needed)
    global _TORCH_MLP
    if _TORCH_MLP is None:
        _TORCH_MLP = _torch_mlp_class()
    return _TORCH_MLP(head)


_TORCH_MLP = None


def load_numpy(module: torch.nn.Module, params: dict[str, np.ndarray]) -> None:
    """Copy a head's numpy parameters into its torch module (same names, same shapes)."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(np.asarray(params[name], dtype=np.float32)))


def to_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """A torch module's parameters as a head's numpy parameters."""
    return {name: p.detach().cpu().numpy().astype(np.float32).copy() for name, p in module.named_parameters()}
