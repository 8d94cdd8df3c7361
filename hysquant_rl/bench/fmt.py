"""How the verdict and ``bench.md`` write figures: points with a sign, a count of points, a fraction in percent."""

from __future__ import annotations


def signed(x: float | None) -> str:
    """Points with a sign, ``+1.05``; ``-`` for none."""
    return "-" if x is None else f"{x:+.2f}"


def points(x: float) -> str:
    """A count of points, ``1 point``, ``2.5 points``."""
    return f"{x:g} point{'' if x == 1 else 's'}"


def pct(x: float | None) -> str:
    """A fraction in [0, 1] as whole percent, ``90 %``; ``-`` for none."""
    return "-" if x is None else f"{100 * x:.0f} %"


def pm(mean: float | None, std: float | None, fmt: str = ".2f") -> str:
    """``mean ± std``; the mean alone without a std, ``-`` without a mean."""
    if mean is None:
        return "-"
    return f"{mean:{fmt}}" if std is None else f"{mean:{fmt}} ± {std:{fmt}}"
