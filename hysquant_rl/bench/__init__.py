"""The benchmark behind ``hysquant-bench`` (:mod:`hysquant_rl.apps.bench`): is the RL search worth it, and how fast
is it? One bench run, top to bottom, one module per job:

    plan.py     the plan, checked before any work: regimes and their budgets, methods and their seeds, goal, targets
    run.py      every planned search, its row in bench.json, evaluation throughput, the goal's method paired with
                the reference image by image
    stats.py    aggregation over seeds, speed per episode, McNemar, standard errors, learning diagnostics, room
    verdict.py  the goal check (at each regime's tightest budget) and the verdict on the goal and the targets
    report.py   bench.md
    plots.py    pareto.png

``run.py`` builds the pipeline (torch); the others read and write plain records (torch-free).
"""
