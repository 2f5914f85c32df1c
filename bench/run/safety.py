"""Code a suite would make the harness import that is not its own, found without running it: allowed only where the
person running the suite says so on the command line (--trust-remote-code), and named in the record when it ran.

A suite is data. Three loaders the harness calls can turn data into code: `evaluate.load` (an `eval.metrics` entry
`hub:NAME` imports a metric script from a Hub Space or a local file), lm-eval's task YAMLs (`!function` imports
Python from the task folder; a metric lm-eval does not ship goes to `evaluate.load`; `trust_remote_code` asks for a
dataset's loading script) and lm-eval's Jinja prompt templates (rendered here in Jinja's sandbox).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.core.yamlio import Lines

FLAG = "--trust-remote-code"
KEY = "trust_remote_code"
NOT_A_KEY = (f"{KEY} is not a suite key: whether code a suite brings may run is for the person running it to say, "
             f"with {FLAG} on the command line (bench validate, plan and run)")
# YAML's own tags (!!str, !!int, ...); any other tag in a task file (!!python/name:..., !function) asks its loader
# for something else.
_YAML_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map", "binary",
                                                "timestamp", "set", "omap", "pairs", "merge", "value")}
_FALSE = ("false", "no", "off", "0", "null", "~", "")


@dataclass(frozen=True)
class Code:
    """One piece of code a suite would run: its place in the suite, what it is and where it comes from."""

    place: tuple
    what: str


# ---- evaluate.load -----------------------------------------------------------------------------------------------


def evaluate_source(name: str, cwd: Path) -> tuple[bool, str]:
    """(evaluate's own module?, where the code of `evaluate.load(name)` comes from), in evaluate 0.4's order: a local
    script first (NAME ending in .py, or NAME/NAME.py under the working directory), then for a bare name evaluate's
    own module (the Hub Space evaluate-metric/NAME, or the Hugging Face modules cache offline), for owner/name that
    Space."""
    filename = [p for p in name.replace(os.sep, "/").split("/") if p][-1] if name.strip("/") else name
    filename = filename if filename.endswith(".py") else filename + ".py"
    local = Path(name) if name.endswith(filename) else Path(name) / filename
    local = local if local.is_absolute() else cwd / local
    if name.endswith(".py") or local.is_file():
        return False, f"the local script {local}"
    version = importlib.metadata.version("evaluate")
    if name.count("/") == 0:
        return True, (f"the Hub Space evaluate-metric/{name} (tag v{version}, else main; offline, the copy in the "
                      "Hugging Face modules cache)")
    if name.count("/") == 1 and not Path(name).is_absolute():
        return False, f"the Hugging Face Hub Space {name} (tag v{version}, else main)"
    return False, f"the local path {local}"


def metric_code(metrics: list[str], cwd: Path) -> tuple[list[Code], list[str]]:
    """The `hub:` metrics that need the flag, and a note for each of evaluate's own (allowed: maintained with the
    library, but downloaded code all the same)."""
    needs, notes = [], []
    for i, name in enumerate(metrics):
        if not name.startswith("hub:"):
            continue
        own, source = evaluate_source(name[4:], cwd)
        if own:
            notes.append(f"eval.metrics[{i}] {name}: evaluate.load imports the metric's Python script from {source}")
        else:
            needs.append(Code(("eval", "metrics", i), f"'{name}' makes evaluate.load import and run the Python "
                              f"script of {source}"))
    return needs, notes


# ---- lm-eval task folders ----------------------------------------------------------------------------------------


def _registry() -> set[str]:
    """The metrics lm-eval ships; any other name in a task's metric_list goes to evaluate.load."""
    import lm_eval.api.metrics  # noqa: F401 - registers them
    from lm_eval.api.registry import metric_registry

    return set(metric_registry)


def _function_target(spec: str, yaml_path: Path) -> str:
    """What lm-eval 0.4 runs for `!function MODULE.NAME`: MODULE.py beside the YAML, else an importable module."""
    module, _, fn = spec.rpartition(".")
    beside = yaml_path.parent / f"{module.replace('.', '/')}.py"
    return f"import {beside} and run its {fn}" if beside.is_file() else f"import the module {module!r} and call " \
        f"its {fn}"


def task_file_code(path: Path, seen: set[Path] | None = None) -> list[tuple[Path, int, str]]:
    """(file, line, what) for everything in one lm-eval task YAML (and the files it `include`s) that would run code.
    The YAML is composed, never constructed: no tag's constructor runs while looking."""
    import yaml

    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen or not path.is_file():
        return []
    seen.add(path)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError):
        return []  # lm-eval says what is wrong with it when it loads the task; nothing in it ran
    found: list[tuple[Path, int, str]] = []
    _walk(root, path, seen, found)
    return found


def _walk(node: Any, path: Path, seen: set[Path], found: list) -> None:
    import yaml

    if node is None:
        return
    line = node.start_mark.line + 1
    if node.tag == "!function":
        found.append((path, line, f"!function {node.value} makes lm-eval {_function_target(node.value, path)}"))
    elif node.tag not in _YAML_TAGS:
        found.append((path, line, f"the YAML tag {node.tag} asks lm-eval's loader to build a Python object"))
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _walk(item, path, seen, found)
    if not isinstance(node, yaml.MappingNode):
        return
    for key, value in node.value:
        _walk(key, path, seen, found)
        _walk(value, path, seen, found)
        _key_code(key.value if isinstance(key, yaml.ScalarNode) else None, value, path, seen, found)


