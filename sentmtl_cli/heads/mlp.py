"""The math shared by the built-in heads, defined once for numpy (inference; the sequence layer by
onnxruntime's LSTM operator) and once for torch (training), side by side so they stay the same
function; tests/test_heads.py runs every activation, layer-mix, extra-feature and sequence-layer
setting through both and compares.

    [softmax layer mix over L layers of D] ++ [k extra features]
        -> (optional) a bidirectional LSTM over each example's rows (a token head's words, in order)
        -> (optional) attention pooling: each example's rows (a sentence head's tokens) weighted by
           softmax(row . query) over the example, summed: one row per example
        -> [Linear -> activation -> dropout]* -> Linear

Parameters: "mix" [L] (only when L > 1), "lstm.*" (torch.nn.LSTM's names, only with a sequence layer),
"attention" [D] (the query, only with attention pooling), "layers.{i}.weight"/"layers.{i}.bias",
"out.weight"/"out.bias".
Training rows are flat, [n, L*D + k]: the L layers' vectors, then the k extra features; with a
sequence layer or attention pooling, `counts` says how many consecutive rows belong to each example.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .base import Head, softmax

if TYPE_CHECKING:
    import torch


LSTM_DIRECTIONS = ("", "_reverse")  # torch.nn.LSTM's parameter suffixes: forward, then backward


def lstm_shapes(n_in: int, size: int) -> dict[str, tuple[int, ...]]:
    """torch.nn.LSTM(n_in, size, bidirectional=True)'s parameters, by its names (gates i, f, g, o)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for d in LSTM_DIRECTIONS:
        shapes[f"lstm.weight_ih_l0{d}"] = (4 * size, n_in)
        shapes[f"lstm.weight_hh_l0{d}"] = (4 * size, size)
        shapes[f"lstm.bias_ih_l0{d}"] = (4 * size,)
        shapes[f"lstm.bias_hh_l0{d}"] = (4 * size,)
    return shapes


