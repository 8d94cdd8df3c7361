"""Reliability and security, round 4 (issue 30): a run directory's links are never followed, resource settings are
bounded by the machine, every setting the summary consumes is checked before the search, budgets are compared with a
relative tolerance, policies and agents that are not what they claim are one line, and temporary folders do not
outlive their process. Each case runs the app as a user would (in this process through its entry point, or as a
process of its own where the failure is about processes) and asserts what the user sees: exit status, the one
``error:`` line, and the files left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from hysquant_rl.apps import LOCK_FILE
from tests.conftest import assert_one_error_line

BIN = Path(sys.executable).parent


def nowhere(tmp_path: Path) -> list[str]:
    """Settings under which any model or data work would fail at once (an empty model cache, no data set): a refusal
    that names its own setting shows that nothing was touched before it."""
    return ["data=fashion_mnist", f"data.root={tmp_path / 'no-data'}", f"paths.cache={tmp_path / 'cache'}"]


def dead_pid() -> int:
    """The PID of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- 1. links inside a run directory are never followed --------------------------------------------------------------


def test_links_in_a_run_directory_are_never_followed(tmp_path, run_here):
    """A prepared run directory whose lock file, Hydra file, log or run_settings.json is a link (or whose record is a
    file beyond any settings file's size) is one line; the file the link points at is never written or created."""
    from hysquant_rl.apps.lut import main as lut_main
    from hysquant_rl.apps.search import main as search_main

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_FILE
    lock.symlink_to(victim)
    ran = run_here(lut_main, *nowhere(tmp_path), tmp_path=run)
    assert_one_error_line(ran, rf"{lock} is a symbolic link, which is never followed: remove it")
    lock.unlink()
    lock.symlink_to(tmp_path / "created")  # a dangling link would create its target
    assert_one_error_line(run_here(lut_main, *nowhere(tmp_path), tmp_path=run), r"is a symbolic link")
    lock.unlink()
    os.link(victim, lock)  # a hard link: truncating the lock would truncate the victim
    assert_one_error_line(run_here(lut_main, *nowhere(tmp_path), tmp_path=run), r"is a hard link \(2 names")
    lock.unlink()
    (run / ".hydra").mkdir()
    for planted in (run / ".hydra" / "config.yaml", run / "lut.log", run / ".hydra"):
        if planted.name == ".hydra":
            planted.rmdir()
        planted.symlink_to(victim if planted.name != ".hydra" else tmp_path)
        ran = run_here(lut_main, *nowhere(tmp_path), tmp_path=run)
        assert_one_error_line(ran, rf"{planted} is a symbolic link, which Hydra would write through: remove it")
        planted.unlink()
    assert victim.read_text() == "precious\n" and not (tmp_path / "created").exists()

    record = run / "run_settings.json"
    record.symlink_to("/dev/zero")  # read without bound before
    ran = run_here(search_main, "resume=true", tmp_path=run)
    assert_one_error_line(ran, r"run_settings.json, which resume=true restores, is damaged \(a symbolic link")
    record.unlink()
    with open(record, "wb") as f:  # sparse: 8 MiB of nothing, more than any settings file holds
        f.truncate(8 << 20)
    ran = run_here(search_main, "resume=true", tmp_path=run)
    assert_one_error_line(ran, r"is damaged \(8 MiB, more than a settings file may hold \(4 MiB\)\)")

    # a checkpoint folder planted as a link: the checkpoint is not written through it
    from agents.storage import CHECKPOINT_PARTS as PARTS
    from agents.storage import write_checkpoint
    from hysquant_rl.errors import HySquantError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(HySquantError, match=r"checkpoints is a symbolic link, which is never followed"):
        write_checkpoint(run / "checkpoints", 1, {p: (lambda f: f.write(b"{}")) for p in PARTS})
    assert not list(elsewhere.iterdir())


