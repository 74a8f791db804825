"""The house: one package per layer, no import circle, nothing imported from above (docs/architecture.md).

The rules are data in tests/layers.py (MAY_IMPORT); the source is read with ``ast``, deferred
imports included. Each check is also run on a copy of the tree with a planted violation, which it
must report: a check that cannot fail proves nothing.
"""
import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import layers
import pytest
from layers import (
    MAY_IMPORT,
    REPO,
    circles,
    face_imports,
    import_graph,
    package_graph,
    upward_imports,
)

sys.path.insert(0, str(REPO))
from asd_policy._moved import MOVED  # noqa: E402

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
#: functions allowed past MAX_FUNCTION_LINES, each with its reason (none today)
LONG_FUNCTIONS: dict[str, str] = {}


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_package_has_its_rules(graph):
    assert set(package_graph(graph)) <= set(MAY_IMPORT) | {"_moved"}


def test_no_package_imports_a_layer_above_it(graph):
    assert upward_imports(graph) == []


def test_no_import_circle_between_modules_or_packages(graph):
    assert circles(graph) == []
    assert circles(package_graph(graph)) == []
    assert face_imports(graph) == []  # a module never imports its own package's face


def test_the_task_package_imports_no_method(graph):
    assert [t for m, ts in graph.items() if m.startswith("asd_envs") for t in ts if t.startswith("asd_policy")] == []


# ---- the checks catch what they are for --------------------------------------------------------


def _copy_tree(tmp_path: Path) -> dict[str, Path]:
    sources = {}
    for package, root in layers.SOURCES.items():
        sources[package] = tmp_path / root.name
        shutil.copytree(root, sources[package], ignore=shutil.ignore_patterns("__pycache__", "assets"))
    return sources


def _plant(sources: dict[str, Path], relative: str, code: str) -> None:
    path = sources["asd_policy"] / relative if not relative.startswith("envs/") else sources["asd_envs"] / relative[5:]
    path.write_text(path.read_text() + "\n\n" + code + "\n")


def test_the_checks_catch_a_planted_upward_import_a_circle_and_a_task_importing_a_method(tmp_path):
    sources = _copy_tree(tmp_path)
    # an upward import hidden in a function, as the old circles were
    _plant(sources, "sampling/base.py", "def _load():\n    from asd_policy.policy.checkpoint import load_policy\n    return load_policy")
    # a circle inside one package: acceptance is below tree
    _plant(sources, "sampling/acceptance.py", "def _tree():\n    import asd_policy.sampling.tree as tree\n    return tree")
    # the task package reaching up into the methods
    _plant(sources, "envs/cameras.py", "def _size():\n    from asd_policy.control.tasks import TaskConfig\n    return TaskConfig")
    # a module importing its own package's face
    _plant(sources, "control/records.py", "def _face():\n    from asd_policy.control import RealtimeController\n    return RealtimeController")
    # a name under TYPE_CHECKING never runs: it is allowed
    _plant(sources, "sampling/chain.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from asd_policy.policy import DiffusionPolicy")
    planted = import_graph(sources)
    bad = upward_imports(planted)
    assert "asd_policy.sampling.base -> asd_policy.policy.checkpoint (sampling may not import policy)" in bad
    assert "asd_envs.cameras -> asd_policy.control.tasks (asd_envs may not import control)" in bad
    assert not any(line.startswith("asd_policy.sampling.chain") for line in bad)
    assert any({"asd_policy.sampling.acceptance", "asd_policy.sampling.tree"} <= set(c) for c in circles(planted))
    assert "asd_policy.control.records -> asd_policy.control" in face_imports(planted)
    package_circles = circles(package_graph(import_graph(_with_control_below(sources))))
    assert any({"control", "sampling"} <= set(c) for c in package_circles), package_circles


def _with_control_below(sources: dict[str, Path]) -> dict[str, Path]:
    """The planted tree plus sampling importing control: control imports sampling, so the packages circle."""
    _plant(sources, "sampling/inpaint.py", "def _h():\n    from asd_policy.control.history import ObsHistory\n    return ObsHistory")
    return sources


# ---- what a sampler user and the GPU machine need ----------------------------------------------


