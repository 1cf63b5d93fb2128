"""int8 for the ONNX graph, with one activation scale per token.

ONNX Runtime's dynamic quantization gives each MatMul input one scale for the whole batch. A batch's
range is set by its few outlier activations (MiniLM's feed-forward inputs reach 25 where most values
are below 1), so most tokens get a handful of levels, and a text's result depends on which texts share
its batch. Here every token (every row of a MatMul input) gets its own scale instead:

    q = round(x_row / s) + zp  (uint8)        x_row @ W  ~=  s * ((q - zp) @ Wq) * w_scale

with the weights in int8 per output column. The integer product runs in ONNX Runtime's fused
MatMulIntegerToFloat; the scales come from two reductions and one per-axis QuantizeLinear. A text's
vector no longer depends on its batch.

The zero point zp is where 0 falls in a row's range. Two kinds of input, chosen by what they feed:
- the input shared by an attention block's query, key and value projections gets a zero point per
  row, exact to each token's own range; the product then needs s * zp * colsum(Wq * w_scale)
  subtracted from each row (one rank-1 update). Attention amplifies errors here the most.
- every other input gets one fixed zero point, the one that wastes the fewest levels over the rows of
  a few sample texts (`calibrate_zero_points`): near 128 for LayerNorm outputs, near 20 for GELU
  outputs (never below -0.17). ONNX Runtime applies a fixed zero point inside the integer product,
  so these cost nothing extra.
docs/ARCHITECTURE.md gives the measured error and speed of each choice.

Weights have 8-bit levels (|w| <= 127) per output column on every CPU, stored as int8 where the CPU
multiplies u8 x s8 exactly (x86 with AVX-512 VNNI), else as uint8 offset by 128: x86 CPUs without
VNNI add u8 x s8 products in pairs into 16 bits, which 8-bit int8 weights saturate (an AVX2-only AMD
EPYC lost 4% of topic labels to the old 7-bit workaround), while u8 x u8 products are widened to 16
bits first and stay exact. Both encodings give the same numbers; the export records which it used, and
an int8-encoded export is not used on a CPU that would saturate it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..backbone.cpu import cpu_class, exact_on_this_cpu, weight_type_for  # noqa: F401  (part of this module's API)

SCHEME = "per-token"

ZP_SIGNED, ZP_GELU = 128, 20  # fixed zero points when there is nothing to calibrate on
EPS = 1e-8

# Sample inputs for calibration (written for this project; any ordinary text serves: the zero point
# only needs each layer's usual balance of positive and negative activations).
CALIBRATION_TEXTS = [
    "The committee will publish its final report on the new rail line next spring.",
    "I can't believe how good this pizza was, best night out in ages!",
    "Shares of the chip maker fell 4% after it cut its sales forecast.",
    "Maria Lopez moved from Madrid to Toronto in 2019 to join the university.",
    "ugh my flight got cancelled again... stuck at the airport for hours",
    "The striker scored twice as the home side came back to win 3-2.",
    "Researchers found that the enzyme breaks down plastic in a few days.",
    "Please restart the router and check whether the green light stays on.",
    "A man is slicing tomatoes in a kitchen.",
    "Two children are playing football on a beach at sunset.",
    "The film is long and slow, but the final twenty minutes are worth it.",
    "Parliament rejected the budget amendment by 212 votes to 198.",
    "Not sure what to think about the new update tbh",
    "Apple and Samsung both announced cheaper phones for the Indian market.",
    "Heavy rain is expected across the north of England on Thursday.",
    "What time does the museum open on public holidays?",
]


def calibration_feeds(tokenizer, texts: list[str] | None = None, batch: int = 8) -> list[dict]:
    texts = texts or CALIBRATION_TEXTS
    feeds = []
    for i in range(0, len(texts), batch):
        b = tokenizer.encode(texts[i : i + batch])
        feeds.append({"input_ids": b.input_ids, "attention_mask": b.attention_mask, "token_type_ids": b.token_type_ids})
    return feeds


def calibrate_zero_points(model, names: list[str], feeds: list[dict]) -> dict[str, int]:
    """For each tensor, the fixed zero point that wastes the fewest levels over its rows (tokens):
    runs the fp32 graph on sample inputs and, for each candidate zp, measures how much coarser each
    row's step s(zp) is than the ideal (max - min) / 255; returns the zp with the least mean loss."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    lo: dict[str, list] = {n: [] for n in names}
    hi: dict[str, list] = {n: [] for n in names}
    for feed in feeds:
        mask = feed["attention_mask"].reshape(-1).astype(bool)
        for n, v in zip(names, sess.run(names, {i.name: feed[i.name] for i in sess.get_inputs()})):
            v = v.reshape(-1, v.shape[-1])[mask]  # real tokens only
            lo[n].append(np.minimum(v.min(1), 0))
            hi[n].append(np.maximum(v.max(1), 0))
    zps = np.arange(1, 255, dtype=np.float64)
    out = {}
    for n in names:
        low, h = np.concatenate(lo[n])[:, None], np.concatenate(hi[n])[:, None]
        ideal = np.maximum((h - low) / 255, EPS)
        step = np.maximum(np.maximum(h / (255 - zps), -low / zps), EPS)
        out[n] = int(zps[np.argmin(np.log(step / ideal).mean(0))])
    return out


