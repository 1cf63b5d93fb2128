"""What every head type is: the interface the model, trainer, evaluator and renderer call.

A head type is one class, registered by name (`@HEADS.register("...")`; the config's `type:`), that
owns its whole life: reading its examples from data, its numpy inference on backbone features and
the result dict it adds to a prediction, its torch training module and loss, decoding and scoring
(one scoring function for training's validation and for `sentmtl evaluate`), and the columns it
renders. Nothing outside a head branches on its kind or its task's name.

A head's parameters are a flat dict of float32 arrays, saved as safetensors with a header that is
checked against the config on load. Inference runs them in numpy (the ONNX path needs no torch);
training wraps the same arrays in a torch module built from the same definition (heads/mlp.py).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from ..config.model import HeadConfig
from ..errors import SentmtlError

if TYPE_CHECKING:
    import torch

    from ..config.data import DataConfig
    from ..text.tokenizer import Batch

FORMAT = "sentmtl-head/1"


def task_seed(seed: int, task: str) -> int:
    """A seed per task that does not depend on the order heads are listed in."""
    return (seed * 1_000_003 + zlib.crc32(task.encode())) % (2**32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def merge_windows_mean(parts: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """Windows' rows (probabilities [labels]) merged into one: their mean weighted by each window's
    tokens. Measured on long texts against the mean of logits, the most confident window and the
    first window alone (bench/windows_bench.py; docs/DISCUSSION.md), it is right most often."""
    w = np.asarray(sizes, dtype=np.float64)
    return (np.stack(parts).astype(np.float64) * (w / w.sum())[:, None]).sum(0)


class Examples(Protocol):
    """A head type's labelled examples: texts plus whatever targets the type needs."""

    texts: list[str]

    def __len__(self) -> int: ...

    def subset(self, idx: Any) -> Examples: ...

    def concat(self, other: Any) -> Examples: ...


@dataclass
class TrainingRows:
    """A head's training inputs for some examples: `x` rows (backbone features), `y` targets, and
    how many rows each example gave (1 for a sentence head; one per kept word for a token head)."""

    x: torch.Tensor
    y: torch.Tensor
    counts: list[int]


@dataclass
class BatchView:
    """One backbone batch as the heads see it: the texts, their tokenization, and the features the
    backbone computed. `words` (each text's words and their first sub-tokens) is worked out once,
    on first use, and shared by every head that reads words."""

    texts: list[str]
    batch: Batch
    features: dict
    # per row, the words of the text it holds (a window of a long text: the words inside it,
    # split once for the whole text); None: split each row's text here
    word_spans: list[list[tuple[int, int]]] | None = None
    _words: list | None = field(default=None, repr=False)

    @property
    def words(self) -> list[list[tuple[tuple[int, int], int]]]:
        """Per text, (word span, index of its first sub-token) for each word that has one."""
        if self._words is None:
            from ..text.words import align_first_subtokens, split_words

            self._words = []
            for b, text in enumerate(self.texts):
                spans = split_words(text) if self.word_spans is None else self.word_spans[b]
                first = align_first_subtokens(spans, self.batch.offsets[b], self.batch.special[b])
                self._words.append([(sp, t) for sp, t in zip(spans, first) if t >= 0])
        return self._words


