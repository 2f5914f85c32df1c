"""The shape of the code: bench/ is a few packages stacked in floors, each importing only the floors below it (no
cycle between modules or packages, module-level or inside functions), the schema, runner and report side load no
model library, and no function grows past a screenful."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BENCH = ROOT / "bench"
MAX_LINES = 60

# The floors of bench/, each with the floors it sits on directly; a package may import the floors below it,
# transitively, and its own modules; nothing above. `bench` itself is the top: cli.py and __main__.py.
SITS_ON: dict[str, set[str]] = {
    "bench.core": set(),                                # the contract: config, records, layout, metrics, helpers
    "bench.datasets": {"bench.core"},                   # instruction data: examples and batches
    "bench.analysis": {"bench.core"},                   # finished records as rows and statistics
    "bench.launch": {"bench.core"},                     # runs across processes: starts the worker by module name
    "bench.run": {"bench.datasets"},                    # one run in its process
    "bench.spec": {"bench.run", "bench.launch"},        # the suite file, checked against what runs and launches it
    "bench.choose": {"bench.spec", "bench.analysis"},   # plan, recommend, compare
    "bench.report": {"bench.choose"},                   # reports: what records and choices say, for people
    "bench.commands": {"bench.report"},                 # bench run (session), perf, gpu-check, import-peft
    "bench": {"bench.commands"},                        # the command line
}


def below(package: str) -> set[str]:
    """Every floor under `package`: what it may import besides itself."""
    out: set[str] = set()
    todo = list(SITS_ON[package])
    while todo:
        floor = todo.pop()
        if floor not in out:
            out.add(floor)
            todo.extend(SITS_ON[floor])
    return out


MAY_IMPORT = {package: below(package) for package in SITS_ON}
# The torch-free floors: importing every module of one loads no model library.
NO_TORCH = ["bench.core", "bench.launch", "bench.spec", "bench.analysis", "bench.choose", "bench.report"]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_of(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / "bench").rglob("*.py"))}


MODULES = modules_of(ROOT)


def package_of(module: str, modules: dict[str, Path] = MODULES) -> str:
    """The floor a module lives on: its package (bench.core for bench.core.util and bench.core itself)."""
    return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]


def resolve(name: str, modules: dict[str, Path] = MODULES) -> list[str]:
    """The bench modules that importing `name` runs: the module and the package __init__s above it."""
    parts = name.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(2, len(parts) + 1)) if m in modules]


def import_lines(module: str, modules: dict[str, Path] = MODULES) -> dict[str, int]:
    """Every bench module `module` imports anywhere in its file, with the line of its first import: at the top,
    inside functions, under TYPE_CHECKING, and by name through `_lazy("bench.x", ...)` (the CLI's commands)."""
    tree = ast.parse(modules[module].read_text())
    package = package_of(module, modules)
    found: dict[str, int] = {}

    def add(names: list[str], node: ast.AST) -> None:
        for name in names:
            found.setdefault(name, node.lineno)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(resolve(alias.name, modules), node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            add(resolve(base, modules), node)
            for alias in node.names:  # `from bench.core import util`: the submodule itself
                add([m for m in resolve(f"{base}.{alias.name}", modules) if m == f"{base}.{alias.name}"], node)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_lazy" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(resolve(arg.value, modules), node)
    found.pop(module, None)
    return dict(sorted(found.items()))


def imports_of(module: str) -> set[str]:
    return set(import_lines(module))


GRAPH = {m: imports_of(m) for m in MODULES}


def upward_imports(root: Path = ROOT) -> list[str]:
    """Each import that runs up a floor or sideways into a package this one does not sit on, as
    `FILE:LINE: MODULE imports TARGET, ...`: the file and the import to fix."""
    modules = modules_of(root)
    out = []
    for module, path in modules.items():
        home = package_of(module, modules)
        if home not in SITS_ON:
            out.append(f"{path.relative_to(root)}: {home} is no floor of tests/test_architecture.py's SITS_ON")
            continue
        targets = import_lines(module, modules)
        for target, line in targets.items():
            there = package_of(target, modules)
            if target == "bench" or there == home or there in MAY_IMPORT[home]:
                continue  # bench/__init__.py runs first for every module and imports nothing of bench
            if target in SITS_ON and any(t.startswith(target + ".") for t in targets):
                continue  # a package's __init__, run on the way to one of its modules: the module names the import
            allowed = ", ".join(sorted(MAY_IMPORT[home])) or "nothing else of bench"
            out.append(f"{path.relative_to(root)}:{line}: {module} imports {target}, which is not below it "
                       f"({home} may import {allowed})")
    return out


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


def test_every_import_runs_down_a_floor():
    assert upward_imports() == []


def test_the_floors_form_no_cycle_and_every_package_is_one():
    packages = {package_of(m) for m in MODULES}
    assert packages == set(SITS_ON)
    assert all(package not in MAY_IMPORT[package] for package in SITS_ON)
    between = {p: {package_of(t) for m in MODULES if package_of(m) == p for t in GRAPH[m]} - {p, "bench"}
               for p in SITS_ON if p != "bench"}
    assert cycles(between) == []


def test_the_top_of_bench_is_the_command_line_and_the_floors():
    # A new module goes into the floor whose imports it needs, not beside the floors.
    assert sorted(p.name for p in BENCH.glob("*.py")) == ["__init__.py", "__main__.py", "cli.py"]
    assert {f"bench.{p.name}" for p in BENCH.iterdir() if (p / "__init__.py").exists()} == set(SITS_ON) - {"bench"}


def test_every_package_says_what_it_holds_and_may_import():
    for package in set(SITS_ON) - {"bench"}:
        init = MODULES[package]
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) <= 2 and "import" in doc, init


def test_an_upward_import_fails_naming_the_file_and_the_import(tmp_path):
    shutil.copytree(BENCH, tmp_path / "bench", ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.txt"))
    records = tmp_path / "bench" / "core" / "records.py"
    lines = records.read_text().splitlines()
    planted = len(lines) + 2
    records.write_text("\n".join([*lines, "", "from bench.analysis.rows import seed_groups  # planted", ""]))
    assert upward_imports(tmp_path) == [
        f"bench/core/records.py:{planted}: bench.core.records imports bench.analysis.rows, which is not below it "
        "(bench.core may import nothing else of bench)",
    ]
    # A sideways import between floors that do not sit on each other fails too: the runner side may not reach the
    # worker's stages except by module name.
    runner = tmp_path / "bench" / "launch" / "runner.py"
    runner.write_text(runner.read_text() + "\n\ndef _planted():\n    from bench.run import worker\n")
    assert any(v.startswith("bench/launch/runner.py:") and "imports bench.run.worker" in v
               and "(bench.launch may import bench.core)" in v for v in upward_imports(tmp_path))


def test_the_cycle_finder_finds_a_planted_cycle():
    planted = {k: set(v) for k, v in GRAPH.items()}
    planted["bench.core.util"].add("bench.cli")  # a leaf importing the top closes a loop through everything on the way
    found = cycles(planted)
    assert found and "bench.core.util" in found[0] and "bench.cli" in found[0]


@pytest.mark.parametrize("leaf", ["bench.core.util", "bench.core.layout", "bench.analysis.stats", "bench.core.metrics",
                                  "bench.core.yamlio", "bench.run.flops", "bench.core.console"])
def test_leaf_modules_know_nothing_above_them(leaf):
    assert GRAPH[leaf] - set(SITS_ON) <= {"bench.core.metrics"}, GRAPH[leaf]


def test_the_schema_and_the_runner_stay_below_what_they_configure_and_start():
    assert "bench.choose.compare" not in GRAPH["bench.spec.suite"] | GRAPH["bench.core.config"]
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


@pytest.mark.parametrize("package", NO_TORCH)
def test_the_torch_free_floors_load_no_model_library(package):
    # The schema, the runner side, the analysis, choosing and the reports: every module of the floor at once.
    names = [m for m in MODULES if package_of(m) == package]
    imported = set(loaded_by(["-c", "import " + ", ".join(names)]).splitlines())
    assert set(names) <= imported
    assert not {"torch", "transformers", "peft", "bitsandbytes"} & imported


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
    assert len(paths_built_from_run_names(BENCH / "core" / "layout.py")) == 1  # run_path's own join: the finder finds one


def test_run_path_refuses_names_that_leave_the_folder(tmp_path):
    from bench.core.layout import UnsafeRunName, name_problem, run_path

    assert run_path(tmp_path, "lora@lr=0.0001", ".json") == tmp_path / "lora@lr=0.0001.json"
    for name in ("../escaped", "a/b", "..", ".", "", "a\\b", "x\0"):
        with pytest.raises(UnsafeRunName):
            run_path(tmp_path, name, ".json")
    assert name_problem("lora-r8_v2.1@seed0") is None
    assert name_problem("../../escaped") and name_problem(".lora") and name_problem("a" * 101)
    assert name_problem("a" * 100) is None

