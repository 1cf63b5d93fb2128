"""The fast path: the backbone exported to ONNX (optionally int8), run by ONNX Runtime.

Running needs onnxruntime, tokenizers and numpy only: no torch, no transformers. Exporting needs
torch (it runs once, in `sentmtl export` / `make setup`).

The graph computes the transformer, pooling and normalization, and outputs the sentence embedding
plus every hidden state; a call asks only for the outputs its heads read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .config import ModelConfig
from .errors import SentmtlError

EXPORT_FORMAT = "sentmtl-onnx/3"  # 2: int8 with per-token activation scales; 3: 8-bit weights on every CPU (quantize.py)
FP32, INT8 = "model.onnx", "model.int8.onnx"


def export_dir(cfg: ModelConfig) -> Path:
    """Where a config's ONNX export lives: beside the config, `<name>.onnx/`."""
    src = cfg.source
    if src is None:
        raise SentmtlError("this config was not loaded from a file, so it has no export folder")
    return src.parent / f"{src.stem}.onnx"


def _stamp(path: Path) -> list:
    st = Path(path).stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def source_identity(cfg: ModelConfig, folder: Path) -> dict:
    """What the export was made from; if any of it changes, the export is stale."""
    b = cfg.backbone
    return {
        "weights": _stamp(folder / "model.safetensors"),
        "fine_tuned": _stamp(b.weights) if b.weights else None,
        "pooling": b.pooling,
        "normalize": b.normalize,
    }


def find_export(cfg: ModelConfig, folder: Path, int8: bool) -> tuple[Path | None, str]:
    """(path to the .onnx file, '') if a fresh export exists, else (None, why not)."""
    try:
        d = export_dir(cfg)
    except SentmtlError as e:
        return None, str(e)
    meta_path = d / "export.json"
    f = d / (INT8 if int8 else FP32)
    if not meta_path.is_file() or not f.is_file():
        return None, f"no ONNX export at {d} (run `sentmtl export --config {cfg.source}{' --int8' if int8 else ''}`)"
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None, f"{meta_path} is unreadable; re-run `sentmtl export`"
    if meta.get("format") != EXPORT_FORMAT:
        return None, f"the ONNX export at {d} was made by an older sentmtl; re-run `sentmtl export{' --int8' if int8 else ''}`"
    if meta.get("source") != source_identity(cfg, folder):
        return None, f"the ONNX export at {d} is stale (the backbone changed); re-run `sentmtl export`"
    if int8:
        from .quantize import exact_on_this_cpu

        info = meta.get("int8")
        if not isinstance(info, dict):
            return None, f"no int8 export at {d} (run `sentmtl export --config {cfg.source} --int8`)"
        if not exact_on_this_cpu(str(info.get("weight_type")), int(info.get("weight_bits", 8))):
            return None, (f"the int8 export at {d} stores int8 weights, which this CPU (no AVX-512 VNNI) "
                          "can saturate; re-run `sentmtl export --int8` here")
    return f, ""


class OnnxBackbone:
    def __init__(self, path: Path, threads: int | None, num_layers: int, cfg):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise SentmtlError(f"cannot load the ONNX model {path}: {str(e).splitlines()[0]}") from None
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.num_layers = num_layers
        self.cfg = cfg

    def encode(self, batch, layers: set[int]) -> dict:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = batch.token_type_ids
        wanted = sorted(layers)
        outs = self.session.run(["sentence_embedding"] + [f"hidden_{i}" for i in wanted], feeds)
        feats = {"sentence_embedding": outs[0]}
        if wanted:
            feats["hidden_states"] = dict(zip(wanted, outs[1:]))
        return feats


def export(cfg: ModelConfig, folder: Path, int8: bool, out: Path | None = None, log=print) -> Path:
    """Export the config's backbone (transformer + pooling + normalization) to ONNX."""
    import torch

    from .backbone import TorchBackbone
    from .io import atomic_write_text

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
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
           "token_type_ids": {0: "batch", 1: "seq"}, "sentence_embedding": {0: "batch"}}
    dyn.update({n: {0: "batch", 1: "seq"} for n in names[1:]})
    ids = torch.ones((2, 8), dtype=torch.long)
    tmp = out / (FP32 + ".tmp")
    log(f"exporting {folder} -> {out / FP32}")
    import warnings

    tmp8 = out / (INT8 + ".tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's advice is for graphs unlike ours
            torch.onnx.export(Graph().eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(tmp),
                              input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=names,
                              dynamic_axes=dyn, opset_version=17, dynamo=False, do_constant_folding=True)
        # The graph is saved as exported, not run through ONNX Runtime's transformer optimizer: its fused
        # Attention operator made the whole model 15-20% slower on 2 cores with short inputs
        # (docs/ARCHITECTURE.md); the optimizations ONNX Runtime applies at load are kept.
        int8_info = None
        if int8:
            from .quantize import calibration_feeds, quantize_per_token, weight_type_for
            from .tokenize import Tokenizer

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
    meta = {"format": EXPORT_FORMAT, "source": source_identity(cfg, folder), "layers": n_layers,
            "outputs": names, "int8": int8_info}
    atomic_write_text(out / "export.json", json.dumps(meta, indent=1))
    return out
