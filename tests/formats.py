"""What an output file's format is, for the tests that check a run keeps it: the set of key paths of a JSON
document (``metrics.cost.latency_ms``; ``layers[].w_bits`` for the objects in a list). Keys that are names rather
than fields (the policies of a summary, the limits of a budget) are written ``*``.

``tests/data/formats.json`` holds the key paths of every output file as the release before the layout change
wrote them; a run must still write every one of them (new keys may appear beside them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXPECTED = Path(__file__).parent / "data" / "formats.json"
NAMED = {"policies", "internal_limits", "modelled", "checked", "holds", "ratios_of_w8a8", "lut_build_s"}


def key_paths(doc: Any, prefix: str = "") -> set[str]:
    """Every key path of ``doc``."""
    out: set[str] = set()
    if isinstance(doc, dict):
        named = prefix.rsplit(".", 1)[-1].removesuffix("[]") in NAMED
        for k, v in doc.items():
            path = f"{prefix}.{'*' if named else k}" if prefix else k
            out |= {path} | key_paths(v, path)
    elif isinstance(doc, list):
        for v in doc:
            out |= key_paths(v, f"{prefix}[]")
    return out


def missing_keys(path: Path, kind: str) -> list[str]:
    """Key paths the ``kind`` file (a key of ``tests/data/formats.json``) had before and ``path`` lacks."""
    expected = set(json.loads(EXPECTED.read_text())[kind])
    return sorted(expected - key_paths(json.loads(Path(path).read_text())))
