"""The fast path: the backbone exported to ONNX (optionally int8), run by ONNX Runtime.

Running needs onnxruntime, tokenizers and numpy only: no torch, no transformers. Exporting needs
torch (it runs once, in `sentmtl export` / `make setup`).

The graph computes the transformer, pooling and normalization, and outputs the sentence embedding
plus every hidden state; a call asks only for the outputs its heads read. The exporter is
export/onnx.py; this module finds an export and runs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config.model import ModelConfig
from ..errors import SentmtlError

EXPORT_FORMAT = (
    "sentmtl-onnx/3"  # 2: int8 with per-token activation scales; 3: 8-bit weights on every CPU (quantize.py)
)
FP32, INT8 = "model.onnx", "model.int8.onnx"


def export_dir(cfg: ModelConfig, reading: bool = False) -> Path:
    """Where a config's ONNX export lives: beside the config, `<name>.onnx/`. When reading, the
    config's `backbone.export` first (a fitted model uses its base's export; `sentmtl export`
    always writes beside the config, never into the base's)."""
    if reading and cfg.backbone.export is not None:
        return cfg.backbone.export
    src = cfg.source
    if src is None:
        raise SentmtlError("this config was not loaded from a file, so it has no export folder")
    return src.parent / f"{src.stem}.onnx"


def _stamp(path: Path) -> list:
    st = Path(path).stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def graph_hashes(export: Path) -> dict:
    """The record for export.json of each graph's sha256, with the size and modification time of
    the file it was taken from: what an index names the model by (index/store.identity), so that
    opening an index after a new export need not read the graph again to hash it."""
    from .folder import sha256_file

    return {p.name: [sha256_file(p), *_stamp(p)[1:]] for p in (export / FP32, export / INT8) if p.is_file()}


def recorded_hash(graph: Path) -> str | None:
    """The sha256 export.json recorded for this graph, while the file is the one it was taken
    from (the same size and modification time); None otherwise."""
    try:
        rec = json.loads((graph.parent / "export.json").read_text()).get("sha256", {}).get(graph.name)
        st = graph.stat()
        if isinstance(rec, list) and len(rec) == 3 and rec[1:] == [st.st_size, st.st_mtime_ns]:
            return str(rec[0])
    except (OSError, ValueError, AttributeError):
        pass
    return None


def loaded_graph(export: Path) -> Path | None:
    """The fp32 graph as ONNX Runtime optimizes it at load, saved by `sentmtl export` (its weights
    beside it as external data), when it is still that of model.onnx and of this onnxruntime;
    opened with no optimization, a session takes about a third of the time (no protobuf of 90 MB
    to parse, no graph passes), and computes the same numbers. None: open model.onnx."""
    import onnxruntime as ort

    try:
        rec = json.loads((export / "export.json").read_text()).get("loaded")
        if not isinstance(rec, dict) or rec.get("onnxruntime") != ort.__version__:
            return None
        if rec.get("from") != _stamp(export / FP32)[1:]:
            return None
        graph, data = export / rec["graph"], export / rec["data"]
        if [graph.stat().st_size, data.stat().st_size] != rec.get("sizes"):
            return None
        return graph
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_loaded_graph(export: Path) -> dict:
    """Write loaded_graph's files for export/model.onnx (new names each time, so a reader never
    pairs a graph with another's weights); the record for export.json. Old pairs are removed by
    the caller once export.json names the new one."""
    import secrets

    import onnxruntime as ort

    stem = f"model.loaded-{secrets.token_hex(4)}"
    graph, data = f"{stem}.onnx", f"{stem}.data"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    )  # ALL's extra passes are for convolutions
    opts.optimized_model_filepath = str(export / graph)
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", data)
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    opts.log_severity_level = 3
    ort.InferenceSession(str(export / FP32), opts, providers=["CPUExecutionProvider"])
    for f in (graph, data):
        with open(export / f, "rb") as fh:
            os.fsync(fh.fileno())
    return {
        "graph": graph,
        "data": data,
        "sizes": [(export / graph).stat().st_size, (export / data).stat().st_size],
        "from": _stamp(export / FP32)[1:],
        "onnxruntime": ort.__version__,
    }


def remove_other_loaded_graphs(export: Path, keep: dict | None) -> None:
    names = {keep["graph"], keep["data"]} if keep else set()
    for p in export.glob("model.loaded-*"):
        if p.name not in names:
            p.unlink(missing_ok=True)


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
        d = export_dir(cfg, reading=True)
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
        return (
            None,
            f"the ONNX export at {d} was made by an older sentmtl; re-run `sentmtl export{' --int8' if int8 else ''}`",
        )
    if meta.get("source") != source_identity(cfg, folder):
        return None, f"the ONNX export at {d} is stale (the backbone changed); re-run `sentmtl export`"
    if int8:
        from .cpu import exact_on_this_cpu

        info = meta.get("int8")
        if not isinstance(info, dict):
            return None, f"no int8 export at {d} (run `sentmtl export --config {cfg.source} --int8`)"
        if not exact_on_this_cpu(str(info.get("weight_type")), int(info.get("weight_bits", 8))):
            return None, (
                f"the int8 export at {d} stores int8 weights, which this CPU (no AVX-512 VNNI) "
                "can saturate; re-run `sentmtl export --int8` here"
            )
    return f, ""


class OnnxBackbone:
    """The fp32 export, run by ONNX Runtime on the CPU."""

    int8 = False

    @classmethod
    def unavailable(cls, cfg: ModelConfig, folder: Path) -> str | None:
        """Why this backend cannot run this config here (no fresh export), or None."""
        return find_export(cfg, folder, cls.int8)[1] or None

    @classmethod
    def export_path(cls, cfg: ModelConfig, folder: Path) -> Path | None:
        return find_export(cfg, folder, cls.int8)[0]

    @classmethod
    def open(
        cls, cfg: ModelConfig, folder: Path, threads: int | None, num_layers: int, spin: bool = True
    ) -> OnnxBackbone:
        path, why = find_export(cfg, folder, cls.int8)
        if path is None:
            raise SentmtlError(why)
        fast = None if cls.int8 else loaded_graph(path.parent)
        return cls(path, threads, num_layers, cfg.backbone, fast, spin=spin)

    # onnxruntime's threads spin for a while after each run, waiting for the next: meant for runs back
    # to back, wasteful for a server, where that spinning takes the cores its event loop and the next
    # requests need (sentmtl serve turns it off), and for a one-shot command, where it takes the core
    # the rest of start-up needs (open(spin=False)). Embedding 3,000 texts took the same time with
    # it or without (18.3-19.3 s either way, 2 cores).
    spinning = True

    def __init__(
        self,
        path: Path,
        threads: int | None,
        num_layers: int,
        cfg,
        loaded: Path | None = None,
        spin: bool = True,
    ):
        """`path`: the export's .onnx (what fingerprints name); `loaded`: its pre-optimized graph,
        opened instead when given (loaded_graph)."""
        self.path = path
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        level = ort.GraphOptimizationLevel
        opts.graph_optimization_level = level.ORT_DISABLE_ALL if loaded else level.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if not (self.spinning and spin):
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(loaded or path), opts, providers=["CPUExecutionProvider"])
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


class OnnxInt8Backbone(OnnxBackbone):
    """The int8 export (weights encoded for this CPU's exact kernels; export/quantize.py)."""

    int8 = True
