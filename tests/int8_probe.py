"""Does this CPU's ONNX Runtime multiply an int8 encoding's weights exactly? Run as a script (also
under an emulated CPU: `qemu-x86_64 -cpu Haswell python tests/int8_probe.py`), it prints one JSON
line: the CPU class sentmtl sees, the encoding it picks, and each encoding's worst relative error
against the exact integer product on inputs chosen to saturate a 16-bit pairwise sum."""

import json

import numpy as np


def product_error(weight_type: str, weight_bits: int = 8, k: int = 256, n: int = 64, m: int = 16) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    levels = 2 ** (weight_bits - 1) - 1
    wq = rng.choice([-levels, levels], size=(k, n)).astype(np.int64)  # extreme weights ...
    q = rng.choice([0, 255], size=(m, k)).astype(np.int64)  # ... and extreme activations
    stored = wq.astype(np.int8) if weight_type == "s8" else (wq + 128).astype(np.uint8)
    ins = ["q", "w", "one", "one"]
    inits = [numpy_helper.from_array(stored, "w"), numpy_helper.from_array(np.float32(1), "one")]
    if weight_type == "u8":
        inits += [numpy_helper.from_array(np.uint8(0), "azp"), numpy_helper.from_array(np.uint8(128), "wzp")]
        ins += ["azp", "wzp"]
    node = helper.make_node("MatMulIntegerToFloat", ins, ["y"], domain="com.microsoft")
    g = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"q": q.astype(np.uint8)})[0].astype(np.float64)
    ref = (q @ wq).astype(np.float64)
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def main() -> None:
    from sentmtl_cli.export.quantize import cpu_class, weight_type_for

    print(
        json.dumps(
            {
                "cpu": cpu_class(),
                "weight_type": weight_type_for(),
                "u8": product_error("u8"),
                "s8_8bit": product_error("s8", 8),
                "s8_7bit": product_error("s8", 7),
            }
        )
    )


if __name__ == "__main__":
    main()
