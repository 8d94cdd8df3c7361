"""``bench.md``'s transfer sections, from the record's ``transfer`` (:mod:`hysquant_rl.bench.transfer_run`,
:mod:`hysquant_rl.bench.transfer_verdict`): what ran, the decision rules as fixed before the run, the verdict, the
room, the table of held-out budgets x k x arms, the paired differences, the rankers' tau, the training cost and the
break-even count. Top-1 in percent, differences in points."""

from __future__ import annotations

from typing import Any

from hysquant_rl.bench.fmt import pm, signed
from hysquant_rl.bench.transfer_plan import ARMS, CONTROLS
from hysquant_rl.bench.transfer_verdict import POOLED

OUTCOMES = {
    "rl": "**The agent earns its place**: what it learned over the training budgets pays at budgets it was not"
    " trained on.",
    "surrogate": "**Learning earns its place, RL does not**: the surrogate fitted on the same training evaluations"
    " wins where the agent does not.",
    "ilp+local": "**Neither learning arm earns its place**: at budgets they were not trained on, the agent and the"
    " surrogate do not beat the integer program at k = 0 nor local search and reuse at the same evaluations; the"
    " recommendation is the ILP plus local refinement, RL kept as an option.",
}


def transfer_sections(r: dict[str, Any]) -> list[list[str]]:
    """The transfer sections of ``bench.md`` for the record ``r`` (its ``transfer`` and ``transfer_rules``)."""
    t, rules = r["transfer"], r["transfer_rules"]
    return [
        _intro(t),
        _rules(rules, t),
        _verdict(t),
        _room(t, r["targets"]["min_room"]),
        _table(t),
        _cases(t, rules),
        _tau(t),
        _cost(t),
    ]


def _intro(t: dict[str, Any]) -> list[str]:
    p = t["plan"]
    train = [b for b in t["budgets"] if b["role"] == "train"]
    held = [b for b in t["budgets"] if b["role"] != "train"]

    def listed(bs: list[dict[str, Any]]) -> str:
        return ", ".join(f"{b['budget']} ({b['ratio_of_w8a8']:.4f}x W8A8)" for b in bs)

    return [
        "## Transfer: does what the agent learns pay at budgets it was not trained on?",
        "",
        f"Batch {p['batch']}, {p['kind']} budgets (fractions of the way from the cheapest allowed policy to uniform"
        f" W8A8). One budget-conditioned agent per seed (seeds {', '.join(map(str, p['seeds']))}) trained over"
        f" {listed(train)} for {p['episodes']} PTQ evaluations (one warm start per budget included); each held-out"
        f" budget ({listed(held)}) answered by every arm with k = {', '.join(map(str, p['evaluations']))} PTQ"
        " evaluations on search-val, each answer evaluated once on the test split. Arms:",
        "",
        *(f"- `{arm}`: {what}." for arm, what in ARMS.items()),
        "",
        f"Total {t['wall_s'] / 60:.1f} min.",
    ]


def _rules(rules: dict[str, Any], t: dict[str, Any]) -> list[str]:
    m, at = rules["margin"], rules["controls_at"]
    return [
        "### Decision rules (fixed in conf/bench.yaml before the run)",
        "",
        f"An arm *beats* another by {m:g} points when its mean paired test top-1 difference over the held-out budgets"
        f" and seeds is at least {m:g} points and the lower end of its {100 * rules['confidence']:g} % bootstrap"
        f" interval ({rules['bootstrap']} resamples of the test images) lies above 0. McNemar per seed and budget,"
        f" Holm-corrected over every test of the table (p < {rules['p_max']:g}), is reported beside it.",
        "",
        "1. The agent earns its place if it beats `ilp` at k = 0, or beats all three controls ("
        + ", ".join(f"`{c}`" for c in CONTROLS)
        + f") at k = {at}.",
        f"2. If only the surrogate wins (beats `ilp` at k = 0, or `local` and `nearest` at k = {at}), learning earns"
        " its place but RL does not.",
        "3. If neither, the README recommends ILP + local refinement and keeps RL as an option.",
    ]


def _verdict(t: dict[str, Any]) -> list[str]:
    d = t["decision"]
    return [
        "### Transfer verdict",
        "",
        *(f"- {v['item']}: {'met' if v['met'] else 'NOT met'} ({v['detail']})." for v in d["items"]),
        "",
        OUTCOMES[d["outcome"]],
    ]


def _room(t: dict[str, Any], min_room: float) -> list[str]:
    room = t["room"]
    return [
        "### Room",
        "",
        f"FP32 test top-1 minus the ILP's (>= {min_room:g} points required at every budget:"
        f" {'met' if room['met'] else 'NOT met'}): "
        + ", ".join(f"{b['budget']} ({b['role']}) {signed(b['room'])}" for b in room["budgets"])
        + ".",
    ]