# -- 2. resource settings are bounded by the machine -----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["threads=1000"], r"threads=1000 is more threads than this process may use: at most {cpus} \("),
        (
            ["hardware=cpu", "hardware.timing.threads=1000"],
            r"hardware.timing.threads=1000 is more threads than this process may use: at most {cpus} \(",
        ),
        (
            ["hardware=cpu", "hardware.batch_size=10000000"],
            r"hardware.batch_size=10000000 needs about [\d.]+ GB for one batch of mobilevit_xxs at 32x32 .* more than"
            r" the [\d.]+ GB of memory available: at most \d+ on this machine; lower it",
        ),
    ],
)
def test_resource_settings_beyond_the_machine_are_one_line(tmp_path, run_here, overrides, pattern):
    from hysquant_rl.apps.search import main

    ran = run_here(main, *nowhere(tmp_path), *overrides, tmp_path=tmp_path / "run")
    assert_one_error_line(ran, pattern.format(cpus=len(os.sched_getaffinity(0))))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "run_settings.json").exists()


# -- 6. every setting the summary consumes is checked before the search ----------------------------------------------


@pytest.mark.parametrize(
    "value, pattern",
    [
        ("[banana]", r"search.reference: 'banana' is not a uniform policy: e.g. search.reference=\[W8A8,W4A8\]"),
        ("W8A8", r"search.reference='W8A8' must be a list of uniform policies"),
        ("[W8A8,w8a8]", r"search.reference lists W8A8 twice"),
    ],
)
def test_a_reference_the_summary_cannot_use_is_refused_before_the_search(tmp_path, run_here, value, pattern):
    from hysquant_rl.apps.search import main

    ran = run_here(main, *nowhere(tmp_path), f"search.reference={value}", tmp_path=tmp_path / "run")
    assert_one_error_line(ran, pattern)
    assert not (tmp_path / "cache").exists()


# -- 7. budgets are compared with a relative tolerance ---------------------------------------------------------------


def test_a_budget_equal_to_a_policy_cost_admits_it_whatever_the_summation_order():
    """``budget.latency_ratio=1.0`` of FP32 on a CPU whose int8 kernels are slower: the limit (FP32's total, summed
    in one order) is 1 ulp below the integer program's sum of the same costs; FP32 must still be found, not 'no
    policy meets the budget'."""
    from hysquant_rl.bits import FP32_INDEX, GRID, grid_sum, to_index
    from hysquant_rl.search.allocation import project, solve_ilp
    from hysquant_rl.search.budget import within

    fp32_costs, n = [0.1, 0.2, 0.3], 3
    mask = np.zeros((n, GRID, GRID), bool)
    mask[:, FP32_INDEX, FP32_INDEX] = mask[:, to_index(8), to_index(8)] = True
    cost = np.full((n, GRID, GRID), 9.0)
    cost[:, FP32_INDEX, FP32_INDEX] = fp32_costs
    cost[:, to_index(8), to_index(8)] = np.array(fp32_costs) + 0.1  # int8 slower than float
    objective = np.zeros((n, GRID, GRID))
    objective[:, to_index(8), to_index(8)] = 1.0
    fp32 = np.full((n, 2), 32)
    limit = fp32_costs[2] + fp32_costs[1] + fp32_costs[0]  # the reference's total, summed the other way round
    assert grid_sum(cost, fp32) > limit  # the two sums differ in their last bit
    found = solve_ilp(objective, mask, {"latency_ms": cost}, {"latency_ms": limit})
    assert found is not None and (found == 32).all()
    assert (project(fp32, objective, mask, {"latency_ms": cost}, {"latency_ms": limit}) == 32).all()
    assert within({"latency_ms": grid_sum(cost, fp32)}, {"latency_ms": limit})["latency_ms"]
    assert not within({"latency_ms": limit * (1 + 1e-7)}, {"latency_ms": limit})["latency_ms"]  # a tolerance, no more


# -- 8. a policy that is not a file does not hang the app or fill the memory -----------------------------------------


