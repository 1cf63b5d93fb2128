"""The training loop: a generator of steps and epochs; features, freezing, objectives, checkpoints
and loggers are the neighbouring modules, and every head-specific decision is the head's.

Determinism: every epoch draws its batch order, task order and dropout masks from generators
seeded by (seed, epoch), so a run resumed at an epoch boundary continues exactly as an
uninterrupted run would, and two runs of one config give the same weights bit for bit.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config.model import ModelConfig, load_config
from ..config.train import TrainConfig, TrainTaskConfig
from ..data.examples import split_examples
from ..errors import SentmtlError
from ..files.atomic import atomic_write_text
from ..heads.base import Examples, Head, TrainingRows
from ..heads.mlp import load_numpy, to_numpy
from ..model import MultiTaskModel
from ..progress import NullProgress
from .checkpoint import OutputLock, check_recipe, load_checkpoint, prepare_output, save_checkpoint
from .features import FeatureCache, Features
from .freezing import backbone_ever_trains, set_backbone_trainable, top_layers_at
from .loggers import default_loggers
from .objectives import GradScale, PreserveEmbeddings, make_weighting
from .samplers import example_weights, make_sampler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class TaskState:
    name: str
    head: Head
    module: torch.nn.Module
    train: Examples
    val: Examples
    cfg: TrainTaskConfig
    metric: str
    weights: np.ndarray | None = None  # each training example's chance of being drawn (balance)
    cache_train: FeatureCache | None = None
    cache_val: FeatureCache | None = None

    def load_module_params(self) -> None:
        load_numpy(self.module, self.head.params)


@dataclass
class TrainResult:
    output: Path
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("nan")
    seconds: float = 0.0


def lr_lambda(cfg: TrainConfig, total_steps: int):
    warm = int(cfg.warmup * total_steps)

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return f


class BatchCycler:
    """Batches of indices in a seeded order, reshuffled whenever the data runs out; with weights,
    each pass is n draws (with replacement) by those weights instead."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator, weights: np.ndarray | None = None):
        self.n, self.bs, self.rng, self.weights = n, min(batch_size, n), rng, weights
        self.order, self.pos = self.draw(), 0

    def draw(self) -> np.ndarray:
        if self.weights is None:
            return self.rng.permutation(self.n)
        return self.rng.choice(self.n, size=self.n, replace=True, p=self.weights)

    def next(self) -> np.ndarray:
        if self.pos + self.bs > self.n:
            self.order, self.pos = self.draw(), 0
        out = self.order[self.pos : self.pos + self.bs]
        self.pos += self.bs
        return out


