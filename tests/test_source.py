"""Tests on the source: the package's import graph and what importing its parts loads.

* the module-level import graph of ``hltemu`` (``hltemu/`` and ``kernels/``, installed as
  ``hltemu.kernels``) has no cycle;
* importing :mod:`hltemu.io` and :mod:`hltemu.jec` loads neither Numba nor the pipeline;
  :mod:`hltemu.config` imports no hltemu module at all (stage configs live with the stages);
* every module of :mod:`hltemu.stages` is imported and registers a stage, with no list to edit;
* ``hltemu --help`` loads none of uproot, awkward, pythia8mc, torch, the generator
  (:mod:`hltemu.simulate`), the CNN training or the stages;
* reconstruction does not import the generator: no module outside :mod:`hltemu.simulate`
  imports it at module level, and none but the command line imports it at all (the pileup-noise
  table that topoclustering reads lives in :mod:`hltemu.calo_noise`).

The graph is read with :mod:`ast`, not by importing: an edge is an ``import``/``from ... import``
of an hltemu module executed when the module is imported (module level, including ``try``/``if``
blocks and class bodies; not inside a function, which is a lazy import; not under
``if TYPE_CHECKING``).  ``import a.b.c`` is an edge to ``a.b.c``; ``from a.b import c`` to
``a.b.c`` when that is a module, else to ``a.b``.  The implicit import of a module's parent
packages is not an edge (Python initialises a package before its submodules; a submodule that
needs a name of its package imports it explicitly, which is an edge).
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Where each package's source lies (kernels/ is installed as hltemu.kernels).
PACKAGES: dict[str, Path] = {"hltemu": REPO / "hltemu", "hltemu.kernels": REPO / "kernels"}

#: Import cycles of the module-level graph known today, each as the set of modules of one
#: strongly connected component.  To remove: none is left; a new cycle fails the test.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


# -- reading the source -------------------------------------------------------------------------
def source_modules(packages: dict[str, Path] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the package folders."""
    found: dict[str, Path] = {}
    for prefix, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if any(not p.isidentifier() for p in parts):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((prefix, *parts))] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_nodes(tree: ast.Module, lazy: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module run when it is imported; with ``lazy``, every import
    statement of the file (those inside functions too)."""
    if lazy:
        return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                found.append(stmt)
            elif isinstance(stmt, ast.If) and _is_type_checking(stmt.test):
                visit(stmt.orelse)
            elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
                visit(stmt.body)
                for handler in stmt.handlers:
                    visit(handler.body)
                visit(stmt.orelse)
                visit(stmt.finalbody)
            elif isinstance(stmt, ast.Match):
                for case in stmt.cases:
                    visit(case.body)
            else:  # if / for / while / with / class bodies run at import
                for field in ("body", "orelse"):
                    sub = getattr(stmt, field, None)
                    if isinstance(sub, list):
                        visit(sub)

    visit(tree.body)
    return found


def imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool
                   ) -> list[str]:
    """Dotted names an import statement of ``module`` reaches: ``a.b.c`` for ``import a.b.c``;
    ``a.b.c`` and ``a.b`` for ``from a.b import c`` (the caller keeps the one that is a
    module); relative imports resolved."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    return [f"{source}.{alias.name}" for alias in node.names] + [source]


def import_graph(packages: dict[str, Path] = PACKAGES, lazy: bool = False
                 ) -> dict[str, set[str]]:
    """Module -> the package modules it imports (at module level; with ``lazy``, anywhere)."""
    modules = source_modules(packages)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: set[str] = set()
        for node in import_nodes(tree, lazy):
            names = imported_names(node, name, path.name == "__init__.py")
            if isinstance(node, ast.ImportFrom):
                # ``from a.b import c``: the submodule a.b.c when there is one, else a.b
                subs = [n for n in names[:-1] if n in modules]
                names = subs + ([names[-1]] if len(subs) < len(names) - 1 else [])
            for target in names:
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan), i.e. the import
    cycles, each as the set of its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def cycle_path(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """One closed import path through a cycle's first module (for the failure message)."""
    start = min(component)
    paths = [[start]]
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & component):
            if w == start:
                return [*path, start]
            if w not in path:
                paths.append([*path, w])
    return [start]