def _key_code(key: str | None, value: Any, path: Path, seen: set[Path], found: list) -> None:
    import yaml

    scalar = value.value if isinstance(value, yaml.ScalarNode) and value.tag in _YAML_TAGS else None
    line = value.start_mark.line + 1
    if key == KEY and str(scalar).lower() not in _FALSE:
        found.append((path, line, f"{KEY}: {scalar} asks the datasets library to run a dataset's own loading script"))
    elif key == "hf_evaluate" and str(scalar).lower() not in _FALSE:
        found.append((path, line, "hf_evaluate makes lm-eval load the metric with evaluate.load, which imports its "
                      "script"))
    elif key == "metric" and isinstance(scalar, str) and scalar not in _registry():
        own, source = evaluate_source(scalar, path.parent)
        found.append((path, line, f"metric {scalar!r} is not one lm-eval ships, so lm-eval hands it to evaluate.load, "
                      f"which imports the Python script of {source}"))
    elif key == "include":
        names = [scalar] if scalar is not None else [n.value for n in getattr(value, "value", [])
                                                      if isinstance(n, yaml.ScalarNode)]
        for name in names:
            found += task_file_code(Path(name) if Path(name).is_absolute() else path.parent / name, seen)


def task_folder_code(folder: Path) -> list[tuple[Path, int, str]]:
    """Everything in an lm-eval task folder that would run code: lm-eval indexes every *.yaml under it."""
    seen: set[Path] = set()
    found = []
    for path in sorted(folder.glob("**/*.yaml")):
        if "__pycache__" not in path.parts and ".ipynb_checkpoints" not in path.parts:
            found += task_file_code(path, seen)
    return found


def folder_digest(folder: Path) -> str:
    """sha256 over a folder's files (relative path and bytes, in path order): what the folder held when it ran."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file() and "__pycache__" not in q.parts):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


# ---- validate ----------------------------------------------------------------------------------------------------


def _key_places(node: Any, place: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in ([(*place, k)] if k == KEY else []) + _key_places(v, (*place, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _key_places(v, (*place, i))]
    return []


def _dotted(place: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in place).lstrip(".")


def code(metrics: list[str], include_path: str | None, cwd: Path) -> list[Code]:
    """Every piece of code the suite's metrics and lm-eval task folder would run."""
    found, _ = metric_code(metrics, cwd)
    if include_path is not None and Path(include_path).is_dir():
        for path, line, what in task_folder_code(Path(include_path)):
            found.append(Code(("eval", "lm_eval", "include_path"), f"{path}, line {line}: {what}"))
    return found


def key_problems(doc: dict) -> list[tuple[int | None, str]]:
    """A `trust_remote_code` key anywhere in the suite, with its line."""
    from bench.core.yamlio import line_of

    return [(line_of(doc, place), f"{_dotted(place)}: {NOT_A_KEY}") for place in _key_places(doc)]


def problems(lines: Lines, metrics: list[str], include_path: str | None, trusted: bool) -> list[tuple[int | None, str]]:
    """Without the flag, each piece of code the suite would run, with its line (`lines`: the suite file's line map)."""
    if trusted:
        return []
    return [(lines.of(c.place), f"{_dotted(c.place)}: {c.what}; a suite cannot allow that itself: run with "
             f"{FLAG} if you trust whoever wrote it") for c in code(metrics, include_path, Path.cwd())]


def notes(metrics: list[str], include_path: str | None, trusted: bool) -> list[str]:
    """What `validate` says of code that runs: evaluate's own metrics always; with the flag, what it allows."""
    _, said = metric_code(metrics, Path.cwd())
    if trusted:
        said += [f"allowed by {FLAG}: {c.what}" for c in code(metrics, include_path, Path.cwd())]
    return said


# ---- while a run runs --------------------------------------------------------------------------------------------


def sandbox_lm_eval_templates() -> None:
    """Render lm-eval's Jinja prompt templates (doc_to_text, doc_to_target, ...) in Jinja's sandbox: lm-eval 0.4
    renders them in a plain Environment, where `{{ ''.__class__.__mro__ }}` reaches any Python object. A template is
    data; the sandbox refuses attributes starting with '_' and the like (jinja2.sandbox)."""
    import lm_eval.utils
    from jinja2 import BaseLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    if isinstance(lm_eval.utils.env, SandboxedEnvironment):
        return
    env = SandboxedEnvironment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters.update(lm_eval.utils.env.filters)
    lm_eval.utils.env = env


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def code_that_ran(include_path: str | None = None) -> list[str]:
    """Code this process imported from outside the installed packages and the harness, as the loaders name it:
    evaluate's and datasets' dynamic modules (`evaluate_modules.*`, `datasets_modules.*`), lm-eval's task Python
    (named by its file path); each with its file and sha256, the lm-eval task folder with a hash of its files."""
    out = []
    for name, module in sorted(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file is None or not Path(file).is_file() or Path(file).name == "__init__.py":
            continue
        if name.startswith(("evaluate_modules.", "datasets_modules.")):
            space = name.split(".")[2].replace("--", "/") if name.count(".") >= 3 else name
            out.append(f"{name.split('_')[0]} module {space}: {file} (sha256 {_sha(Path(file))})")
        elif name.startswith("/"):
            out.append(f"lm-eval task code {file} (sha256 {_sha(Path(file))})")
    if include_path and any(line.startswith("lm-eval") for line in out):
        out.append(f"lm-eval task folder {include_path} (sha256 of its files {folder_digest(Path(include_path))[:16]})")
    return out
