"""The layout's rules, read from the source: data flows one way (no import circles), the library never imports the
Gymnasium adapter or the agents, and pricing and allocating a policy never load torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hysquant_rl", "envs", "agents")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def runtime_imports(path: Path, known: set[str], typing: bool = False) -> set[str]:
    """Our modules that ``path`` imports at run time, anywhere in the file (function-level imports too), leaving out
    ``if TYPE_CHECKING:`` blocks unless ``typing``. ``from pkg import sub`` counts as importing the module ``pkg.sub``
    when it is one."""
    tree = ast.parse(path.read_text())
    skip = set()
    if not typing:
        skip = {
            id(node)
            for branch in ast.walk(tree)
            if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
            for stmt in branch.body
            for node in ast.walk(stmt)
        }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            found |= (subs & known) or {node.module}
    return {m for m in found if m in known}


def import_graph(typing: bool = False) -> dict[str, set[str]]:
    mods = modules()
    return {name: runtime_imports(path, set(mods), typing) - {name} for name, path in mods.items()}


FLOORS = (
    # 0, the ground floor: torch-free vocabulary, the bit-width grid and search space, pruning rules, files
    ("hysquant_rl", "hysquant_rl.errors", "hysquant_rl.bits", "hysquant_rl.registry", "hysquant_rl.budget_kinds"),
    ("hysquant_rl.units", "hysquant_rl.io", "hysquant_rl.space", "hysquant_rl.prune", "hysquant_rl.machine"),
    # 2: pricing, settings, the policy format (torch-free)
    ("hysquant_rl.hardware", "hysquant_rl.settings", "hysquant_rl.policy", "hysquant_rl.provenance"),
    # 3: the model, its units and its data
    ("hysquant_rl.inventory", "hysquant_rl.models", "hysquant_rl.data", "hysquant_rl.train"),
    ("hysquant_rl.quant", "hysquant_rl.evaluate"),  # 4: quantization and evaluation
    ("hysquant_rl.deploy",),  # 5: runtimes and exports
    ("hysquant_rl.pipeline",),  # 6: everything measured on a model once
    ("hysquant_rl.lut",),  # 7
    ("hysquant_rl.search",),  # 8
    ("hysquant_rl.bench",),  # 9
    ("envs",),  # 10: the Gymnasium adapter
    ("agents",),  # 11
    ("hysquant_rl.apps",),  # 12: the only layer that sees a Hydra config
)


def floor(module: str) -> int:
    """The floor of ``module``: that of the longest prefix :data:`FLOORS` names."""
    best, found = -1, -1
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), level
    assert found >= 0, f"{module} is on no floor of FLOORS: add it"
    return found


def test_no_import_runs_back_up_the_layers():
    """Data flows one way: no module imports (at run time or for type checking) a module of a higher floor."""
    up = [
        f"{name} (floor {floor(name)}) -> {dep} (floor {floor(dep)})"
        for name, deps in import_graph(typing=True).items()
        for dep in sorted(deps)
        if floor(dep) > floor(name)
    ]
    assert not up, "imports up the layers: " + "; ".join(up)


def test_no_import_circles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert len(graph) > 30  # the walk saw the package, not an empty tree


def test_the_library_never_imports_envs_or_agents():
    """Only the app layer (hysquant_rl.apps) may reach the agent, which sits on top of the library."""
    offenders = {
        name: sorted(m for m in deps if m.split(".")[0] in ("envs", "agents"))
        for name, deps in import_graph().items()
        if name.startswith("hysquant_rl") and not name.startswith("hysquant_rl.apps")
    }
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize(
    "module",
    [
        "hysquant_rl.hardware",
        "hysquant_rl.hardware.cost",
        "hysquant_rl.search.budget",
        "hysquant_rl.search.problem",
        "hysquant_rl.search.allocation",
        "hysquant_rl.bits",
        "hysquant_rl.settings",
    ],
)
def test_pricing_and_allocating_never_import_torch(module):
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"importing {module} imports torch {proc.stderr[-500:]}"


def test_pricing_never_imports_what_leaves_the_search():
    """Pricing (``hardware/``) and the policy format (``policy``, ``provenance``) sit below the exports and runtimes
    (``deploy/``) and the quantizer: a cost model is numbers, a policy file is JSON."""
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for name in graph:
        if name.startswith("hysquant_rl.hardware"):
            assert not {m for m in reach(name) if m.startswith(("hysquant_rl.deploy", "hysquant_rl.quant"))}, name
    for name in ("hysquant_rl.policy", "hysquant_rl.provenance"):
        assert not {m for m in reach(name) if m.startswith(("hysquant_rl.quant", "hysquant_rl.deploy"))}, name
    assert any(m.startswith("hysquant_rl.deploy.") for m in graph)  # the package is there to be kept out
