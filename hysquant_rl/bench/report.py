"""``bench.md``: the bench's record (``bench.json``) as Markdown, one function per section: the plan, the verdict,
per regime its table (mean ± sample std over seeds), room and uniform reference points, the noise of search-val,
the goal, the agent's learning, the speed. Top-1 in percent, differences in points, latency in ms, energy in mJ."""

from __future__ import annotations

from typing import Any

import numpy as np

from hysquant_rl.bench.budgets import budget_label
from hysquant_rl.bench.fmt import pct, pm, points, signed
from hysquant_rl.bench.plan import Regimes, regime_budgets


def markdown(r: dict[str, Any]) -> str:
    """``bench.md`` of the record ``r``: its sections, a blank line between them: the per-budget plan's (when it
    ran), the transfer experiment's (when it ran: :mod:`hysquant_rl.bench.transfer_report`), the speed."""
    from hysquant_rl.bench.transfer_report import transfer_sections

    regimes = regime_budgets(r["plan"])
    sections = [_title(r)]
    if "table" in r:
        sections += [
            _intro(r, regimes),
            _verdict(r),
            *(_regime(r, regime) for regime, _ in regimes),
            _noise(r),
            _goal(r),
            *([_learning(r)] if any(x.get("learning") for x in r["runs"]) else []),
        ]
    if "transfer" in r:
        sections += transfer_sections(r)
    sections.append(_speed(r))
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _title(r: dict[str, Any]) -> list[str]:
    """The title, what ran and the total time."""
    parts = {"per_budget": "the per-budget plan", "transfer": "the transfer experiment"}
    return [
        f"# Benchmark: {r['model']['name']} on {r['data']}, {r['device']}{' (quick)' if r['quick'] else ''}",
        "",
        f"Ran {' and '.join(parts[x] for x in r['parts'])}"
        + (f" (the latter {r['transfer']['wall_s'] / 60:.1f} min)" if "transfer" in r and "table" in r else "")
        + f". Total {r['wall_s'] / 60:.1f} min.",
    ]


def _intro(r: dict[str, Any], regimes: Regimes) -> list[str]:
    """What the per-budget plan ran: budgets per regime, episodes, seeds, splits, quantizer, cost model."""
    sv, q = r["search_val"], r.get("quant", {})
    scope = (
        f" Quantization scope `{q['scope']}` ({r['units']} units), {q['calibrator']} calibration, {q['softmax']}"
        " softmax levels."
        if q
        else ""
    )
    return [
        "## Per-budget plan",
        "",
        f"Budgets per regime (a batch size of the {r['device']} profile), at fractions of the way from the cheapest"
        " allowed policy to uniform W8A8: "
        + "; ".join(f"batch {batch}: {', '.join(budget_label(k, f) for k, f in pairs)}" for batch, pairs in regimes)
        + f". {r['plan']['episodes']} episodes per episodic run. Methods run {_seeds(r['seeds'])}"
        " (mean ± sample std over seeds)."
        + " Test top-1 on the test split, which no search saw; search-val top-1 is what the search optimised"
        f" ({sv['size']} images).{scope} Latency and energy are modelled (roofline of the {r['device']} profile), not"
        " measured.",
    ]


def _verdict(r: dict[str, Any]) -> list[str]:
    return [
        "### Verdict",
        "",
        *(f"- {v['item']}: {'met' if v['met'] else 'NOT met'} ({v['detail']})." for v in r["verdict"]),
    ]


def _regime(r: dict[str, Any], regime: int) -> list[str]:
    """One regime's table of every (budget, method), the room left and the uniform reference points."""
    rows = [t for t in r["table"] if t["regime"] == regime]
    lines = [
        f"### Batch {regime}",
        "",
        "| budget | method | test top-1 | search-val top-1 | latency (ms) | energy (mJ) | PTQ evals | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
        *(_table_row(t) for t in rows),
        "",
        *_room(r, regime, rows),
    ]
    refs = [u for u in r["uniform"] if u["regime"] == regime]
    if refs:
        lines += [
            "",
            "Uniform reference points: "
            + ", ".join(
                f"{u['policy']} {u['test_top1']:.2f} % at {u['latency_ms']:.4g} ms / {u['energy_mj']:.4g} mJ"
                for u in refs
            )
            + ".",
        ]
    return lines


