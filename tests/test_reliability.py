"""Reliability of the run directory, the checkpoints and the settings (issue 20): a checkpoint is data, never code;
one run per directory; caches that cannot be written; bad input that is one line before any work. Each case asserts
what the user sees (exit status, the one ``error:`` line) and that nothing already computed was lost."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.storage import CHECKPOINT_MANIFEST as MANIFEST
from agents.storage import CHECKPOINT_PARTS as PARTS
from agents.storage import read_checkpoint, write_checkpoint
from hysquant_rl.apps import LOCK_FILE, lock_run_dir, os_error_message, unlock_run_dir
from hysquant_rl.errors import HySquantError
from hysquant_rl.io import WriteError, save_json
from tests.conftest import assert_one_error_line, run_settings, search_settings

BIN = Path(sys.executable).parent
FAST = ["search.checkpoint_every=2", "agent.warmup_episodes=2", "agent.gradient_steps=2", "threads=1"]
QUICK = ["search.episodes=4", "agent.warmup_episodes=1", "agent.gradient_steps=2", "search.checkpoint_every=1"]
COLD = ["search.warm_start=false"]  # no integer program to solve before the agent is built: a resume in 0.2 s


class Marker:
    """Unpickling this creates ``path``: what a tampered pickle in a run directory would do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# -- a checkpoint is data: it restores the agent exactly, and a damaged or foreign part is one line ------------------


@pytest.fixture(scope="module")
def lut(digits_pipeline):
    from hysquant_rl.lut.build import build_lut

    return build_lut(run_settings("search"), digits_pipeline)


def rl_search(pipe, lut, out: Path, overrides: list[str], resume: bool = False):
    """The RL method of ``hysquant-search`` on the session's pipeline (as ``hysquant_rl.search.loop`` builds it)."""
    from agents.rl import RLSearch
    from hysquant_rl.search.budget import resolve
    from hysquant_rl.search.problem import build_problem
    from hysquant_rl.search.recorder import Recorder

    search = dataclasses.replace(search_settings(QUICK + overrides), resume=resume)
    budgets = resolve(search.budget, pipe.cost, lut.mask())
    problem = build_problem(search, pipe, lut, budgets)
    return RLSearch(search, problem, Recorder(pipe, out, "rl", 0, budgets), out)


@pytest.fixture(scope="module")
def finished(digits_pipeline, lut, tmp_path_factory):
    """A 4-episode DDPG search's run directory (with the record ``hysquant-search`` keeps of its settings) and its
    method (the agent as it was when the last set was written)."""
    from hysquant_rl.apps import compose_config, plain

    out = tmp_path_factory.mktemp("finished")
    method = rl_search(digits_pipeline, lut, out, COLD)
    method.run(method.problem.limits)
    save_json(plain(compose_config("search", QUICK + COLD + ["threads=1"])), out / "run_settings.json")
    return out, method


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("agent", ["ddpg", "sac"])
def test_a_checkpoint_is_data_and_restores_the_agent_exactly(digits_pipeline, lut, tmp_path, caplog, agent):
    """Every part loads without pickles (JSON, npz with allow_pickle=False, torch with weights_only=True), and the
    resumed agent equals the one that wrote them: networks and targets, optimiser states (and SAC's entropy
    coefficient), counters, exploration noise, replay buffer; the log names the set's own episode count."""
    from agents.factory import exploration_noises

    overrides = [f"agent={agent}"] + (COLD if agent == "sac" else [])  # DDPG warm-started, as by default
    method = rl_search(digits_pipeline, lut, tmp_path, overrides)
    method.run(method.problem.limits)
    folder, episodes = read_checkpoint(tmp_path / "checkpoints")
    assert sorted(p.name for p in folder.iterdir()) == sorted(PARTS) and episodes == method.state["episodes_done"]
    json.loads((folder / "state.json").read_text())
    for name in ("replay_buffer.npz", "episodes.npz"):
        with np.load(folder / name, allow_pickle=False) as saved:
            [saved[k] for k in saved.files]
    torch.load(folder / "agent.pt", weights_only=True)
    with caplog.at_level(logging.INFO, logger="agents.rl"):
        resumed = rl_search(digits_pipeline, lut, tmp_path, overrides, resume=True)
    assert f"resumed from {folder} after {episodes} episodes" in caplog.text  # the set's count, not the noise's
    a, b = method.agent, resumed.agent
    assert _equal(a.get_parameters(), b.get_parameters())  # policy (actor, critic, targets) and every optimiser
    for name in a._get_torch_save_params()[1]:  # SAC's log entropy coefficient
        assert torch.equal(getattr(a, name), getattr(b, name))
    for key in ("num_timesteps", "_n_updates", "_episode_num", "actor_lr_ratio", "gradient_steps"):
        assert getattr(a, key) == getattr(b, key), key
    ra, rb = a.replay_buffer, b.replay_buffer
    assert (ra.pos, ra.full) == (rb.pos, rb.full) and ra.pos > 0
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        assert np.array_equal(getattr(ra, name), getattr(rb, name)), name
    for x, y in zip(exploration_noises(a), exploration_noises(b), strict=True):
        assert x.episodes == y.episodes and x.sigma == y.sigma and np.array_equal(x(), y())  # the same next draw
    assert resumed.state == method.state and resumed.recorder.history == method.recorder.history
    assert resumed.store.episodes.keys() == method.store.episodes.keys()
    assert np.array_equal(resumed.store.raw, method.store.raw, equal_nan=True)


