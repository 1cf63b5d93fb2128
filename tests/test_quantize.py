"""The per-token int8 rewrite on small graphs: its numbers against float, and its choices."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sentmtl_cli.export.quantize import (  # noqa: E402
    calibrate_zero_points,
    cpu_class,
    exact_on_this_cpu,
    quantize_per_token,
    weight_type_for,
)

from int8_probe import product_error  # noqa: E402

NO_VNNI = "this CPU has no AVX-512 VNNI: its u8 x s8 products saturate 8-bit int8 weights (not used here)"

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
    inits += [numpy_helper.from_array(np.float32(v), k) for k, v in (("sqrt2", 2**0.5), ("one", 1.0), ("half", 0.5))]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", K])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["b", "t", N]) for i in (0, 1, 2, 3)],
        inits,
    )
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


@pytest.mark.parametrize("weight_type,bits", [("u8", 8), ("s8", 7), ("s8", 8)])
def test_rewrite_matches_float_and_marks_inputs(tmp_path, weight_type, bits):
    """u8 and 7-bit s8 run exactly on every CPU, so they are tested everywhere; 8-bit s8 only where
    the CPU multiplies it exactly."""
    if not exact_on_this_cpu(weight_type, bits):
        pytest.skip(NO_VNNI)
    rng = np.random.default_rng(0)
    _graph(tmp_path / "f.onnx", rng)
    x = _inputs(rng)
    feeds = [{"x": _inputs(rng), "attention_mask": np.ones((3, 5), np.int64)}]
    info = quantize_per_token(
        tmp_path / "f.onnx", tmp_path / "q.onnx", feeds, weight_bits=bits, weight_type=weight_type
    )
    assert info["weight_type"] == weight_type
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


def test_u8_and_s8_encodings_give_the_same_numbers(tmp_path):
    """The two encodings hold the same levels, so where both run exactly they agree bit for bit:
    an export made on any CPU gives the numbers the docs state."""
    if not exact_on_this_cpu("s8", 8):
        pytest.skip(NO_VNNI)
    rng = np.random.default_rng(3)
    _graph(tmp_path / "f.onnx", rng)
    x = _inputs(rng)
    for wt in ("s8", "u8"):
        quantize_per_token(tmp_path / "f.onnx", tmp_path / f"{wt}.onnx", None, weight_bits=8, weight_type=wt)
    for a, b in zip(_run(tmp_path / "s8.onnx", x), _run(tmp_path / "u8.onnx", x)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * np.abs(a).max())


def test_this_cpus_encoding_multiplies_exactly():
    """On inputs that saturate a 16-bit pairwise sum, the encoding chosen for this CPU gives the exact
    integer product; so do u8 and 7-bit s8 on every CPU."""
    machine = platform.machine().lower()
    family = {"x86_64": ("x86-vnni", "x86"), "amd64": ("x86-vnni", "x86"), "aarch64": ("arm64",), "arm64": ("arm64",)}
    assert cpu_class() in family.get(machine, ("other",)), (machine, cpu_class())
    assert weight_type_for() == ("s8" if cpu_class() == "x86-vnni" else "u8")
    assert product_error(weight_type_for()) < 1e-6
    assert product_error("u8") < 1e-6
    assert product_error("s8", 7) < 1e-6


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="emulates an x86-64 CPU")
def test_avx2_only_cpu_is_given_exact_weights_emulated():
    """The CPU class a VNNI machine cannot show: an AVX2-only x86-64 (as on AMD EPYC before Zen 4),
    emulated by qemu-user. There 8-bit int8 weights saturate (the probe must see it, or the
    emulation proves nothing), and sentmtl picks u8, which stays exact."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 is not installed (.ci/run installs Debian's qemu-user for this test)")
    probe = Path(__file__).with_name("int8_probe.py")
    r = subprocess.run(
        [qemu, "-cpu", "Haswell", sys.executable, str(probe)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["cpu"] == "x86" and got["weight_type"] == "u8", got
    assert got["s8_8bit"] > 0.05, got  # the emulated CPU saturates, as the real one did
    assert got["u8"] < 1e-6 and got["s8_7bit"] < 1e-6, got
