"""The house rules as data, and the reader that checks them (tests/test_layers.py runs it).

Every module of ``asd_policy`` and ``asd_envs`` is read with ``ast`` (nothing is imported), and
every import counts, a deferred one inside a function included: a deferred import hides a circle
from Python, not from a reader. Only an import under ``if TYPE_CHECKING:`` is left out (it names
a type and never runs).
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"asd_policy": REPO / "asd_policy", "asd_envs": REPO / "envs"}

#: Which package may import which (a package always may import its own modules). Lowest first:
#: core, asd_envs < sampling < policy, control < data, checks, serving < evaluation, bench < training, reports.
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "asd_envs": set(),
    "sampling": {"core"},
    "policy": {"sampling", "core"},
    "control": {"sampling", "core", "asd_envs"},  # it drives any ChunkPolicy: never a policy class
    "data": {"control", "core", "asd_envs"},  # control: the TaskConfig demos are collected for
    "checks": {"policy", "control", "sampling", "core", "asd_envs"},
    "serving": {"policy", "control", "sampling", "core", "asd_envs"},
    "evaluation": {"serving", "checks", "policy", "control", "sampling", "core", "asd_envs"},
    "bench": {"checks", "policy", "control", "sampling", "core", "asd_envs"},
    "training": {"evaluation", "data", "policy", "control", "sampling", "core", "asd_envs"},
    "reports": {"evaluation", "control", "core"},
    "asd_policy": {"_moved"},  # the root: it only installs the old paths
}


def module_files(sources: dict[str, Path] = SOURCES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages in ``sources``."""
    out = {}
    for package, root in sources.items():
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, those under ``if TYPE_CHECKING:`` left out."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports. ``from pkg import sub`` imports the module ``pkg.sub``;
    ``from pkg import x`` (a name) imports ``pkg`` itself, its face."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(sources: dict[str, Path] = SOURCES) -> dict[str, set[str]]:
    modules = module_files(sources)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def package_of(module: str) -> str:
    """The room a module lives in: ``asd_policy.sampling.chain`` -> ``sampling``; ``asd_envs.x`` -> ``asd_envs``."""
    parts = module.split(".")
    if parts[0] == "asd_envs":
        return "asd_envs"
    return parts[1] if len(parts) > 1 and parts[1] != "_moved" else ("_moved" if len(parts) > 1 else "asd_policy")


def upward_imports(graph: dict[str, set[str]], rules: dict[str, set[str]] = MAY_IMPORT) -> list[str]:
    """'a -> b' for every import across packages that the rules do not allow (an unknown package too)."""
    bad = []
    for module, targets in sorted(graph.items()):
        here = package_of(module)
        for target in sorted(targets):
            there = package_of(target)
            if there != here and there not in rules.get(here, set()):
                bad.append(f"{module} -> {target} ({here} may not import {there})")
    return bad


def face_imports(graph: dict[str, set[str]]) -> list[str]:
    """A module importing its own package's face (``from asd_policy.sampling import x`` inside
    sampling): the face imports its modules, so that is a circle; import the sibling module."""
    return [f"{m} -> {t}" for m, ts in sorted(graph.items()) for t in sorted(ts) if m.startswith(t + ".")]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        here = package_of(module)
        out.setdefault(here, set()).update(package_of(t) for t in targets if package_of(t) != here)
    return out
