"""Bit-widths: the constants, the choice grid and its index helpers, and the ``W4A8`` spelling of a pair.

The ground floor of the package: numpy only, no torch, so that pricing a policy, the allocation and the
baselines never load a deep-learning framework.

A policy gives every quantizable unit a pair ``(w_bits, a_bits)``: integers ``MIN_BITS..MAX_BITS`` (2..8), or
``FP32_BITS`` (32: the operand is not quantized). FP32 is a choice like any other: the *grid* is ``CHOICES x
CHOICES`` (8 x 8 over 2..8 and FP32, FP32 last), and per-unit tables over it are ``(L, GRID, GRID)`` arrays indexed
by :func:`to_index`. A higher index means more bits on that operand (FP32 above 8). Which cells a search may use is
a mask over the grid: the pruned integer box plus FP32 in the paper's simulation (``search.space=simulated``), or
the runtime's executable pairs (``search.space=executable``: on onnxruntime's CPU provider FP32 or W8A8 per unit).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from hysquant_rl.errors import HySquantError

FP32_BITS = 32
MIN_BITS, MAX_BITS = 2, 8
INT_BITS = np.arange(MIN_BITS, MAX_BITS + 1)  # the integer bit-widths, 2..8
CHOICES: tuple[int, ...] = (*INT_BITS.tolist(), FP32_BITS)  # every bit-width a policy may use, in grid order
GRID_BITS = np.array(CHOICES)  # the grid's axis: index -> bits
GRID = len(CHOICES)  # 8: each operand's axis of a (L, GRID, GRID) table
FP32_INDEX = GRID - 1  # FP32 is the last (richest) choice
RANGE_TEXT = f"{MIN_BITS}..{MAX_BITS} or {FP32_BITS}"
FP32_LABEL = "FP32"
_INDEX = np.full(FP32_BITS + 1, -1, dtype=np.intp)  # bits -> grid index, -1 where not a choice
_INDEX[list(CHOICES)] = np.arange(GRID)


def check_bits(bits: Any, what: str = "bit-width") -> int:
    """Return ``bits`` if it is an integer 2..8 or 32 (FP32), else raise a one-line :class:`HySquantError`.
    Numpy integers are accepted; floats and bools are not."""
    if isinstance(bits, np.integer):
        bits = int(bits)
    if isinstance(bits, bool) or not isinstance(bits, int) or not (MIN_BITS <= bits <= MAX_BITS or bits == FP32_BITS):
        raise HySquantError(f"{what} {bits!r} is out of range: use an integer {MIN_BITS}..{MAX_BITS}, or 32 for FP32")
    return bits


def to_index(bits: Any) -> np.ndarray:
    """Bits 2..8 or 32 (any int array, e.g. a policy ``(L, 2)``) -> grid indices 0..7 of the same shape."""
    b = np.asarray(bits, dtype=np.intp)
    idx = np.take(_INDEX, b, mode="clip")
    if (idx < 0).any() or ((b < 0) | (b > FP32_BITS)).any():
        bad = b[(idx < 0) | (b < 0) | (b > FP32_BITS)].ravel()[0]
        raise HySquantError(f"bit-width {int(bad)} is not a choice: use {RANGE_TEXT}")
    return idx


def to_bits(index: Any) -> np.ndarray:
    """Grid indices 0..7 -> bits 2..8 or 32 (inverse of :func:`to_index`)."""
    return GRID_BITS[np.asarray(index, dtype=np.intp)]


def grid_at(grid: np.ndarray, bits: Any) -> np.ndarray:
    """Per-unit values ``grid[l, w_l, a_l]`` (L,) of a table ``grid`` (L, GRID, GRID) at a policy ``bits`` (L, 2)."""
    i = to_index(bits)
    return grid[np.arange(len(i)), i[:, 0], i[:, 1]]


def grid_sum(grid: np.ndarray, bits: Any) -> float:
    """Sum over units of ``grid[l, w_l, a_l]`` for a policy ``bits`` (L, 2)."""
    return float(grid_at(grid, bits).sum())


def uniform_slice(grid: np.ndarray, w_bits: int, a_bits: int) -> np.ndarray:
    """Every unit's value at one pair, e.g. ``uniform_slice(costs, 8, 8)``: (L,)."""
    w, a = to_index([w_bits, a_bits])
    return grid[:, w, a]


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


def mean_bits(bits: Any, weighted: Any) -> dict[str, float | None]:
    """How a policy (L, 2) spends its bits, the one definition every report uses: ``mean_w_bits`` over the integer
    weights of the units with a weight (``weighted`` (L,) bool), ``mean_a_bits`` over the integer activations (an FP32
    operand has no bit-width to average: it is counted apart), and ``fp32_fraction``, the share of units whose
    activations stay float. None where there is nothing to average."""
    bits, weighted = np.asarray(bits), np.asarray(weighted, dtype=bool)
    w = bits[weighted & (bits[:, 0] != FP32_BITS), 0]
    a = bits[bits[:, 1] != FP32_BITS, 1]
    return {
        "mean_w_bits": float(w.mean()) if w.size else None,
        "mean_a_bits": float(a.mean()) if a.size else None,
        "fp32_fraction": float((bits[:, 1] == FP32_BITS).mean()) if len(bits) else 0.0,
    }