def loaded_modules(code: str, *args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """``sys.modules`` after running ``code`` in a fresh interpreter (SystemExit allowed)."""
    script = (
        "import json, sys\n"
        "try:\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "print('\\nMODULES=' + json.dumps(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("MODULES=")][-1]
    return set(json.loads(line[len("MODULES="):])), proc


def loaded(modules: set[str], package: str) -> list[str]:
    """The modules of ``package`` (itself or its submodules) among ``modules``."""
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


# -- (a) the import graph has no cycle ----------------------------------------------------------
def test_graph_reader_covers_the_package():
    graph, lazy = import_graph(), import_graph(lazy=True)
    files = [p for folder in PACKAGES.values() for p in folder.rglob("*.py")
             if "__pycache__" not in p.parts]
    assert len(graph) == len(files)
    assert {"hltemu", "hltemu.kernels", "hltemu.io.reader"} <= set(graph)
    assert "hltemu.io.reader" in graph["hltemu.io"]  # the package re-exports its parts
    assert sum(map(len, graph.values())) > 50
    # imports inside functions are edges of the lazy graph only
    assert all(graph[m] <= lazy[m] for m in graph)
    assert any(graph[m] < lazy[m] for m in graph)


def test_cycle_finder_on_a_made_up_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("import pkg.sub.b\nA = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")               # a -> b -> a
    (pkg / "c.py").write_text("def f():\n    from pkg import d\n")          # lazy: no edge
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    import pkg.c\ntry:\n    import pkg.e\nexcept ImportError:\n"
                              "    pass\n")
    (pkg / "e.py").write_text("class K:\n    import pkg.d\n")              # d -> e -> d
    graph = import_graph({"pkg": pkg})
    assert graph["pkg.sub.b"] == {"pkg.a"} and graph["pkg"] == {"pkg.a"}
    assert graph["pkg.c"] == set() and graph["pkg.d"] == {"pkg.e"}
    assert cycles(graph) == {frozenset({"pkg.a", "pkg.sub.b"}), frozenset({"pkg.d", "pkg.e"})}
    assert cycle_path(graph, frozenset({"pkg.a", "pkg.sub.b"})) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    new = {c: cycle_path(graph, c) for c in found - KNOWN_CYCLES}
    assert not new, "new import cycle(s): " + "; ".join(" -> ".join(p) for p in new.values())
    gone = KNOWN_CYCLES - found
    assert not gone, f"cycle(s) removed, take them off KNOWN_CYCLES: {sorted(map(sorted, gone))}"


# -- (b) io and jec without numba or the pipeline ----------------------------------------------
def test_config_io_and_jec_load_neither_numba_nor_the_pipeline():
    modules, _ = loaded_modules("import hltemu.config\nimport hltemu.io\nimport hltemu.jec")
    assert "hltemu.io" in modules and "hltemu.jec.chain" in modules
    assert "hltemu.config" in modules
    # numba-cuda installs a startup module _numba_cuda_redirector (a .pth file); not numba itself
    assert loaded(modules, "numba") == []
    assert loaded(modules, "hltemu.pipeline") == []


def test_config_imports_nothing_from_the_package():
    """Stage configs live in the stage modules and reach :class:`hltemu.config.HLTConfig`
    through the registry, so ``hltemu.config`` imports no hltemu module, not even lazily."""
    assert import_graph(lazy=True)["hltemu.config"] == set()


def test_every_stage_module_is_found_without_a_list():
    """Adding a stage touches its module (and its kernel): ``hltemu.stages`` imports every
    module of the package, and each registers a stage."""
    import hltemu.stages
    from hltemu.pipeline import registered_stages

    files = sorted(p.stem for p in (REPO / "hltemu" / "stages").glob("*.py")
                   if not p.stem.startswith("_"))
    assert sorted(m.rpartition(".")[2] for m in hltemu.stages.stage_modules()) == files
    stages = list(registered_stages().values())
    for f in files:
        module = importlib.import_module(f"hltemu.stages.{f}")
        assert any(any(v is st for st in stages) for v in vars(module).values()), f


# -- (c) hltemu --help ---------------------------------------------------------------------------
HELP_MUST_NOT_LOAD = ("uproot", "awkward", "pythia8mc", "torch", "hltemu.simulate",
                      "hltemu.cnn_train", "hltemu.stages")


def test_help_loads_no_heavy_module():
    # as the ``hltemu`` script does (entry point hltemu.cli:main)
    modules, proc = loaded_modules("from hltemu.cli import main\nmain()", "--help")
    assert "Commands:" in proc.stdout
    for name in ("generate", "train-doublet-cnn", "run", "info", "bench"):
        assert f"  {name} " in proc.stdout, name
    bad = {p: loaded(modules, p) for p in HELP_MUST_NOT_LOAD if loaded(modules, p)}
    assert not bad, f"hltemu --help loads {bad}"


def test_help_summaries_of_lazy_commands_are_the_commands_own():
    import click

    from hltemu.cli import LAZY_COMMANDS, LazyGroup, cli

    assert isinstance(cli, LazyGroup)
    for name, (module, attr, summary) in LAZY_COMMANDS.items():
        cmd = getattr(importlib.import_module(module), attr)
        assert cmd.name == name
        for limit in range(10, 121):
            assert click.Command(name, help=summary).get_short_help_str(limit) == \
                cmd.get_short_help_str(limit), (name, limit)


# -- (d) reconstruction does not import the generator -------------------------------------------
def simulate_importers(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Modules outside hltemu.simulate -> the hltemu.simulate modules they import."""
    return {m: sorted(t for t in targets if loaded({t}, "hltemu.simulate"))
            for m, targets in graph.items()
            if not loaded({m}, "hltemu.simulate") and loaded(targets, "hltemu.simulate")}


def test_no_module_outside_simulate_imports_it():
    graph = import_graph()
    assert {"hltemu.stages.topocluster", "hltemu.pipeline", "hltemu.cli"} <= set(graph)
    eager = simulate_importers(graph)
    assert not eager, f"modules import hltemu.simulate at module level: {eager}"
    # not even lazily (the old import of the pileup-noise table by topoclustering was lazy):
    # the command line alone reaches the generator, to run `hltemu generate`
    lazy = simulate_importers(import_graph(lazy=True))
    lazy.pop("hltemu.cli", None)
    assert not lazy, f"modules import hltemu.simulate: {lazy}"


@pytest.mark.parametrize("module", ["hltemu.calo_noise", "hltemu.cell_graph"])
def test_reconstruction_side_module_imports_no_generator(module):
    tree = ast.parse(source_modules()[module].read_text(encoding="utf-8"))
    reached = {n for node in import_nodes(tree, lazy=True)
               for n in imported_names(node, module, False)}
    assert not [n for n in reached if loaded({n}, "hltemu.simulate") or loaded({n}, "pythia8mc")]
    modules, _ = loaded_modules(f"import {module}")
    assert loaded(modules, "hltemu.simulate") == [] and loaded(modules, "pythia8mc") == []


# -- stages do not look at the backend's name ---------------------------------------------------
BACKEND_WORDS = frozenset({"reference", "cpu", "cuda"})


def backend_name_comparisons(source: str) -> list[int]:
    """Lines where a comparison involves ``<x>.name`` of a backend-like variable or one of the
    backend names as a string (``be.name == "cuda"``, ``backend.name in ("cpu", "cuda")``)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op in operands:
            names = [op] + (list(op.elts) if isinstance(op, (ast.Tuple, ast.List, ast.Set))
                            else [])
            if any(isinstance(n, ast.Constant) and n.value in BACKEND_WORDS for n in names):
                lines.append(node.lineno)
                break
            if _is_backend_name(op):
                lines.append(node.lineno)
                break
    return lines


def _is_backend_name(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "name"
            and isinstance(node.value, ast.Name) and node.value.id in ("be", "backend", "b"))


def backend_name_lookups(source: str) -> list[int]:
    """Lines that index a table by a backend's name (``ENGINES[be.name]``): that is
    :func:`hltemu.pipeline.dispatch`'s job."""
    return sorted({node.lineno for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.Subscript) and _is_backend_name(node.slice)})


def test_the_finder_sees_backend_comparisons():
    code = ('if be.name == "cuda": pass\nif backend.name in ("cpu", "cuda"): pass\n'
            'x = p.name == "HLT_X"\nif kind == "cpu": pass\n')
    assert backend_name_comparisons(code) == [1, 2, 4]
    assert backend_name_lookups("f = T[be.name]\ng = T[name]\nh = U[backend.name](x)\n") == [1, 3]


def test_no_stage_compares_a_backend_name():
    """The pipeline dispatches: a stage gives one implementation per backend and never looks
    at the backend's name itself, neither in a comparison nor to index a table (a public
    helper's table of per-backend functions goes through :func:`hltemu.pipeline.dispatch`)."""
    found = {}
    for path in sorted((REPO / "hltemu" / "stages").glob("*.py")):
        source = path.read_text()
        lines = sorted(backend_name_comparisons(source) + backend_name_lookups(source))
        if lines:
            found[path.name] = lines
    assert not found, f"backend-name comparisons in stages (file: lines): {found}"
