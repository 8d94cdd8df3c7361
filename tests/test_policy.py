"""QuantPolicy: model hash, JSON round trip, atomic save, load errors, validation, uniform specs."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hysquant_rl.policy as policy_mod
import hysquant_rl.provenance as provenance
from hysquant_rl.bits import parse_uniform
from hysquant_rl.errors import HySquantError
from hysquant_rl.inventory import inventory
from hysquant_rl.policy import FORMAT, VERSION, QuantPolicy, complete, validate
from hysquant_rl.provenance import weights_sha256
from hysquant_rl.quant.model import QuantModel

NAME = "tiny"


class Tiny(nn.Module):
    """Three quantizable layers of three kinds, plus a BatchNorm buffer."""

    def __init__(self, order: str = "forward") -> None:
        super().__init__()
        if order == "forward":
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.pw = nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4, 3)
        else:  # same names, registered in another order: the state dict's key order differs
            self.fc = nn.Linear(4, 3)
            self.pw = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


def tiny(seed: int = 0, order: str = "forward") -> Tiny:
    torch.manual_seed(seed)
    return Tiny(order).eval()


@pytest.fixture
def model() -> Tiny:
    return tiny()


@pytest.fixture
def units(model):
    return inventory(model, (1, 8, 8))[0]


@pytest.fixture
def policy(model, units) -> QuantPolicy:
    return QuantPolicy.from_bits(units, [(8, 8), (4, 8), (32, 32)], NAME, weights_sha256(model), method="test", seed=3)


# -- weights_sha256 ----------------------------------------------------------------------------------------
def test_weights_sha256_is_stable_hex_and_wrapper_independent(model):
    import hashlib

    h = weights_sha256(model)
    # the documented recipe, by hand: key, dtype and shape, then the raw bytes of each tensor, keys sorted
    by_hand = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        by_hand.update(f"{key}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        by_hand.update(value.detach().contiguous().numpy().tobytes())
    assert h == by_hand.hexdigest()
    changed = tiny()
    with torch.no_grad():
        changed.fc.bias[0] += 1e-3
    assert weights_sha256(changed) != h  # one weight differs: another hash
    assert weights_sha256(model) == h
    assert weights_sha256(tiny(0)) == h  # same weights, new object
    reordered = tiny(1, order="reversed")
    reordered.load_state_dict(model.state_dict())
    assert list(reordered.state_dict()) != list(model.state_dict())
    assert weights_sha256(reordered) == h  # keys are sorted: registration order is irrelevant
    qmodel = QuantModel(model, ["conv", "pw", "fc"])
    assert weights_sha256(qmodel) == h  # the class swap changes nothing a policy depends on


def test_weights_sha256_changes_with_any_weight_buffer_dtype_or_shape(model):
    h = weights_sha256(model)
    assert weights_sha256(tiny(1)) != h
    with torch.no_grad():
        w = model.fc.weight
        old = w[0, 0].clone()
        w[0, 0] = torch.nextafter(old, old + 1)  # the smallest possible change of one element
        assert weights_sha256(model) != h
        w[0, 0] = old
        assert weights_sha256(model) == h
        model.bn.running_mean[0] += 1.0  # buffers are part of the identity too
        assert weights_sha256(model) != h
        model.bn.running_mean[0] -= 1.0
    assert weights_sha256(model) == h
    assert weights_sha256(tiny(0).double()) != h
    reshaped = tiny(0)
    reshaped.fc.weight = nn.Parameter(reshaped.fc.weight.detach().reshape(3, 2, 2))  # same bytes, other shape
    assert weights_sha256(reshaped) != h


# -- construction ------------------------------------------------------------------------------------------
def test_from_bits_records_layers_identity_and_provenance(policy, units, model):
    assert policy.names == ["conv", "pw", "fc"]
    assert [e["kind"] for e in policy.units] == [l.kind for l in units]  # kinds as the inventory names them
    assert policy.bits() == [(8, 8), (4, 8), (32, 32)]
    assert policy.model == {"name": NAME, "weights_sha256": weights_sha256(model), "num_layers": 3}
    prov = policy.provenance
    assert prov["method"] == "test" and prov["seed"] == 3
    assert {"episodes", "wall_time_s", "git_commit", "created", "hysquant_rl"} <= set(prov)
    assert prov["created"].endswith("+00:00")


def test_from_bits_accepts_numpy_ints_and_rejects_bad_bits(units):
    p = QuantPolicy.from_bits(units, [(np.int64(8), np.int32(4))] * 3, NAME, "0" * 64)
    assert p.bits() == [(8, 4)] * 3 and all(type(b) is int for pair in p.bits() for b in pair)
    with pytest.raises(HySquantError, match="2 .* pairs for 3 layers"):
        QuantPolicy.from_bits(units, [(8, 8)] * 2, NAME, "0" * 64)
    for bad in [(9, 8), (8, 1), (4.0, 8), (True, 8), ("8", 8)]:
        with pytest.raises(HySquantError, match="out of range"):
            QuantPolicy.from_bits(units, [(8, 8), bad, (8, 8)], NAME, "0" * 64)


def test_uniform_gives_every_layer_the_same_bits(units):
    p = QuantPolicy.uniform(units, 4, 8, NAME, "0" * 64, seed=1)
    assert p.bits() == [(4, 8)] * 3
    assert p.provenance["method"] == "uniform" and p.provenance["seed"] == 1


def test_git_commit_only_reports_this_packages_checkout(monkeypatch):
    root = Path(provenance.__file__).resolve().parent.parent
    outputs = {"ours": f"{root}\n{'a' * 40}\n", "other": f"/somewhere/else\n{'b' * 40}\n"}

    def fake_run(stdout):
        def run(*args, **kwargs):
            if stdout is None:
                raise subprocess.CalledProcessError(128, args[0])
            return subprocess.CompletedProcess(args[0], 0, stdout=stdout, stderr="")

        return run

    try:
        for stdout, expected in [(outputs["ours"], "a" * 40), (outputs["other"], None), (None, None)]:
            monkeypatch.setattr(provenance.subprocess, "run", fake_run(stdout))
            provenance.git_commit.cache_clear()
            assert provenance.git_commit() == expected
    finally:
        provenance.git_commit.cache_clear()


# -- save / load -------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, units, model):
    metrics = {"search_val": {"top1": np.float64(87.25)}, "latency_ms": torch.tensor(1.5), "curve": np.arange(3)}
    p = QuantPolicy.from_bits(
        units,
        [(2, 2), (4, 8), (32, 8)],
        NAME,
        weights_sha256(model),
        metrics=metrics,
        budgets={"latency_ms": 2.0},
        episodes=10,
        wall_time_s=1.25,
        run="r1",
    )
    path = p.save(tmp_path / "sub" / "best_policy.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT == "hysquant-policy" and doc["version"] == VERSION == 2
    assert list(doc) == ["format", "version", "model", "layers", "metrics", "budgets", "provenance"]
    assert doc["metrics"] == {"search_val": {"top1": 87.25}, "latency_ms": 1.5, "curve": [0, 1, 2]}
    loaded = QuantPolicy.load(path)
    assert loaded == p
    assert loaded.to_dict() == doc
    assert loaded.bits() == [(2, 2), (4, 8), (32, 8)]
    assert loaded.provenance["run"] == "r1" and loaded.provenance["episodes"] == 10


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path, policy, monkeypatch):
    path = tmp_path / "p.json"
    policy.save(path)
    first = path.read_text()
    policy.metrics["x"] = 1
    policy.save(path)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]
    assert json.loads(path.read_text())["metrics"] == {"x": 1}

    # A crash before the rename leaves the old file whole and no temporary file behind.
    path.write_text(first)

    def crash(src, dst, **dir_fds):
        raise OSError("disk gone")

    monkeypatch.setattr(policy_mod.os, "replace", crash)
    policy.metrics["x"] = 2
    with pytest.raises(OSError, match="disk gone"):
        policy.save(path)
    monkeypatch.undo()
    assert path.read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]

    policy.metrics["bad"] = object()  # not serializable: fails before any file is touched
    with pytest.raises(HySquantError, match="cannot be written as JSON"):
        policy.save(path)
    assert path.read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON \\(line 1"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"format": "something-else", "version": 1}', "is not a HySquant policy \\(format='something-else'"),
        ('{"format": "hysquant-policy", "version": 3}', "format version 3, .* reads versions 1, 2"),
        (
            '{"format": "hysquant-policy", "version": 1, "model": {"name": "m"}, "layers": []}',
            "'model' must be an object with keys",
        ),
        (
            '{"format": "hysquant-policy", "version": 1, "model": {"name": "m", "weights_sha256": "x",'
            ' "num_layers": 1}, "layers": [{"name": "a", "kind": "conv", "w_bits": 8}]}',
            "layers\\[0\\] must be an object with keys",
        ),
    ],
)
def test_load_errors_name_the_file_and_the_problem(tmp_path, content, match):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(HySquantError, match=match) as info:
        QuantPolicy.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# -- validate ----------------------------------------------------------------------------------------------
def test_validate_accepts_a_fitting_policy_silently(policy, units, model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate(policy, units, NAME, weights_sha256(model)) is None


def _rename(p: QuantPolicy) -> None:
    p.units[0]["name"] = "nope.a"


def _drop(p: QuantPolicy) -> None:
    del p.units[2]


def _duplicate(p: QuantPolicy) -> None:
    p.units.append(dict(p.units[1]))


def _swap(p: QuantPolicy) -> None:
    p.units[0], p.units[1] = p.units[1], p.units[0]


@pytest.mark.parametrize(
    "mutate, fragments, n_problems",
    [
        (_rename, ["1 unknown layer (nope.a)", "1 missing layer (conv)"], 2),
        (_drop, ["1 missing layer (fc)", "2 layers in the policy, 3 in the model", "num_layers=3 but 2 layers"], 3),
        (_duplicate, ["1 duplicated layer (pw)", "4 layers in the policy, 3 in the model", "num_layers=3 but 4"], 3),
        (_swap, ["layers out of forward order (position 0 is pw, the model runs conv there)"], 1),
        (lambda p: p.units[0].update(w_bits=9), ["layer conv w_bits=9 out of range (2..8 or 32)"], 1),
        (lambda p: p.units[1].update(a_bits=1), ["layer pw a_bits=1 out of range (2..8 or 32)"], 1),
        (lambda p: p.units[2].update(a_bits=4.5), ["layer fc a_bits=4.5 out of range"], 1),
        (lambda p: p.units[2].update(w_bits="8"), ["layer fc w_bits='8' out of range"], 1),
        (
            lambda p: p.model.update(weights_sha256="f" * 64),
            ["made for other weights (sha256 ffffffffffff... != ", "re-run the search for these weights"],
            1,
        ),
        (lambda p: p.model.update(name="mobilevit_xs"), ["made for model mobilevit_xs (this is tiny)"], 1),
        (lambda p: p.model.update(num_layers=5), ["num_layers=5 but 3 layers are listed"], 1),
    ],
)
def test_validate_catches_each_problem(policy, units, model, mutate, fragments, n_problems):
    mutate(policy)
    with pytest.raises(HySquantError) as info:
        validate(policy, units, NAME, weights_sha256(model))
    message = str(info.value)
    assert message.startswith(f"policy does not fit model {NAME}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert len(message.split("; ")) == n_problems  # nothing else reported


def test_validate_lists_every_problem_in_one_message(policy, units, model):
    _rename(policy)
    policy.units[1]["w_bits"] = 9
    policy.units[2]["a_bits"] = 0
    policy.model["weights_sha256"] = "a" * 64
    policy.model["name"] = "other"
    with pytest.raises(HySquantError) as info:
        validate(policy, units, NAME, weights_sha256(model))
    problems = str(info.value).split(": ", 1)[1].split("; ")
    assert len(problems) == 6
    assert any(p.startswith("made for model other") for p in problems)
    assert any(p.startswith("made for other weights") for p in problems)
    assert "1 unknown layer (nope.a)" in problems and "1 missing layer (conv)" in problems
    assert "layer pw w_bits=9 out of range (2..8 or 32)" in problems
    assert "layer fc a_bits=0 out of range (2..8 or 32)" in problems


def test_validate_truncates_long_name_lists(units, model):
    p = QuantPolicy.from_bits(units, [(8, 8)] * 3, NAME, weights_sha256(model))
    p.units += [{"name": f"extra{i}", "kind": "conv", "w_bits": 8, "a_bits": 8} for i in range(12)]
    p.model["num_layers"] = len(p.units)
    with pytest.raises(HySquantError, match=r"12 unknown layers \(extra0, .*extra7, \.\.\. 4 more\)"):
        validate(p, units, NAME, weights_sha256(model))


def test_validate_refuses_a_layer_of_another_kind(policy, units, model):
    policy.units[1]["kind"] = "renamed-kind"
    with pytest.raises(HySquantError, match=rf"1 layer of another kind \(pw \(renamed-kind -> {units[1].kind}\)\)"):
        validate(policy, units, NAME, weights_sha256(model))


# -- parse_uniform -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("W8A8", (8, 8)),
        ("w4a8", (4, 8)),
        (" W2a2 ", (2, 2)),
        ("W32A8", (32, 8)),
        ("fp32", (32, 32)),
        ("FP32", (32, 32)),
        ("best_policy.json", None),
        ("outputs/run/best_policy.json", None),
        ("w8a8.json", None),
        ("", None),
    ],
)
def test_parse_uniform(spec, expected):
    assert parse_uniform(spec) == expected


@pytest.mark.parametrize("spec", ["W9A8", "w8a1", "W8A33", "W8", "w8a", "fp16", "W4A8x"])
def test_parse_uniform_rejects_malformed(spec):
    with pytest.raises(HySquantError, match="W<w>A<a>"):
        parse_uniform(spec)


# -- activation-only units and version 1 -----------------------------------------------------------------------
class Block(nn.Module):
    """A LayerNorm and a Linear: under the hybrid scope the LayerNorm's input is an activation-only unit."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


