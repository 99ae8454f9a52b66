"""The layering of docs/design.md: a package imports only from packages below it (or its own).
Read from the source with ast, so a cycle or an upward import fails here, at once, by name."""
from __future__ import annotations

import ast
from pathlib import Path

import slimformer

ROOT = Path(slimformer.__file__).parent
LAYERS = [  # bottom to top
    {"errors", "results", "atomic", "heap", "version"},
    {"nn"},
    {"model", "stages"},
    {"data"},
    {"engine"},
    {"evaluate"},  # quality measures: the stages read them too (recover's held-out score, trim's objective)
    {"trim", "prune", "quant", "recover"},
    {"bench", "runtime", "export", "report"},
    {"recipe", "compress", "tune", "api", "cli", "__init__", "__main__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_units(rel: tuple[str, ...], source: str) -> set[str]:
    """Top-level slimformer units that the file at `rel` (parts below the package root) imports,
    relative and absolute imports alike."""
    tree = ast.parse(source)
    depth = len(rel) - 1  # folders below the package root
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from ..x import y: resolve against the file's own package
                up = node.level - 1
                if up > depth:
                    continue
                base = list(rel[:depth - up])
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    out.add(parts[0])
                else:  # from . import x (at the package root) or from .. import x
                    out.update(a.name.split(".")[0] for a in node.names)
            elif node.module and node.module.split(".")[0] == "slimformer":
                parts = node.module.split(".")
                out.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "slimformer":
                    out.add(parts[1] if len(parts) > 1 else "__init__")
    return out


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in ROOT.rglob("*.py")} - {"recipes"}
    assert units - set(LEVEL) == set(), "add the new package to LAYERS (and to docs/design.md)"


def test_no_package_imports_from_above_its_layer():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        for dep in _imported_units(path.relative_to(ROOT).parts, path.read_text()) - {unit}:
            if dep in LEVEL and LEVEL[dep] > LEVEL[unit]:
                bad.append(f"{path.relative_to(ROOT)} imports {dep}")
    assert bad == []


def test_the_check_sees_an_upward_import():
    """The reader above resolves relative imports, so an upward import cannot hide."""
    src = "from ..quant.stage import QuantizeConfig\nfrom . import arch\nfrom ...x import y\n"
    assert _imported_units(("model", "load.py"), src) == {"quant", "model"}
    assert _imported_units(("cli.py",), "from .model import load\nimport slimformer.nn.spec\n") == {"model", "nn"}
    assert LEVEL["quant"] > LEVEL["model"]


def test_no_cycle_between_units():
    """Same-layer imports are allowed (recover reads prune's masks, runtime reads export's files),
    but never both ways round: the unit import graph has no cycle."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        unit = _unit(path)
        deps = _imported_units(path.relative_to(ROOT).parts, path.read_text()) - {unit}
        graph.setdefault(unit, set()).update(d for d in deps if d in LEVEL)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None  # the check itself sees one
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None
