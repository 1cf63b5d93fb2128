"""The encoder: find the model folder, run the transformer, pool, normalize.

`resolve_folder` and the pooling functions are torch-free; `TorchBackbone` imports torch lazily.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from .config import BackboneConfig
from .errors import SentmtlError

BUNDLED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_REQUIRED = ("config.json", "tokenizer.json")


def _check_folder(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise SentmtlError(f"{what}: {folder} is not a folder")
    missing = [f for f in _REQUIRED if not (folder / f).is_file()]
    if not (folder / "model.safetensors").is_file():
        missing.append("model.safetensors")
    if missing:
        raise SentmtlError(
            f"{what}: {folder} is not a sentence-transformers model folder (missing {', '.join(missing)})"
        )
    return folder


def resolve_folder(cfg: BackboneConfig) -> Path:
    """The local sentence-transformers folder a backbone config points at. Never downloads."""
    if cfg.package:
        try:
            spec = importlib.util.find_spec(cfg.package)  # locate without importing it
        except (ImportError, ValueError):  # a relative or malformed name
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise SentmtlError(
                f"backbone.package: Python package {cfg.package!r} is not installed (run `make setup`)"
            )
        root = Path(list(spec.submodule_search_locations)[0])
        folder = root / "model" if (root / "model").is_dir() else root
        return _check_folder(folder, f"backbone.package {cfg.package}")
    if cfg.path:
        return _check_folder(Path(cfg.path), "backbone.path")
    # a hub name: only a copy already in the local cache is used
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(cfg.name, local_files_only=True))
    except Exception:
        raise SentmtlError(
            f"backbone.name: no local copy of {cfg.name!r} and sentmtl never downloads; "
            f"put the model folder on disk and set backbone.path instead"
        ) from None
    return _check_folder(folder, f"backbone.name {cfg.name}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_model_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SentmtlError(f"{folder}/config.json is unreadable: {e}") from None


# ---- pooling, in numpy (inference) ---------------------------------------------------------------
def pool_numpy(tokens: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    m = mask[..., None].astype(tokens.dtype)
    if mode == "cls":
        return tokens[:, 0]
    if mode == "max":
        return np.where(m > 0, tokens, -1e9).max(axis=1)
    return (tokens * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)


def normalize_numpy(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


class TorchBackbone:
    """A transformers encoder with its pooling: forward() gives torch tensors (for training),
    encode() gives numpy features (for inference)."""

    def __init__(self, cfg: BackboneConfig, folder: Path, attn_implementation: str | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
            self.model = AutoModel.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False, **extra
            )
        except Exception as e:
            raise SentmtlError(f"cannot load the transformer in {folder}: {str(e).splitlines()[0]}") from None
        if cfg.weights is not None:
            self.load_weights(cfg.weights)
        self.model.eval()
        self.cfg = cfg
        self.dim = int(self.model.config.hidden_size)
        self.num_layers = int(self.model.config.num_hidden_layers)

    def load_weights(self, path: Path) -> None:
        """A fine-tuned backbone stored as (possibly fp16) safetensors; cast to fp32."""
        from safetensors.torch import load_file
        import torch

        if not Path(path).is_file():
            raise SentmtlError(f"backbone.weights: file not found: {path}")
        try:
            state = load_file(str(path))
        except Exception as e:
            raise SentmtlError(f"backbone.weights: cannot read {path}: {str(e).splitlines()[0]}") from None
        for k, v in state.items():
            if v.dtype not in (torch.float16, torch.float32, torch.bfloat16):
                raise SentmtlError(f"backbone.weights: {path}: {k} is {v.dtype}, not a float16/float32 weight")
            if not torch.isfinite(v).all():
                raise SentmtlError(f"backbone.weights: {path}: {k} holds NaN or infinite values")
        state = {k: v.to(torch.float32) for k, v in state.items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise SentmtlError(
                f"backbone.weights: {path} does not fit this backbone "
                f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
            )

    def forward(self, input_ids, attention_mask, token_type_ids, hidden_states: bool):
        """Torch tensors in, dict of tensors out: token_embeddings, sentence_embedding (pooled,
        normalized if configured), and all hidden states when asked."""
        import torch

        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=hidden_states,
        )
        tokens = out.last_hidden_state
        m = attention_mask.unsqueeze(-1).to(tokens.dtype)
        mode = self.cfg.pooling
        if mode == "cls":
            pooled = tokens[:, 0]
        elif mode == "max":
            pooled = tokens.masked_fill(m == 0, -1e9).max(dim=1).values
        else:
            pooled = (tokens * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.cfg.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        res = {"token_embeddings": tokens, "sentence_embedding": pooled}
        if hidden_states:
            res["hidden_states"] = out.hidden_states
        return res

    def encode(self, batch, layers: set[int]) -> dict:
        """Numpy features for a tokenized batch; hidden states only for the layers asked for."""
        import torch

        with torch.inference_mode():
            t = {
                "input_ids": torch.from_numpy(batch.input_ids),
                "attention_mask": torch.from_numpy(batch.attention_mask),
                "token_type_ids": torch.from_numpy(batch.token_type_ids),
            }
            out = self.forward(**t, hidden_states=bool(layers))
            feats = {"sentence_embedding": out["sentence_embedding"].float().numpy()}
            if layers:
                feats["hidden_states"] = {i: out["hidden_states"][i].float().numpy() for i in layers}
        return feats
