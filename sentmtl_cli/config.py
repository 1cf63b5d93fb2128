"""Typed model configs: YAML -> pydantic, unknown keys rejected, paths resolved against the file."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SentmtlError

# The shipped model lives beside the package in the project checkout (`pip install -e .`).
SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def default_config_path() -> Path:
    """The config used when none is given: $SENTMTL_CONFIG, else the shipped one."""
    import os

    env = os.environ.get("SENTMTL_CONFIG")
    return Path(env) if env else SHIPPED_CONFIG


SEED_MAX = 2**32 - 1  # numpy and torch seeds are 32-bit here
HIDDEN_MAX = 65536  # a head's hidden layer; far past any useful size, well short of exhausting memory
PACKAGE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneConfig(_Strict):
    """Where the encoder comes from and how token vectors become one sentence vector.

    Exactly one of `package` (a Python package that bundles a sentence-transformers folder),
    `path` (a local folder) or `name` (a hub id, used only when a local copy is cached) is set.
    """

    package: str | None = Field(None, pattern=PACKAGE_NAME)
    path: Path | None = None
    name: str | None = None
    pooling: Literal["mean", "cls", "max"] = "mean"
    normalize: bool = True
    max_seq_length: int = Field(256, ge=8, le=8192)
    backend: Literal["torch", "onnx", "onnx-int8", "auto"] = "auto"
    weights: Path | None = None  # a fine-tuned backbone's safetensors (overrides the folder's)

    @model_validator(mode="after")
    def _one_source(self) -> "BackboneConfig":
        given = [k for k in ("package", "path", "name") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of package, path, name (got {', '.join(given) or 'none'})")
        return self


class HeadConfig(_Strict):
    type: str
    labels: list[str] = Field(min_length=1)
    description: str = ""
    hidden: list[int] = Field(default_factory=list)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    activation: Literal["gelu", "relu", "tanh"] = "gelu"
    multi_label: bool = False
    # token heads: which hidden-state layers to read (0 = embeddings, -1 = last); several are mixed
    layers: list[int] = Field(default_factory=lambda: [-1], min_length=1)
    weights: Path | None = None

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        if any(not s.strip() for s in v):
            raise ValueError("labels must be non-empty strings")
        return v

    @field_validator("hidden")
    @classmethod
    def _positive_hidden(cls, v: list[int]) -> list[int]:
        if any(h <= 0 or h > HIDDEN_MAX for h in v):
            raise ValueError(f"hidden sizes must be between 1 and {HIDDEN_MAX}")
        return v


class ModelConfig(_Strict):
    name: str = "sentmtl"
    seed: int = Field(13, ge=0, le=SEED_MAX)
    backbone: BackboneConfig
    heads: dict[str, HeadConfig] = Field(default_factory=dict)
    source: Path | None = Field(None, exclude=True)  # the YAML file it came from

    @field_validator("heads")
    @classmethod
    def _task_names(cls, v: dict[str, HeadConfig]) -> dict[str, HeadConfig]:
        for task in v:
            if not task.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"task name {task!r} must be letters, digits, '_' or '-'")
        return v


def _strict_loader():
    """yaml's SafeLoader, except that a key given twice in one mapping is an error (PyYAML keeps
    the last silently, so a typo'd override would go unnoticed)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: let the default constructor report it
                break
            if dup:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return StrictLoader


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping with errors that name the file."""
    import yaml

    from .io import read_text

    path = Path(path)
    text = read_text(path, "config")
    try:
        data = yaml.load(text, Loader=_strict_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise SentmtlError(f"malformed YAML in {path}{where}: {problem}") from None
    if not isinstance(data, dict):
        raise SentmtlError(f"config {path} must be a YAML mapping, got {type(data).__name__}")
    return data


def format_validation_error(e: ValidationError, path: Path) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = err["msg"].removeprefix("Value error, ")
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"invalid config {path}: {loc}: {msg}{more}"


def validate(model_cls, data: dict, path: Path):
    """Validate a YAML mapping against a config model; errors name the file and the key."""
    try:
        cfg = model_cls.model_validate(data)
    except ValidationError as e:
        raise SentmtlError(format_validation_error(e, path)) from None
    if "source" in model_cls.model_fields:
        cfg.source = Path(path).resolve()
    return cfg


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = Path(p).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def load_config(path: Path | str | None = None) -> ModelConfig:
    """Load and validate a model config; relative paths are taken from the config's folder."""
    path = Path(path) if path is not None else default_config_path()
    cfg = validate(ModelConfig, read_yaml(path), path)
    base = path.resolve().parent
    cfg.backbone.path = _resolve(base, cfg.backbone.path)
    cfg.backbone.weights = _resolve(base, cfg.backbone.weights)
    from .heads import head_class, known_head_types

    for task, head in cfg.heads.items():
        if head.type not in known_head_types():
            raise SentmtlError(
                f"invalid config {path}: heads.{task}.type: unknown head type {head.type!r} "
                f"(known: {', '.join(sorted(known_head_types()))})"
            )
        problem = head_class(head.type).check_config(head)
        if problem:
            raise SentmtlError(f"invalid config {path}: heads.{task}.{problem}")
        head.weights = _resolve(base, head.weights)
    return cfg


# ---- training recipes -------------------------------------------------------------------------------
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
    strategy: Literal["proportional", "temperature", "uniform", "round_robin"] = "proportional"
    temperature: float = Field(2.0, gt=0)


class PreserveConfig(_Recipe):
    weight: float = Field(1.0, ge=0)


class TrainTaskConfig(_Recipe):
    data: "DataConfig"
    val_data: "DataConfig | None" = None  # default: held out from `data` by val_fraction
    extra_data: "list[DataConfig]" = Field(default_factory=list)  # more training data for this head (never validated on)
    frozen: bool = False  # the head does not train (its loss still reaches the backbone)
    eval_only: bool = False  # evaluated every epoch, never trained (e.g. to watch a frozen head drift)
    grad_scale: float = Field(1.0, ge=0)  # scales this head's gradient into the backbone
    weight: float = Field(1.0, ge=0)  # static loss weight
    score_weight: float = Field(1.0, ge=0)  # weight in the checkpoint-selection score
    metric: Literal["accuracy", "macro_f1", "macro_recall", "entity_f1"] | None = None


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
    loss_weighting: Literal["static", "uncertainty"] = "static"
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


from .data import DataConfig  # noqa: E402

TrainTaskConfig.model_rebuild()
TrainConfig.model_rebuild()


def load_train_config(path: Path | str, overrides: dict | None = None) -> TrainConfig:
    """Load a training recipe; `overrides` (dotted keys) are applied before validation."""
    path = Path(path)
    data = read_yaml(path)
    for key, value in (overrides or {}).items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SentmtlError(f"override {key}: {p} is not a mapping in {path}")
        node[parts[-1]] = value
    cfg = validate(TrainConfig, data, path)
    base = path.resolve().parent
    cfg.model = _resolve(base, cfg.model)
    cfg.output = _resolve(base, cfg.output)
    cfg.feature_cache = _resolve(base, cfg.feature_cache)
    for t in cfg.tasks.values():
        for d in (t.data, t.val_data, *t.extra_data):
            if d is not None:
                d.path = _resolve(base, d.path)
                d.labels_path = _resolve(base, d.labels_path)
    return cfg
