"""The package's imports run one way: base <- parts <- commands <- the app and tools, with no cycle.
A module added to agegender/ must be placed in LAYERS, which keeps the README's Layout true."""

import ast
from graphlib import CycleError, TopologicalSorter

from .conftest import ROOT

LAYERS = {
    "base": ["meta", "labels", "preprocess", "degrade", "turn", "faces", "runtime", "model", "quality", "dlibnet"],
    "parts": ["predictions", "fairness", "metrics", "charts", "visual", "catalog", "access", "checkpoint",
              "inference", "explain", "data", "balance", "config", "distributed", "runstate", "datasets",
              "evalset", "tables", "slices", "intervals", "genderband", "chippose"],
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