class Trainer:
    def __init__(self, cfg: TrainConfig, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        seed_everything(cfg.seed)
        self.mcfg: ModelConfig = load_config(cfg.model)
        if cfg.init_heads == "seed":
            # heads that train start from the seed: their saved weights are not read (nor needed)
            for name, tcfg in cfg.tasks.items():
                if name in self.mcfg.heads and not tcfg.eval_only:
                    self.mcfg.heads[name].weights = None
        self.model = MultiTaskModel(self.mcfg, backend="torch")
        self.backbone = self.model.backbone
        self.num_layers = self.backbone.num_layers
        self.trains_backbone = backbone_ever_trains(cfg, self.num_layers)
        set_backbone_trainable(self.backbone, top_layers_at(cfg, 1, self.num_layers), self.num_layers)
        self.tasks: dict[str, TaskState] = {}
        for name, tcfg in cfg.tasks.items():
            if name not in self.model.heads:
                raise SentmtlError(
                    f"tasks.{name}: the model config {cfg.model} has no head {name!r} (heads: {', '.join(self.model.heads)})"
                )
            head = self.model.heads[name]
            metric = head.check_metric(tcfg.metric)
            ex = head.read_examples(tcfg.data)
            if tcfg.val_data is not None:
                train, val = ex, head.read_examples(tcfg.val_data)
                if cfg.max_val_examples and len(val) > cfg.max_val_examples:
                    val = val.subset(np.arange(cfg.max_val_examples))
            else:
                train, val = split_examples(ex, cfg.val_fraction, cfg.seed, cfg.max_val_examples)
            sources = [np.zeros(len(train), dtype=np.int64)]
            for k, extra in enumerate(tcfg.extra_data, 1):
                more = head.read_examples(extra)
                train = train.concat(more)
                sources.append(np.full(len(more), k, dtype=np.int64))
            weights = None
            if tcfg.balance != "none":
                classes = head.class_of_examples(train)
                if classes is None:
                    raise SentmtlError(
                        f"tasks.{name}.balance: a {head.registry_name} head has no one class per example to balance"
                        + (" (multi-label)" if head.cfg.multi_label else "")
                    )
                weights = example_weights(classes, np.concatenate(sources), tcfg.balance)
            module = head.torch_module()
            if tcfg.frozen or tcfg.eval_only:
                for p in module.parameters():
                    p.requires_grad_(False)
            self.tasks[name] = TaskState(name, head, module, train, val, tcfg, metric, weights)
        self.trained_tasks = [t for t, s in self.tasks.items() if not s.cfg.eval_only]
        if not self.trained_tasks:
            raise SentmtlError("every task is eval_only: nothing to train")
        need_hidden = any(s.head.hidden_layers() for s in self.tasks.values())
        self.features = Features(self.backbone, self.model.tokenizer, need_hidden)
        self.weighting = make_weighting(cfg, self.trained_tasks)
        self.preserve = None
        if cfg.preserve_embeddings and cfg.preserve_embeddings.weight > 0 and self.trains_backbone:
            self.preserve = PreserveEmbeddings(self.backbone, cfg.preserve_embeddings.weight)
        sizes = [len(self.tasks[t].train) for t in self.trained_tasks]
        if cfg.steps_per_epoch:
            self.steps_per_epoch = cfg.steps_per_epoch
        elif cfg.mode == "joint":
            self.steps_per_epoch = math.ceil(max(sizes) / cfg.batch_size)
        else:
            self.steps_per_epoch = math.ceil(sum(sizes) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        groups = [
            {
                "params": [p for s in self.tasks.values() for p in s.module.parameters()],
                "lr": cfg.heads_lr,
                "weight_decay": cfg.weight_decay,
            }
        ]
        groups += self.weighting.param_groups()
        if self.trains_backbone:
            groups.append(
                {
                    "params": list(self.backbone.model.parameters()),
                    "lr": cfg.backbone.lr,
                    "weight_decay": cfg.weight_decay,
                }
            )
        self.optimizer = torch.optim.AdamW(groups)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.total_steps))
        self.global_step = 0

    # ---- one step -------------------------------------------------------------------------------------
    def task_rows(
        self, names: list[str], batches: dict[str, np.ndarray]
    ) -> tuple[dict[str, TrainingRows], torch.Tensor | None]:
        """Training rows for each task's batch: from the feature cache, or from one backbone
        forward shared by every task in the step (plus the embedding-preservation term, if any)."""
        rows: dict[str, TrainingRows] = {}
        live = [t for t in names if self.tasks[t].cache_train is None]
        for t in names:
            cache = self.tasks[t].cache_train
            if cache is not None:
                rows[t] = cache.get(batches[t])
        extra = None
        if live:
            texts: list[str] = []
            start: dict[str, int] = {}
            for t in live:
                start[t] = len(texts)
                texts += [self.tasks[t].train.texts[i] for i in batches[t]]
            batch, out = self.features.forward(texts, grad=True)
            for t in live:
                s = self.tasks[t]
                rows[t] = s.head.training_rows(s.train, batches[t], batch, out, start[t])
            if self.preserve is not None:
                extra = self.preserve.term(batch, out["sentence_embedding"])
        return rows, extra

    def losses(self, names: list[str], batches: dict[str, np.ndarray]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The step's total loss (weighted, plus any extra term) and each task's own loss."""
        rows, extra = self.task_rows(names, batches)
        losses = {}
        for t in names:
            s = self.tasks[t]
            x = rows[t].x
            if self.trains_backbone and s.cfg.grad_scale != 1.0:
                x = GradScale.apply(x, s.cfg.grad_scale)
            r = rows[t]
            losses[t] = s.head.loss(s.head.module_forward(s.module, x, r.counts), s.head.targets(r.y, r.counts))
        total = self.weighting.combine(losses)
        if extra is not None:
            total = total + extra
        return total, losses

    def step(self, names: list[str], batches: dict[str, np.ndarray]) -> dict[str, float]:
        for s in self.tasks.values():
            s.module.train()
        total, losses = self.losses(names, batches)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        return {t: float(loss.detach()) for t, loss in losses.items()}

    def steps(self, epoch: int) -> Iterator[dict[str, float]]:
        """The steps of one epoch, each yielding its per-task losses."""
        cfg = self.cfg
        set_backbone_trainable(self.backbone, top_layers_at(cfg, epoch, self.num_layers), self.num_layers)
        torch.manual_seed(cfg.seed * 1009 + epoch)
        rng = np.random.default_rng([cfg.seed, epoch])
        orders = {
            t: BatchCycler(len(self.tasks[t].train), cfg.batch_size, rng, self.tasks[t].weights)
            for t in self.trained_tasks
        }
        sampler = make_sampler(
            cfg.sampling.strategy,
            {t: len(self.tasks[t].train) for t in self.trained_tasks},
            rng,
            cfg.sampling.temperature,
        )
        for _ in range(self.steps_per_epoch):
            names = self.trained_tasks if cfg.mode == "joint" else [sampler.next()]
            yield self.step(names, {t: orders[t].next() for t in names})

    # ---- evaluation -----------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, dict]:
        """Each task's validation report, scored by its head exactly as `sentmtl evaluate` scores."""
        self.backbone.model.eval()
        results = {}
        for name, s in self.tasks.items():
            s.module.eval()
            outputs, ys, counts = [], [], []
            with torch.no_grad():
                for start in range(0, len(s.val), self.cfg.eval_batch_size):
                    idx = np.arange(start, min(len(s.val), start + self.cfg.eval_batch_size))
                    if s.cache_val is not None:
                        rows = s.cache_val.get(idx)
                    else:
                        batch, out = self.features.forward([s.val.texts[i] for i in idx], grad=False)
                        rows = s.head.training_rows(s.val, idx, batch, out, 0)
                    outputs.append(s.head.module_forward(s.module, rows.x, rows.counts).numpy())
                    ys.append(s.head.targets(rows.y, rows.counts).numpy())
                    counts += rows.counts
            output, y = np.concatenate(outputs), np.concatenate(ys)
            if not (s.cfg.eval_only or s.cfg.frozen):  # temperature scaling on this validation set
                s.head.fit_temperature(output, y)
            results[name] = s.head.score(s.val, s.head.decode_rows(output, y, counts), s.metric)
            results[name]["temperature"] = s.head.temperature
        return results

    # ---- saving ---------------------------------------------------------------------------------------
    def sync_heads(self) -> None:
        for s in self.tasks.values():
            s.head.params = to_numpy(s.module)
            s.head.trained = True

    def write_model(self, folder: Path, dtype: str) -> None:
        """The model folder (MultiTaskModel.save), with the backbone's weights when it trains."""
        self.sync_heads()
        weights = None
        if self.trains_backbone:
            weights = {
                k: (v.detach().to(torch.float16) if dtype == "float16" else v.detach().clone()).contiguous().numpy()
                for k, v in self.backbone.model.state_dict().items()
                if v.is_floating_point()
            }
        self.model.save(folder, weights)

    # ---- the loop ------------------------------------------------------------------------------------
    def build_caches(self, progress) -> None:
        set_backbone_trainable(self.backbone, 0, self.num_layers)
        disk, key = self.cfg.feature_cache, ""
        if disk is not None:
            from ..backbone.folder import sha256_file

            w = self.mcfg.backbone.weights
            key = sha256_file(w if w else self.model.folder / "model.safetensors")
        for s in self.tasks.values():
            s.cache_train = FeatureCache(self.features, s.head, s.train, self.cfg.eval_batch_size, progress, disk, key)
            s.cache_val = FeatureCache(self.features, s.head, s.val, self.cfg.eval_batch_size, progress, disk, key)

    def epochs(self, start_epoch: int, stop_after: int | None, progress_factory) -> Iterator[tuple[dict, dict]]:
        """Train epoch by epoch, yielding (history row, validation reports) after each."""
        cfg = self.cfg
        for epoch in range(start_epoch, cfg.epochs + 1):
            if stop_after is not None and epoch > stop_after:
                break
            te = time.perf_counter()
            sums = {t: [0.0, 0] for t in self.trained_tasks}
            with progress_factory(self.steps_per_epoch, f"epoch {epoch}/{cfg.epochs}") as p:
                for losses in self.steps(epoch):
                    for t, v in losses.items():
                        sums[t][0] += v
                        sums[t][1] += 1
                    if p is not None:
                        p(1, {t: sums[t][0] / max(1, sums[t][1]) for t in sums})
            val = self.evaluate()
            weights = {t: self.tasks[t].cfg.score_weight for t in self.trained_tasks}
            score = sum(weights[t] * val[t]["score"] for t in weights) / max(sum(weights.values()), 1e-12)
            row = {
                "epoch": epoch,
                "step": self.global_step,
                "backbone_top_layers": top_layers_at(cfg, epoch, self.num_layers),
                "train_loss": {t: (sums[t][0] / sums[t][1] if sums[t][1] else None) for t in sums},
                "val": {t: {k: v for k, v in r.items() if k not in ("per_label", "per_type")} for t, r in val.items()},
                "score": score,
                "seconds": round(time.perf_counter() - te, 2),
                "uncertainty_log_vars": self.weighting.log(),
            }
            yield row, val

    def run(
        self, resume: bool = False, stop_after: int | None = None, progress_factory=None, loggers: list | None = None
    ) -> TrainResult:
        import json

        cfg = self.cfg
        t0 = time.perf_counter()
        result = TrainResult(cfg.output)
        start_epoch, best = 1, {"score": -1.0, "epoch": 0.0}
        if resume:
            done, best, history = load_checkpoint(self)
            start_epoch = done + 1
            metrics_path = cfg.output / "metrics.jsonl"
            if history is not None:
                result.history = history
            elif metrics_path.is_file():  # a checkpoint from before history was kept in it
                result.history = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()][:done]
        pf = progress_factory or NullProgress
        if not self.trains_backbone:
            n = sum(len(s.train) + len(s.val) for s in self.tasks.values())
            with pf(n, "caching backbone features") as p:
                self.build_caches(p)
        loggers = default_loggers(cfg.output, self.quiet) if loggers is None else loggers
        for row, val in self.epochs(start_epoch, stop_after, pf):
            result.history.append(row)
            if row["score"] > best["score"]:
                best = {"score": row["score"], "epoch": row["epoch"]}
                self.write_model(cfg.output, cfg.backbone.save_dtype)
                atomic_write_text(cfg.output / "val_report.json", json.dumps(val, indent=1))
            save_checkpoint(self, row["epoch"], best, result.history)
            for log in loggers:
                log(result.history, val)
        result.best_epoch, result.best_score = int(best["epoch"]), best["score"]
        result.seconds = time.perf_counter() - t0
        return result


def train(
    cfg: TrainConfig,
    force: bool = False,
    resume: bool = False,
    stop_after: int | None = None,
    progress_factory=None,
    quiet: bool = False,
) -> TrainResult:
    """Train per the recipe; write the best model to cfg.output (see Trainer). If the run fails or
    is stopped (an error, SIGINT, SIGTERM), a model that --force was replacing is put back."""
    check_recipe(cfg)
    lock = OutputLock(cfg.output)
    try:
        backup = prepare_output(cfg, force, resume)
        try:
            trainer = Trainer(cfg, quiet=quiet)
            result = trainer.run(resume=resume, stop_after=stop_after, progress_factory=progress_factory)
        except BaseException:
            if backup is not None:
                shutil.rmtree(cfg.output, ignore_errors=True)
                os.replace(backup, cfg.output)
            raise
        if backup is not None:
            shutil.rmtree(backup)
    finally:
        lock.release()
    return result
