"""The shape of the code: imports in bench/ flow one way (no cycle, module-level or inside functions), the runner
and `bench run --help` load no model library, and no function grows past a screenful."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BENCH = ROOT / "bench"
MAX_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(BENCH.rglob("*.py"))}


def resolve(name: str) -> list[str]:
    """The bench modules that importing `name` runs: the module and the package __init__s above it."""
    parts = name.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(2, len(parts) + 1)) if m in MODULES]


def imports_of(module: str) -> set[str]:
    """Every bench module `module` imports anywhere in its file: at the top, inside functions, under
    TYPE_CHECKING, and by name through `_lazy("bench.x", ...)` (the CLI's commands)."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(resolve(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.update(resolve(base))
            for alias in node.names:  # `from bench import data`: the submodule itself
                found.update(m for m in resolve(f"{base}.{alias.name}") if m == f"{base}.{alias.name}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_lazy" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.update(resolve(arg.value))
    found.discard(module)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_of_bench_has_no_cycle():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    planted = {k: set(v) for k, v in GRAPH.items()}
    planted["bench.core.util"].add("bench.cli")  # a leaf importing the top closes a loop through everything on the way
    found = cycles(planted)
    assert found and "bench.core.util" in found[0] and "bench.cli" in found[0]


@pytest.mark.parametrize("leaf", ["bench.core.util", "bench.core.layout", "bench.analysis.stats", "bench.core.metrics", "bench.core.yamlio",
                                  "bench.run.flops", "bench.core.console"])
def test_leaf_modules_know_nothing_above_them(leaf):
    assert GRAPH[leaf] <= {"bench", "bench.core.metrics"}, GRAPH[leaf]


def test_the_schema_and_the_runner_stay_below_what_they_configure_and_start():
    assert "bench.choose.compare" not in GRAPH["bench.spec.suite"] and "bench.choose.compare" not in GRAPH["bench.core.config"]
    for module in ("bench.launch.runner", "bench.core.config", "bench.core.records", "bench.core.regression"):
        assert not GRAPH[module] & {"bench.run.worker", "bench.spec.suite", "bench.spec.schema", "bench.spec.validate",
                                    "bench.run.distributed", "bench.run.train", "bench.run.load"}, module
    # The schema and resolution know nothing of validation, which reads them.
    assert not GRAPH["bench.spec.schema"] & {"bench.spec.validate", "bench.spec.suite"}


def loaded_by(code: list[str]) -> str:
    """What `python -X importtime ...` reports importing: every module, one per line."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return "\n".join(line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line)


def test_importing_the_runner_loads_no_model_library():
    imported = loaded_by(["-c", "import bench.launch.runner"]).splitlines()
    assert "bench.launch.runner" in imported
    assert not {"torch", "transformers", "peft"} & set(imported)


@pytest.mark.parametrize("module", ["bench.spec.suite", "bench.spec.schema", "bench.core.config", "bench.spec.validate"])
def test_the_schema_loads_no_model_library(module):
    # The name lists it checks against (presets, optimisers, scorers, trackers) live in light modules; the checks
    # that need PEFT import it when they run.
    imported = loaded_by(["-c", f"import {module}"]).splitlines()
    assert module in imported
    assert not {"torch", "transformers", "peft", "bitsandbytes"} & set(imported)


def test_bench_run_help_loads_no_model_library():
    imported = loaded_by(["-m", "bench", "run", "--help"]).splitlines()
    assert "bench.cli" in imported
    assert not {"torch", "transformers", "peft"} & set(imported)


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]


def test_no_function_in_bench_is_longer_than_a_screenful():
    assert [f for p in MODULES.values() for f in long_functions(p)] == []


def paths_built_from_run_names(path: Path) -> list[str]:
    """`folder / x.run` or `folder / f"{x.run}..."`: a path joined from a run name outside bench.core.layout.run_path."""
    def names_run(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Attribute) and n.attr == "run" or isinstance(n, ast.Name) and n.id == "run"
                   for n in ast.walk(node))

    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree)
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and names_run(node.right)]


def test_every_path_from_a_run_name_goes_through_run_path():
    # A run name comes from a suite file; run_path refuses one that would land outside the output folder.
    assert [f for m, p in MODULES.items() if m != "bench.core.layout" for f in paths_built_from_run_names(p)] == []
    assert len(paths_built_from_run_names(BENCH / "layout.py")) == 1  # run_path's own join: the finder finds one


def test_run_path_refuses_names_that_leave_the_folder(tmp_path):
    from bench.core.layout import UnsafeRunName, name_problem, run_path

    assert run_path(tmp_path, "lora@lr=0.0001", ".json") == tmp_path / "lora@lr=0.0001.json"
    for name in ("../escaped", "a/b", "..", ".", "", "a\\b", "x\0"):
        with pytest.raises(UnsafeRunName):
            run_path(tmp_path, name, ".json")
    assert name_problem("lora-r8_v2.1@seed0") is None
    assert name_problem("../../escaped") and name_problem(".lora") and name_problem("a" * 101)
    assert name_problem("a" * 100) is None

