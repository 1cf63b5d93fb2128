"""Training: freezing policies, task sampling, loss weighting, evaluation, checkpoints, resume.

Determinism: every epoch draws its batch order, task order and dropout masks from generators
seeded by (seed, epoch), so a run resumed at an epoch boundary continues exactly as an
uninterrupted run would, and two runs of one config give the same weights bit for bit.

When the backbone never trains, its features are computed once (in eval mode, exactly what
inference sees) and cached, which makes head training fast on a CPU.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from .backbone import TorchBackbone
from .config import ModelConfig, TrainConfig, load_config
from .decode import bio_viterbi
from .errors import SentmtlError
from .heads import Head
from .io import NullProgress, atomic_write_bytes, atomic_write_text, safetensors_bytes
from .metrics import classification_report, entity_report
from .model import MultiTaskModel
from .samplers import make_sampler
from .taskdata import load_examples, split_examples, to_conll_tags
from .text import align_first_subtokens
from .torch_heads import GradScale, TorchHead

CKPT = "checkpoints/last"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def default_metric(head: Head) -> str:
    return "entity_f1" if head.level == "token" else "accuracy"


# ---- features ----------------------------------------------------------------------------------------
class Features:
    """Backbone features for a batch of examples of one task: [N, D] sentence embeddings, or
    [n_words, L, D] word vectors (first sub-token of each word, L layers) with their targets."""

    def __init__(self, backbone: TorchBackbone, tokenizer, layers: dict[str, list[int]]):
        self.backbone, self.tokenizer, self.layers = backbone, tokenizer, layers

    def forward(self, texts: list[str], grad: bool):
        batch = self.tokenizer.encode(texts)
        need_hidden = any(self.layers.values())
        t = {k: torch.from_numpy(getattr(batch, k)) for k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.set_grad_enabled(grad):
            out = self.backbone.forward(**t, hidden_states=need_hidden)
        return batch, out

    def split(self, task: str, kind: str, ex, idx, batch, out, row0: int):
        """Slice one task's features out of a joint forward (rows row0..row0+len(idx))."""
        if kind == "sentence":
            return out["sentence_embedding"][row0 : row0 + len(idx)], torch.from_numpy(ex.labels[idx])
        hs = out["hidden_states"]
        b_idx, t_idx, targets = [], [], []
        for r, i in enumerate(idx):
            first = align_first_subtokens(ex.spans[i], batch.offsets[row0 + r], batch.special[row0 + r])
            for w, t in enumerate(first):
                if t >= 0:
                    b_idx.append(row0 + r)
                    t_idx.append(t)
                    targets.append(int(ex.tags[i][w]))
        b = torch.tensor(b_idx, dtype=torch.long)
        tt = torch.tensor(t_idx, dtype=torch.long)
        x = torch.stack([hs[layer][b, tt] for layer in self.layers[task]], dim=1)
        return x, torch.tensor(targets, dtype=torch.long)