class Head:
    """One task head: its config, its parameters, and whether they were trained."""

    registry_name: ClassVar[str] = ""  # set by the registry: the config's `type:`
    metrics: ClassVar[tuple[str, ...]] = ()  # what score() reports that a recipe may select on
    default_metric: ClassVar[str] = ""

    def __init__(self, task: str, cfg: HeadConfig, input_dim: int, num_layers: int):
        self.task = task
        self.cfg = cfg
        self.input_dim = input_dim
        self.num_layers = num_layers
        self.params: dict[str, np.ndarray] = {}
        self.trained = False
        # probabilities are softmax(logits / temperature): fitted on validation data after training
        # (temperature scaling), so that a score of 0.9 is right about 90% of the time there
        self.temperature = 1.0
        self.threads: int | None = None  # threads for a head's own runtime (the model's --threads)
        self.hidden_layers()  # a layer number past the backbone fails here, when the model is built

    @classmethod
    def check_config(cls, cfg: HeadConfig) -> str | None:
        """What is wrong with a config for this head type ("key: why"), or None."""
        return None

    @staticmethod
    def zero_shot_keys(cfg: HeadConfig) -> str | None:
        """The zero_shot keys, refused by the head types that learn from examples."""
        if cfg.descriptions or cfg.templates:
            return "descriptions: label descriptions and prompt templates are for zero_shot heads"
        if cfg.late_interaction is not None:
            return "late_interaction: matching label names against a text is for zero_shot heads"
        return None

    def attach(self, embed, tokens=None) -> None:
        """Called once the model is built, with its embed(texts) and token_states(texts); a head
        made from texts (the zero-shot head's label vectors and names) keeps them. Nothing for
        the others."""

    def bind_tokenizer(self, tokenizer) -> None:
        """Called once the model is built, with its tokenizer; a head that reads word-pieces
        (sentence heads' `word_pieces`) looks their ids up. Nothing for the others."""

    def saves_weights(self) -> bool:
        """Whether a saved model folder holds this head's weights file."""
        return self.trained

    # ---- structure ---------------------------------------------------------------------------------
    @property
    def outputs(self) -> list[str]:
        """Names of the logits' last dimension."""
        return list(self.cfg.labels)

    def hidden_layers(self) -> list[int]:
        """The backbone hidden-state layers this head reads (0 = embeddings); none = the pooled
        sentence embedding only."""
        return []

    def resolve_layers(self, layers: list[int], key: str) -> list[int]:
        """Config layer numbers (0 = embeddings, negative from the end) as hidden-state indices; a
        layer the backbone does not have is a one-line error naming heads.<task>.<key>."""
        out = []
        for layer in layers:
            idx = layer if layer >= 0 else self.num_layers + 1 + layer
            if not 0 <= idx <= self.num_layers:
                raise SentmtlError(
                    f"heads.{self.task}.{key}: layer {layer} does not exist (the backbone has "
                    f"{self.num_layers} layers; use 0..{self.num_layers} or negative from the end)"
                )
            out.append(idx)
        return out

    def shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def parameter_count(self) -> int:
        return int(sum(np.prod(s) for s in self.shapes().values()))

    def init_params(self, seed: int) -> None:
        """Uniform(+-1/sqrt(fan_in)) like torch.nn.Linear, from a numpy generator: reproducible.
        A layer mix's logits and an attention query start at zero (equal weights)."""
        rng = np.random.default_rng(task_seed(seed, self.task))
        shapes = self.shapes()
        params = {}
        for name, shape in shapes.items():
            if name in ("mix", "attention"):  # equal weights: the layers' mean, the tokens' mean
                params[name] = np.zeros(shape, dtype=np.float32)
                continue
            if name.startswith("lstm."):  # torch.nn.LSTM's own init: +-1/sqrt(hidden size)
                fan_in = shape[0] // 4
            else:
                fan_in = shape[1] if len(shape) == 2 else shapes[name.replace("bias", "weight")][1]
            bound = 1.0 / np.sqrt(fan_in)
            params[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        self.params = params
        self.trained = False
        self.temperature = 1.0

    # ---- the math: numpy for inference, torch for training, one definition ------------------------
    def forward_numpy(self, x: np.ndarray) -> np.ndarray:
        """Logits for input rows: [N, D], or [N, L, D] when the head mixes L layers."""
        raise NotImplementedError

    def torch_module(self) -> torch.nn.Module:
        """A torch module holding this head's parameters under the same names, computing the same
        function as forward_numpy (plus dropout in train mode)."""
        raise NotImplementedError

    def module_forward(self, module: torch.nn.Module, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """The module's output for training rows x, of which each example has counts[i] in order."""
        return module(x)

    def cache_dtype(self) -> str:
        """The dtype a frozen backbone's cached training rows are kept in: float32, or float16 for a
        head whose rows are every token (attention pooling), whose cache would not fit in memory."""
        return "float32"

    # ---- inference -----------------------------------------------------------------------------------
    def predict_batch(self, view: BatchView, top_k: int = 1, word_tags: bool = False) -> list[dict]:
        """One result dict per text of the batch: what `predict` prints under this task's name."""
        raise NotImplementedError

    # ---- long texts: a text read in windows (text/windows.py) --------------------------------------
    def reads_words(self) -> bool:
        """Whether window_outputs reads view.words (the model then splits a long text once)."""
        return False

    def window_outputs(self, view: BatchView) -> list:
        """Per row of the batch (each one window of a long text): what merge_windows needs."""
        raise NotImplementedError

    def merge_windows(self, text: str, parts: list, sizes: list[int], top_k: int = 1, word_tags: bool = False) -> dict:
        """The result dict for a whole text from its windows' window_outputs, in order; sizes:
        each window's content tokens."""
        raise NotImplementedError

    # ---- data, training, scoring ---------------------------------------------------------------------
    def read_examples(self, data: DataConfig) -> Examples:
        raise NotImplementedError

    def class_of_examples(self, ex: Any) -> np.ndarray | None:
        """Each example's class, for class-balanced sampling; None: the head type has no one class
        per example (a token head, a multi-label head), and cannot be balanced that way."""
        return None

    def training_rows(self, ex: Any, idx: Any, batch: Batch, out: dict, row0: int) -> TrainingRows:
        """Rows for examples ex[idx] from a torch forward `out` of their texts (at rows row0...)."""
        raise NotImplementedError

    def targets(self, y: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """The targets the module's outputs are compared with, from the rows' y: one per row, unless
        the module pools each example's rows into one output (attention pooling: its first row's)."""
        return y

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss per row (per example, per word) before any task weighting."""
        raise NotImplementedError

    def decode_rows(self, output: np.ndarray, y: np.ndarray, counts: list[int]) -> list:
        """Predictions, one per example, from the module's outputs on its rows (training's
        validation): the same predictions `predictions_from_results` reads from `predict`."""
        raise NotImplementedError

    def predictions_from_results(self, ex: Any, results: list[dict]) -> list:
        """Predictions, one per example, from the result dicts of model.run (sentmtl evaluate)."""
        raise NotImplementedError

    def score(self, ex: Any, predictions: list, metric: str | None = None) -> dict:
        """The report for predictions on labelled examples; its "score" is `metric` (default: the
        head type's default_metric), also named under "metric"."""
        raise NotImplementedError

    def calibration_loss(self, output: np.ndarray, y: np.ndarray, temperature: float) -> float | None:
        """The validation loss a temperature is chosen by (mean NLL); None: the head type has no
        probabilities to calibrate (a regression head, say), and keeps temperature 1."""
        return None

    def fit_temperature(self, output: np.ndarray, y: np.ndarray) -> float:
        """Temperature scaling: the T in [0.2, 5] that minimises calibration_loss on these outputs
        (a grid in log T, then a finer one around the best). Sets and returns it."""
        if len(output) == 0 or self.calibration_loss(output, y, 1.0) is None:
            return self.temperature
        grid = np.exp(np.linspace(np.log(0.2), np.log(5.0), 49))
        losses = [float(self.calibration_loss(output, y, float(t)) or 0.0) for t in grid]
        k = int(np.argmin(losses))
        fine = np.exp(np.linspace(np.log(grid[max(k - 1, 0)]), np.log(grid[min(k + 1, len(grid) - 1)]), 21))
        losses = [float(self.calibration_loss(output, y, float(t)) or 0.0) for t in fine]
        self.temperature = float(fine[int(np.argmin(losses))])
        return self.temperature

    def check_metric(self, metric: str | None) -> str:
        metric = metric or self.default_metric
        if metric not in self.metrics:
            raise SentmtlError(
                f"tasks.{self.task}.metric: {metric!r} is not a metric of a {self.registry_name} head "
                f"(choose from {', '.join(self.metrics)})"
            )
        return metric

    # ---- rendering -----------------------------------------------------------------------------------
    def table_columns(self, top_k: int) -> list[str]:
        """Column names of this task's `predict` table (after # and text)."""
        raise NotImplementedError

    def table_cells(self, result: dict, top_k: int) -> list[str]:
        raise NotImplementedError

    def report_title(self, rep: dict) -> str:
        """The headline of an `evaluate` report for this head."""
        raise NotImplementedError

    def report_rows(self, rep: dict) -> dict[str, dict]:
        """Per-label rows of an `evaluate` report (precision, recall, f1, support), if any."""
        return {}

    # ---- columns (sentmtl batch writes parquet: typed columns, not JSON strings) ---------------------
    def arrow_fields(self) -> list:
        """The pyarrow fields this task adds to a `sentmtl batch` row, named `<task>_...`."""
        raise NotImplementedError

    def arrow_columns(self, results: list[dict]) -> list:
        """One pyarrow array per field of arrow_fields(), from this task's `predict` results."""
        raise NotImplementedError

    # ---- weights I/O -----------------------------------------------------------------------
    def header(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "task": self.task,
            "type": self.registry_name,
            "labels": json.dumps(list(self.cfg.labels)),
            "input_dim": str(self.input_dim),
            "temperature": repr(float(self.temperature)),
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
        if meta.get("type") != self.registry_name:
            raise SentmtlError(f"{where}: holds a {meta.get('type')!r} head, config says {self.registry_name!r}")
        try:
            saved_labels = json.loads(meta.get("labels", "[]"))
        except ValueError:
            raise SentmtlError(f"{where}: its header's labels are not a JSON list") from None
        if saved_labels != list(self.cfg.labels):
            raise SentmtlError(f"{where}: trained for labels {saved_labels}, config has {list(self.cfg.labels)}")
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
                raise SentmtlError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, the config needs {shape}")
            if tensors[name].dtype != np.float32:
                raise SentmtlError(f"{where}: {name} is {tensors[name].dtype}, a head's weights are float32")
            if not np.isfinite(tensors[name]).all():
                raise SentmtlError(f"{where}: {name} holds NaN or infinite values")
        try:
            temperature = float(meta.get("temperature", "1.0"))  # files from before calibration: 1
        except ValueError:
            temperature = float("nan")
        if not (np.isfinite(temperature) and temperature > 0):
            raise SentmtlError(
                f"{where}: its header's temperature {meta.get('temperature')!r} is not a positive number"
            )
        self.params = {k: v.astype(np.float32) for k, v in tensors.items()}
        self.temperature = temperature
        self.trained = True

    def save(self, path: Path) -> None:
        from ..files.atomic import atomic_write_bytes, safetensors_bytes

        data = safetensors_bytes({k: np.asarray(v, dtype=np.float32) for k, v in self.params.items()}, self.header())
        atomic_write_bytes(Path(path), data)