class BiLSTM:
    """torch.nn.LSTM(bidirectional=True)'s function at inference, run by onnxruntime's LSTM operator
    (a loop over words is slow in Python; onnxruntime runs it in C++). Built from a head's numpy
    parameters; `run(x, counts)` takes each example's consecutive rows of x [n, F] and returns
    [n, 2*size] (forward states, then backward). Each sequence has its own length, so padding is
    never read and an example's states do not depend on the others beside it."""

    def __init__(self, params: dict[str, np.ndarray], size: int, threads: int | None = None):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        # torch stacks the gates i, f, g (cell input), o; ONNX wants i, o, f, c
        order = np.concatenate([np.arange(k * size, (k + 1) * size) for k in (0, 3, 1, 2)])
        w = np.stack([params[f"lstm.weight_ih_l0{d}"][order] for d in LSTM_DIRECTIONS])
        r = np.stack([params[f"lstm.weight_hh_l0{d}"][order] for d in LSTM_DIRECTIONS])
        b = np.stack(
            [
                np.concatenate([params[f"lstm.bias_ih_l0{d}"][order], params[f"lstm.bias_hh_l0{d}"][order]])
                for d in LSTM_DIRECTIONS
            ]
        )
        self.size, self.n_in = size, w.shape[2]
        inits = [
            helper.make_tensor(name, TensorProto.FLOAT, a.shape, a.astype(np.float32).ravel())
            for name, a in (("W", w), ("R", r), ("B", b))
        ]
        node = helper.make_node(
            "LSTM", ["X", "W", "R", "B", "lens"], ["Y"], direction="bidirectional", hidden_size=size
        )
        graph = helper.make_graph(
            [node],
            "bilstm",
            [
                helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", self.n_in]),
                helper.make_tensor_value_info("lens", TensorProto.INT32, ["N"]),
            ],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 2, "N", size])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        opts = ort.SessionOptions()
        # the input projection is most of the work and splits well over a few cores; threads that
        # do not spin once done leave the cores to the backbone's next batch
        opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def run(self, x: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        n = np.asarray(counts, dtype=np.int64)
        out = np.zeros((len(x), 2 * self.size), dtype=np.float32)
        keep = n > 0
        if not keep.any():
            return out
        lens = n[keep]
        t_max = int(lens.max())
        seq = np.repeat(np.arange(len(lens)), lens)  # each row's sequence, and its position in it
        pos = np.arange(len(x)) - np.repeat(np.cumsum(lens) - lens, lens)
        padded = np.zeros((t_max, len(lens), self.n_in), dtype=np.float32)
        padded[pos, seq] = x
        y = self.session.run(None, {"X": padded, "lens": lens.astype(np.int32)})[0]  # [T, 2, N, H]
        out[:, : self.size] = y[pos, 0, seq]
        out[:, self.size :] = y[pos, 1, seq]
        return out


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


def token_weights(scores: np.ndarray, mask: np.ndarray, dtype) -> np.ndarray:
    """[B, T] scores and their [B, T] mask -> the softmax over each text's real tokens (a text with
    no token: zeros)."""
    real = mask > 0
    s = np.where(real, scores, -np.inf)
    top = s.max(1, keepdims=True)
    e = np.where(real, np.exp(s - np.where(np.isfinite(top), top, 0.0)), 0.0).astype(dtype)
    return e / np.maximum(e.sum(1, keepdims=True), np.finfo(dtype).tiny)


def attention_pool(x: np.ndarray, mask: np.ndarray, query: np.ndarray) -> np.ndarray:
    """[B, T, D] token vectors, their [B, T] mask and a [D] query -> [B, D]: each text's real tokens
    weighted by the softmax of their dot product with the query. A text with no token gives zeros."""
    w = token_weights(x @ query, mask, x.dtype)
    return np.matmul(w[:, None, :], x)[:, 0]


def mixed_attention_pool(
    layers: Sequence[np.ndarray], mix: np.ndarray, mask: np.ndarray, query: np.ndarray
) -> np.ndarray:
    """attention_pool of the layers' weighted sum (mix: their [L] weights), without making that
    [B, T, D] sum: both the scores and the pooled vector are linear in the layers, so each layer is
    read twice, by matrix-vector products, instead of being scaled, summed and read again (four
    times faster on a batch of short texts; equal up to float rounding)."""
    dtype = layers[0].dtype
    mix = mix.astype(dtype)
    w = token_weights(sum(m * (h @ query) for m, h in zip(mix, layers)), mask, dtype)[:, None, :]
    pooled: np.ndarray = sum(m * np.matmul(w, h)[:, 0] for m, h in zip(mix, layers))
    return pooled


def pad_rows(x: np.ndarray, counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each example's consecutive rows of x [n, D] side by side: [B, T, D] and the [B, T] mask."""
    n = np.asarray(counts, dtype=np.int64)
    t_max = max(int(n.max()) if len(n) else 0, 1)
    seq = np.repeat(np.arange(len(n)), n)
    pos = np.arange(len(x)) - np.repeat(np.cumsum(n) - n, n)
    padded = np.zeros((len(n), t_max, x.shape[1]), dtype=x.dtype)
    mask = np.zeros((len(n), t_max), dtype=np.int64)
    padded[seq, pos] = x
    mask[seq, pos] = 1
    return padded, mask


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

    def sequence_size(self) -> int:
        """The bidirectional LSTM's size per direction over each example's rows (0: none)."""
        return 0

    def attention_pooling(self) -> bool:
        """Whether each example's rows are pooled into one by attention (a sentence head's tokens)."""
        return False

    def n_outputs(self) -> int:
        return len(self.outputs)

    def bilstm(self) -> BiLSTM:
        """The sequence layer's runner, built once per set of parameters."""
        # the arrays themselves, held: an id() of a freed array may be reused by new weights (load)
        arrays = [self.params[k] for k in sorted(self.params) if k.startswith("lstm.")]
        held = getattr(self, "_bilstm_arrays", None)
        if held is None or len(held) != len(arrays) or any(a is not b for a, b in zip(held, arrays)):
            self._bilstm, self._bilstm_arrays = BiLSTM(self.params, self.sequence_size(), self.threads), arrays
        return self._bilstm

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        if self.mixed_layers() > 1:
            shapes["mix"] = (self.mixed_layers(),)
        d = self.layer_dim() + self.extra_features()
        if self.sequence_size():
            shapes.update(lstm_shapes(d, self.sequence_size()))
            d = 2 * self.sequence_size()
        if self.attention_pooling():
            shapes["attention"] = (d,)
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

    def forward_numpy(self, x, extra: np.ndarray | None = None, counts: Sequence[int] | None = None) -> np.ndarray:
        """[N, D] rows, or L layers of them ([N, L, D] or a list of L [N, D]), the k extra
        features [N, k] when the head has them, and (with a sequence layer) how many consecutive
        rows each example has -> logits [N, outputs]. With attention pooling, `counts` given: the
        rows are each example's tokens, pooled here -> [len(counts), outputs]; without counts, the
        rows are already pooled (inference pools the padded batch, `attention_pool`)."""
        if not (isinstance(x, np.ndarray) and x.ndim == 2):
            x = self.mix_numpy(x)
        if self.extra_features():
            assert extra is not None and extra.shape == (len(x), self.extra_features())
            x = np.concatenate([x, extra.astype(x.dtype, copy=False)], axis=1)
        if self.sequence_size():
            assert counts is not None and sum(counts) == len(x), "a sequence layer needs each example's row count"
            x = self.bilstm().run(x, counts)
        if self.attention_pooling() and counts is not None:
            x = attention_pool(*pad_rows(x, counts), self.params["attention"])
        for i in range(len(self.cfg.hidden)):
            x = activation(
                self.cfg.activation, x @ self.params[f"layers.{i}.weight"].T + self.params[f"layers.{i}.bias"]
            )
        return x @ self.params["out.weight"].T + self.params["out.bias"]

    def torch_module(self) -> torch.nn.Module:
        return TorchMLP(self)

    def module_forward(self, module: torch.nn.Module, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        import torch

        return module(x.float() if x.dtype != torch.float32 else x, counts)  # cached rows may be float16


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
            self.seq = head.sequence_size()
            self.lstm = nn.LSTM(self.dim + self.k, self.seq, batch_first=True, bidirectional=True) if self.seq else None
            dims = [2 * self.seq if self.seq else self.dim + self.k] + list(cfg.hidden)
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
            self.out = nn.Linear(dims[-1], head.n_outputs())
            self.mix = nn.Parameter(torch.zeros(head.mixed_layers())) if head.mixed_layers() > 1 else None
            self.attention = nn.Parameter(torch.zeros(dims[0])) if head.attention_pooling() else None
            if head.params:
                load_numpy(self, head.params)

        def forward(self, x: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
            """x: [N, L*D + k] rows: L layers' vectors, then k extra features; counts: the rows of
            each example, in order (needed by a sequence layer)."""
            L, D = self.n_layers, self.dim
            layers = x[:, : L * D].reshape(len(x), L, D)
            mixed = (
                (torch.softmax(self.mix, 0)[None, :, None] * layers).sum(1) if self.mix is not None else layers[:, 0]
            )
            x = torch.cat([mixed, x[:, L * D :]], 1) if self.k else mixed
            if self.attention is not None:
                assert counts is not None and sum(counts) == len(x), "attention pooling needs each example's row count"
                x = self.attend(x, counts)
            x = self.drop(x)
            if self.lstm is not None:
                assert counts is not None and sum(counts) == len(x), "a sequence layer needs each example's row count"
                x = self.drop(self.sequence(x, counts))
            for layer in self.layers:
                x = self.drop(self.act(layer(x)))
            return self.out(x)

        def attend(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
            """attention_pool on each example's consecutive rows: [n, D] -> [len(counts), D]."""
            assert self.attention is not None
            n = np.asarray(counts, dtype=np.int64)
            t_max = max(int(n.max()) if len(n) else 0, 1)
            slot = torch.from_numpy(
                np.repeat(np.arange(len(n)) * t_max, n) + np.arange(len(x)) - np.repeat(np.cumsum(n) - n, n)
            )
            padded = x.new_zeros((len(n) * t_max, x.shape[1])).index_copy(0, slot, x).view(len(n), t_max, -1)
            real = torch.zeros(len(n) * t_max, dtype=torch.bool).index_fill(0, slot, True).view(len(n), t_max)
            s = (padded @ self.attention).masked_fill(~real, float("-inf"))
            w = torch.softmax(s, 1).nan_to_num(0.0)  # a row of -inf only (no token): weights 0
            return (w[:, :, None] * padded).sum(1)

        def sequence(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
            """The LSTM over each example's rows, padded side by side and packed, so padding is never
            read; the outputs go back to the flat row order."""
            from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

            keep = np.array([c for c in counts if c > 0], dtype=np.int64)
            if not len(keep) or self.lstm is None:
                return x.new_zeros((len(x), 2 * self.seq))
            n_seq, t_max = len(keep), int(keep.max())
            # row r of x is position r - start[b] of sequence b: its slot in the padded [n_seq * t_max]
            starts = np.repeat(np.cumsum(keep) - keep, keep)
            slot = torch.from_numpy(np.repeat(np.arange(n_seq) * t_max, keep) + np.arange(len(x)) - starts)
            padded = x.new_zeros((n_seq * t_max, x.shape[1])).index_copy(0, slot, x).view(n_seq, t_max, -1)
            packed = pack_padded_sequence(padded, torch.from_numpy(keep), batch_first=True, enforce_sorted=False)
            y, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=t_max)
            return y.reshape(n_seq * t_max, -1).index_select(0, slot)

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