class FeatureCache:
    """All features of a task's examples, computed once with the frozen backbone (and kept on disk
    under `feature_cache`, keyed by a hash of everything they depend on, when that is set)."""

    def __init__(self, feats: Features, task: str, kind: str, ex, batch_size: int, progress=None,
                 disk: Path | None = None, backbone_key: str = ""):
        self.kind = kind
        path = None
        if disk is not None:
            path = disk / f"{self.key(feats, task, kind, ex, backbone_key)}.safetensors"
            if path.is_file():
                from safetensors.torch import load_file

                t = load_file(str(path))
                self.x, self.y = t["x"], t["y"]
                self.ranges = [tuple(r) for r in t["ranges"].tolist()]
                if progress:
                    progress(len(ex))
                return
        self._compute(feats, task, kind, ex, batch_size, progress)
        if path is not None:
            from safetensors.torch import save

            atomic_write_bytes(path, save({"x": self.x.contiguous(), "y": self.y.contiguous(),
                                           "ranges": torch.tensor(self.ranges, dtype=torch.long).reshape(-1, 2)}))

    @staticmethod
    def key(feats: Features, task: str, kind: str, ex, backbone_key: str) -> str:
        import hashlib

        h = hashlib.sha256()
        cfg = feats.backbone.cfg
        h.update(json.dumps([backbone_key, cfg.pooling, cfg.normalize, feats.tokenizer.max_seq_length, kind,
                             feats.layers.get(task, [])]).encode())
        for i, text in enumerate(ex.texts):
            h.update(text.encode("utf-8", "surrogatepass") + b"\0")
            if kind == "token":
                h.update(np.asarray(ex.spans[i], dtype=np.int64).tobytes() + ex.tags[i].tobytes())
            else:
                h.update(int(ex.labels[i]).to_bytes(4, "little"))
        return h.hexdigest()[:32]

    def _compute(self, feats: Features, task: str, kind: str, ex, batch_size: int, progress=None):
        xs, ys, self.ranges = [], [], []
        order = sorted(range(len(ex)), key=lambda i: len(ex.texts[i]))
        parts: dict[int, tuple] = {}
        self.backbone_was_training = feats.backbone.model.training
        feats.backbone.model.eval()
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch, out = feats.forward([ex.texts[i] for i in idx], grad=False)
            x, y = feats.split(task, kind, ex, np.array(idx), batch, out, 0)
            if kind == "sentence":
                for r, i in enumerate(idx):
                    parts[i] = (x[r : r + 1], y[r : r + 1])
            else:
                counts = [sum(1 for t in align_first_subtokens(ex.spans[i], batch.offsets[r], batch.special[r]) if t >= 0)
                          for r, i in enumerate(idx)]
                pos = 0
                for i, c in zip(idx, counts):
                    parts[i] = (x[pos : pos + c], y[pos : pos + c])
                    pos += c
            if progress:
                progress(len(idx))
        pos = 0
        for i in range(len(ex)):
            x, y = parts[i]
            xs.append(x)
            ys.append(y)
            self.ranges.append((pos, pos + len(y)))
            pos += len(y)
        self.x = torch.cat(xs).detach().clone()
        self.y = torch.cat(ys)

    def get(self, idx):
        if self.kind == "sentence":
            t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
            return self.x[t], self.y[t]
        rows = np.concatenate([np.arange(*self.ranges[i]) for i in idx]) if len(idx) else np.zeros(0, np.int64)
        t = torch.from_numpy(rows.astype(np.int64))
        return self.x[t], self.y[t]

    def sentence_rows(self, i: int):
        a, b = self.ranges[i]
        return self.x[a:b]


# ---- state -------------------------------------------------------------------------------------------
@dataclass
class TaskState:
    name: str
    head: Head
    module: TorchHead
    kind: str
    train: object
    val: object
    cfg: object
    metric: str
    cache_train: FeatureCache | None = None
    cache_val: FeatureCache | None = None


@dataclass
class TrainResult:
    output: Path
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("nan")
    seconds: float = 0.0


def _backbone_layers(model) -> list:
    enc = getattr(model, "encoder", None)
    layers = getattr(enc, "layer", None)
    if layers is None:
        raise SentmtlError("backbone.train: top/unfreeze needs a BERT-like encoder (model.encoder.layer)")
    return list(layers)


def top_layers_at(cfg: TrainConfig, epoch: int, num_layers: int) -> int:
    """How many of the top transformer layers train in this epoch (0 = frozen backbone)."""
    b = cfg.backbone
    n = {"frozen": 0, "full": num_layers, "top": b.top_layers}[b.train]
    for step in sorted(b.unfreeze, key=lambda s: s.epoch):
        if epoch >= step.epoch:
            n = step.top_layers
    return min(n, num_layers)


def backbone_ever_trains(cfg: TrainConfig, num_layers: int) -> bool:
    return any(top_layers_at(cfg, e, num_layers) > 0 for e in range(1, cfg.epochs + 1))


def set_backbone_trainable(backbone: TorchBackbone, n_top: int, num_layers: int) -> None:
    model = backbone.model
    for p in model.parameters():
        p.requires_grad_(False)
    if n_top <= 0:
        model.eval()
        return
    layers = _backbone_layers(model)
    for layer in layers[len(layers) - n_top :]:
        for p in layer.parameters():
            p.requires_grad_(True)
    if n_top >= num_layers:  # "full": the embeddings train too
        for name, p in model.named_parameters():
            if not name.startswith("pooler"):
                p.requires_grad_(True)
    model.train()