def _damage(folder: Path, case: str, marker: Path) -> str:
    """Damage the set ``folder`` as ``case`` says; returns the file the error must name."""
    if case == "agent of random bytes":
        (folder / "agent.pt").write_bytes(os.urandom(4096))
        return "agent.pt"
    if case == "agent is a pickle that runs code":
        torch.save({"state_dicts": Marker(marker)}, folder / "agent.pt")
        return "agent.pt"
    if case == "truncated episodes":
        data = (folder / "episodes.npz").read_bytes()
        (folder / "episodes.npz").write_bytes(data[: len(data) // 2])
        return "episodes.npz"
    if case == "missing array":
        with np.load(folder / "episodes.npz", allow_pickle=False) as saved:
            kept = {k: saved[k] for k in saved.files if k != "bits"}
        np.savez(folder / "episodes.npz", **kept)
        return "episodes.npz"
    if case == "replay buffer holding a pickle":
        with np.load(folder / "replay_buffer.npz", allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files}
        np.savez(folder / "replay_buffer.npz", **{**arrays, "observations": np.array([Marker(marker)], dtype=object)})
        return "replay_buffer.npz"
    if case == "invalid state":
        (folder / "state.json").write_text('{"agent": "ddpg", "identity": ')
        return "state.json"
    raise ValueError(case)


@pytest.mark.parametrize(
    "case",
    [
        "agent of random bytes",
        "agent is a pickle that runs code",
        "truncated episodes",
        "missing array",
        "replay buffer holding a pickle",
        "invalid state",
    ],
)
def test_a_damaged_part_is_one_line_naming_the_file(digits_pipeline, lut, finished, tmp_path, case):
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    folder, _ = read_checkpoint(run / "checkpoints")
    marker = tmp_path / "marker"
    name = _damage(folder, case, marker)
    with pytest.raises(HySquantError) as e:
        rl_search(digits_pipeline, lut, run, COLD, resume=True)
    message = str(e.value)
    assert "\n" not in message and f"the checkpoint file {folder / name} is damaged" in message, message
    assert message.endswith("start a new run directory (another hydra.run.dir, without resume=true)")
    assert "weights_only=False" not in message and not marker.exists()  # nothing in the file ran


def test_the_manifest_names_only_its_own_sets(finished, tmp_path):
    """A manifest naming another run's set is refused, not followed; one of the old format (SB3's agent.zip and a
    pickled replay buffer) is refused without reading them."""
    other, run = tmp_path / "other_run", tmp_path / "runs" / "run"
    shutil.copytree(finished[0], other)
    shutil.copytree(finished[0], run)
    manifest = run / "checkpoints" / MANIFEST
    doc = json.loads(manifest.read_text())
    for name in (
        f"../../../other_run/checkpoints/{doc['set']}",
        str(other / "checkpoints" / doc["set"]),
        "..",
        MANIFEST,
    ):
        manifest.write_text(json.dumps({**doc, "set": name}))
        with pytest.raises(HySquantError, match=r"which is not a set folder inside .*: refused") as e:
            read_checkpoint(run / "checkpoints")
        assert "\n" not in str(e.value)
    (run / "checkpoints" / "episode-000009").symlink_to(other / "checkpoints" / doc["set"])  # a link out of it
    manifest.write_text(json.dumps({**doc, "set": "episode-000009"}))
    with pytest.raises(HySquantError, match=r"which is not a set folder inside .*: refused"):
        read_checkpoint(run / "checkpoints")
    old = ["agent.zip", "episodes.npz", "replay_buffer.pkl", "state.json"]
    manifest.write_text(json.dumps({"format": "hysquant-checkpoint", "episodes": 3, "set": doc["set"], "parts": old}))
    with pytest.raises(HySquantError, match=r"older hysquant-rl .* pickles, which resume does not read"):
        read_checkpoint(run / "checkpoints")


def test_resume_from_an_earlier_whole_set(digits_pipeline, lut, finished, tmp_path, caplog):
    """When the set the manifest names is damaged and an earlier whole set is still there (a process killed between
    the manifest and the clean-up leaves one), the line says so; deleting the damaged set resumes from it."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    latest, episodes = read_checkpoint(run / "checkpoints")
    earlier = run / "checkpoints" / "episode-000001"
    shutil.copytree(latest, earlier)
    (latest / "state.json").write_text("not json")
    with pytest.raises(HySquantError) as e:
        rl_search(digits_pipeline, lut, run, COLD, resume=True)
    assert f"delete {latest} and resume again to continue from the earlier whole set episode-000001" in str(e.value)
    shutil.rmtree(latest)
    with caplog.at_level(logging.INFO, logger="agents.rl"):
        resumed = rl_search(digits_pipeline, lut, run, COLD, resume=True)
    assert f"resumed from {earlier}" in caplog.text and resumed.state["episodes_done"] == episodes


def test_a_tampered_pickle_never_runs(finished, digits_pipeline, lut, tmp_path):
    """In a real process: a run directory whose agent file was replaced by a pickle that would create a marker file
    (with pickles dropped beside it, where SB3's files used to be) is refused in one line naming the file; the marker
    is never created. The foreign pickles alone are ignored: the resume goes on."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    folder, _ = read_checkpoint(run / "checkpoints")
    marker = tmp_path / "marker"
    for name in ("replay_buffer.pkl", "agent.zip"):
        (folder / name).write_bytes(pickle.dumps(Marker(marker)))
    original = (folder / "agent.pt").read_bytes()
    torch.save({"state_dicts": Marker(marker)}, folder / "agent.pt")
    ran = subprocess.run(
        [str(BIN / "hysquant-search"), f"hydra.run.dir={run}", "resume=true"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_error_line(ran, rf"the checkpoint file {folder / 'agent.pt'} is damaged \(it holds Python objects")
    assert not marker.exists()
    (folder / "agent.pt").write_bytes(original)
    resumed = rl_search(digits_pipeline, lut, run, COLD, resume=True)
    assert resumed.state == finished[1].state and not marker.exists()


def test_a_failed_checkpoint_says_whether_an_earlier_one_is_in_force(tmp_path):
    def full(f) -> None:
        raise OSError(28, "No space left on device")

    def fine(f) -> None:
        f.write(b"{}")

    with pytest.raises(HySquantError, match=r"\(No space left on device\).*; no checkpoint was written yet$"):
        write_checkpoint(tmp_path, 1, {p: full for p in PARTS})
    write_checkpoint(tmp_path, 2, {p: fine for p in PARTS})
    with pytest.raises(HySquantError, match=r"; the previous checkpoint is still in force$"):
        write_checkpoint(tmp_path, 3, {p: (full if p == "state.json" else fine) for p in PARTS})
    assert read_checkpoint(tmp_path)[1] == 2


# -- one run per directory -------------------------------------------------------------------------------------------


def test_a_second_app_in_a_run_directory_is_refused_naming_the_holder(tmp_path, run_here):
    """Another process holds the run directory (its lock, as a running app takes it): a second hysquant-search, in a
    real process, and hysquant-lut and hysquant-apply are each refused in one line naming the holder's PID, before
    Hydra writes anything there; once the holder is killed (kill -9), the kernel has released the directory."""
    from hysquant_rl.apps.apply import main as apply_main
    from hysquant_rl.apps.lut import main as lut_main

    run = tmp_path / "run"
    hold = "import sys, time; from pathlib import Path; from hysquant_rl.apps import lock_run_dir;"
    hold += " lock_run_dir(Path(sys.argv[1]), 'hysquant-search'); print('held', flush=True); time.sleep(300)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = rf"hysquant-search \(PID {holder.pid}\) is running in {run}: wait for it to end"
        second = subprocess.run(
            [str(BIN / "hysquant-search"), f"hydra.run.dir={run}", "search.method=greedy"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert_one_error_line(second, refused)
        assert_one_error_line(run_here(lut_main, tmp_path=run), refused)
        assert_one_error_line(run_here(apply_main, "policy=W8A8", tmp_path=run), refused)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # no .hydra/, no log: nothing was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_run_dir(run, "test")  # the kernel released the killed holder's lock
    unlock_run_dir(run)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# -- caches that cannot be written -----------------------------------------------------------------------------------


def test_a_model_cache_that_cannot_be_written_fails_before_training(tmp_path, run_here):
    from hysquant_rl.apps.train import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    ran = run_here(main, f"paths.cache={blocker}/cache", tmp_path=tmp_path / "run")
    assert_one_error_line(ran, rf"cannot write the model cache {blocker}/cache/models \(Not a directory\): make it")
    assert "training it" not in ran.stderr  # refused before the training (minutes), not after it


def test_a_cache_that_fails_during_training_keeps_the_model(tmp_path, caplog):
    """The cache was writable when the training began and is not when it ends (a disk that filled up): the trained
    weights are used from memory, with one warning."""
    from hysquant_rl.data import DataSplits, load_data
    from hysquant_rl.models import ModelSpec, build_architecture, load_weights
    from hysquant_rl.train import embedded_state

    cache = tmp_path / "cache"
    run = run_settings("train", [f"paths.cache={cache}", "data.train.epochs=1"])

    def data() -> DataSplits:
        splits = load_data(run.data, seed=0)
        shutil.rmtree(cache / "models")
        (cache / "models").write_text("the disk is full")  # every write below it fails from now on
        splits.train.x, splits.train.y = splits.train.x[:16], splits.train.y[:16]  # one quick epoch
        splits.train.size = 16
        return splits

    with caplog.at_level(logging.WARNING):
        state, trained = embedded_state(run, data)
    assert trained and "cannot cache the trained model" in caplog.text and "using it from memory" in caplog.text
    model = build_architecture(ModelSpec.of(run.model))
    load_weights(model, state, "the trained weights", run.model.name)  # every weight of the architecture
    assert (cache / "models").is_file()


def test_a_lut_cache_that_fails_during_the_build_keeps_the_lut(tmp_path, digits_pipeline, lut, caplog):
    """A build resumed from a cache that stops being writable after its first job (a disk that filled up) finishes in
    memory, with one warning, and measures every missing job."""
    from hysquant_rl.lut.build import build_lut

    cache = tmp_path / "lut"
    cache.mkdir()
    doc = json.loads(Path(lut.meta["cache"]["path"]).read_text())
    doc["complete"], doc["rows"] = False, [r for r in doc["rows"] if r["index"] >= 3]  # units 0, 1, 2 to measure
    (cache / Path(lut.meta["cache"]["path"]).name).write_text(json.dumps(doc))
    run = run_settings("search", [f"lut.cache_dir={cache}", "lut.save_every=1"])

    def fill_the_disk(result) -> None:
        if cache.is_dir():
            shutil.rmtree(cache)
            cache.write_text("the disk is full")

    with caplog.at_level(logging.WARNING):
        rebuilt = build_lut(run, digits_pipeline, on_result=fill_the_disk)
    assert rebuilt.meta["cache"]["status"] == "resumed" and rebuilt.meta["build"]["evaluated"] >= 3
    assert caplog.text.count("cannot write the LUT cache") == 1 and cache.is_file()
    assert rebuilt.frame.equals(lut.frame)  # the same table as the whole cached one: nothing was lost


# -- bad input: one line before any work -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["quant.calibrator=percentile", "quant.percentile=10"], r"quant.percentile=10.0 must be in .* at least 90"),
        (["budget.min_top1=nan"], r"budget.min_top1=nan must be a finite number"),
        (["budget.min_top1=200"], r"budget.min_top1=200.0 must be in \[0, 100\]"),
        (["budget.mode=penalty", "budget.penalty_weight=nan"], r"budget.penalty_weight=nan must be a finite number"),
        (["budget.penalty_weight=-1"], r"budget.penalty_weight=-1.0 must be a finite number >= 0"),
        (["budget.energy_ratio=inf"], r"budget.energy_ratio=inf must be a finite positive number"),
        (["budget.latency_ms=-inf"], r"budget.latency_ms=-inf must be a finite positive number"),
        (["hardware=cpu", "hardware.timing.max_cv=nan"], r"timing.max_cv must be a positive .*, got nan"),
        (["agent.tau=nan"], r"agent.tau=nan must be a finite number"),
        (["reward.scale=inf"], r"reward.scale=inf must be a finite number"),
    ],
)
def test_wrong_numbers_are_one_line_before_any_work(tmp_path, run_here, overrides, pattern):
    """Where the model, data or LUT would be touched first they cannot be (an empty model cache, no data set): the
    setting's own line shows that none of them was."""
    from hysquant_rl.apps.search import main

    cache = tmp_path / "cache"
    nowhere = ["data=fashion_mnist", f"data.root={tmp_path / 'no-data'}", f"paths.cache={cache}"]
    ran = run_here(main, *nowhere, *overrides, tmp_path=tmp_path / "run")
    assert_one_error_line(ran, pattern)
    assert not cache.exists() and not (tmp_path / "run" / "run_settings.json").exists()


def test_nan_and_infinity_never_reach_a_json_file(tmp_path):
    with pytest.raises(HySquantError, match=r"policy.budgets\[1\].energy_mj is inf, which JSON cannot hold"):
        save_json({"policy": {"budgets": [{"energy_mj": 1.0}, {"energy_mj": float("inf")}]}}, tmp_path / "a.json")
    with pytest.raises(HySquantError, match=r"top1 is nan"):
        save_json({"top1": float("nan")}, tmp_path / "b.json")
    assert not list(tmp_path.iterdir())


def _workers_limit() -> tuple[int, float]:
    cpus = len(os.sched_getaffinity(0))
    with open("/proc/meminfo") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    return min(cpus, int(kb / 1e6 // 1.5)), kb / 1e6


@pytest.mark.parametrize("key", ["search.workers", "lut.workers"])
def test_more_workers_than_the_machine_can_run_is_one_line(tmp_path, run_here, key):
    from hysquant_rl.apps.search import main

    limit, _ = _workers_limit()
    ran = run_here(main, f"{key}=100", tmp_path=tmp_path / "run")
    assert_one_error_line(ran, rf"{key}=100 is more workers than this machine can run: at most {max(1, limit)} \(")
    assert not (tmp_path / "run" / "run_settings.json").exists()
    # on a cluster the machine's size does not bound them
    cluster = [f"{key}=100", "ray.address=10.0.0.1:6379"]
    assert run_settings("search", cluster).lut.workers * search_settings(cluster).workers == 100


@pytest.mark.parametrize("value", ["'{tmp}/quoted'", '"{tmp}/quoted"', "{tmp}/runs/${{now:%Y-%m-%d}}"])
def test_a_run_directory_that_would_be_a_stray_folder_is_refused(tmp_path, run_here, value):
    from hysquant_rl.apps.apply import main

    inside = tmp_path / "inside"
    inside.mkdir()
    ran = run_here(main, "policy=W8A8", f"hydra.run.dir={value.format(tmp=inside)}", tmp_path=tmp_path / "run")
    assert_one_error_line(ran, r"hydra.run.dir=.* (carries quote characters|holds an unresolved interpolation)")
    assert not list(inside.iterdir())  # nothing was created


def test_a_deeply_nested_policy_is_one_line(tmp_path, digits_pipeline, run_here):
    from hysquant_rl.apps.apply import main

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    ran = run_here(main, f"policy={deep}", tmp_path=tmp_path / "run")
    assert_one_error_line(ran, rf"policy file {deep} nests JSON more than 64 levels deep")


def test_a_model_checkpoint_that_is_not_weights_is_one_line(tmp_path):
    from hysquant_rl.models import read_state_dict

    marker, path = tmp_path / "marker", tmp_path / "weights.pth"
    torch.save({"state_dict": Marker(marker)}, path)
    with pytest.raises(HySquantError) as e:
        read_state_dict(path)
    message = str(e.value)
    assert message.startswith(f"model.checkpoint={path} could not be read (it holds Python objects, not only tensors")
    assert "\n" not in message and "weights_only=False" not in message and not marker.exists()


def test_os_errors_are_reported_as_what_failed():
    assert os_error_message(WriteError(28, "No space left on device", "/x/lut.json")).startswith(
        "cannot write /x/lut.json (No space left on device)"
    )
    read = os_error_message(FileNotFoundError(2, "No such file or directory", "/data/a.png"))
    assert read.startswith("cannot access /data/a.png (No such file or directory): check that it exists")


def test_a_damaged_run_settings_record_is_one_line(tmp_path, run_here):
    from hysquant_rl.apps.search import main

    run = tmp_path / "run"
    run.mkdir()
    for text, cause in (("{not json", r"JSONDecodeError"), ("[1, 2]", r"expected a JSON object"), ("{}", "KeyError")):
        (run / "run_settings.json").write_text(text)
        ran = run_here(main, "resume=true", tmp_path=run)
        assert_one_error_line(ran, rf"the run's settings file .*run_settings.json, which .* is damaged \(.*{cause}")


# -- measured checks: a GPU profile is not timed on this CPU; a busy machine ----------------------------------------


def test_a_gpu_profile_is_not_timed_by_onnxruntime(tmp_path, run_here):
    """GPU-modelled budgets checked against CPU timings would mean nothing: refused in one line before any work."""
    from hysquant_rl.apps.search import main

    cache = tmp_path / "cache"
    ran = run_here(main, "hardware=rtx3080", "hardware.backend=onnxruntime", f"paths.cache={cache}", tmp_path=tmp_path)
    assert_one_error_line(ran, r"backend onnxruntime times this machine's CPU, but the profile describes no runtime")
    assert not cache.exists()


CHECKED = [
    "hardware=cpu",
    "hardware.backend=onnxruntime",
    "search.space=simulated",  # the paper's layout timed: no runtime graphs to build, a quick check
    "lut.configs=[[8,8]]",
    "search.method=ilp",
    "search.reference=[W8A8]",
    "budget=latency",
    "budget.latency_ratio=1.0",
    "threads=1",
]


def test_a_check_that_cannot_be_made_still_writes_the_search(tmp_path, run_here):
    """A machine too busy for any steady timing (an unreachable steadiness, max_cv 1e-9, stands in for it): the
    search's best policy, summary (saying what was not measured) and model are written; exit status 3 says the
    check is missing, in one line."""
    from hysquant_rl.apps.search import main

    unsteady = ["hardware.timing.max_cv=1e-9", "hardware.timing.attempts=2", "hardware.timing.pause_s=0"]
    ran = run_here(main, *CHECKED, *unsteady, tmp_path=tmp_path)
    assert_one_error_line(ran, r"onnxruntime timing too unsteady: .* after 2 attempts.*results are written", code=3)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "too unsteady" in summary["unchecked"] and "unchecked" in summary["rounds"][0]
    assert "NOT MEASURED" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "best_policy.json").exists() and (tmp_path / "model_int.pt").exists()


def test_a_busy_machine_does_not_end_a_measured_search(tmp_path):
    """A real busy machine: another process spins on the one CPU the search may use. The timing is retried and judged
    on its fastest half (the runs the neighbour did not slow), so the check is made and the search ends normally,
    the measured latency in its summary."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    hog = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", "while True: pass"])
    try:
        ran = subprocess.run(
            ["taskset", "-c", str(cpu), str(BIN / "hysquant-search"), f"hydra.run.dir={tmp_path}", *CHECKED],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        hog.kill()
        hog.wait()
    assert ran.returncode == 0, ran.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["unchecked"] is None and summary["policies"]["best policy"]["measured"]["latency_s"] > 0
