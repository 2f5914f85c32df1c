"""The suite file's one way in: `load_suite` reads the YAML once, types it (bench.spec.schema), reads each adapter_config
file once, and has bench.spec.validate report every problem with its line before any model loads."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from bench.spec import validate
from bench.spec.adapterfile import adapter_method, read_adapter_config
from bench.spec.schema import RunSpec, Suite, deep_merge, sweep_points
from bench.core.yamlio import SuiteError, load_yaml, to_plain

__all__ = ["RunSpec", "Suite", "deep_merge", "load_suite", "sweep_points"]


def load_suite(path: str | Path, trust_remote_code: bool = False) -> Suite:
    """Parse and validate a suite file; raise SuiteError listing every problem with its line. The document is read
    once (syntax, duplicate keys, lines); bench.spec.validate checks the typed suite and each run as resolved. Code the
    suite would run (bench.run.safety) is a problem unless the person running it passed --trust-remote-code."""
    path = Path(path)
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise SuiteError(path, [f"expected a mapping of suite keys at the top level, got {type(doc).__name__}"])
    suite, error, files = None, None, {}
    try:
        suite = Suite(**to_plain(doc), source=str(path))
    except ValidationError as e:
        error = e
    if suite is not None:
        suite, files = with_adapter_files(suite)
    problems = validate.problems(doc, path, suite, error, files, trust_remote_code)
    if problems:
        raise SuiteError(path, problems)
    return suite


def with_adapter_files(suite: Suite) -> tuple[Suite, dict[int, dict | str]]:
    """Each adapter_config file read once: its path made absolute, its content kept for resolution, and the run's
    method taken from its peft_type where the run names none; with each file's content, or why it could not be read,
    by run index."""
    runs, files = [], {}
    for i, run in enumerate(suite.runs):
        if run.adapter_config is not None:
            path = suite.resolve(run.adapter_config)
            try:
                files[i] = read_adapter_config(path)
            except ValueError as e:
                files[i] = str(e)
                runs.append(run)
                continue
            run = run.model_copy(update={"adapter_config": path, "method": run.method or adapter_method(files[i])})
            run._adapter = files[i]
        runs.append(run)
    return suite.model_copy(update={"runs": runs}), files
