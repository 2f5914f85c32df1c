"""What a run folder holds, by name: the contract between the runner, which reads it, and the worker, which writes it."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = "config.json"  # the resolved run config (bench.config.RunConfig), written by the runner
RESULT = ".result.json"  # the worker's record (bench.records.RunRecord), before the runner completes it
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
