"""Interruptions and resuming, as a user meets them, each in a real process: kill -9 at a checkpoint boundary,
Ctrl-C (SIGINT), a resume that would mix runs, directories that cannot be written, a disk that fills up. Each
asserts the exit status, the one-line message, and that nothing already computed was lost."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.storage import CHECKPOINT_MANIFEST as MANIFEST
from agents.storage import read_checkpoint
from tests.conftest import assert_one_error_line

BIN = Path(sys.executable).parent
FAST = ["search.checkpoint_every=2", "agent.warmup_episodes=2", "agent.gradient_steps=2", "threads=1"]


def search(run: Path, *overrides: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "hysquant-search"), f"hydra.run.dir={run}", *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        **kw,
    )


def state(run: Path) -> dict:
    folder, _ = read_checkpoint(run / "checkpoints")
    return json.loads((folder / "state.json").read_text())


def test_kill_9_while_a_checkpoint_is_written_then_resume(tmp_path, digits_pipeline):
    """Killed after the state of the second checkpoint was written but before its manifest: the first set stays in
    force, whole; resume=true restores the run's own settings (6 episodes, not the default 200) and finishes it."""
    run = tmp_path / "run"
    # episodes_done counts the ILP warm start: checkpoints at 3 and 5, the last at 6
    killed = search(run, "search.episodes=6", *FAST, env={"HYSQUANT_TEST_KILL_AT": "5:state.json"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first = state(run)
    assert first["episodes_done"] == 3 and len(first["history"]) == 3
    assert json.loads((run / "checkpoints" / MANIFEST).read_text())["episodes"] == 3
    resumed = search(run, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = state(run)
    assert final["episodes_done"] == 6 and final["history"][:3] == first["history"]
    leftovers = [p.name for p in (run / "checkpoints").iterdir()]
    assert sorted(leftovers) == sorted([MANIFEST, "episode-000006"])  # the partial set and temporary files are gone
    assert json.loads((run / "summary.json").read_text())["episodes"] == 6


def test_resume_refuses_another_value_and_a_run_that_is_not_there(tmp_path, digits_pipeline, run_here):
    from hysquant_rl.apps.search import main

    run = tmp_path / "run"
    done = run_here(main, "search.episodes=3", *FAST, tmp_path=run)
    assert done.returncode == 0, done.stderr[-2000:]
    before = (run / "best_policy.json").read_bytes()
    for override, pattern in (
        ("seed=3", r"seed=3 differs from the interrupted run's seed=0: drop it"),
        ("budget.latency_ratio=0.7", r"budget.latency_ratio=0.7 differs from the interrupted run's"),
        ("agent=td3", r"agent=td3 differs from the interrupted run's agent=ddpg"),
    ):
        assert_one_error_line(run_here(main, "resume=true", override, tmp_path=run), pattern)
    assert (run / "best_policy.json").read_bytes() == before  # nothing was touched
    assert_one_error_line(run_here(main, "resume=true", tmp_path=tmp_path / "empty"), r"holds no interrupted run")
    # the record no longer matches the checkpoint (as when the cached model or LUT changed under it)
    record = json.loads((run / "run_settings.json").read_text())
    record["budget"]["energy_ratio"] = 0.7
    (run / "run_settings.json").write_text(json.dumps(record))
    assert_one_error_line(run_here(main, "resume=true", tmp_path=run), r"was made with other budgets than this run")
    assert (run / "best_policy.json").read_bytes() == before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_finishes_the_episode_writes_a_checkpoint_and_says_how_to_resume(tmp_path, digits_pipeline, signum):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [str(BIN / "hysquant-search"), f"hydra.run.dir={run}", "search.episodes=200", *FAST],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    manifest = run / "checkpoints" / MANIFEST
    deadline = time.monotonic() + 300
    while not manifest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (run / ".hysquant.lock").read_text() == f"hysquant-search (PID {proc.pid})\n"  # it holds its directory
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    ended = subprocess.CompletedProcess([], proc.returncode, out, err)
    line = assert_one_error_line(ended, rf"{signal.Signals(signum).name} after \d+", 130)
    episodes = state(run)["episodes_done"]
    assert f"after {episodes} episodes" in line and f"resume=true hydra.run.dir={run}" in line
    assert 3 <= episodes < 200


def test_directories_that_cannot_be_written_are_one_line(tmp_path, digits_pipeline, run_here):
    """A LUT cache or checkpoint folder that is a file (root ignores permission bits, a file blocks anyone)."""
    from hysquant_rl.apps.search import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    ran = run_here(
        main, "search.episodes=2", f"lut.cache_dir={blocker}/lut", "lut.cache=false", tmp_path=tmp_path / "a"
    )
    assert_one_error_line(ran, r"cannot write .*a-file")
    run = tmp_path / "b"
    run.mkdir()
    (run / "checkpoints").write_text("in the way")
    ran = run_here(main, "search.episodes=3", *FAST, tmp_path=run)
    assert_one_error_line(ran, r"cannot write the checkpoint in .*checkpoints")
    assert json.loads((run / "best_policy.json").read_text())["layers"]  # the best policy so far is kept


def test_a_full_disk_is_one_line_and_keeps_what_was_written(tmp_path, digits_pipeline):
    """Files may not grow past 1.5 MB (as on a disk that fills up): the LUT, its heatmap and the best policy are
    written, the first checkpoint (the agent's networks and optimisers, 1.7 MB) cannot be."""

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))

    run = tmp_path / "run"
    ran = search(run, "search.episodes=4", *FAST, preexec_fn=small_files)
    line = assert_one_error_line(ran, r"cannot write the checkpoint in .*checkpoints \(File too large\)")
    assert line.endswith("no checkpoint was written yet")  # not "the previous checkpoint is still in force"
    assert json.loads((run / "best_policy.json").read_text())["layers"] and (run / "lut.json").exists()
    assert not (run / "checkpoints" / MANIFEST).exists()


@pytest.mark.parametrize("workers", [1])
def test_threads_default_to_the_cores_of_the_process(workers):
    from hysquant_rl.settings import default_threads

    assert default_threads(workers) == max(1, len(os.sched_getaffinity(0)) // workers)
