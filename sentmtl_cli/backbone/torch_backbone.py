"""The torch backend: a transformers encoder with its pooling. forward() gives torch tensors (training
reads them, with gradients), encode() numpy features (inference). torch is imported when it is built."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config.model import BackboneConfig, ModelConfig
from ..errors import SentmtlError


class TorchBackbone:
    """A transformers encoder with its pooling: forward() gives torch tensors (for training),
    encode() gives numpy features (for inference)."""

    @classmethod
    def unavailable(cls, cfg: ModelConfig, folder: Path) -> str | None:
        return None  # torch runs any folder the config names

    @classmethod
    def open(
        cls, cfg: ModelConfig, folder: Path, threads: int | None, num_layers: int, spin: bool = True
    ) -> TorchBackbone:
        import torch

        torch.manual_seed(cfg.seed)
        if threads:
            torch.set_num_threads(threads)
        return cls(cfg.backbone, folder)

    def __init__(self, cfg: BackboneConfig, folder: Path, attn_implementation: str | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            # typed loosely: transformers' own annotations of from_pretrained's keywords change between releases
            extra: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
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
        import torch
        from safetensors.torch import load_file

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
