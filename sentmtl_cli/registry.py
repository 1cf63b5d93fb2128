"""Names -> factories: head types, backends, data readers, loss objectives, task samplers.

A YAML `type:` (or `format:`, `strategy:`, ...) is looked up here. Built-in entries are given as
"module:attribute" strings and imported on first use, so this module imports nothing heavy and
any layer may consult it without importing the layers above. Code outside the package adds
entries with the `register` decorator (importing its module is enough), or by an entry point in
the group `sentmtl.<registry name>` (e.g. `sentmtl.heads`), which is loaded when a name is not
found among the registered ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import SentmtlError

T = TypeVar("T")


_ENTRY_POINTS: Any = None


def _entry_points():
    """Every installed package's entry points, read once a process: the read goes through every
    package's metadata (about 4 ms each time in this project's environment), and six registries
    ask, so a command that looked up only built-in names used to pay for six."""
    global _ENTRY_POINTS
    if _ENTRY_POINTS is None:
        from importlib.metadata import entry_points

        _ENTRY_POINTS = entry_points()
    return _ENTRY_POINTS


class Registry(Generic[T]):
    def __init__(self, name: str, what: str, builtins: dict[str, str]):
        self.name = name  # the entry-point group is sentmtl.<name>
        self.what = what  # how errors name an entry: "head type", "data format"
        self._lazy = dict(builtins)
        self._loaded: dict[str, T] = {}
        self._entry_points_read = False

    def register(self, key: str) -> Callable[[T], T]:
        """A decorator: `@HEADS.register("sentence_classification")` on a class or function."""

        def deco(obj: T) -> T:
            self._loaded[key] = obj
            self._lazy.pop(key, None)
            if isinstance(obj, type):
                obj.registry_name = key  # type: ignore[attr-defined]
            return obj

        return deco

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        for ep in _entry_points().select(group=f"sentmtl.{self.name}"):
            self._lazy.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._read_entry_points()
        return sorted(set(self._loaded) | set(self._lazy))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return key in self._loaded or key in self._lazy or key in self.names()

    def get(self, key: str) -> T:
        if key in self._loaded:
            return self._loaded[key]
        if key not in self._lazy:  # a built-in wins over an entry point of its name (setdefault)
            self._read_entry_points()
        target = self._lazy.get(key)
        if target is None:
            raise SentmtlError(f"unknown {self.what} {key!r} (known: {', '.join(self.names())})")
        module, _, attr = target.partition(":")
        obj: Any = getattr(importlib.import_module(module), attr)
        self._loaded.setdefault(key, obj)  # the import may have registered it already
        if isinstance(obj, type):
            obj.registry_name = key  # type: ignore[attr-defined]
        return self._loaded[key]


HEADS: Registry[Any] = Registry(
    "heads",
    "head type",
    {
        "sentence_classification": "sentmtl_cli.heads.classification:SentenceClassificationHead",
        "sentence_ensemble": "sentmtl_cli.heads.ensemble:SentenceEnsembleHead",
        "token_classification": "sentmtl_cli.heads.tagging:TokenClassificationHead",
        "zero_shot": "sentmtl_cli.heads.zero_shot:ZeroShotHead",
    },
)
BACKENDS: Registry[Any] = Registry(
    "backends",
    "backend",
    {
        "torch": "sentmtl_cli.backbone.torch_backbone:TorchBackbone",
        "onnx": "sentmtl_cli.backbone.onnx_backbone:OnnxBackbone",
        "onnx-int8": "sentmtl_cli.backbone.onnx_backbone:OnnxInt8Backbone",
    },
)
READERS: Registry[Any] = Registry(
    "readers",
    "data format",
    {
        "tsv": "sentmtl_cli.data.readers:read_tsv",
        "csv": "sentmtl_cli.data.readers:read_csv",
        "jsonl": "sentmtl_cli.data.readers:read_jsonl",
        "text": "sentmtl_cli.data.readers:read_text_rows",
        "conll": "sentmtl_cli.data.readers:read_conll",
    },
)
OBJECTIVES: Registry[Any] = Registry(
    "objectives",
    "loss weighting",
    {
        "static": "sentmtl_cli.training.objectives:StaticWeights",
        "uncertainty": "sentmtl_cli.training.objectives:UncertaintyWeights",
    },
)
SAMPLERS: Registry[Any] = Registry(
    "samplers",
    "sampling strategy",
    {
        name: f"sentmtl_cli.training.samplers:{cls}"
        for name, cls in (
            ("proportional", "ProportionalSampler"),
            ("temperature", "TemperatureSampler"),
            ("uniform", "UniformSampler"),
            ("round_robin", "RoundRobinSampler"),
        )
    },
)
