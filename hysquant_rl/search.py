"""``hysquant-search``: the main job. Evaluates the uniform reference policies (FP32 and ``search.reference``)
on search-val and test and writes a policy JSON for each."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hysquant_rl.apply import format_metrics
from hysquant_rl.pipeline import build
from hysquant_rl.policy import QuantPolicy, parse_uniform

log = logging.getLogger(__name__)


def run_search(cfg: Any, out: Path) -> dict[str, QuantPolicy]:
    pipe = build(cfg)
    policies = {}
    for spec in ["FP32", *cfg.search.reference]:
        bits = [parse_uniform(str(spec))] * len(pipe.layers)
        policy = pipe.policy(bits, method="uniform", metrics=pipe.measure(bits, ("search_val", "test")))
        policy.save(out / "policies" / f"uniform_{spec}.json")
        log.info(format_metrics(str(spec), policy.metrics))
        policies[str(spec)] = policy
    log.info("policies written to %s", out / "policies")
    return policies