def _table_row(t: dict[str, Any]) -> str:
    """One aggregated (regime, budget, method) row of a regime's table."""
    limit = f"{t['budget']} (≤ {t['limit']:.4g} {t['unit']}, {t['limit_ratio_of_w8a8']:.2f}x W8A8)"
    if not t["found"]:
        return f"| {limit} | {t['method']} | no policy within budget | | | | | |"
    return (
        f"| {limit} | {t['method']} | {pm(t['test_top1_mean'], t['test_top1_std'])} |"
        f" {pm(t['search_val_top1_mean'], t['search_val_top1_std'])} | {t['latency_ms_mean']:.4g} |"
        f" {t['energy_mj_mean']:.4g} | {t['evaluations_mean']:.0f} | {t['wall_s_mean']:.1f} |"
    )


def _room(r: dict[str, Any], regime: int, rows: list[dict[str, Any]]) -> list[str]:
    """The room each budget of ``regime`` leaves: below FP32 for the best method, and for the reference."""
    fp32 = r["fp32"]["test_top1"]
    left = []
    for budget in dict.fromkeys(t["budget"] for t in rows):
        found = [t for t in rows if t["budget"] == budget and t["found"]]
        if found:
            best = max(found, key=lambda t: t["test_top1_mean"])
            left.append(f"{budget}: {fp32 - best['test_top1_mean']:+.2f} ({best['method']})")
    rooms = [e for e in r["room"] if e["regime"] == regime]
    return [
        f"Room left (FP32 test top-1 {fp32:.2f} minus the best method's mean): " + ", ".join(left) + ".",
        "",
        f"Room (FP32 test top-1 minus {r['goal_config']['reference']}'s; the bench requires >="
        f" {points(r['targets']['min_room'])}): "
        + ", ".join(f"{e['budget']}: {signed(e['room'])} ({'met' if e['met'] else 'NOT met'})" for e in rooms)
        + ".",
    ]


def _noise(r: dict[str, Any]) -> list[str]:
    """The standard errors of search-val: one policy's top-1, and the paired difference of the goal's method."""
    sv, m, ref = r["search_val"], r["goal_config"]["method"], r["goal_config"]["reference"]
    paired = ", ".join(
        f"batch {e['regime']} {e['budget']}: {e['se_mean']:.2f} points"
        f" (d {100 * float(np.mean([s['discordant'] for s in e['seeds']])):.1f} %)"
        for e in sv["paired"]
    )
    return [
        "### Search-val noise",
        "",
        f"- Search-val: {sv['size']} images; FP32 search-val top-1 {sv['fp32_top1']:.2f} %.",
        f"- Standard error of one policy's search-val top-1 at FP32's accuracy, 100 sqrt(p (1 - p) / n):"
        f" {sv['se_top1']:.2f} points.",
        f"- Standard error of the paired {m} - {ref} difference on search-val, 100 sqrt(d / n) with d the fraction of"
        f" images exactly one of the two policies gets right (mean over {m}'s seeds): " + (paired or "-") + ".",
    ]


def _goal(r: dict[str, Any]) -> list[str]:
    """What the goal asks, and per (regime, budget) the goal's method against the others and the reference."""
    g = r["goal_config"]
    m, ref = g["method"], g["reference"]
    return [
        "### Goal",
        "",
        f"{m}'s mean test top-1 against every other method's at every budget, and at each regime's tightest budget"
        f" (its smallest fraction; with budgets of several kinds, the one where {ref} leaves the most room, i.e. the"
        f" lowest {ref} test top-1): {m} >= {ref} + {points(g['margin'])} with McNemar p < {g['p_max']:g} in at"
        f" least {g['min_seeds']} seeds. McNemar per seed, on the test split: images only {m} gets right / only"
        f" {ref} gets right, the top-1 difference in points, the exact two-sided p-value.",
        "",
        f"| batch | budget | {m} test top-1 | best other | beaten by | {m} - {ref} | McNemar per seed |",
        "|---|---|---|---|---|---|---|",
        *(_goal_row(e) for e in r["goal"]),
    ]


def _goal_row(e: dict[str, Any]) -> str:
    margin = signed(e.get("margin_over_reference"))
    if e.get("tightest"):
        margin += (
            f" (tightest: {e['seeds_passing']} of {len(e['paired_vs_reference'])} seeds pass,"
            f" {'met' if e['beats_reference_by_margin'] else 'NOT met'})"
        )
    other = "-" if e["best_other"] is None else f"{e['best_other']} {e['best_other_top1']:.2f}"
    beaten = ", ".join(b["method"] for b in e["beaten_by"]) or "none"
    return (
        f"| {e['regime']} | {e['budget']} | {pm(e['method_top1'], e['method_std'])} | {other} | {beaten} |"
        f" {margin} | {_paired(e['paired_vs_reference'])} |"
    )


