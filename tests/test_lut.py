"""The sensitivity LUT: single-layer measurements, pricing, files, cache (hit, resume, corrupt, stale), pruning
rules, the in-process and Ray executors, and the hysquant-lut app. One clean in-process build of the digits
model (72 layers x W4A8, W8A4) is shared; everything else is compared with it."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from hysquant_rl.apps import compose_config, plain
from hysquant_rl.apps.lut import run_lut
from hysquant_rl.errors import HySquantError
from hysquant_rl.lut.build import build_lut, cache_key, cache_path
from hysquant_rl.lut.executor import Job, LocalExecutor, RayExecutor, Worker, make_executor
from hysquant_rl.lut.replay import PrefixReplay, trunk
from hysquant_rl.lut.report import write_lut
from hysquant_rl.lut.table import COLUMNS, LUT
from hysquant_rl.prune import PruneRules, prune
from hysquant_rl.settings import RunSettings, parse_configs
from tests.conftest import run_settings

CONFIGS = "[[4,8],[8,4]]"  # one test configuration per operand: W4 (at A8) and A4 (at W8)
FP = (32, 32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Explicit CPU threads: every LUT compared here is computed with one torch thread, in this process and
    in each Ray actor (``threads=1``). One thread also keeps the timings sane on a shared machine, where
    OpenMP threads spinning for a busy core slow a run down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lut_cfg(cache_dir: Path, *extra: str) -> RunSettings:
    return run_settings("lut", [f"lut.configs={CONFIGS}", f"lut.cache_dir={cache_dir}", "threads=1", *extra])


@pytest.fixture(scope="module")
def clean(one_thread, digits_pipeline, tmp_path_factory):
    """A clean in-process build: (cfg, LUT, evaluations it ran, cache file)."""
    cfg = lut_cfg(tmp_path_factory.mktemp("lut_clean"))
    with LocalExecutor(digits_pipeline) as ex:
        lut = build_lut(cfg, digits_pipeline, executor=ex)
        return cfg, lut, ex.evaluations, Path(lut.meta["cache"]["path"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- configurations ----------------------------------------------------------------------------------------


def test_configs_parse_pairs_and_labels():
    assert parse_configs([[4, 4], [4, 8], "W8A4", "w8a8"]) == [(4, 4), (4, 8), (8, 4), (8, 8)]
    assert run_settings("lut").lut.configs == ((4, 4), (4, 8), (8, 4), (8, 8))  # the paper's four, by default


@pytest.mark.parametrize(
    "bad, named",
    [
        ([[4, 9]], "[4, 9]"),
        ([[1, 8]], "[1, 8]"),
        ([[32, 32]], "[32, 32]"),
        ([[4]], "[4]"),
        ([[4, 8, 8]], "[4, 8, 8]"),
        (["W9A8"], "W9A8"),
        ([[4.0, 8]], "[4.0, 8]"),
        ([[4, 8], [4, 8]], "W4A8 twice"),
        ([], "[]"),
    ],
)
def test_bad_configs_are_one_line_errors(bad, named):
    with pytest.raises(HySquantError) as e:
        parse_configs(bad)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_bad_settings_fail_before_any_work(tmp_path):
    for override, message in (
        ("lut.configs=[[4,8],[4,9]]", "[4, 9]"),
        ("prune.max_kl=-1", "prune.max_kl"),
        ("lut.workers=0", "lut.workers"),
    ):
        cfg = compose_config("lut", [f"lut.cache_dir={tmp_path}", override])
        # refused by the settings, which run_lut needs: no model, data or LUT work can have started
        with pytest.raises(HySquantError, match=re.escape(message)):
            RunSettings.from_mapping(plain(cfg))
    assert not list(tmp_path.iterdir())


def test_unknown_hardware_profile_fails_before_the_pipeline(tmp_path):
    cfg = compose_config("lut", [f"lut.cache_dir={tmp_path}"])
    cfg.hardware = OmegaConf.create({"name": "nope"})
    with pytest.raises(HySquantError, match="unknown hardware profile 'nope'"):
        run_lut(RunSettings.from_mapping(plain(cfg)), tmp_path)


def test_rows_are_single_layer_measurements_priced_by_the_cost_model(clean, digits_pipeline):
    _, lut, evaluations, _ = clean
    pipe = digits_pipeline
    n = len(pipe.units)
    assert evaluations == 2 * n and lut.meta["cache"]["status"] == "miss"
    assert list(lut.frame.columns) == list(COLUMNS) and len(lut.frame) == 3 * n
    assert lut.configs == [(4, 8), (8, 4)] and lut.unit_names == pipe.names
    assert lut.frame["config"].tolist()[:3] == ["FP32", "W4A8", "W8A4"]
    top1 = lut.matrix("top1")
    assert top1.shape == (n, 2)
    fp32 = pipe.evaluator.evaluate([FP] * n)
    assert lut.fp32["top1"] == fp32.top1 and lut.fp32["n"] == len(pipe.data.search_val)
    np.testing.assert_array_equal(lut.matrix("top1_drop"), fp32.top1 - top1)
    # every row is that layer alone at that configuration, exactly as the Evaluator measures it (18: a LayerNorm
    # input, 20 and 21: the first attention's q k^T and attention x v operands)
    kinds = [l.kind for l in pipe.units]
    assert kinds[18:22] == ["layernorm-in", "attention-qkv", "attention-qk", "attention-pv"]
    for i in (0, 5, 18, 20, 21, 40, n - 1):
        for j, (w, a) in enumerate(lut.configs):
            bits = [FP] * n
            bits[i] = (w, a)
            m = pipe.evaluator.evaluate(bits)
            assert (top1[i, j], lut.matrix("top5")[i, j], lut.matrix("kl")[i, j], lut.matrix("loss")[i, j]) == (
                m.top1,
                m.top5,
                m.kl,
                m.loss,
            )
    # priced as that layer at that configuration (ms, mJ); FP32 rows at the float precision with no drop
    for row in lut.frame.sample(12, random_state=0).itertuples():
        c = pipe.cost.config_cost(row.index, row.w_bits, row.a_bits)
        assert row.latency_ms == pytest.approx(c.latency_s * 1e3) and row.energy_mj == pytest.approx(c.energy_j * 1e3)
        assert (row.size_bytes, row.bitops, row.precision, row.deployable, row.batch_size) == (
            c.size_bytes,
            c.bitops,
            c.precision,
            c.deployable,
            c.batch_size,
        )
    fp_rows = lut.frame[lut.frame["config"] == "FP32"]
    assert (fp_rows[["top1_drop", "top5_drop", "kl"]] == 0).all().all()
    assert set(fp_rows["precision"]) == {pipe.cost.profile.float_precision}
    assert lut.frame.loc[lut.frame["config"] == "W4A8", "kind"].tolist() == [l.kind for l in pipe.units]


def test_activation_only_units_are_measured_once_per_activation_width(digits_pipeline):
    """A unit with no weight runs one job per distinct activation width of the configurations (W4A8 and W8A8 are
    the same A8 for it); weighted layers run every configuration."""
    from hysquant_rl.lut.build import _jobs

    units = digits_pipeline.units
    weighted = sum(l.weighted for l in units)
    assert (weighted, len(units) - weighted) == (72, 39)
    jobs = _jobs(units, [(4, 4), (4, 8), (8, 4), (8, 8)])
    assert len(jobs) == 4 * 72 + 2 * 39 and len(set(jobs)) == len(jobs)
    assert {(w, a) for i, w, a in jobs if not units[i].weighted} == {(4, 4), (8, 8)}
    assert len(_jobs(units, [(4, 8), (8, 8)])) == 2 * 72 + 39


def test_files_round_trip(clean, tmp_path):
    _, lut, _, _ = clean
    paths = write_lut(lut, tmp_path)
    assert {p.name for p in paths.values()} == {"lut.csv", "lut.json", "lut_heatmap.png"}
    assert paths["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(paths["csv"])
    assert list(csv.columns) == list(COLUMNS) and len(csv) == len(lut.frame)
    loaded = LUT.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.frame, lut.frame, check_exact=True)
    assert loaded.configs == lut.configs and loaded.allowed == lut.allowed and loaded.rules == lut.rules
    doc = json.loads(paths["json"].read_text())
    assert doc["key"]["model"]["weights_sha256"] == lut.meta["model"]["weights_sha256"]
    # a (w, a) pair per Conv2d/Linear, an activation width per activation-only unit: bits 2..8 or FP32
    weighted = sum(a.weighted for a in lut.allowed)
    assert len(doc["prune"]["allowed"]) == lut.num_units and doc["prune"]["log10_space_before"] == pytest.approx(
        weighted * math.log10(64) + (lut.num_units - weighted) * math.log10(8)
    )


def test_most_sensitive_orders_by_drop_then_kl(clean):
    _, lut, _, _ = clean
    top = lut.most_sensitive(5)
    assert len(top) == 5 and top["unit"].is_unique
    drop, kl = lut.matrix("top1_drop"), lut.matrix("kl")
    worst = sorted(
        ((drop[i].max(), kl[i][drop[i] == drop[i].max()].max(), i) for i in range(lut.num_units)), reverse=True
    )
    assert top["index"].tolist() == [i for _, _, i in worst[:5]]
    assert top["top1_drop"].tolist() == [d for d, _, _ in worst[:5]]


def test_cache_key_covers_what_changes_the_numbers(clean, digits_pipeline):
    cfg, lut, _, path = clean
    key = cache_key(cfg, digits_pipeline, lut.configs)
    assert key == lut.meta["key"] and path == cache_path(cfg, digits_pipeline, key)
    assert key["model"]["weights_sha256"] == digits_pipeline.weights_sha256
    assert key["hardware"]["name"] == "rtx3080" and key["hardware"]["batch_size"] == 1
    changed = {
        "hardware.batch_size=8": lambda k: k["hardware"]["batch_size"],
        "hardware=h200": lambda k: k["hardware"]["name"],
        "quant.weight_granularity=channel": lambda k: k["quant"],
        "seed=1": lambda k: k["seed"],
        "eval.batch_size=128": lambda k: k["eval"],
        "data.calib_size=64": lambda k: k["data"],
    }
    for override, part in changed.items():
        other = lut_cfg(path.parent, override)
        # the same pipeline object stands in for the rebuilt one: only the config-driven parts can move
        pipe = digits_pipeline
        if override.startswith("hardware"):
            from hysquant_rl.hardware import CostModel

            pipe = dataclasses.replace(pipe, cost=CostModel(pipe.units, pipe.matmuls, other.hardware))
        k2 = cache_key(other, pipe, lut.configs)
        assert part(k2) != part(key) and cache_path(other, pipe, k2) != path, override
    other_weights = dataclasses.replace(digits_pipeline, weights_sha256="0" * 64)
    assert cache_key(cfg, other_weights, lut.configs)["model"] != key["model"]
    assert cache_key(cfg, digits_pipeline, [(8, 4), (4, 8)])["configs"] != key["configs"]
    # what cannot change a number does not invalidate the cache
    assert (
        cache_key(lut_cfg(path.parent, "eval.prefix_cache_mb=0", "lut.workers=2"), digits_pipeline, lut.configs) == key
    )


# -- the cache ---------------------------------------------------------------------------------------------


def test_second_build_evaluates_nothing(clean, digits_pipeline):
    cfg, lut, _, _ = clean
    before = digits_pipeline.evaluator.evaluations
    with LocalExecutor(digits_pipeline) as ex:
        again = build_lut(cfg, digits_pipeline, executor=ex)
        assert ex.evaluations == 0
    assert digits_pipeline.evaluator.evaluations == before
    assert again.meta["cache"]["status"] == "hit" and again.meta["cache"]["evaluated"] == 0
    pd.testing.assert_frame_equal(again.frame, lut.frame, check_exact=True)
    assert again.allowed == lut.allowed


def sub_table(lut: LUT, config: str) -> pd.DataFrame:
    """The FP32 and ``config`` rows of ``lut``: what a LUT of that one configuration holds."""
    return lut.frame[lut.frame["config"].isin(["FP32", config])].reset_index(drop=True)


def test_interrupted_build_resumes_with_only_the_missing_jobs(clean, digits_pipeline, tmp_path):
    cfg = lut_cfg(tmp_path, "lut.configs=[[8,4]]")  # one configuration (72 jobs) keeps this test short
    n = len(digits_pipeline.units)
    done = []

    def interrupt(result):
        done.append(result.job.tag)
        if len(done) == 37:  # not a multiple of lut.save_every: the last jobs are saved on the way out
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), LocalExecutor(digits_pipeline) as ex:
        build_lut(cfg, digits_pipeline, executor=ex, on_result=interrupt)
    path = cache_path(cfg, digits_pipeline, cache_key(cfg, digits_pipeline, [(8, 4)]))
    partial = json.loads(path.read_text())
    assert partial["complete"] is False and len(partial["rows"]) == 37
    with LocalExecutor(digits_pipeline) as ex:
        lut = build_lut(cfg, digits_pipeline, executor=ex, on_result=lambda r: done.append(r.job.tag))
        assert ex.evaluations == n - 37
    assert len(done) == len(set(done)) == n  # no job ran twice
    assert lut.meta["cache"]["status"] == "resumed" and lut.meta["cache"]["reused"] == 37
    # equal to a clean build: the clean two-configuration build holds the same single-layer measurements
    pd.testing.assert_frame_equal(lut.frame, sub_table(clean[1], "W8A4"), check_exact=True)
    assert json.loads(path.read_text())["complete"] is True


@pytest.mark.parametrize("damage", ["corrupt", "stale", "bad rows"])
def test_corrupt_or_stale_cache_is_rebuilt_with_a_warning(clean, digits_pipeline, tmp_path, caplog, damage):
    _, lut, _, clean_path = clean
    path = tmp_path / clean_path.name
    doc = json.loads(clean_path.read_text())
    for row in doc["rows"]:
        row["top1"] = -1.0  # values no build produces: must never reach a LUT
    if damage == "corrupt":
        path.write_text(json.dumps(doc)[:-100])
    elif damage == "stale":
        doc["key"]["seed"] = 123
        path.write_text(json.dumps(doc))
    else:
        doc["rows"][7]["top1"] = "n/a"
        path.write_text(json.dumps(doc))
    stop = {"after": 3}

    def interrupt(result):
        stop["after"] -= 1
        if not stop["after"]:
            raise KeyboardInterrupt

    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt), LocalExecutor(digits_pipeline) as ex:
        build_lut(lut_cfg(tmp_path), digits_pipeline, executor=ex, on_result=interrupt)
    expected = {"corrupt": "corrupt", "stale": "stale", "bad rows": "corrupt"}[damage]
    assert any(expected in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    rebuilt = json.loads(path.read_text())  # the bad file was replaced by a fresh partial build, not reused
    assert rebuilt["complete"] is False and len(rebuilt["rows"]) == 3 and rebuilt["key"] == lut.meta["key"]
    assert all(r["top1"] >= 0 for r in rebuilt["rows"])


# -- pruning -----------------------------------------------------------------------------------------------


def test_pruning_rules_raise_minimum_bits_from_the_configs_present():
    configs = [(4, 4), (4, 8), (8, 4), (8, 8)]
    rules = PruneRules(max_drop=1.0, max_kl=0.02)
    ok = [0.0, 0.0, 0.0, 0.0]
    drop = np.array(
        [
            ok,  # 0: nothing fails
            [5.0, 0.0, 3.0, 0.0],  # 1: A4 hurts (W8A4): activations keep 8 bits (the paper's rule)
            [2.0, 2.0, 0.0, 0.0],  # 2: W4 hurts (W4A8): weights keep 8 bits
            [9.0, 9.0, 9.0, 4.0],  # 3: even W8A8 hurts: 8 bits on both
            [2.0, 0.0, 0.0, 0.0],  # 4: only W4A4 hurts: each operand alone is fine, so nothing is pruned
        ]
    )
    kl = np.zeros_like(drop)
    allowed = prune(configs, drop, kl, rules)
    assert [(a.w, a.a) for a in allowed] == [
        ((2, 8), (2, 8)),
        ((2, 8), (8, 8)),
        ((8, 8), (2, 8)),
        ((8, 8), (8, 8)),
        ((2, 8), (2, 8)),
    ]
    assert "A4 fails at W8A4" in allowed[1].reason and allowed[0].reason == ""
    # KL alone prunes (top-1 unchanged), and a null threshold switches its test off
    kl_only = np.array([[0.0, 0.0, 0.5, 0.0]])
    assert prune(configs, np.zeros((1, 4)), kl_only, rules)[0].a == (8, 8)
    assert prune(configs, np.zeros((1, 4)), kl_only, PruneRules(1.0, None))[0].a == (2, 8)
    assert prune(configs, np.array([[0, 0, 3.0, 0]]), np.zeros((1, 4)), PruneRules(None, 0.02))[0].a == (2, 8)
    # with a tested A6 that passes, A4 failing leaves 6..8; W2 failing with W4 passing leaves 4..8
    finer = [(8, 4), (8, 6), (8, 8), (2, 8), (4, 8)]
    a = prune(finer, np.array([[3.0, 0.0, 0.0, 3.0, 0.0]]), np.zeros((1, 5)), rules)[0]
    assert (a.w, a.a) == ((4, 8), (6, 8))
    # W4A8 tests W4 only: its failure says nothing about A8 (A is tested by W8A4 alone here)
    a = prune([(4, 8), (8, 4)], np.array([[3.0, 0.0]]), np.zeros((1, 2)), rules)[0]
    assert (a.w, a.a) == ((8, 8), (2, 8))
    # only W4A4 measured: a failure cannot be told apart, so both operands keep 8 bits
    a = prune([(4, 4)], np.array([[3.0]]), np.zeros((1, 1)), rules)[0]
    assert (a.w, a.a) == ((8, 8), (8, 8))


def test_pruned_lut_mask_and_search_space(clean):
    _, lut, _, _ = clean
    n = lut.num_units
    strict = lut.prune(PruneRules(max_drop=0.0, max_kl=1e-3))  # strict enough to prune this robust model
    w, a = strict.ranges()
    drop, kl = strict.matrix("top1_drop"), strict.matrix("kl")
    weighted = np.array([a.weighted for a in strict.allowed])
    assert weighted.tolist() == [
        k not in ("attention-qk", "attention-pv", "layernorm-in") for k in lut.frame.drop_duplicates("index")["kind"]
    ]
    w4_fails = (drop[:, 0] > 0) | (kl[:, 0] > 1e-3)  # W4A8 tests W4
    a4_fails = (drop[:, 1] > 0) | (kl[:, 1] > 1e-3)  # W8A4 tests A4
    assert (w4_fails & weighted).any() and a4_fails.any()
    np.testing.assert_array_equal(w[:, 0], np.where(w4_fails & weighted, 8, 2))  # no w test without a weight
    np.testing.assert_array_equal(a[:, 0], np.where(a4_fails, 8, 2))
    assert (w[:, 1] == 8).all() and (a[:, 1] == 8).all()
    mask = strict.mask()
    assert mask.shape == (n, 8, 8)  # bits 2..8 and FP32 on each operand
    # each operand's allowed integer range and FP32; an activation-only unit's cells on the diagonal (its w is its a)
    pairs = (w[:, 1] - w[:, 0] + 2) * (a[:, 1] - a[:, 0] + 2)
    np.testing.assert_array_equal(mask.sum(axis=(1, 2)), np.where(weighted, pairs, a[:, 1] - a[:, 0] + 2))
    assert mask[:, -1, -1].all()  # FP32 is always a choice
    before, after = strict.search_space()
    assert before == pytest.approx(weighted.sum() * math.log10(64) + (~weighted).sum() * math.log10(8))
    distinct = mask.sum(axis=(1, 2))
    assert after == pytest.approx(np.log10(distinct).sum()) and after < before
    assert lut.search_space()[1] <= before


# -- executors ---------------------------------------------------------------------------------------------


def test_trunk_splits_chains_and_keeps_residual_blocks_whole():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), Residual(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    assert trunk(model, torch.zeros(1, 1, 8, 8)) == ["0", "1", "2", "3", "4"]

    class Twice(nn.Module):  # a child called twice: the model cannot be split
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(self.fc(x))

    assert trunk(Twice(), torch.zeros(1, 3)) == [""]


def test_executor_runs_any_policy_and_replay_falls_back(digits_pipeline):
    pipe = digits_pipeline
    n = len(pipe.units)
    policies = [[(8, 8)] * n, [(4, 8)] * (n // 2) + [(8, 4)] * (n - n // 2), [FP] * 40 + [(4, 4)] * (n - 40)]
    jobs = [Job(np.array(b), "search_val", tag=k) for k, b in enumerate(policies)] + [Job([FP] * n, "test", tag="fp")]
    with make_executor(run_settings("lut"), pipe) as ex:
        results = {r.job.tag: r for r in ex.map(jobs)}
        assert ex.evaluations == 3  # the all-FP32 job is answered from the cached FP32 logits
    for k, b in enumerate(policies):
        assert results[k].metrics == pipe.evaluator.evaluate(b)
    assert results["fp"].metrics == pipe.evaluator.evaluate([FP] * n, "test") and not results["fp"].evaluated
    off = Worker(pipe, prefix_cache_mb=0)
    assert off.evaluate(jobs[2]).metrics == results[2].metrics and "search_val" not in off._replays
    assert not PrefixReplay(pipe.evaluator, pipe.names, "search_val", budget_mb=0).available
    tiny = PrefixReplay(pipe.evaluator, pipe.names, "search_val", budget_mb=2.0)  # room for the late blocks only
    assert tiny.available and 0 < len(tiny.starts) < len(set(tiny.unit_element) - {0})
    late = [FP] * (n - 2) + [(4, 4)] * 2
    assert tiny.start(late) > 0 and tiny.evaluate(late, tiny.start(late)) == pipe.evaluator.evaluate(late)
    assert tiny.start(jobs[2].bits) == 0  # layer 40's block did not fit: such a job runs the full pass


def test_ray_address_that_does_not_answer_is_one_line_and_loses_nothing(clean, digits_pipeline, tmp_path):
    clean_path = clean[3]
    path = tmp_path / clean_path.name
    doc = json.loads(clean_path.read_text())
    doc["complete"], doc["rows"] = False, [r for r in doc["rows"] if r["index"] < 10]
    path.write_text(json.dumps(doc))
    before = path.read_bytes()
    address = f"127.0.0.1:{free_port()}"
    cfg = lut_cfg(tmp_path, "lut.workers=2", f"ray.address={address}", "ray.connect_timeout_s=2")
    start = time.perf_counter()
    with pytest.raises(HySquantError) as e:
        build_lut(cfg, digits_pipeline)
    assert time.perf_counter() - start < 15
    assert f"ray.address={address} does not answer" in str(e.value) and "\n" not in str(e.value)
    assert path.read_bytes() == before  # the partial results are still there for the next run
    with pytest.raises(HySquantError, match=r"could not start ray.address=auto: ConnectionError"):
        make_executor(lut_cfg(tmp_path, "ray.address=auto", "lut.workers=2"))  # no cluster on this machine


def test_two_ray_workers_build_exactly_the_single_process_lut(clean, digits_pipeline, tmp_path):
    pytest.importorskip("ray")
    cfg = lut_cfg(tmp_path, "lut.workers=2", "lut.configs=[[4,8]]")  # threads=1: explicit in each actor
    with RayExecutor(cfg) as ex:
        lut = build_lut(cfg, digits_pipeline, executor=ex)
        assert ex.evaluations == len(digits_pipeline.units)
        # the same actors serve search policies: results as they complete, tags intact
        n = len(digits_pipeline.units)
        policies = {w: [(w, 8)] * n for w in (3, 5, 6)}
        got = {r.job.tag: r.metrics for r in ex.map(Job(b, tag=w) for w, b in policies.items())}
    pd.testing.assert_frame_equal(lut.frame, sub_table(clean[1], "W4A8"), check_exact=True)
    for w, b in policies.items():
        assert got[w] == digits_pipeline.evaluator.evaluate(b)


def test_hysquant_lut_app_writes_and_logs(clean, tmp_path, run_here):
    from hysquant_rl.apps.lut import main

    _, lut, _, path = clean
    out = tmp_path / "run"
    proc = run_here(main, f"lut.configs={CONFIGS}", f"lut.cache_dir={path.parent}", "threads=1", tmp_path=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "LUT cache hit" in text and "five most sensitive units" in text
    assert re.search(
        r"sensitivity ranks of the activation-only units \(1 = most sensitive of 111\): attention-qk \d+", text
    )
    assert "search space: 10^165.3 policies before pruning" in text  # 72 x log10(64) + 39 x log10(8)
    assert f"{lut.num_units} units x 2 configurations" in text
    for name in ("lut.csv", "lut.json", "lut_heatmap.png"):
        assert (out / name).exists()
    pd.testing.assert_frame_equal(LUT.load(out).frame, lut.frame, check_exact=True)
