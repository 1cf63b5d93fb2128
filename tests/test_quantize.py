"""The per-token int8 rewrite on small graphs: its numbers against float, and its choices."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sentmtl_cli.quantize import calibrate_zero_points, exact_weight_bits, quantize_per_token  # noqa: E402

K, N = 64, 48


def _graph(path, rng):
    """x -> LayerNorm-like input shared by three MatMuls (an attention block's Q, K, V), and a
    GELU (erf form) feeding a fourth: the two kinds of input the rewrite tells apart."""
    ws = {f"w{i}": rng.standard_normal((K, N)).astype(np.float32) / 8 for i in range(3)}
    ws["w3"] = rng.standard_normal((N, N)).astype(np.float32) / 8
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]) for i in range(3)]
    nodes += [
        helper.make_node("Div", ["y0", "sqrt2"], ["g0"]),
        helper.make_node("Erf", ["g0"], ["g1"]),
        helper.make_node("Add", ["g1", "one"], ["g2"]),
        helper.make_node("Mul", ["y0", "g2"], ["g3"]),
        helper.make_node("Mul", ["g3", "half"], ["gelu"]),
        helper.make_node("MatMul", ["gelu", "w3"], ["y3"]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in ws.items()]
    inits += [numpy_helper.from_array(np.float32(v), k) for k, v in (("sqrt2", 2 ** 0.5), ("one", 1.0), ("half", 0.5))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", K])],
                          [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["b", "t", N]) for i in (0, 1, 2, 3)],
                          inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return model


def _run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def _inputs(rng, b=3, t=5):
    x = rng.standard_normal((b, t, K)).astype(np.float32)
    x[..., 7] -= 6.0  # an outlier channel, as LayerNorm outputs have: rows sit off-centre
    x[1] *= 4.0  # one text with far larger activations than the others
    return x


@pytest.mark.parametrize("bits", [7, 8])
def test_rewrite_matches_float_and_marks_inputs(tmp_path, bits):
    rng = np.random.default_rng(0)
    _graph(tmp_path / "f.onnx", rng)
    x = _inputs(rng)
    feeds = [{"x": _inputs(rng), "attention_mask": np.ones((3, 5), np.int64)}]
    info = quantize_per_token(tmp_path / "f.onnx", tmp_path / "q.onnx", feeds, weight_bits=bits)
    assert info["matmuls"] == 4 and info["per_row_zero_points"] == 1 and info["fixed_zero_points"] == 1
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "MatMulIntegerToFloat" in ops and "MatMul" not in ops
    for ref, got in zip(_run(tmp_path / "f.onnx", x), _run(tmp_path / "q.onnx", x)):
        rel = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert rel.max() < (0.02 if bits == 8 else 0.04), rel.max()


def test_rows_do_not_depend_on_each_other(tmp_path):
    rng = np.random.default_rng(1)
    _graph(tmp_path / "f.onnx", rng)
    quantize_per_token(tmp_path / "f.onnx", tmp_path / "q.onnx", None)
    x = _inputs(rng)
    together = _run(tmp_path / "q.onnx", x)
    for b in range(x.shape[0]):
        alone = _run(tmp_path / "q.onnx", x[b : b + 1])
        for t_all, t_one in zip(together, alone):
            np.testing.assert_array_equal(t_all[b], t_one[0])


def test_zero_point_calibration_follows_the_data(tmp_path):
    rng = np.random.default_rng(2)
    model = _graph(tmp_path / "f.onnx", rng)
    x = rng.standard_normal((2, 6, K)).astype(np.float32)
    feeds = [{"x": x + 3.0, "attention_mask": np.ones((2, 6), np.int64)}]  # mostly positive rows
    zp = calibrate_zero_points(model, ["x", "gelu"], feeds)
    assert zp["x"] < 64  # zero sits low in a mostly positive row's range
    assert zp["gelu"] < 40  # GELU outputs are never below -0.17
    feeds = [{"x": x - 3.0, "attention_mask": np.ones((2, 6), np.int64)}]
    assert calibrate_zero_points(model, ["x"], feeds)["x"] > 192


def test_exact_weight_bits_is_7_or_8():
    assert exact_weight_bits() in (7, 8)