def lr_lambda(cfg: TrainConfig, total_steps: int):
    warm = int(cfg.warmup * total_steps)

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return f


# ---- the trainer -----------------------------------------------------------------------------------
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
        self.backbone: TorchBackbone = self.model.backbone
        self.num_layers = self.backbone.num_layers
        self.trains_backbone = backbone_ever_trains(cfg, self.num_layers)
        set_backbone_trainable(self.backbone, top_layers_at(cfg, 1, self.num_layers), self.num_layers)
        self.tasks: dict[str, TaskState] = {}
        layers = {}
        for name, tcfg in cfg.tasks.items():
            if name not in self.model.heads:
                raise SentmtlError(
                    f"tasks.{name}: the model config {cfg.model} has no head {name!r} (heads: {', '.join(self.model.heads)})"
                )
            head = self.model.heads[name]
            if getattr(head.cfg, "multi_label", False):
                raise SentmtlError(f"tasks.{name}: training multi_label heads is not supported yet")
            ex = load_examples(head, tcfg.data, name)
            if tcfg.val_data is not None:
                train, val = ex, load_examples(head, tcfg.val_data, name)
                if cfg.max_val_examples and len(val) > cfg.max_val_examples:
                    val = val.subset(np.arange(cfg.max_val_examples))
            else:
                train, val = split_examples(ex, cfg.val_fraction, cfg.seed, cfg.max_val_examples)
            for extra in tcfg.extra_data:
                train = train.concat(load_examples(head, extra, name))
            module = TorchHead(head)
            if tcfg.frozen or tcfg.eval_only:
                for p in module.parameters():
                    p.requires_grad_(False)
            metric = tcfg.metric or default_metric(head)
            layers[name] = head.layer_indices() if head.level == "token" else []
            self.tasks[name] = TaskState(name, head, module, head.level, train, val, tcfg, metric)
        self.trained_tasks = [t for t, s in self.tasks.items() if not s.cfg.eval_only]
        if not self.trained_tasks:
            raise SentmtlError("every task is eval_only: nothing to train")
        self.features = Features(self.backbone, self.model.tokenizer, layers)
        self.log_vars = torch.nn.Parameter(torch.zeros(len(self.trained_tasks)))
        self.teacher = None
        if cfg.preserve_embeddings and cfg.preserve_embeddings.weight > 0 and self.trains_backbone:
            self.teacher = copy.deepcopy(self.backbone)
            self.teacher.model.eval()
            for p in self.teacher.model.parameters():
                p.requires_grad_(False)
        sizes = [len(self.tasks[t].train) for t in self.trained_tasks]
        if cfg.steps_per_epoch:
            self.steps_per_epoch = cfg.steps_per_epoch
        elif cfg.mode == "joint":
            self.steps_per_epoch = math.ceil(max(sizes) / cfg.batch_size)
        else:
            self.steps_per_epoch = math.ceil(sum(sizes) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        groups = [
            {"params": [p for s in self.tasks.values() for p in s.module.parameters()], "lr": cfg.heads_lr,
             "weight_decay": cfg.weight_decay},
            {"params": [self.log_vars], "lr": cfg.heads_lr, "weight_decay": 0.0},
        ]
        if self.trains_backbone:
            groups.append({"params": list(self.backbone.model.parameters()), "lr": cfg.backbone.lr,
                           "weight_decay": cfg.weight_decay})
        self.optimizer = torch.optim.AdamW(groups)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.total_steps))
        self.global_step = 0

    # ---- one step -------------------------------------------------------------------------------------
    def task_features(self, names: list[str], batches: dict[str, np.ndarray], grad: bool):
        """Features for each task's batch; one backbone forward serves every task in the step."""
        out_feats = {}
        if not self.trains_backbone or not grad:
            live = [t for t in names if self.tasks[t].cache_train is None]
        else:
            live = names
        for t in names:
            if t not in live:
                out_feats[t] = self.tasks[t].cache_train.get(batches[t])
        sent_emb = None
        if live:
            texts, rows = [], {}
            for t in live:
                rows[t] = len(texts)
                texts += [self.tasks[t].train.texts[i] for i in batches[t]]
            batch, out = self.features.forward(texts, grad=grad)
            for t in live:
                s = self.tasks[t]
                out_feats[t] = self.features.split(t, s.kind, s.train, batches[t], batch, out, rows[t])
            if self.teacher is not None:
                with torch.no_grad():
                    tb = {k: torch.from_numpy(getattr(batch, k)) for k in ("input_ids", "attention_mask", "token_type_ids")}
                    target = self.teacher.forward(**tb, hidden_states=False)["sentence_embedding"]
                sent_emb = (out["sentence_embedding"], target)
        return out_feats, sent_emb

    def loss(self, names, feats, sent_emb):
        losses = {}
        for t in names:
            s = self.tasks[t]
            x, y = feats[t]
            if self.trains_backbone and s.cfg.grad_scale != 1.0:
                x = GradScale.apply(x, s.cfg.grad_scale)
            logits = s.module(x)
            # a per-example (per-token) mean before any task weighting
            losses[t] = F.cross_entropy(logits, y) if len(y) else logits.sum() * 0.0
        total = 0.0
        for t, l in losses.items():
            if self.cfg.loss_weighting == "uncertainty":
                lv = self.log_vars[self.trained_tasks.index(t)]
                total = total + torch.exp(-lv) * l + lv
            else:
                total = total + self.tasks[t].cfg.weight * l
        if sent_emb is not None:
            student, teacher = sent_emb
            total = total + self.cfg.preserve_embeddings.weight * (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
        return total, losses

    def step(self, names, batches) -> dict[str, float]:
        for s in self.tasks.values():
            s.module.train()
        feats, sent_emb = self.task_features(names, batches, grad=True)
        total, losses = self.loss(names, feats, sent_emb)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        return {t: float(l.detach()) for t, l in losses.items()}

    # ---- evaluation -----------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, dict]:
        self.backbone.model.eval()
        results = {}
        for name, s in self.tasks.items():
            s.module.eval()
            preds = []
            with torch.no_grad():
                for start in range(0, len(s.val), self.cfg.eval_batch_size):
                    idx = np.arange(start, min(len(s.val), start + self.cfg.eval_batch_size))
                    if s.cache_val is not None and s.kind == "sentence":
                        x, _ = s.cache_val.get(idx)
                        preds += s.module(x).argmax(-1).tolist()
                    elif s.cache_val is not None:
                        for i in idx:
                            x = s.cache_val.sentence_rows(i)
                            preds.append(self._tag_path(s, x))
                    else:
                        batch, out = self.features.forward([s.val.texts[i] for i in idx], grad=False)
                        if s.kind == "sentence":
                            preds += s.module(out["sentence_embedding"]).argmax(-1).tolist()
                        else:
                            for r, i in enumerate(idx):
                                x, _ = self.features.split(name, "token", s.val, np.array([i]), batch, out, r)
                                preds.append(self._tag_path(s, x))
            results[name] = self.score_predictions(s, preds)
        return results

    @staticmethod
    def _tag_path(s: TaskState, x) -> list[int]:
        """A sentence's word tags, decoded as predict decodes them (valid BIO)."""
        if not len(x):
            return []
        return bio_viterbi(torch.softmax(s.module(x), -1).numpy(), s.head.outputs)

    @staticmethod
    def score_predictions(s: TaskState, preds) -> dict:
        if s.kind == "sentence":
            rep = classification_report(s.val.labels.tolist(), preds, list(s.head.cfg.labels))
        else:
            gold, pred = [], []
            for i, p in enumerate(preds):
                # pieces dropped by truncation were not predicted: they count as O
                first = s.val.spans[i]
                tags = [s.head.outputs[k] for k in p] + ["O"] * (len(first) - len(p))
                pred.append(to_conll_tags(s.val.owner[i], len(s.val.gold[i]), tags))
                gold.append(s.val.gold[i])
            rep = entity_report(gold, pred, list(s.head.cfg.labels))
        rep["score"] = rep[s.metric]
        return rep

    # ---- saving ---------------------------------------------------------------------------------------
    def sync_heads(self) -> None:
        for s in self.tasks.values():
            s.head.params = s.module.to_numpy()
            s.head.trained = True

    def write_model(self, folder: Path, dtype: str) -> None:
        """A model folder: model.yaml, heads/*.safetensors, and backbone.safetensors if trained."""
        folder.mkdir(parents=True, exist_ok=True)
        self.sync_heads()
        mdoc = self.mcfg.model_dump(mode="json", exclude={"source"})
        mdoc["backbone"] = {k: v for k, v in mdoc["backbone"].items() if v is not None}
        if self.trains_backbone:
            state = {k: (v.detach().to(torch.float16) if dtype == "float16" else v.detach().clone()).contiguous()
                     for k, v in self.backbone.model.state_dict().items() if v.is_floating_point()}
            atomic_write_bytes(folder / "backbone.safetensors",
                               safetensors_bytes({k: v.numpy() for k, v in state.items()}, {"format": "sentmtl-backbone/1"}))
            mdoc["backbone"]["weights"] = "backbone.safetensors"
        for name, head in self.model.heads.items():
            hd = {k: v for k, v in mdoc["heads"][name].items() if v is not None}
            if head.trained:
                head.save(folder / "heads" / f"{name}.safetensors")
                hd["weights"] = f"heads/{name}.safetensors"
            else:
                hd.pop("weights", None)
            mdoc["heads"][name] = hd
        atomic_write_text(folder / "model.yaml", "# written by sentmtl train\n" + yaml.safe_dump(mdoc, sort_keys=False))

    def save_checkpoint(self, epoch: int, best: dict, history: list[dict]) -> None:
        """The last checkpoint, replaced as a whole: it is written into a new folder, which then takes
        the old one's place by two renames, so a run killed at any point (SIGKILL included) leaves
        either the previous checkpoint or this one, never a mix of epochs."""
        final = self.cfg.output / CKPT
        folder = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        shutil.rmtree(folder, ignore_errors=True)
        self.write_model(folder, "float32")  # full precision so a resumed run is exact
        tensors, meta = {"log_vars": self.log_vars.detach().clone()}, {}
        opt = self.optimizer.state_dict()
        for pid, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"opt.{pid}.{k}"] = v.detach().clone().reshape(-1) if torch.is_tensor(v) else torch.tensor([float(v)])
        atomic_write_bytes(folder / "optimizer.safetensors",
                           safetensors_bytes({k: v.detach().cpu().numpy() for k, v in tensors.items()}))
        meta = {"epoch": epoch, "global_step": self.global_step, "best": best,
                "scheduler": self.scheduler.state_dict(), "history": history}
        atomic_write_text(folder / "trainer.json", json.dumps(meta))
        old = final.with_name(final.name + ".old")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(folder, final)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def checkpoint_folder(output: Path) -> Path:
        """The complete last checkpoint: `last`, or `last.old` if a run was killed between the two
        renames that replace it."""
        final = output / CKPT
        old = final.with_name(final.name + ".old")
        return final if (final / "trainer.json").is_file() or not old.is_dir() else old

    def load_checkpoint(self) -> tuple[int, dict, list[dict]]:
        from safetensors.torch import load_file

        folder = self.checkpoint_folder(self.cfg.output)
        if not (folder / "trainer.json").is_file():
            raise SentmtlError(f"--resume: no checkpoint in {folder}")
        meta = json.loads((folder / "trainer.json").read_text())
        ck = load_config(folder / "model.yaml")
        for name, s in self.tasks.items():
            w = ck.heads[name].weights
            if w is not None:
                s.head.load(w)
                s.module.load_numpy(s.head.params)
        if self.trains_backbone and ck.backbone.weights:
            self.backbone.load_weights(ck.backbone.weights)
        tensors = load_file(str(folder / "optimizer.safetensors"))
        with torch.no_grad():
            self.log_vars.copy_(tensors["log_vars"])
        opt = self.optimizer.state_dict()
        state = {}
        for key, v in tensors.items():
            if not key.startswith("opt."):
                continue
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for pid, st in state.items():
            shape = params[pid].shape
            for k in list(st):
                st[k] = st[k].reshape(()) if k == "step" else st[k].reshape(shape)
        opt["state"] = state
        self.optimizer.load_state_dict(opt)
        self.scheduler.load_state_dict(meta["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr  # the fresh optimizer holds step-0 rates; continue from the saved step's
        self.global_step = meta["global_step"]
        return meta["epoch"], meta["best"], meta.get("history")

    # ---- the loop ------------------------------------------------------------------------------------
    def build_caches(self, progress) -> None:
        set_backbone_trainable(self.backbone, 0, self.num_layers)
        disk, key = self.cfg.feature_cache, ""
        if disk is not None:
            from .backbone import sha256_file

            w = self.mcfg.backbone.weights
            key = sha256_file(w if w else self.model.folder / "model.safetensors")
        for s in self.tasks.values():
            s.cache_train = FeatureCache(self.features, s.name, s.kind, s.train, self.cfg.eval_batch_size, progress, disk, key)
            s.cache_val = FeatureCache(self.features, s.name, s.kind, s.val, self.cfg.eval_batch_size, progress, disk, key)

    def run(self, resume: bool = False, stop_after: int | None = None, progress_factory=None) -> TrainResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        result = TrainResult(cfg.output)
        metrics_path = cfg.output / "metrics.jsonl"
        start_epoch, best = 1, {"score": -1.0, "epoch": 0}
        if resume:
            done, best, history = self.load_checkpoint()
            start_epoch = done + 1
            if history is not None:
                result.history = history
            elif metrics_path.is_file():  # a checkpoint from before history was kept in it
                result.history = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()][:done]
        pf = progress_factory or NullProgress
        if not self.trains_backbone:
            n = sum(len(s.train) + len(s.val) for s in self.tasks.values())
            with pf(n, "caching backbone features") as p:
                self.build_caches(p)
        for epoch in range(start_epoch, cfg.epochs + 1):
            if stop_after is not None and epoch > stop_after:
                break
            te = time.perf_counter()
            n_top = top_layers_at(cfg, epoch, self.num_layers)
            set_backbone_trainable(self.backbone, n_top, self.num_layers)
            torch.manual_seed(cfg.seed * 1009 + epoch)
            rng = np.random.default_rng([cfg.seed, epoch])
            orders = {t: _Cycler(len(self.tasks[t].train), cfg.batch_size, rng) for t in self.trained_tasks}
            sampler = make_sampler(cfg.sampling.strategy, {t: len(self.tasks[t].train) for t in self.trained_tasks},
                                   rng, cfg.sampling.temperature)
            sums = {t: [0.0, 0] for t in self.trained_tasks}
            with pf(self.steps_per_epoch, f"epoch {epoch}/{cfg.epochs}") as p:
                for _ in range(self.steps_per_epoch):
                    names = self.trained_tasks if cfg.mode == "joint" else [sampler.next()]
                    losses = self.step(names, {t: orders[t].next() for t in names})
                    for t, v in losses.items():
                        sums[t][0] += v
                        sums[t][1] += 1
                    if p is not None:
                        p(1, {t: sums[t][0] / max(1, sums[t][1]) for t in sums})
            val = self.evaluate()
            weights = {t: self.tasks[t].cfg.score_weight for t in self.tasks if not self.tasks[t].cfg.eval_only}
            score = sum(weights[t] * val[t]["score"] for t in weights) / max(sum(weights.values()), 1e-12)
            row = {
                "epoch": epoch, "step": self.global_step, "backbone_top_layers": n_top,
                "train_loss": {t: (sums[t][0] / sums[t][1] if sums[t][1] else None) for t in sums},
                "val": {t: {k: v for k, v in r.items() if k not in ("per_label", "per_type")} for t, r in val.items()},
                "score": score, "seconds": round(time.perf_counter() - te, 2),
                "uncertainty_log_vars": dict(zip(self.trained_tasks, self.log_vars.detach().tolist()))
                if cfg.loss_weighting == "uncertainty" else None,
            }
            result.history.append(row)
            if score > best["score"]:
                best = {"score": score, "epoch": epoch}
                self.write_model(cfg.output, cfg.backbone.save_dtype)
                atomic_write_text(cfg.output / "val_report.json", json.dumps(val, indent=1))
            self.save_checkpoint(epoch, best, result.history)
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in result.history))
            plot_curves(result.history, cfg.output / "curves.png")
            if not self.quiet:
                parts = ", ".join(f"{t} {val[t]['score']:.4f}" for t in val)
                print(f"epoch {epoch}: {parts} (score {score:.4f})", file=sys.stderr)
        result.best_epoch, result.best_score = best["epoch"], best["score"]
        result.seconds = time.perf_counter() - t0
        return result


