"""The console scripts end to end: real runs, and bad input that ends in one clear line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hysquant_rl.apps.apply import main as apply_main
from hysquant_rl.deploy import ort
from hysquant_rl.deploy.checkpoints import INT_FILE, load_quantized
from hysquant_rl.deploy.simulated_onnx import ONNX_FILE
from hysquant_rl.models import ModelSpec, build_architecture
from hysquant_rl.policy import QuantPolicy
from tests.conftest import Ran, assert_one_error_line
from tests.formats import missing_keys

BIN = Path(sys.executable).parent


def run(app: str, *overrides: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """The console script as a user runs it: a new process."""
    return subprocess.run(
        [str(BIN / app), f"hydra.run.dir={tmp_path}", *overrides],
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_clean_error(proc: subprocess.CompletedProcess | Ran, pattern: str) -> None:
    assert_one_error_line(proc, pattern, code=2)


def test_apply_writes_policy_and_reloadable_model(tmp_path, digits_pipeline, run_here):
    proc = run_here(apply_main, "policy=W4A8", "export.onnx=true", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    policy = QuantPolicy.load(tmp_path / "policy.json")
    assert not missing_keys(tmp_path / "policy.json", "apply_policy")
    units = digits_pipeline.units
    assert len(units) == 111 and policy.model["weights_sha256"] == digits_pipeline.weights_sha256
    # W4A8: weights at 4 bits, every activation (an activation-only unit's too) at 8
    assert policy.bits() == [(4, 8) if u.weighted else (8, 8) for u in units]
    assert [e["w_bits"] for e in policy.units] == [4 if u.weighted else None for u in units]
    test = policy.metrics["apply"]["test"]
    assert test["n"] == 400 and 0 <= test["top1"] <= 100
    # the integer weights reload to the logits of the in-process quantized model
    loaded = load_quantized(tmp_path / INT_FILE, lambda spec: build_architecture(ModelSpec(**spec)))
    digits_pipeline.qmodel.apply_bits(policy.bits())
    x = digits_pipeline.data.test.x[:64]
    with torch.inference_mode():
        mine = digits_pipeline.qmodel(x)
        assert torch.equal(loaded(x), mine)
    # and the ONNX graph onnxruntime runs gives the same classes
    got = torch.from_numpy(ort.logits(ort.session(tmp_path / ONNX_FILE), x.numpy()))
    assert (got.argmax(1) == mine.argmax(1)).float().mean() >= 0.98
    assert test["top1"] == pytest.approx(digits_pipeline.evaluator.evaluate(policy.bits(), "test").top1)


def test_apply_a_policy_file_for_other_weights(tmp_path, digits_pipeline):
    """The exit-code contract, in a real process: one ``error:`` line, status 2, no traceback."""
    policy = digits_pipeline.policy([(8, 8)] * len(digits_pipeline.units), method="uniform")
    policy.model["weights_sha256"] = "0" * 64
    policy.units[3]["w_bits"] = 9
    path = policy.save(tmp_path / "p.json")
    proc = run("hysquant-apply", f"policy={path}", tmp_path=tmp_path / "run")
    assert_clean_error(proc, r"(?=.*w_bits=9 out of range)(?=.*made for other weights)")


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["policy=W9A8"], r"W9A8"),
        (
            ["policy=W4A8", "model.name=mobilevit_xxz"],
            r"unknown model.name='mobilevit_xxz'.*did you mean mobilevit_xxs",
        ),
        (
            ["policy=W4A8", "data=fashion_mnist", "data.root=/nonexistent"],
            r"Fashion-MNIST not found in data.root=/nonexistent",
        ),
        (["policy=W4A8", "quant.weight_granularity=row"], r"weight_granularity='row'"),
        (["policy=/nonexistent/policy.json"], r"/nonexistent/policy.json"),
    ],
)
def test_bad_input_one_line(tmp_path, digits_pipeline, run_here, overrides, pattern):
    assert_clean_error(run_here(apply_main, *overrides, tmp_path=tmp_path), pattern)


def test_checkpoint_for_other_model(tmp_path, small_model, run_here):
    path = tmp_path / "w.pth"
    torch.save(small_model.state_dict(), path)
    proc = run_here(
        apply_main,
        "policy=W8A8",
        "model=mobilevit_xs",
        f"model.checkpoint={path}",
        "model.num_classes=10",
        "model.in_chans=1",
        "model.img_size=32",
        tmp_path=tmp_path / "run",
    )
    assert_clean_error(proc, r"does not fit model mobilevit_xs.*shape mismatches")


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("search.episodes=abc", r"search.episodes='abc' must be an integer >= 1"),
        ("search.episodes=0", r"search.episodes=0 must be an integer >= 1"),
        ("search.episodes=-3", r"search.episodes=-3 must be an integer >= 1"),
        ("search.episodes=2.5", r"search.episodes=2.5 must be an integer >= 1"),
        ("search.max_rounds=0", r"search.max_rounds=0 must be an integer >= 1"),
        ("search.checkpoint_every=0", r"search.checkpoint_every=0 must be an integer >= 1"),
        ("budget.latency_ratio=abc", r"budget.latency_ratio='abc' must be a positive number"),
        ("budget.latency_ratio=0", r"budget.latency_ratio=0 must be a positive number"),
        ("seed=abc", r"seed='abc' must be an integer"),
        ("threads=0", r"threads=0 must be an integer >= 1"),
        ("eval.batch_size=0", r"eval.batch_size=0 must be an integer >= 1"),
        ("quant.calibrator=kl", r"quant.calibrator='kl' is unknown: use one of minmax, percentile, mse"),
        ("quant.percentile=0", r"quant.percentile=0.0 must be in \(0, 100\]"),
        ("quant.percentile=50", r"quant.percentile=50.0 must be in \(0, 100\] and at least 90"),
        (
            "search.method=annealing",
            r"unknown search.method='annealing': use one of uniform, greedy, ilp, random, local, ilp-refine, rl",
        ),
        ("agent.name=ppo", r"unknown agent.name='ppo': use one of ddpg, td3, sac"),
        ("agent.learning_rate=abc", r"agent.learning_rate='abc' must be a positive number"),
        ("search.warm_start=maybe", r"search.warm_start='maybe' must be true or false"),
    ],
)
def test_bad_search_settings_fail_before_any_work(tmp_path, run_here, override, pattern):
    """Where the model, data or LUT would be touched first they cannot be (an empty model cache, no data set): the
    setting's own line, not theirs, shows that none of them was."""
    from hysquant_rl.apps.search import main as search_main

    cache, run = tmp_path / "cache", tmp_path / "run"
    nowhere = ["data=fashion_mnist", f"data.root={tmp_path / 'no-data'}", f"paths.cache={cache}"]
    assert_clean_error(run_here(search_main, *nowhere, override, tmp_path=run), pattern)
    assert not cache.exists() and not (run / "run_settings.json").exists() and not (run / "best_policy.json").exists()


def test_missing_policy_and_a_run_directory_that_cannot_be_made(tmp_path, run_here):
    from hysquant_rl.apps.apply import main as apply_main

    assert_clean_error(run_here(apply_main, tmp_path=tmp_path / "run"), r"policy must be set: pass policy=")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    ran = run_here(apply_main, "policy=W8A8", tmp_path=blocker / "run")
    assert_clean_error(ran, r"cannot create hydra.run.dir=.*a-file/run \(Not a directory\)")


def test_a_sweep_goes_on_past_a_failing_job(tmp_path, run_here):
    """A failing job of a multirun prints its one line; the next job still runs; the exit status counts failures."""
    from hysquant_rl.apps.search import main as search_main

    sweep = tmp_path / "sweep"
    ran = run_here(
        search_main, "-m", f"hydra.sweep.dir={sweep}", "search.method=greedy", "search.episodes=0,1", tmp_path=tmp_path
    )
    assert ran.returncode == 1, ran.stderr[-2000:]
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "search.episodes=0 must be an integer >= 1" in errors[0]
    assert "1 job(s) of the sweep failed" in ran.stderr
    assert (sweep / "1" / "best_policy.json").exists() and not (sweep / "0" / "best_policy.json").exists()
