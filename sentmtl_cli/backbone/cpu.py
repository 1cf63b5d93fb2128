"""Which int8 kernels this CPU runs, as far as an int8 export's weight encoding matters
(export/quantize.py explains why; `sentmtl info` shows the answer)."""

from __future__ import annotations

import platform


def cpu_class() -> str:
    """Which int8 kernels ONNX Runtime will run here, as far as the weights' encoding matters:
    "x86-vnni" (AVX-512 VNNI: u8 x s8 products summed exactly in 32 bits), "x86" (other x86-64:
    u8 x s8 products are added in pairs into 16 bits and can saturate), "arm64", or "other".
    Read from the CPU itself (numpy's cpuid-based detection), not /proc/cpuinfo: an emulated or
    virtualised CPU reports what it really executes."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "other"
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features  # type: ignore[no-redef]
    return "x86-vnni" if features.get("AVX512VNNI") else "x86"


def weight_type_for(cpu: str | None = None) -> str:
    """The weight encoding whose integer products this CPU computes exactly and fastest: int8 ("s8")
    with AVX-512 VNNI; elsewhere uint8 offset by 128 ("u8"), which ONNX Runtime multiplies by
    widening to 16 bits (x86) or with unsigned dot products (ARM64): exact, with the same 8-bit
    levels, so every CPU gives the same numbers (u8 is about 2x slower than s8 on a VNNI CPU)."""
    return "s8" if (cpu or cpu_class()) == "x86-vnni" else "u8"


def exact_on_this_cpu(weight_type: str, weight_bits: int) -> bool:
    """Does this CPU multiply an export's weights without saturating? u8 and 7-bit s8 always do;
    8-bit s8 only with VNNI."""
    return weight_type == "u8" or weight_bits <= 7 or cpu_class() == "x86-vnni"


def int8_status() -> dict:
    """Which int8 encoding this CPU gets, and what that costs (docs/ARCHITECTURE.md has the numbers)."""
    cpu = cpu_class()
    wt = weight_type_for(cpu)
    note = (
        "int8 weights, exact with VNNI; the fastest int8"
        if wt == "s8"
        else "uint8 weights offset by 128, exact without VNNI; same labels and vectors as on a VNNI CPU"
    )
    return {"cpu": cpu, "weights": wt, "weight_bits": 8, "note": note}