class _Cycler:
    """Batches of indices in a seeded order, reshuffled whenever the data runs out."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator):
        self.n, self.bs, self.rng = n, min(batch_size, n), rng
        self.order, self.pos = rng.permutation(n), 0

    def next(self) -> np.ndarray:
        if self.pos + self.bs > self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        out = self.order[self.pos : self.pos + self.bs]
        self.pos += self.bs
        return out


def plot_curves(history: list[dict], path: Path) -> None:
    """Per-task training loss and validation score per epoch."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in history]
    tasks = sorted({t for r in history for t in r["val"]})
    for t in tasks:
        losses = [r["train_loss"].get(t) for r in history]
        if any(v is not None for v in losses):
            a.plot(epochs, [v if v is not None else float("nan") for v in losses], marker="o", label=t)
        b.plot(epochs, [r["val"][t]["score"] for r in history], marker="o", label=f"{t} ({history[0]['val'][t].get('metric', '')})".replace(" ()", ""))
    a.set(title="training loss", xlabel="epoch")
    b.set(title="validation score", xlabel="epoch")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


MARKER = "sentmtl-train.json"  # written first into every output folder: what --force may replace


def is_model_folder(folder: Path) -> bool:
    """Does this folder hold a sentmtl training output (its marker, or a model.yaml written by
    train before markers existed)?"""
    if (folder / MARKER).is_file():
        return True
    try:
        with open(folder / "model.yaml", encoding="utf-8") as f:
            return f.readline().startswith("# written by sentmtl train")
    except OSError:
        return False