def quantize_per_token(
    src: Path, dst: Path, feeds: list[dict] | None = None, weight_bits: int = 8, weight_type: str = "u8"
) -> dict:
    """Rewrite every MatMul with a constant 2-D weight in `src` as the per-token int8 product above;
    write the graph to `dst`. `feeds` (ONNX inputs of sample texts) calibrate the fixed zero points.
    weight_type "s8" stores weights as int8; "u8" as uint8 offset by a zero point of 128 (the same
    levels, run by ONNX Runtime's u8 x u8 kernels, which are exact on every CPU). Returns counts."""
    if weight_type not in ("s8", "u8"):
        raise ValueError(f"weight_type must be s8 or u8, not {weight_type!r}")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    levels = 2 ** (weight_bits - 1) - 1
    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1

    def weight_of(n):
        w = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        return w if w is not None and len(w.dims) == 2 else None

    quantizable = [n for n in g.node if weight_of(n) is not None]
    consumers: dict[str, int] = {}
    for n in quantizable:
        consumers[n.input[0]] = consumers.get(n.input[0], 0) + 1
    # an attention block's input: one tensor read by its query, key and value projections
    per_row = {x for x, c in consumers.items() if c >= 3}
    fixed = [x for x in consumers if x not in per_row]
    zero_points = calibrate_zero_points(model, fixed, feeds) if feeds and fixed else {}

    nodes, new_inits, dropped = [], [], set()
    quantized: dict[str, tuple[str, str, str | int]] = {}

    def const(name: str, arr) -> str:
        new_inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def after_gelu(x: str) -> bool:
        """Is x a GELU's output (x * 0.5 * (1 + erf(x / sqrt 2)), its tanh form, or a fused op)?"""
        n = producer.get(x)
        if n is None:
            return False
        if n.op_type in ("Gelu", "FastGelu", "BiasGelu"):
            return True
        frontier = list(n.input) if n.op_type == "Mul" else []
        for _ in range(3):
            parents = [producer[t] for t in frontier if t in producer]
            if any(p.op_type in ("Erf", "Tanh") for p in parents):
                return True
            frontier = [t for p in parents for t in p.input]
        return False

    def quantize_input(x: str, k: int) -> tuple[str, str, str | int]:
        """x as uint8 rows [M, K], their scales [M, 1], and the zero point: a fixed int, or the
        name of a [M, 1] tensor holding -zp per row. Computed once per tensor."""
        if x in quantized:
            return quantized[x]
        p = f"ptq/in{len(quantized)}/"
        nodes.extend(
            [
                helper.make_node("Reshape", [x, const(p + "shape", np.array([-1, k], np.int64))], [p + "x"]),
                helper.make_node("ReduceMax", [p + "x"], [p + "max"], axes=[1], keepdims=0),
                helper.make_node("ReduceMin", [p + "x"], [p + "min"], axes=[1], keepdims=0),
                helper.make_node("Max", [p + "max", const(p + "zero", np.float32(0))], [p + "hi"]),
                helper.make_node("Min", [p + "min", p + "zero"], [p + "lo"]),
            ]
        )
        if x in per_row:  # s = (hi - lo) / 255, zp = round(-lo / s)
            zp: str | int = p + "neg_zp_col"
            nodes.extend(
                [
                    helper.make_node("Sub", [p + "hi", p + "lo"], [p + "range"]),
                    helper.make_node("Mul", [p + "range", const(p + "inv", np.float32(1 / 255))], [p + "s0"]),
                    helper.make_node("Max", [p + "s0", const(p + "eps", np.float32(EPS))], [p + "s"]),
                    helper.make_node("Div", [p + "lo", p + "s"], [p + "lo_s"]),
                    helper.make_node("Round", [p + "lo_s"], [p + "neg_zp"]),  # -zp, in [-255, 0]
                    helper.make_node("Neg", [p + "neg_zp"], [p + "zpf"]),
                ]
            )
        else:  # fixed zp: s = max(hi / (255 - zp), -lo / zp)
            zp = zero_points.get(x) or (ZP_GELU if after_gelu(x) else ZP_SIGNED)
            nodes.extend(
                [
                    helper.make_node("Mul", [p + "hi", const(p + "up", np.float32(1 / (255 - zp)))], [p + "s_hi"]),
                    helper.make_node("Mul", [p + "lo", const(p + "down", np.float32(-1 / zp))], [p + "s_lo"]),
                    helper.make_node("Max", [p + "s_hi", p + "s_lo", const(p + "eps", np.float32(EPS))], [p + "s"]),
                    # per-axis QuantizeLinear wants one zero point per scale: a [M] vector of zp
                    helper.make_node("Mul", [p + "s", p + "zero"], [p + "zeros"]),
                    helper.make_node("Add", [p + "zeros", const(p + "zp_value", np.float32(zp))], [p + "zpf"]),
                ]
            )
        nodes.extend(
            [
                helper.make_node("Cast", [p + "zpf"], [p + "zp"], to=TensorProto.UINT8),
                helper.make_node("QuantizeLinear", [p + "x", p + "s", p + "zp"], [p + "q2"], axis=0),
                # back to x's shape, so the products and what follows them keep their shapes
                helper.make_node("Shape", [x], [p + "x_shape"]),
                helper.make_node("Reshape", [p + "q2", p + "x_shape"], [p + "q"]),
                helper.make_node("Shape", [x], [p + "row_shape"], end=-1),
                helper.make_node(
                    "Concat",
                    [p + "row_shape", const(p + "one_col", np.array([1], np.int64))],
                    [p + "col_shape"],
                    axis=0,
                ),
                helper.make_node("Reshape", [p + "s", p + "col_shape"], [p + "s_col"]),
            ]
        )
        if x in per_row:
            nodes.append(helper.make_node("Reshape", [p + "neg_zp", p + "col_shape"], [str(zp)]))
        quantized[x] = (p + "q", p + "s_col", zp)
        return quantized[x]

    for i, n in enumerate(g.node):
        w = weight_of(n)
        if w is None:
            nodes.append(n)
            continue
        W = numpy_helper.to_array(w).astype(np.float32)  # [K, N]
        k, n_out = W.shape
        w_scale = (np.maximum(np.abs(W).max(axis=0), EPS) / levels).astype(np.float32)
        Wq = np.clip(np.round(W / w_scale), -levels, levels).astype(np.int8)
        x = n.input[0]
        q, s, zp = quantize_input(x, k)
        p = f"ptq/mm{i}/"
        stored = Wq if weight_type == "s8" else (Wq.astype(np.int16) + 128).astype(np.uint8)
        ins = [q, const(p + "Wq", stored), const(p + "one", np.float32(1)), const(p + "w_scale", w_scale)]
        a_zp = const(p + "zp", np.uint8(zp)) if isinstance(zp, int) else ""  # "" = no input zero point
        b_zp = [const(p + "w_zp", np.uint8(128))] if weight_type == "u8" else []
        ins += [a_zp] + b_zp if (isinstance(zp, int) or b_zp) else []
        if isinstance(zp, int):
            nodes.append(helper.make_node("MatMulIntegerToFloat", ins, [p + "yc"], domain="com.microsoft"))
        else:  # (q - zp) @ W = q @ W - zp * colsum(W): the zero point's share as one rank-1 update
            colsum = (Wq.astype(np.float32) * w_scale).sum(axis=0).astype(np.float32)
            nodes.extend(
                [
                    helper.make_node("MatMulIntegerToFloat", ins, [p + "y"], domain="com.microsoft"),
                    helper.make_node("Mul", [zp, const(p + "colsum", colsum)], [p + "zp_share"]),
                    helper.make_node("Add", [p + "y", p + "zp_share"], [p + "yc"]),
                ]
            )
        nodes.append(helper.make_node("Mul", [p + "yc", s], [n.output[0]]))
        uses[w.name] -= 1
        if uses[w.name] == 0:
            dropped.add(w.name)
    kept = [t for t in g.initializer if t.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    return {
        "scheme": SCHEME,
        "weight_bits": weight_bits,
        "weight_type": weight_type,
        "matmuls": len(quantizable),
        "per_row_zero_points": len(per_row),
        "fixed_zero_points": len(fixed),
        "calibrated": bool(zero_points),
    }
