"""Bit-widths: the constants, the choice grid and its index helpers, and the ``W4A8`` spelling of a pair.

The ground floor of the package: numpy only, no torch, so that pricing a policy, the allocation and the
baselines never load a deep-learning framework.

A policy gives every quantizable layer a pair ``(w_bits, a_bits)``: integers ``MIN_BITS..MAX_BITS`` (2..8),
or ``FP32_BITS`` (32: the operand is not quantized). The search works on the integer part only: the *grid*
is ``GRID_BITS x GRID_BITS`` (7 x 7 over 2..8), and per-layer tables over it are ``(L, GRID, GRID)`` arrays
indexed by :func:`to_index`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from hysquant_rl.errors import HySquantError

FP32_BITS = 32
MIN_BITS, MAX_BITS = 2, 8
GRID_BITS = np.arange(MIN_BITS, MAX_BITS + 1)  # the integer bit-widths a search may pick per operand
GRID = len(GRID_BITS)  # 7: each operand's axis of a (L, GRID, GRID) table
CHOICES: tuple[int, ...] = (*GRID_BITS.tolist(), FP32_BITS)  # every bit-width a policy may use
RANGE_TEXT = f"{MIN_BITS}..{MAX_BITS} or {FP32_BITS}"
FP32_LABEL = "FP32"


def check_bits(bits: Any, what: str = "bit-width") -> int:
    """Return ``bits`` if it is an integer 2..8 or 32 (FP32), else raise a one-line :class:`HySquantError`.
    Numpy integers are accepted; floats and bools are not."""
    if isinstance(bits, np.integer):
        bits = int(bits)
    if isinstance(bits, bool) or not isinstance(bits, int) or not (MIN_BITS <= bits <= MAX_BITS or bits == FP32_BITS):
        raise HySquantError(f"{what} {bits!r} is out of range: use an integer {MIN_BITS}..{MAX_BITS}, or 32 for FP32")
    return bits


def to_index(bits: Any) -> np.ndarray:
    """Bits 2..8 (any int array, e.g. a policy ``(L, 2)``) -> grid indices 0..6 of the same shape."""
    return np.asarray(bits, dtype=np.intp) - MIN_BITS


def to_bits(index: Any) -> np.ndarray:
    """Grid indices 0..6 -> bits 2..8 (inverse of :func:`to_index`)."""
    return np.asarray(index, dtype=np.intp) + MIN_BITS


def grid_at(grid: np.ndarray, bits: Any) -> np.ndarray:
    """Per-layer values ``grid[l, w_l, a_l]`` (L,) of a table ``grid`` (L, GRID, GRID) at a policy ``bits`` (L, 2)."""
    i = to_index(bits)
    return grid[np.arange(len(i)), i[:, 0], i[:, 1]]


def grid_sum(grid: np.ndarray, bits: Any) -> float:
    """Sum over layers of ``grid[l, w_l, a_l]`` for a policy ``bits`` (L, 2)."""
    return float(grid_at(grid, bits).sum())


def uniform_slice(grid: np.ndarray, w_bits: int, a_bits: int) -> np.ndarray:
    """Every layer's value at one pair, e.g. ``uniform_slice(costs, 8, 8)``: (L,)."""
    return grid[:, w_bits - MIN_BITS, a_bits - MIN_BITS]


def label(w_bits: int, a_bits: int) -> str:
    """``W4A8`` for (4, 8); ``FP32`` for (32, 32)."""
    return FP32_LABEL if (w_bits, a_bits) == (FP32_BITS, FP32_BITS) else f"W{w_bits}A{a_bits}"


_UNIFORM = re.compile(r"w(\d+)a(\d+)")


def parse_uniform(spec: str) -> tuple[int, int] | None:
    """``'W8A8'``/``'w4a8'`` -> (8, 8)/(4, 8); ``'fp32'`` -> (32, 32); case-insensitive, surrounding spaces
    ignored. Returns None for anything that is not meant as a uniform spec (e.g. a file path); raises
    HySquantError for a spec that is malformed or out of range (``'W9A8'``, ``'W8'``, ``'fp16'``)."""
    s = spec.strip().lower()
    if s == "fp32":
        return FP32_BITS, FP32_BITS
    m = _UNIFORM.fullmatch(s)
    hint = f"use W<w>A<a> with bits {RANGE_TEXT} (e.g. W8A8, W4A8), or fp32"
    if m:
        w, a = int(m.group(1)), int(m.group(2))
        bad = [
            f"{what} bits {b}"
            for what, b in (("weight", w), ("activation", a))
            if not (MIN_BITS <= b <= MAX_BITS or b == FP32_BITS)
        ]
        if bad:
            raise HySquantError(f"uniform policy {spec!r} has {' and '.join(bad)} out of range: {hint}")
        return w, a
    # Starts like a spec and has no path characters: a typo, not a file name.
    if re.fullmatch(r"(w\d|fp\d)\w*", s):
        raise HySquantError(f"uniform policy {spec!r} is malformed: {hint}")
    return None
