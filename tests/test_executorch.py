"""ExecuTorch with XNNPACK as the third runtime (``hardware.backend=executorch``): its layout leaves FP32 units
unannotated, its ``.pte`` program agrees with the converted PT2E module it is lowered from (the reference numerics the
search measures accuracy on), and its bad input is one line before any work. The digits model on the ``cpu`` profile.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("executorch")

from hysquant_rl.bits import FP32_BITS  # noqa: E402
from hysquant_rl.deploy.runtimes import INPUT, get, logits  # noqa: E402
from hysquant_rl.hardware import load_profile  # noqa: E402
from hysquant_rl.settings import QuantSettings  # noqa: E402
from tests.conftest import assert_one_error_line  # noqa: E402

EXECUTORCH = ["hardware=cpu", "hardware.backend=executorch", "threads=1"]


@pytest.fixture(scope="module")
def et(digits_pipeline):
    """The digits model in ExecuTorch's layout (programs at batch 8)."""
    pipe = digits_pipeline
    calib = np.concatenate([x.numpy() for x, _ in pipe.data.calib.batches(64)])
    layout = get("executorch").layout(pipe.model, pipe.units, pipe.data.input_shape, calib, QuantSettings(), 8)
    return pipe, layout


def _quantized_inputs(module) -> dict[str, bool]:
    """Per Conv2d/Linear unit of a converted PT2E module (innermost module path): whether its op reads a dequantized
    int8 activation."""
    out = {}
    for node in module.graph.nodes:
        if node.op == "call_function" and any(k in str(node.target) for k in ("conv2d", "linear")):
            stack = node.meta.get("nn_module_stack")
            name = list(stack.values())[-1][0] if stack else ""
            source = node.args[0]
            out[name] = "dequantize" in str(getattr(source, "target", ""))
    return out


def test_executable_choices_are_what_xnnpack_delegates():
    profile = load_profile({"name": "cpu", "backend": "executorch"})
    assert profile.runtime == "executorch"
    assert profile.executable("conv") == profile.executable("mlp-fc1") == ((8, 8),)
    for kind in ("attention-qk", "attention-pv", "layernorm-in"):
        assert profile.executable(kind) == ()


def test_fp32_units_stay_unannotated_and_the_pte_runs_the_reference_numerics(et):
    """A mixed policy (convolutions int8, Linear FP32): exactly the int8 units read dequantized activations in the
    converted module; its ``.pte`` agrees with that module (argmax on >= 99 % of the test images, logits close),
    and both stay near FP32's top-1."""
    pipe, layout = et
    conv = np.array([unit.op == "conv2d" for unit in pipe.units])
    bits = np.where(conv[:, None], 8, FP32_BITS) * np.ones((1, 2), int)
    reads = _quantized_inputs(layout.converted(bits))
    for unit in pipe.units:
        if unit.op in ("conv2d", "linear"):
            assert reads[unit.name] == (unit.op == "conv2d"), unit.name
    x, y = pipe.data.test.x.numpy(), pipe.data.test.y.numpy()
    runtime = get("executorch")
    program = logits(runtime.session(layout.artefact(bits)), x, batch_size=8)
    reference = logits(runtime.evaluation_session(layout, bits, threads=1), x)
    fp32 = logits(runtime.evaluation_session(layout, np.full((len(pipe.units), 2), FP32_BITS), threads=1), x)
    assert (program.argmax(1) == reference.argmax(1)).mean() >= 0.99
    assert np.abs(program - reference).mean() < 0.05 * np.abs(reference).mean()
    top1 = {k: 100 * (v.argmax(1) == y).mean() for k, v in (("pte", program), ("fp32", fp32))}
    assert top1["pte"] >= top1["fp32"] - 2.0, top1
    # a static program: any count of images runs in chunks of its batch (the last padded), the same logits
    assert np.allclose(logits(runtime.session(layout.artefact(bits)), x[:11], batch_size=11), program[:11], atol=1e-5)


