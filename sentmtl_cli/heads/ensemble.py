"""A sentence head made of sentence heads: each member reads its own features from the one
backbone pass, and the members' calibrated probabilities are averaged (by `member_weights`),
then calibrated once more as a whole (the ensemble's own temperature on the mixture's log).

`sentmtl fit` writes one when its folds say that its linear head (the embedding, pooled layers,
first token, word-pieces) and its attention head (each token's vectors, a learned query) together
beat either alone: they err on different texts (docs/DISCUSSION.md). The members are
sentence_classification heads; in YAML each gives that type's settings without `type` and
`labels` (the ensemble's). The weights file holds every member's tensors, named
`<member>.<tensor>`, and each member's temperature in its header."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from ..errors import SentmtlError
from .base import BatchView
from .classification import SentenceClassificationHead

if TYPE_CHECKING:
    import torch

    from ..config.model import HeadConfig

# the ensemble's own settings; every other key of a member's kind belongs in a member
OWN_KEYS = {"type", "labels", "description", "members", "member_weights", "weights"}


def member_config(cfg: HeadConfig, name: str) -> HeadConfig:
    """Member `name`'s config: a sentence_classification head with the ensemble's labels."""
    from ..config.model import HeadConfig

    given = cfg.members[name]
    if not isinstance(given, dict):
        raise SentmtlError(f"members.{name}: give the member's settings as a mapping")
    for key in ("type", "labels"):
        if key in given:
            raise SentmtlError(
                f"members.{name}.{key}: a member is a sentence_classification head with the ensemble's labels"
            )
    return HeadConfig(type="sentence_classification", labels=list(cfg.labels), **given)


class SentenceEnsembleHead(SentenceClassificationHead):
    """The weighted mean of member heads' calibrated probabilities, calibrated again."""

    def __init__(self, task: str, cfg: HeadConfig, input_dim: int, num_layers: int):
        self.members = {
            name: SentenceClassificationHead(f"{task}.{name}", member_config(cfg, name), input_dim, num_layers)
            for name in cfg.members
        }
        super().__init__(task, cfg, input_dim, num_layers)

    @classmethod
    def check_config(cls, cfg):
        from pydantic import ValidationError

        if problem := cls.zero_shot_keys(cfg):
            return problem
        own = cfg.model_dump(exclude_unset=True)
        stray = sorted(k for k in own if k not in OWN_KEYS)
        if stray:
            return f"{stray[0]}: a sentence_ensemble head's features are its members' (give it in a member)"
        if len(cfg.members) < 2:
            return "members: a sentence_ensemble head needs two or more member heads"
        for name in cfg.members:
            try:
                mc = member_config(cfg, name)
            except SentmtlError as e:
                return str(e)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                return f"members.{name}.{where}: {err['msg']}"
            if problem := SentenceClassificationHead.check_config(mc):
                return f"members.{name}.{problem}"
        weights = cfg.member_weights
        if set(weights) != set(cfg.members):
            return f"member_weights: give one weight for each member ({', '.join(cfg.members)})"
        if any(not np.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            return "member_weights: weights are finite, 0 or more, and not all 0"
        return None

    # ---- structure: the members' --------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        return self._params

    @params.setter
    def params(self, value: dict[str, np.ndarray]) -> None:
        self._params = value
        for name, m in self.members.items():
            m.params = {k[len(name) + 1 :]: v for k, v in value.items() if k.startswith(name + ".")}

    def bind_tokenizer(self, tokenizer) -> None:
        for m in self.members.values():
            m.bind_tokenizer(tokenizer)

    def hidden_layers(self) -> list[int]:
        out: list[int] = []
        for m in self.members.values():
            out += [i for i in m.hidden_layers() if i not in out]
        return out

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"{name}.{k}": s for name, m in self.members.items() for k, s in m.shapes().items()}

    def init_params(self, seed: int) -> None:
        params = {}
        for name, m in self.members.items():
            m.init_params(seed)
            params.update({f"{name}.{k}": v for k, v in m.params.items()})
        self.params = params
        self.trained = False
        self.temperature = 1.0

    def weights(self) -> np.ndarray:
        w = np.array([self.cfg.member_weights[name] for name in self.members], dtype=np.float64)
        return w / w.sum()

    # ---- inference ---------------------------------------------------------------------------------
    def view_logits(self, view: BatchView) -> np.ndarray:
        """log of the members' weighted mean probabilities (the temperature then sharpens or
        softens the mixture as a whole)."""
        mix = sum(w * m.probabilities(m.view_logits(view)) for w, m in zip(self.weights(), self.members.values()))
        return np.log(np.maximum(np.asarray(mix, dtype=np.float64), 1e-30)).astype(np.float32)

    def forward_numpy(self, x, extra=None, counts=None) -> np.ndarray:
        raise SentmtlError(f"heads.{self.task}: an ensemble reads its members' features; run it through the model")

    # ---- training: the members are fitted (sentmtl fit), not trained by a recipe ---------------------
    def _not_trained(self) -> NoReturn:
        raise SentmtlError(
            f"tasks.{self.task}: a sentence_ensemble head is written by sentmtl fit, not trained by a recipe: "
            "leave it out of the recipe's tasks (sentmtl evaluate scores it)"
        )

    def torch_module(self) -> torch.nn.Module:
        self._not_trained()

    def training_rows(self, ex: Any, idx: Any, batch: Any, out: dict, row0: int):
        self._not_trained()

    # ---- weights I/O: the members' temperatures in the header --------------------------------------
    def header(self) -> dict[str, str]:
        temps = {name: float(m.temperature) for name, m in self.members.items()}
        return super().header() | {"member_temperatures": json.dumps(temps)}

    def load(self, path: Path) -> None:
        from safetensors import safe_open

        super().load(path)  # tensors: names, shapes, dtype, finite; the header's format, labels, temperature
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        where = f"heads.{self.task}.weights ({path})"
        try:
            temps = json.loads(meta.get("member_temperatures", ""))
        except ValueError:
            raise SentmtlError(f"{where}: its header's member_temperatures are not a JSON object") from None
        if not isinstance(temps, dict) or set(temps) != set(self.members):
            raise SentmtlError(f"{where}: its header's member_temperatures do not name the config's members")
        for name, t in temps.items():
            if not isinstance(t, (int, float)) or not np.isfinite(t) or t <= 0:
                raise SentmtlError(f"{where}: member {name}'s temperature {t!r} is not a positive number")
            self.members[name].temperature = float(t)
            self.members[name].trained = True
