"""What a run folder holds, by name: the contract between the runner, which reads it, and the worker, which writes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG = "config.json"  # the resolved run config (bench.core.config.RunConfig), written by the runner
RESULT = ".result.json"  # the worker's record (bench.core.records.RunRecord), before the runner completes it
PROGRESS = "progress.jsonl"  # one JSON object per optimiser step, appended as training goes
LOG = "log.txt"  # the worker's stdout and stderr


def read_progress(run_dir: Path) -> list[dict[str, float]]:
    """The steps written so far; a process killed mid-line leaves a partial last line, which is dropped."""
    p = Path(run_dir) / PROGRESS
    if not p.exists():
        return []
    points = []
    for line in p.read_text().splitlines():
        try:
            points.append(json.loads(line))
        except ValueError:
            break
    return points


# A run name from a suite becomes file and folder names: letters, digits and these few marks, never a separator.
NAME_MARKS = "-_.@=+"
MAX_NAME = 100


class UnsafeRunName(ValueError):
    """A run name that is not a plain file name, or a path built from one that would leave its folder."""


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a run name (a plain file name), or None when it can."""
    if not name or len(name) > MAX_NAME:
        return f"a run name has 1 to {MAX_NAME} characters, got {len(name)}"
    bad = sorted({c for c in name if not (c.isascii() and c.isalnum()) and c not in NAME_MARKS})
    if bad:
        return (f"a run name is a plain file name: letters, digits and {' '.join(NAME_MARKS)} only, not "
                f"{' '.join(repr(c) for c in bad)}")
    if name.startswith(".") or ".." in name:
        return "a run name is a plain file name: it cannot start with '.' or contain '..'"
    return None


def run_path(out_dir: Path, run: str, suffix: str = "") -> Path:
    """out_dir/RUN plus `suffix` ('.json' for the record, '' for the run folder): the one place a path is built
    from a run name, refusing any name that would land outside `out_dir`."""
    path = Path(out_dir) / f"{run}{suffix}"
    parent = Path(os.path.abspath(out_dir))
    if any(sep in run for sep in ("/", "\\", "\0")) or Path(os.path.abspath(path)).parent != parent \
            or run in ("", ".", ".."):
        raise UnsafeRunName(f"run name {run!r} cannot name a file in {out_dir}: a run name is a plain file name "
                            "(no '/', '\\' or NUL, not '.' or '..')")
    return path