def test_samplers_and_policies_import_no_simulator():
    code = ("import sys, asd_policy.sampling, asd_policy.policy\n"
            "print(sorted(m for m in ('mujoco', 'robosuite', 'gymnasium_robotics', 'gymnasium') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ---- sizes ---------------------------------------------------------------------------------------


def test_modules_and_functions_stay_small():
    import ast

    too_long, long_functions = [], []
    for path in sorted(layers.module_files().values()):
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(REPO)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{path.relative_to(REPO)}:{node.name}"
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long_functions.append(f"{name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == [], f"split these modules (at most {MAX_MODULE_LINES} lines)"
    assert long_functions == [], "split these functions, or give the reason in LONG_FUNCTIONS"


# ---- the old paths ---------------------------------------------------------------------------------


def _project_files() -> list[Path]:
    files = [p for root in ("asd_policy", "envs", "scripts", "tests") for p in (REPO / root).rglob("*") if p.suffix in (".py", ".sh")]
    return [p for p in files if p.name not in ("_moved.py", "test_layers.py") and "__pycache__" not in p.parts]


#: old paths with no alias: demo collection and the hdf5 writer moved up out of the task package
GONE = ("asd_envs.collect", "asd_envs.dataset")


def test_the_project_itself_uses_no_old_path():
    import re

    old = re.compile(r"(?<![\w.])(" + "|".join(re.escape(k) for k in (*MOVED, *GONE)) + r")(?!\w)")
    hits = [f"{path.relative_to(REPO)}:{i}: {m.group(0)}"
            for path in _project_files() for i, line in enumerate(path.read_text().splitlines(), 1) for m in old.finditer(line)]
    assert hits == []


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_imports_its_new_home_with_a_warning(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved to"):
        module = importlib.import_module(old)
    homes = [importlib.import_module(name) for name in MOVED[old]]
    if len(homes) == 1:
        assert module is homes[0]  # the same module: attributes set through either name are shared
    else:
        for home in homes:
            for name in getattr(home, "__all__", []):
                assert hasattr(module, name), f"{old}.{name}"


def test_an_old_module_still_runs_with_python_m():
    out = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-m", "asd_policy.exactness_planted", "--help"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "planted ASD bugs" in out.stdout, out.stderr[-2000:]


def test_the_public_names_keep_working():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from asd_policy.control import RealtimeController  # noqa: F401
        from asd_policy.policy import DiffusionPolicy, load_policy  # noqa: F401
        from asd_policy.sampling import (  # noqa: F401
            SAMPLER_PRESETS,
            GraphedSampler,
            NoiseSchedule,
            sample,
        )
        from asd_policy.serving import RemotePolicy  # noqa: F401
    from asd_policy.checkpoint import load_policy as old_load_policy
    from asd_policy.fast import GraphedSampler as old_graphed
    from asd_policy.realtime import RealtimeController as old_controller
    from asd_policy.sampler_config import SAMPLER_PRESETS as old_presets

    assert (old_load_policy, old_controller, old_graphed, old_presets) == (load_policy, RealtimeController, GraphedSampler,
                                                                            SAMPLER_PRESETS)


# ---- the names the docs show ---------------------------------------------------------------------


def _doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "checkpoints").glob("*/README.md"))]


def _resolve(dotted: str):
    """The object a dotted name means: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_name_and_file_the_docs_show_exists():
    import re

    names, missing = set(), []
    for doc in _doc_files():
        text = doc.read_text()
        names |= {m.rstrip(".") for m in re.findall(r"(?<![\w/])asd_(?:policy|envs)(?:\.\w+)+", text)}
        for found in re.findall(r"from (asd_policy[\w.]*) import ([\w, ]+)", text):
            names |= {f"{found[0]}.{n.strip()}" for n in found[1].split(",") if n.strip()}
        missing += [f"{doc.name}: {p}" for p in re.findall(r"(?<![\w/.])((?:asd_policy|envs|scripts|tests)/[\w/]+\.(?:py|sh))", text)
                    if not (REPO / p).exists()]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the docs name the new paths, not the old ones
        for name in sorted(names):
            try:
                _resolve(name)
            except (ImportError, AttributeError, DeprecationWarning) as exc:
                missing.append(f"{name} ({type(exc).__name__}: {exc})")
    assert missing == []


def test_every_package_is_installed():
    """pyproject.toml lists packages by hand: a package missing there is missing from a non-editable install."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in layers.module_files().items() if path.name == "__init__.py"}
    assert packages <= listed, sorted(packages - listed)


def test_no_source_file_is_ignored_by_git():
    """A module .gitignore hides (data/ once hid asd_policy/data/) is missing from every clean clone."""
    files = [str(p.relative_to(REPO)) for p in layers.module_files().values()]
    out = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=REPO, capture_output=True, text=True)
    if out.returncode == 128:
        pytest.skip(f"not a git checkout: {out.stderr.strip()}")
    assert out.stdout.split() == []
