"""Training recipes: which model to start from, which data trains which head, and how."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..registry import OBJECTIVES, SAMPLERS
from .data import DataConfig
from .files import apply_overrides, read_yaml, resolve_path, validate
from .model import SEED_MAX


def _registered(registry, name: str) -> str:
    """A recipe's name for a registered thing (a sampler, a loss weighting): checked up front."""
    if name not in registry:
        raise ValueError(f"unknown {registry.what} {name!r} (known: {', '.join(registry.names())})")
    return name


class _Recipe(BaseModel):
    # validators are built on first use, not at import: `embed` and friends never pay for them
    model_config = ConfigDict(extra="forbid", defer_build=True)


class UnfreezeStep(_Recipe):
    epoch: int = Field(ge=1)  # from this epoch on (1-based) ...
    top_layers: int = Field(ge=0)  # ... the top N transformer layers train (a large N = all)


class BackboneTrainConfig(_Recipe):
    train: Literal["frozen", "full", "top"] = "frozen"
    top_layers: int = Field(2, ge=1)  # with train: top
    unfreeze: list[UnfreezeStep] = Field(default_factory=list)  # gradual unfreezing schedule
    lr: float = Field(2e-5, gt=0)
    save_dtype: Literal["float16", "float32"] = "float16"


class SamplingConfig(_Recipe):
    strategy: str = "proportional"  # a sampler in the registry: proportional | temperature | uniform | round_robin
    temperature: float = Field(2.0, gt=0)

    _known_sampler = field_validator("strategy")(lambda v: _registered(SAMPLERS, v))


class PreserveConfig(_Recipe):
    weight: float = Field(1.0, ge=0)


class TrainTaskConfig(_Recipe):
    data: DataConfig
    val_data: DataConfig | None = None  # default: held out from `data` by val_fraction
    extra_data: list[DataConfig] = Field(default_factory=list)  # more training data for this head (never validated on)
    frozen: bool = False  # the head does not train (its loss still reaches the backbone)
    eval_only: bool = False  # evaluated every epoch, never trained (e.g. to watch a frozen head drift)
    grad_scale: float = Field(1.0, ge=0)  # scales this head's gradient into the backbone
    weight: float = Field(1.0, ge=0)  # static loss weight
    score_weight: float = Field(1.0, ge=0)  # weight in the checkpoint-selection score
    metric: str | None = None  # one of the head type's metrics (checked when the head is built); default: its own
    # how training examples are drawn: as they come; each class equally often; or each class equally
    # often within each source (data, then each extra_data), every source keeping its own share, so
    # a source without some class (SST-2 has no neutral) does not skew the others' balance
    balance: Literal["none", "classes", "classes_per_source"] = "none"


class TrainConfig(_Recipe):
    model: Path  # the model config to start from (backbone + heads)
    output: Path  # the trained model folder
    init_heads: Literal["seed", "weights"] = "seed"  # trained heads start from the seed, or the config's weights
    seed: int = Field(13, ge=0, le=SEED_MAX)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)
    heads_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.1, ge=0, lt=1)  # fraction of all steps
    schedule: Literal["linear", "constant"] = "linear"
    mode: Literal["sampled", "joint"] = "sampled"
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    loss_weighting: str = "static"  # an objective in the registry: static | uncertainty
    loss_weighting_lr: float | None = Field(None, gt=0)  # uncertainty log-variances' learning rate (default: heads_lr)
    backbone: BackboneTrainConfig = Field(default_factory=BackboneTrainConfig)
    preserve_embeddings: PreserveConfig | None = None
    val_fraction: float = Field(0.1, ge=0, lt=1)
    max_val_examples: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    # frozen-backbone features are cached here between runs, keyed by a hash of everything they
    # depend on (backbone bytes, pooling, layers, texts); unset = recompute every run
    feature_cache: Path | None = None
    tasks: dict[str, TrainTaskConfig] = Field(min_length=1)
    source: Path | None = Field(None, exclude=True)

    _known_objective = field_validator("loss_weighting")(lambda v: _registered(OBJECTIVES, v))


def load_train_config(path: Path | str, overrides: dict | None = None) -> TrainConfig:
    """Load a training recipe; `overrides` (dotted keys) are applied before validation."""
    from ..files.atomic import output_folder

    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides or {}, path)
    cfg = validate(TrainConfig, data, path)
    base = path.resolve().parent
    cfg.model = resolve_path(base, cfg.model)
    cfg.output = output_folder(resolve_path(base, cfg.output))  # a link to a model folder stays a link
    cfg.feature_cache = resolve_path(base, cfg.feature_cache)
    for t in cfg.tasks.values():
        for d in (t.data, t.val_data, *t.extra_data):
            if d is not None:
                d.path = resolve_path(base, d.path)
                d.labels_path = resolve_path(base, d.labels_path)
    return cfg
