"""``hysquant-search``: the main job (paper section 3.3, ARCHITECTURE.md data flow).

model + splits + calibration -> LUT (cached) and pruning -> budgets -> search on search-val -> hardware check
of the best feasible policy, re-searching with tightened internal budgets while one is missed -> test split,
once -> best_policy.json, the quantized model, summary.json / summary.md, TensorBoard under tb/.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hysquant_rl.allocation import proxy_grid, uniform_frontier
from hysquant_rl.budget import Budgets, cost_grids, policy_totals, resolve
from hysquant_rl.errors import HySquantError, NoPolicyError
from hysquant_rl.export import export_quantized
from hysquant_rl.hardware import load_profile, make_cost_model
from hysquant_rl.io import save_json
from hysquant_rl.pipeline import Pipeline, build
from hysquant_rl.policy import parse_uniform

log = logging.getLogger(__name__)


@dataclass
class Recorder:
    """Per-episode bookkeeping shared by every search method: TensorBoard scalars, the best feasible policy
    (rewritten atomically to ``best_policy.json`` on every improvement) and the episode history."""

    pipe: Pipeline
    out: Path
    method: str
    budgets: Budgets
    writer: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)

    def record(self, info: dict[str, Any]) -> None:
        episode = len(self.history)
        m, t = info["metrics"], info["totals"]
        bits = np.asarray(info["bits"])
        entry = {
            "episode": episode, "reward": info["reward"], "feasible": bool(info["feasible"]),
            "skipped": bool(info.get("skipped", False)),
            "top1": m["top1"], "top5": m["top5"], "kl": m["kl"], "loss": m["loss"], **t,
            "bitops": int(self.pipe.cost.policy_cost(bits).bitops),
            "mean_w_bits": float(bits[:, 0].mean()), "mean_a_bits": float(bits[:, 1].mean()),
            "bits": bits.tolist(),
        }
        self.history.append(entry)
        if info.get("skipped"):
            log.warning("episode %d: evaluation returned NaN; episode skipped", episode)
            return
        floor_ok = self.budgets.min_top1 is None or m["top1"] >= self.budgets.min_top1
        improved = info["feasible"] and floor_ok and (self.best is None or info["reward"] > self.best["reward"])
        if improved:
            self.best = entry
            self.save_best()
        if self.writer is not None:
            w = self.writer
            for key in ("reward", "top1", "top5", "latency_ms", "energy_mj", "size_mb", "bitops", "mean_w_bits", "mean_a_bits"):
                w.add_scalar(f"episode/{key}", entry[key], episode)
            w.add_scalar("episode/kl", entry["kl"], episode)
            if self.best is not None:
                w.add_scalar("best/reward", self.best["reward"], episode)
                w.add_scalar("best/top1", self.best["top1"], episode)
            w.add_histogram("policy/w_bits", bits[:, 0], episode)
            w.add_histogram("policy/a_bits", bits[:, 1], episode)
            if improved:
                rows = "\n".join(f"| {l.name} | {b[0]} | {b[1]} |" for l, b in zip(self.pipe.layers, bits))
                w.add_text("best/policy", f"episode {episode}, reward {entry['reward']:.4f}\n\n| layer | w | a |\n|---|---|---|\n{rows}", episode)

    def best_within(self, limits: dict[str, float]) -> np.ndarray | None:
        """The best-rewarded evaluated policy that meets ``limits`` and the accuracy floor."""
        best = None
        for e in self.history:
            if e["skipped"] or any(e[k] > v * (1 + 1e-9) for k, v in limits.items()):
                continue
            if self.budgets.min_top1 is not None and e["top1"] < self.budgets.min_top1:
                continue
            if best is None or e["reward"] > best["reward"]:
                best = e
        return None if best is None else np.asarray(best["bits"])

    def save_best(self) -> None:
        b = self.best
        policy = self.pipe.policy(
            np.asarray(b["bits"]), method=self.method, episodes=len(self.history),
            wall_time_s=time.perf_counter() - self.started, budgets=self.budgets.to_dict(),
            metrics={"search_val": {k: b[k] for k in ("top1", "top5", "kl", "loss")},
                     "cost": {k: b[k] for k in ("latency_ms", "energy_mj", "size_mb", "bitops")},
                     "episode": b["episode"], "reward": b["reward"]},
        )
        policy.save(self.out / "best_policy.json")


@dataclass
class SearchResult:
    """What a search found before the test split: the policy ``bits`` (L, 2) and how it was found."""

    bits: np.ndarray
    budgets: Budgets
    problem: Any  # envs.SearchProblem: search-val metrics cache, evaluation time
    recorder: Recorder
    rounds: list[dict[str, Any]]
    wall_s: float


def run_search(cfg: Any, out: Path, pipe: Pipeline | None = None) -> dict[str, Any]:
    """The whole job into ``out``; ``pipe`` reuses an already built pipeline of the same config (benchmarks)."""
    from hysquant_rl.sensitivity import build_lut, log_summary

    start = time.perf_counter()
    pipe = pipe or build(cfg)
    lut = build_lut(cfg, pipe)
    log_summary(lut)
    lut.write(out)
    result = search(cfg, pipe, lut, out)
    return finish(cfg, pipe, result.bits, result.budgets, result.recorder, result.rounds, out, start, lut)


def search(cfg: Any, pipe: Pipeline, lut: Any, out: Path, log_lut: bool = True) -> SearchResult:
    """Budgets -> ``search.method`` on search-val -> hardware check, re-searching with tightened internal
    budgets while the checked policy misses one (paper 3.3). Writes TensorBoard (with the LUT's heatmap when
    ``log_lut``: seconds of plotting) and best_policy.json to ``out``."""
    start = time.perf_counter()
    mask = lut.mask()
    budgets = resolve(cfg.budget, pipe.cost, mask)
    log.info("budgets on %s at batch %d: %s", pipe.cost.device, pipe.cost.batch_size, budgets.describe())
    method = str(cfg.search.method)
    if method not in METHODS:
        raise HySquantError(f"unknown search.method={method!r}: use one of {', '.join(METHODS)}")
    proxy_name = str(cfg.search.proxy)
    if proxy_name not in PROXIES:
        raise HySquantError(f"search.proxy={proxy_name!r} is unknown: use one of {', '.join(PROXIES)}")
    grids, fixed = cost_grids(pipe.cost)
    proxy = proxy_grid(lut.configs, lut.matrix(proxy_name))
    from torch.utils.tensorboard import SummaryWriter

    recorder = Recorder(pipe, out, method, budgets, writer=SummaryWriter(str(out / "tb")))
    if log_lut:
        lut.log_to(recorder.writer)

    # Hardware feedback (paper 3.3): the internal budgets start at the user's and tighten by the
    # measured-over-modelled ratio while the checked policy misses one.
    check_cost = make_cost_model(pipe.layers, pipe.matmuls, load_profile(cfg.hardware))
    internal = dict(budgets.limits)
    rounds = []
    problem = make_problem(cfg, pipe, lut, proxy, mask, grids, fixed, budgets)
    searcher = METHODS[method](cfg, pipe, problem, recorder, out)
    best_bits = None
    try:
        for r in range(int(cfg.search.max_rounds)):
            bits = searcher.run(internal, round_index=r)
            if bits is None:
                raise NoPolicyError(f"search.method={method} found no policy within {budgets.describe()}: relax the budgets")
            modelled = {k: v for k, v in problem.totals(bits).items() if k in budgets.limits}
            checked = policy_totals(check_cost, bits)
            top1 = problem.metrics(bits)["top1"]
            holds = budgets.holds(checked, top1)
            rounds.append({"round": r, "internal_limits": dict(internal), "modelled": modelled, "checked": checked,
                           "backend": check_cost.backend, "holds": holds})
            log.info("round %d: checked on %s (%s): %s", r, check_cost.backend, check_cost.device,
                     ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in holds.items()) or "no budget")
            best_bits = bits
            if all(holds.values()):
                break
            for k, limit in budgets.limits.items():
                if checked[k] > limit:
                    internal[k] = internal[k] * limit / checked[k]
    finally:
        recorder.writer.close()
    return SearchResult(np.asarray(best_bits), budgets, problem, recorder, rounds, time.perf_counter() - start)


def finish(cfg, pipe, bits, budgets, recorder, rounds, out, start, lut) -> dict[str, Any]:
    """Test split once; best_policy.json, quantized model, summary.json / summary.md."""
    n = len(pipe.layers)
    rows = {spec: [parse_uniform(spec)] * n for spec in ["FP32", *map(str, cfg.search.reference)]}
    uniform = best_uniform(pipe, budgets)
    if uniform is not None:
        rows[f"best uniform in budget ({uniform[0]})"] = [uniform[1]] * n
    rows["best policy"] = bits
    table = {}
    for name, b in rows.items():
        m = pipe.measure(b, ("search_val", "test"))
        totals = policy_totals(pipe.cost, b)
        table[name] = {**m, "holds": budgets.holds(totals, m["search_val"]["top1"])}
        if name in cfg.search.reference:  # the uniform reference policies, as policy JSON too
            pipe.policy(b, method="uniform", metrics=m).save(out / "policies" / f"uniform_{name}.json")
    policy = pipe.policy(
        np.asarray(bits), method=str(cfg.search.method), episodes=len(recorder.history),
        wall_time_s=time.perf_counter() - start, budgets=budgets.to_dict(), metrics=table["best policy"],
        rounds=rounds,
    )
    policy.save(out / "best_policy.json")
    pipe.qmodel.apply_bits(policy.bits())
    export_quantized(pipe.qmodel, policy, pipe.spec.to_dict(), out)
    summary = {"model": pipe.spec.to_dict(), "data": pipe.data.name, "device": pipe.cost.device,
               "batch_size": pipe.cost.batch_size, "budgets": budgets.to_dict(), "rounds": rounds,
               "episodes": len(recorder.history), "wall_time_s": time.perf_counter() - start, "policies": table}
    save_json(summary, out / "summary.json")
    (out / "summary.md").write_text(summary_markdown(summary))
    log.info("\n%s", summary_markdown(summary))
    return summary


def best_uniform(pipe: Pipeline, budgets: Budgets) -> tuple[str, tuple[int, int]] | None:
    """The uniform (w, a) in 2..8 that meets every cost budget with the best search-val KL. Only pairs with no
    feasible pair above them on both operands are evaluated (more bits are never cheaper)."""
    n = len(pipe.layers)
    frontier = uniform_frontier(lambda w, a: all(budgets.holds(policy_totals(pipe.cost, [(w, a)] * n)).values()))
    scored = [(pipe.evaluator.evaluate([pair] * n, "search_val").kl, pair) for pair in frontier]
    if not scored:
        return None
    _, (w, a) = min(scored)
    return f"W{w}A{a}", (w, a)


def summary_markdown(s: dict[str, Any]) -> str:
    lines = [
        f"# Search summary: {s['model']['name']} on {s['data']}, {s['device']} at batch {s['batch_size']}",
        "", f"Budgets: {json.dumps(s['budgets'])}", "",
        "| policy | test top-1 | test top-5 | search-val top-1 | latency (ms) | energy (mJ) | size (MB) | BitOps | budgets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s["policies"].items():
        c = m["cost"]
        holds = ", ".join(f"{k} {'ok' if v else 'missed'}" for k, v in m["holds"].items()) or "-"
        lines.append(
            f"| {name} | {m['test']['top1']:.2f} | {m['test']['top5']:.2f} | {m['search_val']['top1']:.2f} |"
            f" {c['latency_ms']:.4g} | {c['energy_mj']:.4g} | {c['size_mb']:.4g} | {c['bitops']:.4g} | {holds} |"
        )
    lines += ["", f"{s['episodes']} episodes, {len(s['rounds'])} hardware round(s), {s['wall_time_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def make_problem(cfg, pipe, lut, proxy, mask, grids, fixed, budgets) -> Any:
    """The :class:`envs.SearchProblem` every method evaluates its policies through (same projection,
    reward and evaluation cache)."""
    from envs import SearchProblem

    problem = SearchProblem(
        layers=pipe.layers, lut_features=np.concatenate([lut.matrix("top1_drop"), lut.matrix("kl")], axis=1),
        mask=mask, proxy=proxy, costs=grids, fixed=fixed, reference=budgets.reference,
        limits=dict(budgets.limits), evaluate=lambda bits: pipe.evaluator.evaluate(bits, "search_val").to_dict(),
        fp32=pipe.evaluator.evaluate([(32, 32)] * len(pipe.layers), "search_val").to_dict(),
        offset_range=int(cfg.search.offset_range), reward_metric=str(cfg.reward.metric),
        reward_scale=float(cfg.reward.scale), budget_mode=str(cfg.budget.mode),
        penalty_weight=float(cfg.budget.penalty_weight), min_top1=budgets.min_top1,
    )
    if problem.reward_metric not in ("top1", "kl", "loss"):
        raise HySquantError(f"reward.metric={problem.reward_metric!r} is unknown: use top1, kl or loss")
    if problem.budget_mode not in ("project", "penalty"):
        raise HySquantError(f"budget.mode={problem.budget_mode!r} is unknown: use project or penalty")
    return problem


def _method(name: str) -> Any:
    def make(*args: Any) -> Any:
        if name == "rl":
            from agents.rl import RLSearch

            return RLSearch(*args)
        from hysquant_rl import baselines

        return baselines.BASELINES[name](*args)

    return make


PROXIES = ("kl", "top1_drop")
"""LUT columns ``search.proxy`` may name: the additive sensitivity the ILP minimises and the greedy walk and the
budget projection follow. KL is smooth; top-1 drops on a small search-val split are noisy, and an optimiser
summing them exploits the noise."""

METHODS: dict[str, Any] = {name: _method(name) for name in ("rl", "ilp", "greedy", "uniform", "random")}