def test_a_policy_that_is_a_fifo_or_a_device_is_one_line(tmp_path, run_here):
    from hysquant_rl.apps.apply import main

    fifo = tmp_path / "policy.json"
    os.mkfifo(fifo)

    # A FIFO without a writer hung the app for ever; a writer in a thread here only keeps a reader that waits for one
    # (the old code) from hanging the test: it is refused without being opened for reading.
    def feed() -> None:
        try:
            fifo.write_text("{}")
        except BrokenPipeError:  # released below: nobody read it
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        ran = run_here(main, f"policy={fifo}", *nowhere(tmp_path), tmp_path=tmp_path / "run")
    finally:
        release = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the writer's open returns once a reader is there
        writer.join(10)
        os.close(release)
    assert_one_error_line(ran, rf"policy file {fifo} is a FIFO \(named pipe\), not a regular file: pass the")
    ran = run_here(main, "policy=/dev/zero", *nowhere(tmp_path), tmp_path=tmp_path / "run")
    assert_one_error_line(ran, r"policy file /dev/zero is a character device, not a regular file")
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    ran = run_here(main, f"policy={big}", *nowhere(tmp_path), tmp_path=tmp_path / "run")
    assert_one_error_line(ran, r"big.json is 64 MiB, more than a settings file may hold \(4 MiB\)")
    assert not (tmp_path / "cache").exists()  # refused before any model or data work


# -- 9. run directories with characters Hydra's grammar reserves -----------------------------------------------------


@pytest.mark.parametrize("name", ["a;b", "x&y|z", "(run)", "a,b", "new\nline", "é日本 run"])
def test_a_run_directory_with_shell_or_non_ascii_characters_is_used_as_named(tmp_path, run_here, name):
    """Hydra's override grammar reserves these characters (a parse error, or for ``,`` a sweep): the app passes the
    folder to Hydra quoted, so the run happens in exactly that folder and nothing else is created."""
    from hysquant_rl.apps.apply import main

    parent = tmp_path / "runs"
    parent.mkdir()
    missing = tmp_path / "missing.json"
    ran = run_here(main, f"policy={missing}", tmp_path=parent / name)
    assert_one_error_line(ran, rf"policy file {missing} does not exist")  # the app ran, in its run directory
    assert os.listdir(parent) == [name]
    assert (parent / name / ".hydra" / "config.yaml").is_file() and (parent / name / "apply.log").is_file()


# -- 10. NaN and Infinity in a trained agent ------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_or_infinity_in_a_trained_agent_is_one_line(tmp_path, run_here, number):
    from agents.storage import AGENT_FORMAT as FORMAT
    from agents.storage import AGENT_MANIFEST as MANIFEST
    from agents.storage import AGENT_PARTS as PARTS
    from agents.storage import AGENT_VERSION as VERSION
    from hysquant_rl.apps.search import main

    agent = tmp_path / "agent"
    agent.mkdir()
    for part in PARTS:
        (agent / part).write_bytes(b"")
    doc = {"format": FORMAT, "version": VERSION, "identity": {"budget key": "latency_ms"}, "parts": list(PARTS)}
    doc["targets"] = [{"limits": {"latency_ms": 0.5}, "fraction": 0.5, "centre": [], "baseline": "@", "best": None}]
    (agent / MANIFEST).write_text(json.dumps(doc).replace('"@"', number))
    transfer = ["search.method=rl-cond", "budget=latency", f"search.transfer.agent={agent}"]
    ran = run_here(main, *nowhere(tmp_path), *transfer, tmp_path=tmp_path / "run")
    assert_one_error_line(ran, rf"the agent file {agent / MANIFEST} is damaged \(ValueError: .*(NaN|float)")
    assert not (tmp_path / "cache").exists()


# -- 11. temporary folders do not outlive their process --------------------------------------------------------------


def test_temporary_folders_of_a_process_that_is_gone_are_swept_at_start_up(tmp_path, run_here, monkeypatch):
    from hysquant_rl.apps.apply import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / f"hysquant-runtime-{dead_pid()}-abcd1234"  # a process killed with SIGKILL, a Ray worker
    live = tmp_path / f"hysquant-runtime-{os.getpid()}-efgh5678"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "float.onnx").write_bytes(b"\0" * 1024)
    run_here(main, f"policy={tmp_path / 'missing.json'}", tmp_path=tmp_path / "run")
    assert not stale.exists() and live.exists()