def _learning(r: dict[str, Any]) -> list[str]:
    """The agent's runs: new policies after its warm-up, its own proposals, whether its best reward improved."""
    tg = r["targets"]
    return [
        "### Learning",
        "",
        "The agent's runs. Episodes 0 to agent.warmup_episodes come before its updates. New policies: the share"
        " of the episodes after them that evaluated a policy not seen before in the run (target >="
        f" {100 * tg['new_policy_fraction']:g} %); an episode whose proposed policy (the actor's, with its noise)"
        " had been evaluated moves to a new one (novelty step), so the next column is the agent's own share: the"
        " episodes whose proposal was new. Improved: the best search-val reward over all episodes beats"
        f" the best up to the warm-up's end (target: in >= {tg['improved_seeds']} seeds per budget). Critic: Kendall's"
        " tau between the critic's predicted gain over the incumbent of each episode it picked and the gain realised"
        " on search-val, over the episodes after the warm-up (one-sided p; hysquant_rl/search/ranking.py).",
        "",
        "| batch | budget | method | seed | warm-up | new policies after it | proposed new |"
        " best reward: warm-up / all | improved | last improvement (episode) | critic tau (p) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(_learning_row(x) for x in r["runs"] if x.get("learning")),
    ]


def _learning_row(x: dict[str, Any]) -> str:
    d = x["learning"]
    best = f"{_num(d['best_reward_warmup'])} / {_num(d['best_reward'])}"
    last = "-" if d["last_improvement"] is None else d["last_improvement"]
    return (
        f"| {x['regime']} | {x['budget']} | {x['method']} | {x['seed']} | {d['warmup_episodes']} |"
        f" {pct(d['new_policy_fraction'])} of {d['episodes_after_warmup']} |"
        f" {pct(d.get('proposed_new_fraction'))} | {best} |"
        f" {'yes' if d['improved'] else 'no'} | {last} | {_tau(d)} |"
    )


def _tau(d: dict[str, Any]) -> str:
    """The critic's prospective tau with its p-value, ``-`` where it was not measured."""
    if d.get("critic_tau") is None:
        return "-"
    return f"{d['critic_tau']:+.2f} ({d['critic_p']:.3f})"


def _speed(r: dict[str, Any]) -> list[str]:
    """Evaluation throughput, LUT build time, and per episodic method its time per episode and overhead."""
    s, max_overhead = r["speed"], r["targets"]["max_overhead"]
    return [
        "## Speed",
        "",
        f"- Evaluation throughput on {s['split']}: FP32 {s['fp32_images_per_s']:.0f} images/s,"
        f" {s['quantized_policy']} {s['quantized_images_per_s']:.0f} images/s (ratio {s['throughput_ratio']:.2f}).",
        "- LUT build: "
        + ", ".join(f"batch {k}: {'-' if v is None else f'{v:.1f} s'}" for k, v in s["lut_build_s"].items())
        + ".",
        *(
            f"- {e['method']}: {e['s_per_episode']:.2f} s per episode, {e['eval_s_per_evaluation']:.2f} s per PTQ"
            f" evaluation; environment and agent overhead {e['overhead_s_per_episode']:.2f} s per episode,"
            f" {100 * e['overhead_fraction']:.0f} % of an evaluation (target <= {100 * max_overhead:g} %)."
            for e in s.get("episodes", [])
        ),
    ]


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _paired(tests: list[dict[str, Any]]) -> str:
    """Per seed: wins/losses, the difference in points, the p-value."""
    return (
        ", ".join(f"seed {t['seed']}: {t['wins']}/{t['losses']} {t['diff']:+.2f} p={t['p']:.3f}" for t in tests) or "-"
    )


def _seeds(seeds: dict[str, list[int]]) -> str:
    """'rl, local with seeds 0, 1, 2; uniform, greedy, ... with seed 0'."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for method, s in seeds.items():
        groups.setdefault(tuple(s), []).append(method)
    return "; ".join(
        f"{', '.join(ms)} with seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}" for s, ms in groups.items()
    )