class OutputLock:
    """An exclusive lock on an output folder for the whole run, so two runs cannot write one folder
    (the second is refused). It is a lock file beside the folder, held with flock: the kernel
    releases it when the process dies, however it dies."""

    def __init__(self, out: Path):
        import fcntl

        self.path = out.with_name(f".{out.name}.lock")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise SentmtlError(f"cannot write the output folder {out}: {e.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise SentmtlError(f"another sentmtl train is writing {out}; wait for it to finish") from None

    def release(self) -> None:
        os.close(self.fd)  # closing drops the flock; the empty lock file stays (removing it would race)


def prepare_output(cfg: TrainConfig, force: bool, resume: bool) -> Path | None:
    """Make the output folder ready. An existing model is never overwritten without --force; with
    --force only a folder holding a sentmtl model is replaced, moved aside (returned) and deleted
    only once the new run has succeeded."""
    out = cfg.output
    if out.exists() and not out.is_dir():
        raise SentmtlError(f"output {out} exists and is not a folder")
    backup = out.with_name(out.name + ".replaced")
    if backup.exists():
        raise SentmtlError(f"{backup} holds the model that a stopped `train --force` was replacing; "
                           f"move it back to {out} (or delete it) and run again")
    if resume:
        return None
    if out.exists() and any(p.name != MARKER for p in out.iterdir()):  # a marker alone: a run that wrote nothing
        if not force:
            raise SentmtlError(f"output folder {out} already holds files; pass --force to overwrite it or --resume to continue")
        if not is_model_folder(out):
            raise SentmtlError(f"output folder {out} does not hold a sentmtl model (no {MARKER}); "
                               "--force replaces only a model folder: choose another output")
        os.replace(out, backup)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, json.dumps({"format": "sentmtl-train-output/1",
                                                "recipe": str(cfg.source) if cfg.source else None}) + "\n")
    return backup if backup.exists() else None


def check_recipe(cfg: TrainConfig) -> None:
    """Errors a recipe can be refused for before any backbone is loaded (seconds, not a minute)."""
    mcfg = load_config(cfg.model)
    for name in cfg.tasks:
        if name not in mcfg.heads:
            raise SentmtlError(f"tasks.{name}: the model config {cfg.model} has no head {name!r} "
                               f"(heads: {', '.join(mcfg.heads) or 'none'})")


def train(cfg: TrainConfig, force: bool = False, resume: bool = False, stop_after: int | None = None,
          progress_factory=None, quiet: bool = False) -> TrainResult:
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