def test_activation_only_units_write_null_weight_bits_and_read_back(tmp_path):
    torch.manual_seed(0)
    model = Block()
    units = inventory(model, (1, 2, 4))[0]
    assert [u.kind for u in units] == ["layernorm-in", "other"]
    p = QuantPolicy.from_bits(units, [(2, 6), (4, 8)], "block", weights_sha256(model))
    doc = json.loads(p.save(tmp_path / "p.json").read_text())
    assert [(e["w_bits"], e["a_bits"]) for e in doc["layers"]] == [(None, 6), (4, 8)]
    loaded = QuantPolicy.load(tmp_path / "p.json")
    assert loaded.bits() == [(6, 6), (4, 8)]  # a null w reads as the unit's a: the search's canonical form
    validate(loaded, units, "block", weights_sha256(model))
    doc["layers"][1]["w_bits"] = None  # a weighted layer must have weight bits
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(HySquantError, match=r"layer fc w_bits=None out of range"):
        validate(QuantPolicy.load(tmp_path / "bad.json"), units, "block", weights_sha256(model))


def test_a_version_1_policy_loads_with_its_missing_units_at_fp32(tmp_path):
    torch.manual_seed(0)
    model = Block()
    sha = weights_sha256(model)
    units = inventory(model, (1, 2, 4))[0]
    old = {
        "format": FORMAT,
        "version": 1,
        "model": {"name": "block", "weights_sha256": sha, "num_layers": 1},
        "layers": [{"name": "fc", "kind": "other", "w_bits": 4, "a_bits": 8}],
    }
    (tmp_path / "v1.json").write_text(json.dumps(old))
    policy = QuantPolicy.load(tmp_path / "v1.json")
    with pytest.raises(HySquantError, match="1 missing layer \\(norm\\)"):
        validate(policy, units, "block", sha)  # as read, it does not cover the model
    upgraded = complete(policy, units)
    validate(upgraded, units, "block", sha)
    assert upgraded.bits() == [(32, 32), (4, 8)] and upgraded.model["num_layers"] == 2
    assert upgraded.to_dict()["version"] == VERSION == 2
    assert complete(upgraded, units) is upgraded  # a current policy is left alone