KILLED_AFTER_BUILDING = """
import os, signal, numpy as np, torch
from torch import nn
from hysquant_rl.deploy.runtime_graph import RuntimeGraphs
from hysquant_rl.inventory import inventory
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
layers, _ = inventory(model, (1, 8, 8), "linear")
calib = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype("float32")
graphs = RuntimeGraphs(model, layers, (1, 8, 8), calib)
os.kill(os.getpid(), signal.SIGKILL)  # as Ray ends its workers, the layout still held: no finalizer, no atexit
"""


def test_a_process_killed_after_building_the_runtime_layout_leaves_no_folder(tmp_path):
    """What every Ray worker of a ``search.workers=2`` run does: it builds the runtime layout, and is ended with
    SIGKILL. Its temporary folder is gone already."""
    ran = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_BUILDING],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert ran.returncode == -signal.SIGKILL, ran.stderr[-2000:]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("hysquant-runtime-")]


# -- 4, 5. deployable files are written as a set --------------------------------------------------------------------


def _earlier_export(out: Path) -> None:
    """A run directory holding an earlier export: OpenVINO's pair and its manifest."""
    from hysquant_rl.deploy.export import write_set

    def write(folder: Path) -> dict[str, Path]:
        (folder / "model.xml").write_text("<xml/>")
        (folder / "model.bin").write_bytes(b"\x00" * 16)
        (folder / "model.onnx").write_bytes(b"old onnx")
        return {"openvino": folder / "model.xml", "onnx": folder / "model.onnx"}

    write_set(out, write, {"runtime": "openvino"})


def test_an_export_replaces_the_earlier_set_and_removes_its_stale_files(tmp_path):
    """A new export without OpenVINO's files: the stale pair is removed, the manifest names exactly what is there,
    with each file's SHA-256; no staging folder is left."""
    import hashlib

    from hysquant_rl.deploy.export import MANIFEST, write_set

    _earlier_export(tmp_path)
    assert set(json.loads((tmp_path / MANIFEST).read_text())["files"]) == {"model.xml", "model.bin", "model.onnx"}

    def write(folder: Path) -> dict[str, Path]:
        (folder / "model.onnx").write_bytes(b"new onnx")
        return {"onnx": folder / "model.onnx"}

    paths = write_set(tmp_path, write, {"runtime": "onnxruntime"})
    assert paths == {"onnx": tmp_path / "model.onnx"} and (tmp_path / "model.onnx").read_bytes() == b"new onnx"
    assert not (tmp_path / "model.xml").exists() and not (tmp_path / "model.bin").exists()
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["files"] == {"model.onnx": hashlib.sha256(b"new onnx").hexdigest()}
    assert manifest["runtime"] == "onnxruntime"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]


def test_a_failed_export_leaves_the_earlier_set_as_it_was(tmp_path):
    """A write that fails midway (a full disk): the earlier files and manifest are untouched, nothing is half-moved,
    the staging folder is gone, and the error reaches the caller."""
    import errno

    from hysquant_rl.deploy.export import MANIFEST, write_set

    _earlier_export(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    def write(folder: Path) -> dict[str, Path]:
        (folder / "model.onnx").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.bin"))

    with pytest.raises(OSError, match="No space left"):
        write_set(tmp_path, write, {"runtime": "openvino"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert MANIFEST in before and not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]


def test_openvino_write_errors_are_one_write_error_naming_the_file(tmp_path):
    """OpenVINO's own writer failing (here: its .bin path is a folder, as EPERM/ENOSPC make it fail) is one
    WriteError naming model.xml, not OpenVINO's RuntimeError."""
    pytest.importorskip("openvino")
    from onnx import TensorProto, helper

    from hysquant_rl.deploy import openvino
    from hysquant_rl.io import WriteError

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "model.bin").mkdir()
    with pytest.raises(WriteError) as e:
        openvino.save(model.SerializeToString(), tmp_path)
    assert "OpenVINO could not write its model files" in str(e.value) and "model.xml" in str(e.value)
    assert "\n" not in str(e.value)
