"""Shared fixtures: Hydra configs composed from the real conf/ tree and resolved into settings exactly as the apps
do, and one digits pipeline per session (its embedded model is trained once into the model cache, then reused,
exactly as the CLI does)."""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hysquant_rl.apps import compose_config, plain
from hysquant_rl.settings import RunSettings, SearchSettings

try:  # openvino imports absl.logging, whose handler keeps the sys.stderr of that moment (a pytest capture file here);
    # a Hydra app's logging set-up closes every handler, and absl's closes its stream unless it is the sys.stderr of
    # that later moment: in a test, pytest's capture file. Given the process's own stderr, it never closes it.
    import absl.logging

    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__
except ImportError:
    pass


def run_settings(app: str = "search", overrides: list[str] | None = None) -> RunSettings:
    """The :class:`RunSettings` an app resolves from ``conf/<app>.yaml`` with ``overrides``."""
    return RunSettings.from_mapping(plain(compose_config(app, overrides)))


def search_settings(overrides: list[str] | None = None) -> SearchSettings:
    """The :class:`SearchSettings` ``hysquant-search`` resolves with ``overrides``."""
    return SearchSettings.from_mapping(plain(compose_config("search", overrides)))


@pytest.fixture(scope="session")
def digits_pipeline():
    from hysquant_rl.pipeline import build

    return build(run_settings("search"))


@pytest.fixture(scope="session")
def small_model():
    """A randomly initialised mobilevit_xxs for 1x32x32 inputs, 10 classes (no training needed)."""
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model("mobilevit_xxs", num_classes=10, in_chans=1).eval()


@pytest.fixture
def fresh_small_model(small_model):
    return copy.deepcopy(small_model)


@dataclass
class Ran:
    """What a console script left: exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def assert_one_error_line(proc, pattern: str, code: int | None = 2) -> str:
    """A run that ended as the apps promise: exit status ``code`` (None: any non-zero), no traceback, exactly one
    ``error:`` line on stderr, matching ``pattern``. Returns that line."""
    import re

    if code is None:
        assert proc.returncode != 0, proc.stderr[-2000:]
    else:
        assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert (proc.stdout + proc.stderr).count("error: ") == 1, "the error is printed more than once"
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture
def run_here(monkeypatch, capsys):
    """A console script's entry point (``hysquant_rl.apps.<app>.main``) called in this process with
    ``hydra.run.dir=tmp_path`` and ``overrides`` on its command line: the same Hydra app, error handling and exit
    status as the installed script, without a new interpreter and torch start-up."""

    def call(main, *overrides: str, tmp_path: Path) -> Ran:
        flags = [a for a in overrides if a.startswith("-")]  # e.g. -m: a sweep
        rest = [a for a in overrides if not a.startswith("-")]
        monkeypatch.setattr(sys, "argv", ["hysquant-app", *flags, f"hydra.run.dir={tmp_path}", *rest])
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:  # Hydra configured logging for the run (to capsys' streams): hand the next test the old one
            for h in root.handlers[:]:
                if h not in handlers:
                    root.removeHandler(h)
                    h.close()
            for h in handlers:
                if h not in root.handlers:
                    root.addHandler(h)
            root.setLevel(level)
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return call