def test_without_the_extra_the_run_fails_before_any_work_naming_the_install(tmp_path):
    """ExecuTorch hidden from the interpreter (as on a machine without the [executorch] extra): one line naming the
    install command, before data or model are loaded."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'executorch':\n"
        "            raise ModuleNotFoundError(name)\n"
        "    def find_distributions(self, context=None):\n"
        "        return iter(())\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{hide}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    script = os.path.join(os.path.dirname(sys.executable), "hysquant-search")
    proc = subprocess.run(
        [script, *EXECUTORCH, f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, timeout=300
    )
    assert_one_error_line(proc, r"needs executorch, which is not installed: pip install executorch")
    assert "data digits" not in proc.stdout + proc.stderr  # before any work


def test_export_executorch_needs_the_executorch_layout(tmp_path, run_here):
    from hysquant_rl.apps.apply import main

    proc = run_here(main, "policy=W8A8", "hardware=cpu", "export.executorch=true", tmp_path=tmp_path)
    assert_one_error_line(proc, r"export.executorch=true writes executorch's own files.*hardware.backend=executorch")
    assert not (tmp_path / "policy.json").exists()


def test_a_policy_with_a_choice_xnnpack_cannot_delegate_is_refused(et, tmp_path):
    """Attention matmuls at W8A8 (XNNPACK's batch matmul runs fp32 only): one line naming the units, nothing
    written."""
    from hysquant_rl.apps.apply import check_executable
    from hysquant_rl.errors import HySquantError

    pipe, _ = et
    bits = np.full((len(pipe.units), 2), 8)
    profile = load_profile({"name": "cpu", "backend": "executorch"})
    with pytest.raises(HySquantError, match=r"at pairs executorch does not execute \(.*attn") as e:
        check_executable(pipe.policy(bits), pipe.units, profile)
    assert "runs FP32 or W8A8" in str(e.value) and "\n" not in str(e.value)


def test_session_runs_a_pte_file(et, tmp_path):
    """The exported ``model.pte`` opens by path as well as from bytes and runs as the bytes do (the mixed policy of the
    test above: its program is already lowered and cached by the layout)."""
    pipe, layout = et
    conv = np.array([unit.op == "conv2d" for unit in pipe.units])
    bits = np.where(conv[:, None], 8, FP32_BITS) * np.ones((1, 2), int)
    path = tmp_path / "model.pte"
    path.write_bytes(layout.artefact(bits))
    runtime = get("executorch")
    x = pipe.data.test.x.numpy()[:8]
    a = runtime.session(path).run(None, {INPUT: x})[0]
    b = runtime.session(layout.artefact(bits)).run(None, {INPUT: x})[0]
    assert np.array_equal(a, b) and a.shape == (8, pipe.spec.num_classes)


def test_the_runtimes_own_int8_is_lowered_for_the_batch_asked(et):
    """``XNNPACKQuantizer``'s uniform int8 (the anchor every ExecuTorch figure stands beside) as a program of the batch
    it is timed at, not the layout's (an ExecuTorch program fixes its batch); it runs the digits about as FP32 does."""
    pipe, layout = et
    runtime = get("executorch")
    calib = np.concatenate([x.numpy() for x, _ in pipe.data.calib.batches(64)])
    (anchor,) = runtime.anchors(layout, calib, batch_size=2).values()
    session = runtime.session(anchor)
    assert session.batch == 2 and layout.batch_size == 8
    x, y = pipe.data.test.x.numpy(), pipe.data.test.y.numpy()
    int8 = logits(session, x, batch_size=64).argmax(1)
    fp32 = logits(runtime.evaluation_session(layout, np.full((len(pipe.units), 2), FP32_BITS), 1), x).argmax(1)
    assert (int8 == fp32).mean() >= 0.95 and (int8 == y).mean() >= (fp32 == y).mean() - 0.03
