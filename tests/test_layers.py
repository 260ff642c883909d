"""The package's imports run one way: base <- parts <- commands <- the app and tools, with no cycle.
A module added to agegender/ must be placed in LAYERS, which keeps the README's Layout true."""

import ast
from graphlib import CycleError, TopologicalSorter

from .conftest import ROOT

LAYERS = {
    "base": ["meta", "labels", "preprocess", "degrade", "turn", "faces", "runtime", "model", "quality", "dlibnet"],
    "parts": ["predictions", "fairness", "metrics", "charts", "visual", "catalog", "access", "checkpoint",
              "inference", "explain", "data", "balance", "config", "distributed", "runstate", "datasets",
              "evalset", "tables", "slices", "intervals", "genderband", "chippose", "stats"],
    "commands": ["training", "evaluate", "predict", "report", "compare", "modelcard", "consistency", "template",
                 "explorer", "results", "external", "audit", "review", "dlib_convert", "shift", "pack",
                 "soup"],
}
RANK = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}


def imports(path) -> set[str]:
    """The agegender modules one file imports (relative or absolute, at any depth in the file)."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agegender."):
            deps.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("agegender."))
    return deps - {"__version__"}


def graph() -> dict[str, set[str]]:
    return {p.stem: imports(p) for p in sorted((ROOT / "agegender").glob("*.py")) if p.stem != "__init__"}


def test_every_module_has_a_layer():
    assert sorted(graph()) == sorted(RANK), "place new modules in LAYERS (and the README's Layout)"


def test_imports_never_run_up_a_layer():
    upward = [f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})"
              for m, deps in graph().items() for d in deps if RANK[d] > RANK[m]]
    assert not upward, upward


def test_no_import_cycle():
    try:
        list(TopologicalSorter(graph()).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from e


def test_the_library_never_imports_the_app_or_the_tools():
    for p in (ROOT / "agegender").glob("*.py"):
        text = p.read_text()
        assert "dashboard" not in imports_text(text) and "benchmarks" not in imports_text(text), p.name


def imports_text(text: str) -> str:
    return " ".join(ast.unparse(n) for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.Import, ast.ImportFrom)))


def layer_of(module: str) -> str:
    return next(name for name, mods in LAYERS.items() if module in mods)


# Importing these must not import torch: the contracts, the statistics and what the bias report of a predictions
# file runs (report itself included). Checked over everything each imports at module level, not module by module:
# report imported audit, which imported checkpoint, and a per-module check saw neither.
TORCH_FREE = ("meta", "labels", "predictions", "stats", "fairness", "slices", "shift", "genderband", "compare",
              "tables", "report")
TORCH = ("torch", "torchvision", "facenet_pytorch", "pytorch_grad_cam", "safetensors.torch")


def module_level(path) -> tuple[set[str], bool]:
    """(the agegender modules a file imports when it is imported, whether it imports torch then): the statements
    Python runs at import (inside if/try/with and class bodies too), not function bodies or `if TYPE_CHECKING:`."""
    deps, torch = set(), False

    def visit(nodes):
        nonlocal torch
        for n in nodes:
            if isinstance(n, ast.ImportFrom) and n.level == 1:
                deps.update([n.module.split(".")[0]] if n.module else [a.name for a in n.names])
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
                torch |= any(x == t or x.startswith(t + ".") for x in names for t in TORCH)
                deps.update(x.split(".")[1] for x in names if x.startswith("agegender."))
            elif isinstance(n, ast.If) and "TYPE_CHECKING" not in ast.unparse(n.test):
                visit(n.body + n.orelse)
            elif isinstance(n, ast.Try):
                visit(n.body + n.orelse + n.finalbody + [s for h in n.handlers for s in h.body])
            elif isinstance(n, (ast.With, ast.ClassDef)):
                visit(n.body)

    visit(ast.parse(path.read_text()).body)
    return deps - {"__version__"}, torch


def torch_chain(module: str, loaded: dict[str, tuple[set[str], bool]]) -> list[str]:
    """The shortest chain of module-level imports from ``module`` to one that imports torch; [] if none."""
    paths, todo = {module: [module]}, [module]
    while todo:
        m = todo.pop(0)
        if loaded[m][1]:
            return paths[m]
        for d in sorted(loaded[m][0] - paths.keys()):
            paths[d] = paths[m] + [d]
            todo.append(d)
    return []


def test_the_torch_free_modules_import_no_torch_through_any_chain():
    loaded = {p.stem: module_level(p) for p in (ROOT / "agegender").glob("*.py") if p.stem != "__init__"}
    chains = [" -> ".join(c) for c in (torch_chain(m, loaded) for m in TORCH_FREE) if c]
    assert not chains, chains
    # not blind: a chain through a module that imports torch is found, and a TYPE_CHECKING import is no import
    assert torch_chain("inference", loaded)[-1] in {"inference", "checkpoint", "model"}
    assert torch_chain("audit", loaded) == [] and "checkpoint" in imports(ROOT / "agegender" / "audit.py")
