"""The package's imports run one way, package by package: ORDER lists agegender's subpackages ground first, and
a module imports only from its own package or an earlier one, with no cycle. A module added to agegender/ lands
in a package of ORDER, which keeps the README's Layout true; a new package must be placed in ORDER."""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "agegender"
# top-level, torch-free: what the packages agree on
CONTRACTS = ("labels", "lookalikes", "meta", "metaschema", "predictions")
# faces is ground: image geometry that imports nothing of ours (the predictions table names quality's columns).
# The top-level command modules (python -m agegender.NAME) come last: each only runs one package's main.
ORDER = ("faces", "contracts", "fairness", "data", "models", "explain", "evaluation", "train", "review", "report",
         "commands")
RANK = {p: i for i, p in enumerate(ORDER)}
# Importing any module of these must not import torch, through any chain of module-level imports: the contracts,
# the figures by group, and the bias report of a predictions file (report itself: its model card loads models).
TORCH_FREE = ("contracts", "fairness")
TORCH_FREE_MODULES = ("agegender.report.command", "agegender.report.bias", "agegender.report.charts")
TORCH = ("torch", "torchvision", "facenet_pytorch", "pytorch_grad_cam", "safetensors.torch")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    """agegender.fairness.stats -> fairness; a top-level module is a contract or a command."""
    parts = module.split(".")
    if len(parts) == 1:
        return "contracts"  # agegender/__init__: the version, nothing else
    if len(parts) == 2 and (PACKAGE / parts[1]).is_dir():
        return parts[1]  # the package's __init__
    if len(parts) == 2:
        return "contracts" if parts[1] in CONTRACTS else "commands"
    return parts[1]


def _target(module: str, node: ast.ImportFrom) -> list[str]:
    """The agegender modules one ``from ... import`` names: a submodule imported by name, else the module."""
    if node.level:
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if not base.startswith("agegender"):
        return []
    names = [f"{base}.{a.name}" for a in node.names]
    subs = [n for n in names if n in MODULES]
    return subs + ([base] if len(subs) < len(names) and base in MODULES else [])


def imports(module: str, module_level_only: bool = False) -> tuple[set[str], bool]:
    """(the agegender modules ``module`` imports, whether it imports torch). Everywhere in the file, or with
    ``module_level_only`` only what Python runs when it is imported (inside if/try/with and class bodies too), not
    function bodies or ``if TYPE_CHECKING:``."""
    deps, torch = set(), False

    def note(n):
        nonlocal torch
        if isinstance(n, ast.ImportFrom):
            deps.update(_target(module, n))
            names = [n.module or ""] if not n.level else []
        else:
            names = [a.name for a in n.names]
            deps.update(x for x in names if x in MODULES)
        torch |= any(x == t or x.startswith(t + ".") for x in names for t in TORCH)

    def visit(nodes):
        for n in nodes:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                note(n)
            elif isinstance(n, ast.If) and "TYPE_CHECKING" not in ast.unparse(n.test):
                visit(n.body + n.orelse)
            elif isinstance(n, ast.Try):
                visit(n.body + n.orelse + n.finalbody + [s for h in n.handlers for s in h.body])
            elif isinstance(n, (ast.With, ast.ClassDef)):
                visit(n.body)

    tree = ast.parse(MODULES[module].read_text())
    if module_level_only:
        visit(tree.body)
    else:
        for n in ast.walk(tree):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                note(n)
    deps.discard(module)
    return deps, torch


def parents(module: str) -> list[str]:
    """Importing agegender.a.b runs agegender/__init__ and agegender/a/__init__ first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]


def graph() -> dict[str, set[str]]:
    return {m: imports(m)[0] for m in MODULES}


def test_every_module_lies_in_a_package_of_the_order():
    unplaced = sorted(m for m in MODULES if package_of(m) not in RANK)
    assert not unplaced, f"place these packages in ORDER (and the README's Layout): {unplaced}"


def test_imports_never_run_up_the_order():
    upward = [f"{m} ({package_of(m)}) imports {d} ({package_of(d)})"
              for m, deps in graph().items() for d in deps if RANK[package_of(d)] > RANK[package_of(m)]]
    assert not upward, upward


def test_no_import_cycle():
    try:
        list(TopologicalSorter(graph()).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from e


def test_the_rule_sees_an_import_up_the_order():
    """Not blind: the evaluation package imports models (down), and models never imports evaluation (up)."""
    g = graph()
    assert "agegender.models.checkpoint" in g["agegender.evaluation.evaluate"]
    assert "agegender.labels" in g["agegender.fairness.groups"]
    assert package_of("agegender.evaluate") == "commands" and package_of("agegender.meta") == "contracts"
    assert package_of("agegender.report") == "report" and package_of("agegender.report.bias") == "report"


def test_commands_are_thin():
    """A top-level command module runs one package's main and holds nothing else, so logic has one home."""
    for m in (m for m in MODULES if package_of(m) == "commands"):
        deps = imports(m)[0]
        lines = [ln for ln in MODULES[m].read_text().splitlines() if ln.strip()]
        assert len(deps) == 1 and len(lines) <= 8, f"{m} is more than an entry point: {deps}, {len(lines)} lines"
        assert "import main" in MODULES[m].read_text(), m


def test_the_library_never_imports_the_app_or_the_tools():
    for m, p in MODULES.items():
        text = " ".join(ast.unparse(n) for n in ast.walk(ast.parse(p.read_text()))
                        if isinstance(n, (ast.Import, ast.ImportFrom)))
        assert "dashboard" not in text and "benchmarks" not in text, m


def torch_chain(module: str, loaded: dict[str, tuple[set[str], bool]]) -> list[str]:
    """The shortest chain of module-level imports (a package's __init__ included) from ``module`` to one that imports
    torch; [] if none."""
    paths, todo = {module: [module]}, [module]
    while todo:
        m = todo.pop(0)
        if loaded[m][1]:
            return paths[m]
        for d in sorted((loaded[m][0] | set(parents(m))) - paths.keys()):
            paths[d] = paths[m] + [d]
            todo.append(d)
    return []


def test_the_torch_free_packages_import_no_torch_through_any_chain():
    loaded = {m: imports(m, module_level_only=True) for m in MODULES}
    free = [m for m in MODULES if package_of(m) in TORCH_FREE] + list(TORCH_FREE_MODULES)
    assert len(free) > 10
    chains = [" -> ".join(c) for c in (torch_chain(m, loaded) for m in free) if c]
    assert not chains, chains
    # not blind: a chain through a module that imports torch is found, and a function-level import is no import
    assert torch_chain("agegender.models.inference", loaded)[-1] in {
        "agegender.models.inference", "agegender.models.checkpoint", "agegender.models.model"}
    assert "agegender.models.checkpoint" in imports("agegender.review.audit_run")[0]
    assert torch_chain("agegender.review.audit_run", loaded) == []
