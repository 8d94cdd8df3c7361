"""Pruning rules (paper section 4): per layer, the bit-widths the LUT says are too damaging are taken out of the
search space before any search runs.

Per layer, allowed weight and activation bit ranges within 2..8 (the search's integer bit-widths), raised above
every tested bit-width whose damage exceeds the thresholds of :class:`PruneRules`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hysquant_rl.bits import FP32_INDEX, GRID, MAX_BITS, MIN_BITS, label, to_index
from hysquant_rl.errors import HySquantError

SPACE_CONVENTION = (
    "policies counted over the search space's cells: per unit its allowed (w, a) pairs, FP32 on either operand"
    f" counted as a choice ({GRID} x {GRID} = {GRID**2} cells before pruning in the simulated space, bits"
    f" {MIN_BITS}..{MAX_BITS} and FP32); per activation-only unit its allowed a-widths ({GRID} before pruning);"
    " log10 of the product over units"
)


@dataclass(frozen=True)
class PruneRules:
    """When a tested bit-width is too damaging for one layer (config ``prune:``).

    A configuration fails when its top-1 drop exceeds ``max_drop`` (points) or its KL exceeds ``max_kl``
    (nats); ``None`` switches that test off. Top-1 on a few hundred images moves in steps of 1/N and is noisy;
    KL is smooth and sees damage before any label flips, so either one can prune.
    """

    max_drop: float | None = 1.0
    max_kl: float | None = 0.02

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any]) -> PruneRules:
        def value(key: str) -> float | None:
            v = node.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise HySquantError(f"prune.{key}={v!r} must be a non-negative number, or null to switch it off")
            return float(v)

        return cls(max_drop=value("max_drop"), max_kl=value("max_kl"))

    def fails(self, drop: float, kl: float) -> bool:
        return (self.max_drop is not None and drop > self.max_drop) or (self.max_kl is not None and kl > self.max_kl)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Allowed:
    """One layer's allowed bit ranges after pruning, inclusive, within 2..8; ``reason`` says what raised a
    minimum (empty when nothing did)."""

    w: tuple[int, int]
    a: tuple[int, int]
    reason: str = ""
    weighted: bool = True  # False: an activation-only unit, whose w range is the whole grid and means nothing

    @property
    def pairs(self) -> int:
        """Distinct policies of this unit inside the ranges: (w, a) pairs, or a-widths for an activation-only one."""
        return (self.w[1] - self.w[0] + 1 if self.weighted else 1) * (self.a[1] - self.a[0] + 1)


def prune(
    configs: Sequence[tuple[int, int]],
    drop: np.ndarray,
    kl: np.ndarray,
    rules: PruneRules,
    weighted: Sequence[bool] | None = None,
) -> list[Allowed]:
    """Allowed ranges per layer from ``drop`` and ``kl`` (L, C) measured at ``configs``; ``weighted[l]`` False
    marks an activation-only unit: only its activation bit-widths are tested, its w range stays 2..8.

    A bit-width ``b`` of one operand is tested by the configuration with ``b`` on that operand and the other
    operand at the most bits any configuration gives it (W8A4 tests A4, W8A8 tests A8 and W8, W4A8 tests
    W4), so that the damage is this operand's; bit-widths without such a configuration are not tested. If a
    test fails, bit-widths up to ``b`` are pruned (fewer bits never hurt less) and the minimum becomes the
    next tested bit-width above the highest failing one: bit-widths in between were not measured, so they
    are not trusted (the paper's rule: a layer whose A4 hurts keeps 8-bit activations). Failing even at the
    highest tested bit-width, or with none tested above, the layer keeps 8. Maxima stay 8: more bits never
    hurt accuracy, and the budget decides whether they are affordable.
    """
    out = []
    for l in range(len(drop)):
        has_weight = True if weighted is None else bool(weighted[l])
        lows, reasons = [MIN_BITS, MIN_BITS], []
        for operand, name in ((0, "W"), (1, "A")) if has_weight else ((1, "A"),):
            lows[operand], why = _lowest(configs, drop[l], kl[l], rules, operand, name)
            reasons += [why] if why else []
        out.append(Allowed((lows[0], MAX_BITS), (lows[1], MAX_BITS), "; ".join(reasons), has_weight))
    return out


def _lowest(
    configs: Sequence[tuple[int, int]], drop: np.ndarray, kl: np.ndarray, rules: PruneRules, operand: int, name: str
) -> tuple[int, str]:
    other = 1 - operand
    best_other = max(c[other] for c in configs)
    # bit-width -> the configuration that tests it: the other operand at its most bits, so that a failure is
    # this operand's (W8A4 tests A4; W4A8 tests W4 and says nothing about A8)
    tested = {c[operand]: j for j, c in enumerate(configs) if c[other] == best_other}
    failing = [b for b in sorted(tested) if rules.fails(float(drop[tested[b]]), float(kl[tested[b]]))]
    if not failing:
        return MIN_BITS, ""
    b = failing[-1]
    j = tested[b]
    lowest = min((x for x in tested if x > b), default=MAX_BITS)
    return lowest, (
        f"{name}{b} fails at {label(*configs[j])} (top-1 drop {drop[j]:.2f}, KL {kl[j]:.3g}):"
        f" {name.lower()} >= {lowest}"
    )


def box_mask(
    w_range: Sequence[tuple[int, int]],
    a_range: Sequence[tuple[int, int]],
    weighted: Sequence[bool] | None = None,
    fp32: bool = True,
) -> np.ndarray:
    """(L, GRID, GRID) mask of the pairs inside each unit's allowed integer [w_min, w_max] x [a_min, a_max], with FP32
    on either operand allowed besides (``fp32``; FP32 is always a choice of a search: the pruning rules test integer
    bit-widths only); an activation-only unit (``weighted[l]`` False) keeps its diagonal only (its w is its a)."""
    mask = np.zeros((len(w_range), GRID, GRID), dtype=bool)
    w_ok = np.zeros(GRID, dtype=bool)
    a_ok = np.zeros(GRID, dtype=bool)
    for l, ((w0, w1), (a0, a1)) in enumerate(zip(w_range, a_range)):
        w_ok[:] = a_ok[:] = False
        w_ok[to_index(w0) : to_index(w1) + 1] = True
        a_ok[to_index(a0) : to_index(a1) + 1] = True
        w_ok[FP32_INDEX] = a_ok[FP32_INDEX] = fp32
        mask[l] = w_ok[:, None] & a_ok[None, :]
        if weighted is not None and not weighted[l]:
            mask[l] &= np.eye(GRID, dtype=bool)
    return mask
