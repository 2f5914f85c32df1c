"""The report writers: report.md, report.html and summary.csv from a results folder; the only report code that touches
disk.

Rebuild them any time, also for a folder that merges several runs: `python -m bench report results/smoke`.
"""

from __future__ import annotations

import io
from pathlib import Path

from bench.core.records import RunRecord, error_headline, load_records
from bench.report.html import render_html
from bench.report.markdown import render_markdown
from bench.analysis.rows import ordered, summary_rows
from bench.core.util import atomic_write


def render_csv(records: list[RunRecord]) -> str:
    """The summary table with raw numbers (bytes, seconds), one row per run (per seed), for pandas or a spreadsheet."""
    import pandas as pd

    rows = summary_rows(records)
    # With seeds, each run's group and seed make the means and intervals a groupby away.
    seeded = any(r.config.group is not None for r in records)
    # The error's own last line says what went wrong; the first line of a traceback never does.
    frame = pd.DataFrame([{"suite": r.suite, **row, "error": error_headline(r.error),
                           **({"group": r.config.group or r.run, "seed": r.config.seed} if seeded else {})}
                          for r, row in zip(ordered(records), rows)])
    if seeded:
        frame["seed"] = frame["seed"].astype("Int64")  # a run without seeds leaves a gap, not a float column
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue()


def write_reports(out_dir: Path) -> list[Path]:
    """report.md and report.html from the records now in out_dir, nothing else."""
    out_dir = Path(out_dir)
    records = load_records(out_dir)
    return [atomic_write(out_dir / "report.md", render_markdown(records)),
            atomic_write(out_dir / "report.html", render_html(records))]


def write_csv(out_dir: Path, records: list[RunRecord]) -> Path:
    return atomic_write(Path(out_dir) / "summary.csv", render_csv(records))
