"""Backbone features for training: one torch forward per step serves every task in it, and when
the backbone never trains, each task's features are computed once (in eval mode, exactly what
inference sees) and cached, in memory and optionally on disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..files.atomic import atomic_write_bytes
from ..heads.base import Head, TrainingRows

CACHE_FORMAT = "sentmtl-features/3"  # 2: rows of any head type; 3: flat rows, word shapes, pooled layers


class Features:
    """Runs the backbone (with gradients when asked) on a list of texts."""

    def __init__(self, backbone, tokenizer, need_hidden: bool):
        self.backbone, self.tokenizer, self.need_hidden = backbone, tokenizer, need_hidden

    def forward(self, texts: list[str], grad: bool):
        batch = self.tokenizer.encode(texts)
        t = {k: torch.from_numpy(getattr(batch, k)) for k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.set_grad_enabled(grad):
            out = self.backbone.forward(**t, hidden_states=self.need_hidden)
        return batch, out


class FeatureCache:
    """A head's training rows for all of a task's examples, computed once with the frozen backbone
    (kept on disk under `feature_cache`, keyed by a hash of everything they depend on, when set)."""

    def __init__(
        self,
        feats: Features,
        head: Head,
        ex,
        batch_size: int,
        progress=None,
        disk: Path | None = None,
        backbone_key: str = "",
    ):
        path = None
        if disk is not None:
            path = disk / f"{self.key(feats, head, ex, backbone_key)}.safetensors"
            if path.is_file():
                from safetensors.torch import load_file

                t = load_file(str(path))
                self.x, self.y = t["x"], t["y"]
                self.ranges = [tuple(r) for r in t["ranges"].tolist()]
                if progress:
                    progress(len(ex))
                return
        self._compute(feats, head, ex, batch_size, progress)
        if path is not None:
            from safetensors.torch import save

            atomic_write_bytes(
                path,
                save(
                    {
                        "x": self.x.contiguous(),
                        "y": self.y.contiguous(),
                        "ranges": torch.tensor(self.ranges, dtype=torch.long).reshape(-1, 2),
                    }
                ),
            )

    @staticmethod
    def key(feats: Features, head: Head, ex, backbone_key: str) -> str:
        h = hashlib.sha256()
        cfg = feats.backbone.cfg
        h.update(
            json.dumps(
                [
                    CACHE_FORMAT,
                    backbone_key,
                    cfg.pooling,
                    cfg.normalize,
                    feats.tokenizer.max_seq_length,
                    head.registry_name,
                    head.hidden_layers(),
                    head.cfg.word_shape,
                    head.cfg.pool_layers,
                    # only when not the default, so that caches made before `pool` existed still hold
                    *([head.cfg.pool, head.cache_dtype()] if head.cfg.pool != "mean_max" else []),
                    *(["with_embedding"] if head.cfg.with_embedding else []),
                ]
            ).encode()
        )
        for i, text in enumerate(ex.texts):
            h.update(text.encode("utf-8", "surrogatepass") + b"\0" + ex.key_bytes(i))
        return h.hexdigest()[:32]

    def _compute(self, feats: Features, head: Head, ex, batch_size: int, progress=None):
        order = sorted(range(len(ex)), key=lambda i: len(ex.texts[i]))
        parts: dict[int, tuple] = {}
        feats.backbone.model.eval()
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch, out = feats.forward([ex.texts[i] for i in idx], grad=False)
            rows = head.training_rows(ex, np.array(idx), batch, out, 0)
            pos = 0
            x = rows.x.detach().to(getattr(torch, head.cache_dtype()))  # per batch: no full-size float32 copy
            for i, c in zip(idx, rows.counts):
                parts[i] = (x[pos : pos + c], rows.y[pos : pos + c])
                pos += c
            if progress:
                progress(len(idx))
        xs, ys, self.ranges, pos = [], [], [], 0
        for i in range(len(ex)):
            x, y = parts[i]
            xs.append(x)
            ys.append(y)
            self.ranges.append((pos, pos + len(y)))
            pos += len(y)
        self.x = torch.cat(xs)  # a new tensor: the batches' outputs are not kept
        self.y = torch.cat(ys)

    def get(self, idx) -> TrainingRows:
        """The rows of examples idx, in that order."""
        counts = [self.ranges[i][1] - self.ranges[i][0] for i in idx]
        rows = np.concatenate([np.arange(*self.ranges[i]) for i in idx]) if len(idx) else np.zeros(0, np.int64)
        t = torch.from_numpy(rows.astype(np.int64))
        return TrainingRows(self.x[t], self.y[t], counts)
