"""The search space over the bit-width grid (:mod:`hysquant_rl.bits`): which cells ``(w, a)`` each unit may take, and
how a search moves between them.

A space is a mask ``(L, GRID, GRID)`` of bool over the grid's indices (FP32 is the last index on each operand):

* ``simulated`` (the paper's): every integer pair 2..8 x 2..8 and FP32 on either operand, whether or not a kernel
  exists for it (the cost model labels each pair deployable or simulation-only);
* ``executable``: FP32, and the pairs the device profile executes for the unit's kind
  (:meth:`hysquant_rl.hardware.profile.DeviceProfile.executable`): on onnxruntime's CPU provider FP32 or W8A8.

An activation-only unit has no weight: its cells lie on the diagonal (its w is its a). A unit all of whose cells lie
on the diagonal is *tied*: its operands move together (W8A8 <-> FP32 on a runtime), so a search reads its action on
``a`` and keeps ``w = a`` (:meth:`hysquant_rl.search.problem.SearchProblem.canonical`).

Moves: from an allowed cell, the nearest allowed cell in each direction (fewer or more bits on w or on a;
:func:`neighbours`), which on a box of integer bits is one step and between W8A8 and FP32 is the diagonal jump; and
:func:`snap`, the allowed cell nearest to a wish (clipping, on a box).

Torch-free, as everything the search and the cost model read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hysquant_rl.bits import FP32_BITS, FP32_INDEX, GRID, to_index
from hysquant_rl.errors import HySquantError

if TYPE_CHECKING:
    from hysquant_rl.units import UnitInfo

SPACES = ("executable", "simulated")


class Executes(Protocol):
    """What a space asks of a device (:class:`hysquant_rl.hardware.profile.DeviceProfile`): the integer (w, a) pairs
    a unit of ``kind`` runs as real kernels."""

    def executable(self, kind: str) -> tuple[tuple[int, int], ...]: ...


DIRECTIONS = ((0, -1), (0, 1), (1, -1), (1, 1))  # (operand, step): w down, w up, a down, a up


def choice_mask(units: Sequence[UnitInfo], profile: Executes, space: str) -> np.ndarray:
    """(L, GRID, GRID) bool: the cells each unit may take in ``space`` on ``profile``, before pruning (see the module
    docstring). FP32 (both operands) is always a choice."""
    if space not in SPACES:
        raise HySquantError(f"search.space={space!r} is unknown: use one of {', '.join(SPACES)}")
    mask = np.zeros((len(units), GRID, GRID), dtype=bool)
    for l, unit in enumerate(units):
        if space == "simulated":
            mask[l] = True
        else:
            for w, a in profile.executable(unit.kind):
                mask[(l, *to_index((w, a)))] = True
        mask[l, FP32_INDEX, FP32_INDEX] = True
        if not unit.weighted:  # its w is its a
            mask[l] &= np.eye(GRID, dtype=bool)
    return mask


def tied(mask: np.ndarray) -> np.ndarray:
    """(L,) bool: units whose allowed cells all lie on the diagonal (w index = a index)."""
    return ~(mask & ~np.eye(mask.shape[1], dtype=bool)[None]).any(axis=(1, 2))


def neighbours(mask: np.ndarray) -> np.ndarray:
    """(L, GRID, GRID, 4, 2) int: for every allowed cell, the nearest allowed cell in each of :data:`DIRECTIONS`
    (-1 where there is none): the next allowed index along that operand with the other operand kept; where none,
    the nearest allowed cell (L1 in index space, ties to the smaller move of the other operand) whose index on that
    operand lies in that direction. Cells that are not allowed have none."""
    n, g = mask.shape[0], mask.shape[1]
    out = np.full((n, g, g, len(DIRECTIONS), 2), -1, dtype=np.intp)
    for l in range(n):
        cells = np.argwhere(mask[l])
        for w, a in cells:
            here = np.array([w, a])
            for d, (operand, step) in enumerate(DIRECTIONS):
                ahead = (cells[:, operand] - here[operand]) * step > 0
                if not ahead.any():
                    continue
                candidates = cells[ahead]
                other = np.abs(candidates[:, 1 - operand] - here[1 - operand])
                along = np.abs(candidates[:, operand] - here[operand])
                # along the operand with the other kept when possible, else the nearest (L1), smaller jump first
                best = np.lexsort((along, other + along, other > 0))[0]
                out[l, w, a, d] = candidates[best]
    return out


def snap(mask_l: np.ndarray, w: float, a: float) -> tuple[int, int]:
    """The allowed cell of one unit's mask (GRID, GRID) nearest (L1 in index space) to the wish ``(w, a)`` (indices,
    may be fractional or out of range); ties to the lower w, then the lower a. On a box of cells this is clipping."""
    cells = np.argwhere(mask_l)
    if not len(cells):
        raise HySquantError("a unit has no allowed bit-width pair: relax the pruning rules")
    distance = np.abs(cells[:, 0] - w) + np.abs(cells[:, 1] - a)
    w_i, a_i = cells[int(np.argmin(distance))]
    return int(w_i), int(a_i)


def index_ranges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's lowest and highest allowed index on w and on a: two (L, 2) int arrays."""
    top = mask.shape[1] - 1
    w_any, a_any = mask.any(axis=2), mask.any(axis=1)
    w = np.stack([np.argmax(w_any, axis=1), top - np.argmax(w_any[:, ::-1], axis=1)], axis=1)
    a = np.stack([np.argmax(a_any, axis=1), top - np.argmax(a_any[:, ::-1], axis=1)], axis=1)
    return w, a


def uniform_policy(pair: tuple[int, int], mask: np.ndarray, units: Sequence[UnitInfo]) -> np.ndarray:
    """The uniform policy (L, 2) of ``pair`` inside the space ``mask``: each unit at ``pair`` (an activation-only unit
    at ``(a, a)``) where its cells allow it, else at FP32 (on a runtime, "W8A8" is every unit with an int8 kernel
    at W8A8 and the rest in float)."""
    w, a = (int(b) for b in pair)
    wanted = np.array([(w, a) if unit.weighted else (a, a) for unit in units], dtype=np.int64)
    i = to_index(wanted)
    ok = mask[np.arange(len(wanted)), i[:, 0], i[:, 1]]
    return np.where(ok[:, None], wanted, FP32_BITS)
