"""Learning without RL: a surrogate of a policy's search-val KL fitted on evaluated policies, and the hill climber it
screens (the budget-conditioned agent's control in the bench's transfer experiment).

The surrogate is the LUT's additive proxy recalibrated per unit::

    KL(policy) ~ c + sum_l beta_l * proxy_l(w_l, a_l)

``proxy`` is the ILP's grid (:func:`hysquant_rl.search.allocation.proxy_grid`, KL per unit measured alone); ``beta``
is fitted by ridge regression shrunk towards 1 (the LUT as it is), its penalty chosen by leave-one-out error over a
grid that ends with "no correction at all" (an infinite penalty), and clipped to at least :data:`MIN_BETA` so the
recalibrated grid keeps the proxy's order within a unit (fewer bits never look better). It sees what the evaluations
say about each unit in the context of whole policies (a unit that matters more, or less, than alone); it cannot see
interactions between units, which is what an RL critic might. Torch-free.

The fit is trusted only where its data are: evaluations near the integer program's policies (the agent explores
``search.offset_range`` grid steps around them) say little about a unit far from those bits, and an integer program
over the recalibrated proxy left free exploits exactly those errors (a unit whose factor fell towards
:data:`MIN_BETA` is sent to its fewest bits; in the bench's first transfer run that cost 19 to 28 points of test
top-1). So its answer is solved within :func:`trust_region`: the same box around the ILP's policy that the agent's
actions span.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hysquant_rl.bits import GRID, grid_at, to_index
from hysquant_rl.search.baselines import LocalSearch
from hysquant_rl.search.problem import SearchProblem, policy_key

if TYPE_CHECKING:
    from hysquant_rl.search.recorder import Recorder
    from hysquant_rl.settings import SearchSettings

MIN_BETA = 0.05  # a unit's recalibration factor never falls below this
RELATIVE_PENALTIES = (*(10.0**e for e in range(-4, 3)), np.inf)  # ridge penalties / mean squared singular value


def trust_region(mask: np.ndarray, centre: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` (L, GRID, GRID) narrowed to the pairs within ``steps`` grid steps of ``centre`` (L, 2) on each operand
    (the box the warm-started agent's offsets span; ``envs/hysquant_env.py``)."""
    idx, axis = to_index(centre), np.arange(GRID)
    w_ok = np.abs(axis[None, :] - idx[:, :1]) <= steps  # (L, GRID)
    a_ok = np.abs(axis[None, :] - idx[:, 1:]) <= steps
    return mask & w_ok[:, :, None] & a_ok[:, None, :]