def _table(t: dict[str, Any]) -> list[str]:
    rows = sorted(t["table"], key=lambda x: (x["budget"] == POOLED, x["budget"], x["k"], list(ARMS).index(x["arm"])))
    return [
        "### Held-out budgets x k x arms",
        "",
        "Mean ± sample std over seeds (over seeds and held-out budgets in the `all held-out` rows); evaluations: the"
        " PTQ evaluations the answer's search spent (the ILP and every answer at k = 0 spend none).",
        "",
        "| budget | k | arm | test top-1 | search-val top-1 | search-val KL | evaluations |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {x['budget']} | {x['k']} | {x['arm']} | {pm(x['test_top1_mean'], x['test_top1_std'])} |"
            f" {pm(x['search_val_top1_mean'], x['search_val_top1_std'])} |"
            f" {pm(x['search_val_kl_mean'], x['search_val_kl_std'], '.4f')} | {x['evaluations_mean']:.1f} |"
            for x in rows
        ),
    ]


def _cases(t: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    rows = sorted(t["cases"], key=lambda c: (c["budget"] == POOLED, c["budget"], c["k"]))
    return [
        "### Paired test top-1 differences",
        "",
        f"Mean over seeds (and budgets), {100 * rules['confidence']:g} % bootstrap interval over the 10k test images;"
        " McNemar per seed: images only the first arm gets right / only the second, exact p, Holm-adjusted p.",
        "",
        "| budget | k | comparison | difference | interval | Holm p < " + f"{rules['p_max']:g} | McNemar per seed |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {c['budget']} | {c['k']} | {c['arm']} - {c['against']} | {c['diff']:+.2f} |"
            f" [{c['low']:+.2f}, {c['high']:+.2f}] | {c['significant']} of {len(c['tests'])} | {_tests(c)} |"
            for c in rows
        ),
    ]


def _tests(c: dict[str, Any]) -> str:
    if c["budget"] == POOLED:
        return "(the budgets' rows)"
    return ", ".join(
        f"seed {t['seed']}: {t['wins']}/{t['losses']} p={t['p']:.3f} ({t['p_holm']:.3f})" for t in c["tests"]
    )


def _tau(t: dict[str, Any]) -> list[str]:
    s = t["tau_summary"]

    def one(x: dict[str, Any]) -> str:
        return "-" if x["tau"] is None else f"{x['tau']:+.2f} (p {x['p']:.3f}, n {x['pairs']})"

    def mean(x: dict[str, Any]) -> str:
        return "-" if x["mean_tau"] is None else f"{x['mean_tau']:+.2f}"

    return [
        "### Ranking quality on held-out evaluations",
        "",
        "Kendall's tau between each ranker's score and the search-val reward of the policies `local` evaluated at the"
        " held-out budget (neither ranker saw them): the trained critic (conditioned on that budget) and the surrogate"
        f" (fitted on the training evaluations). Mean tau: critic {mean(s['critic'])}, surrogate"
        f" {mean(s['surrogate'])}; tau > 0 with one-sided p < 0.05 in {s['critic']['positive']} and"
        f" {s['surrogate']['positive']} of {s['critic']['measured']} measurements.",
        "",
        "| seed | budget | critic tau | surrogate tau |",
        "|---|---|---|---|",
        *(f"| {x['seed']} | {x['budget']} | {one(x['critic'])} | {one(x['surrogate'])} |" for x in t["tau"]),
    ]


def _cost(t: dict[str, Any]) -> list[str]:
    lines = [
        "### Training cost and break-even",
        "",
        "Training per seed: "
        + ", ".join(
            f"seed {x['seed']}: {x['evaluations']} evaluations in {x['episodes']} episodes, {x['wall_s']:.0f} s"
            for x in t["training"]
        )
        + ". The surrogate is fitted on the same evaluations, so it has the same cost.",
        "",
        "Break-even: for each learning arm at each k below the largest, the fewest evaluations with which `local`"
        " (the ILP at 0) reaches the arm's pooled mean test top-1; the saving per new budget is that minus k, and"
        " the arm has paid for its training after training evaluations / its best saving new budgets.",
        "",
    ]
    for b in t["break_even"]:
        best = b["best"]
        if best is None or b["budgets"] is None:
            lines.append(
                f"- {b['arm']}: saves no evaluation at any k (training {b['training_evaluations']:.0f} evaluations):"
                " it never pays for itself."
            )
            continue
        reach = (
            f"local never reaches it within k = {best['k'] + best['saved']}"
            if best["lower_bound"]
            else (f"local needs k = {best['k_local']}")
        )
        bound = "at most " if best["lower_bound"] else ""
        lines.append(
            f"- {b['arm']}: at k = {best['k']} its {best['top1']:.2f} %: {reach}; it saves"
            f" {'at least ' if best['lower_bound'] else ''}{best['saved']} evaluations per new budget and pays for its"
            f" {b['training_evaluations']:.0f} training evaluations after {bound}{b['budgets']} new budgets."
        )
    return lines
