"""The machine a runtime measurement was made on: the CPU's model, its logical CPUs and the instructions that decide
which integer kernels pay (VNNI dot products, bf16), for every runtime (:meth:`hysquant_rl.deploy.runtimes.Runtime.
machine` adds the runtime and its version).

A runtime measurement (a latency, a per-unit latency table) is only valid on the machine and runtime that made it:
every cache of measurements is keyed by this identity, so that figures measured on one machine are never used
silently on another, and every figure says what it was measured on (:func:`describe`).
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

CAPABILITY_FLAGS = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "avx512f", "avx2")
"""The ``/proc/cpuinfo`` flags a figure reports: int8 dot products (VNNI, AMX), bf16 arithmetic, the vector width."""


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def is_arm() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def has_vnni() -> bool:
    """Whether the CPU has a VNNI int8 dot product (``avx512_vnni`` or ``avx_vnni``; ARM's int8 dot products count
    too). Without it x86 u8 x s8 kernels sum pairs of products in saturating 16-bit registers, which full 8-bit
    weights overflow: onnxruntime's quantization guide (and NNCF's overflow fix for OpenVINO) prescribe 7-bit weights
    on such a CPU, and the ONNX runtime layouts follow them."""
    return is_arm() or bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def has_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (``avx512_bf16`` or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def capabilities() -> dict[str, bool]:
    """What this CPU executes that decides which layout wins: VNNI (int8 dot products), bf16, and each of
    :data:`CAPABILITY_FLAGS`."""
    flags = cpu_flags()
    return {"vnni": has_vnni(), "bf16": has_bf16(), **{f: f in flags for f in CAPABILITY_FLAGS}}


def describe() -> str:
    """One line for a figure's header: ``AMD EPYC, 2 logical CPUs, avx512_vnni avx512_bf16 avx2`` (or ``AVX2 only``,
    ``no VNNI``)."""
    flags = [f for f in CAPABILITY_FLAGS if f in cpu_flags() and f != "avx512f"]
    int8 = "" if has_vnni() else ", no VNNI"
    shown = " ".join(flags) or "none of " + "/".join(CAPABILITY_FLAGS)
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs, flags: {shown}{int8}"
