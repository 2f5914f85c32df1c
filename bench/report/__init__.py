"""Reports from a results folder: report.md, report.html and summary.csv; the writers here are all that touch disk.

Rebuild them any time, also for a folder that merges several runs: `python -m bench report results/smoke`.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from bench.records import RunRecord, load_records
from bench.records import error_headline
from bench.report.html import render_html
from bench.report.markdown import render_markdown
from bench.report.plots import pareto_front
from bench.rows import ordered, summary_rows

__all__ = ["pareto_front", "render_csv", "render_html", "render_markdown", "write_csv", "write_reports"]


def render_csv(records: list[RunRecord]) -> str:
    """The summary table with raw numbers (bytes, seconds), one row per run (per seed), for pandas or a spreadsheet."""
    import pandas as pd

    rows = summary_rows(records)
    # With seeds, each run's group and seed make the means and intervals a groupby away.
    seeded = any("group" in r.config for r in records)
    # The error's own last line says what went wrong; the first line of a traceback never does.
    frame = pd.DataFrame([{"suite": r.suite, **row, "error": error_headline(r.error),
                           **({"group": r.config.get("group", r.run), "seed": r.config.get("seed")} if seeded else {})}
                          for r, row in zip(ordered(records), rows)])
    if seeded:
        frame["seed"] = frame["seed"].astype("Int64")  # a run without seeds leaves a gap, not a float column
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue()


def _write(path: Path, text: str) -> Path:
    """Write beside the target, then rename: a browser open on the old report never reads half a new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_reports(out_dir: Path) -> list[Path]:
    """report.md and report.html from the records now in out_dir, nothing else."""
    out_dir = Path(out_dir)
    records = load_records(out_dir)
    return [_write(out_dir / "report.md", render_markdown(records)),
            _write(out_dir / "report.html", render_html(records))]


def write_csv(out_dir: Path, records: list[RunRecord]) -> Path:
    return _write(Path(out_dir) / "summary.csv", render_csv(records))