def evaluated(cache: dict[bytes, dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The policies (N, L, 2) of an evaluation cache (:attr:`SearchProblem.cache`, keyed by
    :func:`~hysquant_rl.search.problem.policy_key`) and their search-val KL (N,); NaN evaluations left out."""
    keys = [k for k, m in cache.items() if np.isfinite(m.get("kl", np.nan))]
    bits = np.array([np.frombuffer(k, dtype=np.int8).reshape(-1, 2) for k in keys], dtype=np.int64)
    return bits, np.array([cache[k]["kl"] for k in keys], dtype=np.float64)


@dataclass(frozen=True)
class Surrogate:
    """The fitted model (module docstring): ``proxy`` (L, GRID, GRID), ``beta`` (L,), ``intercept`` [nats],
    ``penalty`` the ridge penalty chosen (inf: no correction), ``loo_rmse`` its leave-one-out error [nats]."""

    proxy: np.ndarray
    beta: np.ndarray
    intercept: float
    penalty: float
    loo_rmse: float

    @classmethod
    def fit(cls, proxy: np.ndarray, policies: np.ndarray, kl: np.ndarray) -> Surrogate:
        """Fit on ``policies`` (N, L, 2) with search-val ``kl`` (N,) (see the module docstring)."""
        x = cls.features_of(proxy, policies)
        r = np.asarray(kl, dtype=np.float64) - x.sum(axis=1)  # what the LUT's sum leaves unexplained
        n = len(r)
        if n < 3:  # too few to correct anything: the LUT as it is
            return cls(proxy, np.ones(proxy.shape[0]), float(np.mean(r)) if n else 0.0, np.inf, float("nan"))
        xm, rm = x.mean(axis=0), r.mean()
        xc, rc = x - xm, r - rm
        u, s, vt = np.linalg.svd(xc, full_matrices=False)
        scale = float(np.mean(s**2)) or 1.0
        best = None
        for rel in RELATIVE_PENALTIES:
            shrink = np.zeros_like(s) if np.isinf(rel) else s / (s**2 + rel * scale)
            delta = vt.T @ (shrink * (u.T @ rc))
            hat = np.einsum("ij,j,ij->i", u, s * shrink, u) + 1.0 / n  # leverage, the intercept included
            loo = (rc - xc @ delta) / np.maximum(1.0 - hat, 1e-9)
            err = float(np.sqrt(np.mean(loo**2)))
            if best is None or err < best[0] - 1e-15:
                best = (err, rel, delta)
        err, rel, delta = best
        beta = np.maximum(1.0 + delta, MIN_BETA)
        return cls(proxy, beta, float(rm - xm @ delta), float(rel * scale), err)

    @staticmethod
    def features_of(proxy: np.ndarray, policies: np.ndarray) -> np.ndarray:
        """Each unit's proxy value (N, L) at each policy of ``policies`` (N, L, 2)."""
        return np.stack([grid_at(proxy, bits) for bits in np.asarray(policies)]).reshape(len(policies), -1)

    def predict(self, policies: np.ndarray) -> np.ndarray:
        """Predicted search-val KL (N,) [nats] of ``policies`` (N, L, 2)."""
        return self.intercept + self.features_of(self.proxy, policies) @ self.beta

    def grid(self) -> np.ndarray:
        """The recalibrated proxy (L, GRID, GRID): what the integer program minimises to answer with no evaluation."""
        return self.proxy * self.beta[:, None, None]


class SurrogateSearch(LocalSearch):
    """The hill climber of ``local`` (:class:`~hysquant_rl.search.baselines.LocalSearch`) screened by a surrogate:
    it starts from the integer program over the surrogate's recalibrated proxy (fitted to the budgets) within
    :func:`trust_region` of the plain integer program's policy (``search.offset_range`` steps), and each next
    episode evaluates, of ``screen`` new mutants of the incumbent, the one the surrogate predicts best, the surrogate
    refitted first on ``seen`` (the evaluations it was trained on: policies (N, L, 2), KL (N,)) and this search's own
    evaluations. With no evaluation, :meth:`initial` is its answer."""

    def __init__(
        self,
        search: SearchSettings,
        problem: SearchProblem,
        recorder: Recorder,
        out: Path,
        seen: tuple[np.ndarray, np.ndarray],
        screen: int,
    ) -> None:
        super().__init__(search, problem, recorder, out)
        self.seen, self.screen = seen, max(1, screen)
        self.surrogate = Surrogate.fit(problem.proxy, *seen)

    def initial(self) -> np.ndarray | None:
        centre = self.problem.ilp()
        if centre is None:
            return None
        box = trust_region(self.problem.mask, centre, self.problem.offset_range)
        bits = self.problem.ilp(self.surrogate.grid(), mask=box)
        return None if bits is None else self.problem.fitted(bits)

    def propose(self, incumbent: np.ndarray) -> np.ndarray:
        own = evaluated(self.problem.cache)
        self.surrogate = Surrogate.fit(
            self.problem.proxy, np.concatenate([self.seen[0], own[0]]), np.concatenate([self.seen[1], own[1]])
        )
        mutants: dict[bytes, np.ndarray] = {}
        for _ in range(self.screen):
            bits = self.problem.fitted(super().propose(incumbent))
            if policy_key(bits) not in self.problem.cache:
                mutants.setdefault(policy_key(bits), bits)
        if not mutants:
            return bits  # every draw repeated: a repeat, as local's
        policies = list(mutants.values())
        return policies[int(np.argmin(self.surrogate.predict(np.stack(policies))))]
