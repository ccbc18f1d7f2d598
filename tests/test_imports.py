"""The package's import graph: no import cycles, and the command line stays inside ``drifting.cli``; and
no two modules of the package share a file name.

Every module of the installed ``drifting`` package is parsed (not imported), and every ``import`` and
``from ... import`` statement in it, at module level or inside a function, class, ``try`` or ``if``,
is an edge to the module of the package that it names:

* relative imports are resolved against the importing module's package (an ``__init__.py`` is its
  own package);
* ``from P import name`` is an edge to the submodule ``P.name`` when ``P.name`` is a module of the
  package (``from . import x``, ``from .pkg import name``), and an edge to ``P`` itself otherwise
  (``from .field import compute_V`` runs ``drifting/field/__init__.py``);
* importing ``drifting.a.b`` (``import drifting.a.b``, ``from drifting.a.b import f``, ``from .a
  import b``) is also an edge to each package above it that is not a package of the importing
  module itself: Python runs ``drifting/a/__init__.py`` before ``drifting.a.b``, and when that
  ``__init__`` imports the importer back, the importer is found half-initialised (a real cycle,
  :func:`test_a_cycle_through_a_package_init_is_real_and_found`). The importer's own packages are
  left out: they are in ``sys.modules`` before the importer runs, so the implicit import of them
  runs nothing, and counting it would read every package whose ``__init__`` re-exports a submodule
  (``drifting/__init__.py`` imports ``drifting.field``, whose modules import ``drifting.field.common``)
  as a cycle. A module that names one of its own packages (``from .. import __version__``, ``from
  .field import compute_V`` in ``drifting.loss``) is an edge to it like any other.
* ``importlib.import_module`` with a string is not seen (the package uses it only for optional
  third-party packages).

Imports inside functions count: a lazy import hides a cycle from Python at import time, not from a
reader, and it is the kind that breaks when someone moves the import to the top of the file.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = "drifting"
CLI = f"{PACKAGE}.cli"


def package_modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """``{dotted module name: source path}`` of every ``.py`` file under the package directory ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([package, *parts])] = path
    return out


def _base(module: str, is_package: bool, level: int) -> str:
    """The package that a ``level``-dot relative import in ``module`` starts from."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > len(parts):
        raise ValueError(f"{module}: relative import of level {level} goes above the top-level package")
    return ".".join(parts[: len(parts) - (level - 1)])


def _with_packages(target: str, module: str, is_package: bool) -> list[str]:
    """``target`` and the packages above it that Python initialises first, less ``module``'s own packages."""
    own = module.split(".") if is_package else module.split(".")[:-1]
    own = {".".join(own[:k]) for k in range(1, len(own) + 1)}
    parts = target.split(".")
    return [target] + [p for p in (".".join(parts[:k]) for k in range(1, len(parts))) if p not in own]


def imports_of(module: str, source: str, modules, *, is_package: bool = False) -> set[str]:
    """The modules of the package that ``source`` (the text of ``module``) imports, anywhere in the file
    (a name that is not in ``modules`` is kept: :func:`test_every_import_names_a_module` reports it)."""
    tops = {m.split(".")[0] for m in modules}  # the package's name
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, is_package, node.level) if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target
                       for a in node.names]
        else:
            continue
        out.update(p for t in targets if t.split(".")[0] in tops
                   for p in _with_packages(t, module, is_package))
    out.discard(module)  # `from . import x` in a package's __init__ where x is not a module
    return out


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the package's own modules."""
    modules = package_modules(root, package)
    return {m: imports_of(m, p.read_text(), modules, is_package=p.name == "__init__.py")
            for m, p in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per strongly connected component that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(comp, graph) for comp in components]


