"""`sentmtl export`: the backbone (transformer, pooling, normalization) to ONNX, optionally int8.
Needs torch; runs once (`make setup`). backbone/onnx_backbone.py finds and runs what it writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..backbone.onnx_backbone import (
    EXPORT_FORMAT,
    FP32,
    INT8,
    export_dir,
    graph_hashes,
    remove_other_loaded_graphs,
    save_loaded_graph,
    source_identity,
)
from ..config.model import ModelConfig
from ..errors import SentmtlError


def export(cfg: ModelConfig, folder: Path, int8: bool, out: Path | None = None, log=print) -> Path:
    """Export the config's backbone (transformer + pooling + normalization) to ONNX."""
    import torch

    from ..backbone.torch_backbone import TorchBackbone
    from ..files.atomic import atomic_write_text

    out = out or export_dir(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SentmtlError(f"cannot write the export to {out}: {e.strerror}") from None
    bb = TorchBackbone(cfg.backbone, folder, attn_implementation="eager")
    n_layers = bb.num_layers

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bb = bb.model

        def forward(self, input_ids, attention_mask, token_type_ids):
            o = bb.forward(input_ids, attention_mask, token_type_ids, hidden_states=True)
            return (o["sentence_embedding"], *o["hidden_states"])

    names = ["sentence_embedding"] + [f"hidden_{i}" for i in range(n_layers + 1)]
    dyn = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
        "token_type_ids": {0: "batch", 1: "seq"},
        "sentence_embedding": {0: "batch"},
    }
    dyn.update({n: {0: "batch", 1: "seq"} for n in names[1:]})
    ids = torch.ones((2, 8), dtype=torch.long)
    tmp = out / (FP32 + ".tmp")
    log(f"exporting {folder} -> {out / FP32}")
    import warnings

    tmp8 = out / (INT8 + ".tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's advice is for graphs unlike ours
            torch.onnx.export(
                Graph().eval(),
                (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                str(tmp),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=names,
                dynamic_axes=dyn,
                opset_version=17,
                dynamo=False,
                do_constant_folding=True,
            )
        # The graph is saved as exported, not run through ONNX Runtime's transformer optimizer: its fused
        # Attention operator made the whole model 15-20% slower on 2 cores with short inputs
        # (docs/ARCHITECTURE.md); the optimizations ONNX Runtime applies at load are kept.
        int8_info = None
        if int8:
            from ..text.tokenizer import Tokenizer
            from .quantize import calibration_feeds, quantize_per_token, weight_type_for

            log(f"quantizing -> {out / INT8}")
            feeds = calibration_feeds(Tokenizer(folder, cfg.backbone.max_seq_length))
            int8_info = quantize_per_token(tmp, tmp8, feeds, weight_bits=8, weight_type=weight_type_for())
            log(f"int8: {int8_info}")
            os.replace(tmp8, out / INT8)
        os.replace(tmp, out / FP32)
    finally:  # a failed export leaves no half-written files beside the good ones
        for t in (tmp, tmp8):
            t.unlink(missing_ok=True)
    if int8_info is None and (out / INT8).is_file():
        # an fp32-only re-export keeps an int8 file made from the same backbone by this version
        try:
            old = json.loads((out / "export.json").read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("format") == EXPORT_FORMAT and old.get("source") == source_identity(cfg, folder):
            int8_info = old.get("int8")
        if not int8_info:
            os.remove(out / INT8)
    loaded = save_loaded_graph(out)  # what a session opens fastest (a third of the start-up)
    meta = {
        "format": EXPORT_FORMAT,
        "source": source_identity(cfg, folder),
        "layers": n_layers,
        "outputs": names,
        "int8": int8_info,
        "loaded": loaded,
        "sha256": graph_hashes(out),
    }
    atomic_write_text(out / "export.json", json.dumps(meta, indent=1))
    remove_other_loaded_graphs(out, loaded)
    return out
