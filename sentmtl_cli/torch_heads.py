"""Torch modules for training heads. They hold the same parameters, under the same names, as the
numpy heads in heads.py and compute the same function (a test checks the two agree)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .heads import Head


class GradScale(torch.autograd.Function):
    """Identity forward; scales the gradient flowing back into the backbone (0 = cut it)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "tanh": nn.Tanh()}.get(name) or nn.GELU(approximate="tanh")


class TorchHead(nn.Module):
    """features -> (layer mix) -> [Linear -> act -> dropout]* -> Linear."""

    def __init__(self, head: Head):
        super().__init__()
        self.head = head
        cfg = head.cfg
        self.level = head.level
        self.act = _act(cfg.activation)
        self.drop = nn.Dropout(cfg.dropout)
        dims = [head.input_dim] + list(cfg.hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], len(head.outputs))
        self.mix = nn.Parameter(torch.zeros(len(cfg.layers))) if "mix" in head.shapes() else None
        self.load_numpy(head.params)

    def load_numpy(self, params: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.from_numpy(np.asarray(params[name], dtype=np.float32)))

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {name: p.detach().cpu().numpy().astype(np.float32).copy() for name, p in self.named_parameters()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, D] sentence embeddings, or [N, L, D] word vectors from L layers (token heads)."""
        if x.dim() == 3:
            if self.mix is not None:
                x = (torch.softmax(self.mix, 0)[None, :, None] * x).sum(1)
            else:
                x = x[:, 0]
        x = self.drop(x)
        for layer in self.layers:
            x = self.drop(self.act(layer(x)))
        return self.out(x)
