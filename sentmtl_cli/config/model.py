"""The model config: backbone + named heads. YAML -> pydantic, unknown keys rejected, paths resolved
against the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..choices import Backend
from ..errors import SentmtlError
from ..registry import HEADS
from .files import read_yaml, resolve_path, validate


def shipped_config() -> Path:
    """The shipped model's config, installed as package data (`sentmtl_cli.shipped`, which is the
    project's `configs/` folder: pyproject.toml maps it), found through importlib.resources, so
    it works from a wheel as from an editable checkout."""
    from importlib.resources import files

    return Path(str(files("sentmtl_cli.shipped") / "default.yaml"))


def default_config_path() -> Path:
    """The config used when none is given: $SENTMTL_CONFIG, else the shipped one."""
    import os

    env = os.environ.get("SENTMTL_CONFIG")
    return Path(env) if env else shipped_config()


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
    # a longer text read in windows (--overflow window): the tokens consecutive windows share
    window_overlap: int = Field(32, ge=0, le=4096)
    backend: Backend = Backend.auto
    weights: Path | None = None  # a fine-tuned backbone's safetensors (overrides the folder's)
    export: Path | None = None  # an ONNX export folder to run (default: <config name>.onnx beside it)

    @model_validator(mode="after")
    def _one_source(self) -> BackboneConfig:
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
    # token heads: six casing flags per word (the backbone is uncased) appended to the mixed vector
    word_shape: bool = False
    # token heads: a bidirectional LSTM of this size (per direction) over the sentence's words,
    # between the mix and the MLP, so each word's tag sees its neighbours (0: none)
    lstm: int = Field(0, ge=0, le=4096)
    # token heads: an entity whose score (its words' mean tag probability) is below min_score is
    # not reported (its words are O); min_score_capitals for one written all in capitals (a
    # heading, a table row, an acronym), where an uncased backbone guesses most
    min_score: float = Field(0.0, ge=0.0, lt=1.0)
    min_score_capitals: float = Field(0.0, ge=0.0, lt=1.0)
    # sentence heads: read the mean and max over the text's tokens of these hidden layers instead of
    # the pooled sentence embedding (empty: the sentence embedding)
    pool_layers: list[int] = Field(default_factory=list)
    # sentence heads: how pool_layers become one vector: the mean and max of each layer, or a learned
    # softmax mix of the layers followed by attention over the tokens (one learned query)
    pool: Literal["mean_max", "attention"] = "mean_max"
    # sentence heads with pool_layers (mean_max): the sentence embedding too, ahead of the pooled layers
    with_embedding: bool = False
    # sentence heads with pool_layers (mean_max): also the vector of the text's first word-piece (the
    # token after [CLS]) at these layers, after the pooled ones: a question's wh-word, a command's
    # verb, which the mean over tokens averages away (`sentmtl fit` writes [4])
    first_token_layers: list[int] = Field(default_factory=list)
    # sentence heads with pool_layers (mean_max): also one feature per listed word-piece of the
    # backbone's vocabulary (1 when the text holds it, else 0), after the first token's: cue words
    # ("wish", "would") that a paraphrase embedding does not separate (`sentmtl fit` lists the
    # examples' word-pieces when its folds say they help)
    word_pieces: list[str] = Field(default_factory=list)
    # zero_shot heads: a description per label (read with its name in the prompts), the prompt
    # templates ("{}" is the label; empty: the head type's own), and multi_label's threshold
    descriptions: dict[str, str] = Field(default_factory=dict)
    templates: list[str] = Field(default_factory=list)
    # zero_shot heads: also match each label's name word-piece by word-piece against the text
    # (None: the head type's default, on; false: the sentence embedding's cosine alone)
    late_interaction: bool | None = None
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    # sentence_ensemble heads: the member heads, by name, each a sentence_classification head's
    # settings without type and labels (the ensemble's), and each member's share of the averaged
    # probabilities (`sentmtl fit` writes a linear and an attention member when its folds say the
    # two together beat either)
    members: dict[str, dict[str, Any]] = Field(default_factory=dict)
    member_weights: dict[str, float] = Field(default_factory=dict)
    weights: Path | None = None

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        if any(not s.strip() for s in v):
            raise ValueError("labels must be non-empty strings")
        return v

    @field_validator("word_pieces")
    @classmethod
    def _unique_word_pieces(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("word_pieces must be unique")
        return v

    @field_validator("templates")
    @classmethod
    def _templates_have_a_slot(cls, v: list[str]) -> list[str]:
        for t in v:
            if t.count("{}") != 1 or "{" in t.replace("{}", "", 1) or "}" in t.replace("{}", "", 1):
                raise ValueError(f"template {t!r} must hold the label's place as {{}} exactly once")
        return v

    @model_validator(mode="after")
    def _members_of_an_ensemble(self) -> HeadConfig:
        if (self.members or self.member_weights) and self.type != "sentence_ensemble":
            raise ValueError("members: member heads are for sentence_ensemble heads")
        return self

    @model_validator(mode="after")
    def _descriptions_name_labels(self) -> HeadConfig:
        unknown = [k for k in self.descriptions if k not in self.labels]
        if unknown:
            raise ValueError(f"descriptions name labels the head does not have: {', '.join(unknown)}")
        return self

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


def load_config(path: Path | str | None = None) -> ModelConfig:
    """Load and validate a model config; relative paths are taken from the config's folder, and
    each head's type is looked up in the registry and asked whether its settings make sense."""
    path = Path(path) if path is not None else default_config_path()
    cfg = validate(ModelConfig, read_yaml(path), path)
    base = path.resolve().parent
    cfg.backbone.path = resolve_path(base, cfg.backbone.path)
    cfg.backbone.weights = resolve_path(base, cfg.backbone.weights)
    cfg.backbone.export = resolve_path(base, cfg.backbone.export)
    for task, head in cfg.heads.items():
        if head.type not in HEADS:
            raise SentmtlError(
                f"invalid config {path}: heads.{task}.type: unknown head type {head.type!r} "
                f"(known: {', '.join(HEADS.names())})"
            )
        problem = HEADS.get(head.type).check_config(head)
        if problem:
            raise SentmtlError(f"invalid config {path}: heads.{task}.{problem}")
        head.weights = resolve_path(base, head.weights)
    return cfg