def _cycle_in(comp: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component (breadth-first)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w in comp and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in its component {sorted(comp)}")


def imports_argparse(source: str) -> bool:
    """Whether ``source`` imports ``argparse`` (or a submodule of it) anywhere in the file."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(n.split(".")[0] == "argparse" for n in names):
            return True
    return False


def _in_cli(module: str) -> bool:
    return module == CLI or module.startswith(CLI + ".")


@pytest.fixture(scope="module")
def root() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without running its __init__
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def graph(root) -> dict[str, set[str]]:
    return import_graph(root)


# --------------------------------------------------------------------------- the package


def test_the_graph_sees_the_package(graph):
    """The parse found the package and its imports, lazy ones included (else the checks below are vacuous)."""
    assert ({PACKAGE, CLI, f"{CLI}.args", f"{PACKAGE}.recipes.image_training", f"{PACKAGE}.field"}
            <= set(graph))
    assert f"{PACKAGE}.recipes.point_fitting" in graph[f"{CLI}.cmd_points"]  # imported inside cmd_fit_points
    # inside drift_diagnosis
    assert f"{PACKAGE}.recipes.image_training" in graph[f"{PACKAGE}.recipes.analysis"]
    assert f"{CLI}.args" in graph[f"{CLI}.cmd_flow"] and PACKAGE in graph[CLI]
    # `from ..models.encoders import ...` also runs drifting/models/__init__.py: an edge to that package too
    assert {f"{PACKAGE}.models.encoders", f"{PACKAGE}.models"} <= graph[f"{PACKAGE}.recipes.image_training"]


def test_every_import_names_a_module(graph):
    dangling = [f"{m} imports {t}" for m, ts in graph.items() for t in sorted(ts) if t not in graph]
    assert dangling == []


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_no_two_modules_share_a_file_name(root):
    """``recipes/images.py`` beside ``data/images.py`` (or ``cli/points.py`` beside ``recipes/points.py``)
    is one name for two modules in tracebacks, editor tabs and prose: every module's file name is its own
    (the ``__init__.py`` and ``__main__.py`` of the packages aside)."""
    by_name = defaultdict(list)
    for module, path in package_modules(root).items():
        if path.name not in ("__init__.py", "__main__.py"):
            by_name[path.name].append(module)
    assert len(by_name) > 50  # the check sees the package's modules
    assert {name: mods for name, mods in by_name.items() if len(mods) > 1} == {}


def test_command_line_stays_in_cli(root, graph):
    """Only ``drifting.cli`` builds parsers: no other module imports argparse or anything of the cli."""
    modules = package_modules(root)
    assert imports_argparse(modules[f"{CLI}.args"].read_text())  # the check sees an argparse import
    bad = [f"{m} imports argparse" for m, path in modules.items()
           if not _in_cli(m) and imports_argparse(path.read_text())]
    bad += [f"{m} imports {t}" for m, ts in graph.items() if not _in_cli(m) for t in sorted(ts) if _in_cli(t)]
    assert bad == []


# --------------------------------------------------------------------------- the checker itself


def test_find_cycles_reports_each_cycle_and_only_cycles():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert find_cycles(acyclic) == []
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a", "e"}, "f": {"g"}, "g": {"f"}}
    assert sorted(find_cycles(cyclic)) == [["a", "b", "c", "a"], ["e", "e"], ["f", "g", "f"]]


def test_imports_argparse_sees_lazy_and_from_imports():
    assert imports_argparse("def f():\n    from argparse import Namespace\n")
    assert imports_argparse("import os, argparse\n") and not imports_argparse("import os\nfrom "
                                                                              ".argparse import x\n")


def test_import_edges_resolve_relative_lazy_and_submodule_imports():
    modules = {"pkg", "pkg.cli", "pkg.cli.args", "pkg.rec", "pkg.rec.a", "pkg.rec.b", "pkg.util"}
    src = '''
import os
from . import b
from .. import util, __version__
import pkg.cli.args

def f():
    from ..cli import args, main
    from ..rec.a import thing

class C:
    try:
        from pkg.util import helper
    except ImportError:
        pass
'''
    got = imports_of("pkg.rec.a", src, modules)
    assert got == {"pkg.rec.b", "pkg.util", "pkg", "pkg.cli.args", "pkg.cli"}  # its own module left out
    assert imports_of("pkg.cli", "from . import args, main\nfrom .args import x\n", modules,
                      is_package=True) == {"pkg.cli.args"}
    assert imports_of("pkg.util", "import pkg.rec.a\n", modules) == {"pkg.rec.a", "pkg.rec"}  # pkg: its own
    # `from .rec import a` (a module) runs pkg/rec/__init__.py and then pkg.rec.a: an edge to each; of a name
    # that is not a module, the package alone
    assert imports_of("pkg.util", "from .rec import a\n", modules) == {"pkg.rec.a", "pkg.rec"}
    assert imports_of("pkg.cli.args", "from ..rec import a, thing\n", modules) == {"pkg.rec.a", "pkg.rec"}
    assert imports_of("pkg.cli.args", "from ..rec import thing\n", modules) == {"pkg.rec"}
    assert imports_of("pkg.cli.args", "from ..rec.a import thing\n", modules) == {"pkg.rec.a", "pkg.rec"}
    with pytest.raises(ValueError, match="above the top-level package"):
        imports_of("pkg.util", "from ... import x\n", modules)


def test_a_lazy_import_back_into_the_cli_is_a_cycle(tmp_path):
    """The cycle this test was written for: cli imports a recipe, the recipe imports cli inside a function."""
    root = tmp_path / "pkg"
    (root / "recipes").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "cli.py").write_text("from .recipes.flow import add_flow_parser\n")
    (root / "recipes" / "__init__.py").write_text("")
    (root / "recipes" / "flow.py").write_text("def add_flow_parser(sub):\n    from ..cli "
                                              "import positive_int\n")
    g = import_graph(root, "pkg")
    assert g["pkg.cli"] == {"pkg.recipes.flow", "pkg.recipes"} and g["pkg.recipes.flow"] == {"pkg.cli"}
    assert find_cycles(g) == [["pkg.cli", "pkg.recipes.flow", "pkg.cli"]]


def test_a_cycle_through_a_package_init_is_real_and_found(tmp_path):
    """``pkgc.a.x`` imports ``pkgc.b.y``, which first runs ``pkgc/b/__init__.py``, which imports ``pkgc.a.x``
    back: Python fails, and the checker sees the cycle through the package ``pkgc.b``."""
    for rel, text in {"__init__.py": "", "a/__init__.py": "from .x import f\n",
                      "a/x.py": "from pkgc.b.y import g\n\n\ndef f():\n    return g\n",
                      "b/__init__.py": "from pkgc.a.x import f\n", "b/y.py": "g = 1\n"}.items():
        (tmp_path / "pkgc" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkgc" / rel).write_text(text)
    r = subprocess.run([sys.executable, "-c", "import pkgc.a"], cwd=tmp_path, capture_output=True, text=True,
                       check=False)
    assert r.returncode != 0 and "partially initialized" in r.stderr
    g = import_graph(tmp_path / "pkgc", "pkgc")
    assert g["pkgc.a.x"] == {"pkgc.b.y", "pkgc.b"} and g["pkgc.b"] == {"pkgc.a.x", "pkgc.a"}
    assert find_cycles(g) == [["pkgc.a", "pkgc.a.x", "pkgc.b", "pkgc.a"]]
