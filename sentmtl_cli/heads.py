"""Task heads: a registry keyed by the config's `type:`, numpy inference, safetensors I/O.

A head's parameters are a flat dict of float32 arrays. Inference runs them in numpy (so the ONNX
path needs no torch); training wraps the same arrays in a torch module (`torch_heads.py`). Both
compute exactly the same function: Linear -> activation (-> dropout at train time) ... -> Linear.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from .config import HeadConfig
from .errors import SentmtlError

FORMAT = "sentmtl-head/1"
_REGISTRY: dict[str, type["Head"]] = {}


def register_head(name: str) -> Callable[[type["Head"]], type["Head"]]:
    def deco(cls: type[Head]) -> type[Head]:
        cls.type_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def known_head_types() -> set[str]:
    return set(_REGISTRY)


def head_class(type_name: str) -> type["Head"]:
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise SentmtlError(f"unknown head type {type_name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


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


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def task_seed(seed: int, task: str) -> int:
    """A seed per task that does not depend on the order heads are listed in."""
    return (seed * 1_000_003 + zlib.crc32(task.encode())) % (2**32)


class Head:
    """One task head: its config, its parameters, and whether they were trained."""

    type_name = ""
    level = "sentence"  # "sentence" reads the pooled embedding; "token" reads token vectors

    def __init__(self, task: str, cfg: HeadConfig, input_dim: int, num_layers: int):
        self.task = task
        self.cfg = cfg
        self.input_dim = input_dim
        self.num_layers = num_layers
        self.params: dict[str, np.ndarray] = {}
        self.trained = False

    @classmethod
    def check_config(cls, cfg: HeadConfig) -> str | None:
        """What is wrong with a config for this head type ("key: why"), or None."""
        return None

    # ---- structure -------------------------------------------------------------------------
    @property
    def outputs(self) -> list[str]:
        """Names of the logits' last dimension."""
        return list(self.cfg.labels)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        d = self.input_dim
        for i, h in enumerate(self.cfg.hidden):
            shapes[f"layers.{i}.weight"] = (h, d)
            shapes[f"layers.{i}.bias"] = (h,)
            d = h
        shapes["out.weight"] = (len(self.outputs), d)
        shapes["out.bias"] = (len(self.outputs),)
        return shapes

    def parameter_count(self) -> int:
        return int(sum(np.prod(s) for s in self.shapes().values()))

    def init_params(self, seed: int) -> None:
        """Uniform(+-1/sqrt(fan_in)) like torch.nn.Linear, from a numpy generator: reproducible."""
        rng = np.random.default_rng(task_seed(seed, self.task))
        params = {}
        for name, shape in self.shapes().items():
            if name == "mix":  # layer-mix logits start equal
                params[name] = np.zeros(shape, dtype=np.float32)
                continue
            fan_in = shape[1] if len(shape) == 2 else self.shapes()[name.replace("bias", "weight")][1]
            bound = 1.0 / np.sqrt(fan_in)
            params[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        self.params = params
        self.trained = False

    # ---- inference -------------------------------------------------------------------------
    def mlp(self, x: np.ndarray) -> np.ndarray:
        for i in range(len(self.cfg.hidden)):
            x = activation(self.cfg.activation, x @ self.params[f"layers.{i}.weight"].T + self.params[f"layers.{i}.bias"])
        return x @ self.params["out.weight"].T + self.params["out.bias"]

    def logits(self, features: dict) -> np.ndarray:
        raise NotImplementedError

    # ---- weights I/O -----------------------------------------------------------------------
    def header(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "task": self.task,
            "type": self.type_name,
            "labels": json.dumps(list(self.cfg.labels)),
            "input_dim": str(self.input_dim),
        }

    def load(self, path: Path) -> None:
        from safetensors import SafetensorError, safe_open
        from safetensors.numpy import load_file

        where = f"heads.{self.task}.weights ({path})"
        if not Path(path).is_file():
            raise SentmtlError(f"{where}: file not found")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise SentmtlError(f"{where}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
        if meta.get("format") != FORMAT:
            raise SentmtlError(f"{where}: not a sentmtl head file (header format={meta.get('format')!r})")
        if meta.get("type") != self.type_name:
            raise SentmtlError(f"{where}: holds a {meta.get('type')!r} head, config says {self.type_name!r}")
        try:
            saved_labels = json.loads(meta.get("labels", "[]"))
        except ValueError:
            raise SentmtlError(f"{where}: its header's labels are not a JSON list") from None
        if saved_labels != list(self.cfg.labels):
            raise SentmtlError(
                f"{where}: trained for labels {saved_labels}, config has {list(self.cfg.labels)}"
            )
        try:
            saved_dim = int(meta.get("input_dim", -1))
        except ValueError:
            raise SentmtlError(f"{where}: its header's input_dim {meta.get('input_dim')!r} is not a number") from None
        if saved_dim != self.input_dim:
            raise SentmtlError(
                f"{where}: expects input size {meta.get('input_dim')}, the backbone gives {self.input_dim}"
            )
        want = self.shapes()
        if set(tensors) != set(want):
            missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
            raise SentmtlError(
                f"{where}: tensors do not match the config (missing {missing or 'none'}, unexpected {extra or 'none'})"
            )
        for name, shape in want.items():
            if tuple(tensors[name].shape) != shape:
                raise SentmtlError(
                    f"{where}: {name} has shape {tuple(tensors[name].shape)}, the config needs {shape}"
                )
            if tensors[name].dtype != np.float32:
                raise SentmtlError(f"{where}: {name} is {tensors[name].dtype}, a head's weights are float32")
            if not np.isfinite(tensors[name]).all():
                raise SentmtlError(f"{where}: {name} holds NaN or infinite values")
        self.params = {k: v.astype(np.float32) for k, v in tensors.items()}
        self.trained = True

    def save(self, path: Path) -> None:
        from .io import atomic_write_bytes, safetensors_bytes

        data = safetensors_bytes({k: np.asarray(v, dtype=np.float32) for k, v in self.params.items()}, self.header())
        atomic_write_bytes(Path(path), data)


@register_head("sentence_classification")
class SentenceClassificationHead(Head):
    level = "sentence"

    def logits(self, features: dict) -> np.ndarray:
        return self.mlp(features["sentence_embedding"])

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        if self.cfg.multi_label:
            return 1.0 / (1.0 + np.exp(-logits))
        return softmax(logits)


@register_head("token_classification")
class TokenClassificationHead(Head):
    """BIO tagging over token vectors from one or more backbone layers (a learned softmax mix)."""

    level = "token"

    @classmethod
    def check_config(cls, cfg: HeadConfig) -> str | None:
        bio = [lab for lab in cfg.labels if lab == "O" or lab[:2] in ("B-", "I-", "E-", "S-", "L-", "U-")]
        if bio:
            return (f"labels: give entity types (e.g. [PER, ORG]), not BIO tags ({', '.join(bio)}): "
                    "the B-/I-/O tags are made from the types")
        return None

    @property
    def outputs(self) -> list[str]:
        key = tuple(self.cfg.labels)
        if getattr(self, "_tags_key", None) != key:  # computed once per label set, not per word
            self._tags_key, self._tags = key, bio_tags(self.cfg.labels)
        return self._tags

    def layer_indices(self) -> list[int]:
        out = []
        for layer in self.cfg.layers:
            idx = layer if layer >= 0 else self.num_layers + 1 + layer
            if not 0 <= idx <= self.num_layers:
                raise SentmtlError(
                    f"heads.{self.task}.layers: layer {layer} does not exist (the backbone has "
                    f"{self.num_layers} layers; use 0..{self.num_layers} or negative from the end)"
                )
            out.append(idx)
        return out

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().shapes()
        if len(self.cfg.layers) > 1:
            shapes = {"mix": (len(self.cfg.layers),), **shapes}
        return shapes

    def token_features(self, features: dict, rows: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Token vectors [B, T, d], or only those at (batch, position) `rows` [n, d]: gathered
        before the layers are mixed, so padding and word pieces cost nothing."""
        hs = [features["hidden_states"][i] for i in self.layer_indices()]
        if rows is not None:
            hs = [h[rows] for h in hs]
        if len(hs) == 1:
            return hs[0]
        w = softmax(self.params["mix"])
        return sum(wi * h for wi, h in zip(w, hs))

    def logits(self, features: dict) -> np.ndarray:
        return self.mlp(self.token_features(features))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits)


def bio_tags(types: list[str]) -> list[str]:
    tags = ["O"]
    for t in types:
        tags += [f"B-{t}", f"I-{t}"]
    return tags
