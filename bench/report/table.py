"""The summary table as plain data: the one builder of its cells, best marks and notes for the terminal, the
Markdown and the HTML report, which only lay it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from bench.core import headline
from bench.core.config import BASELINE
from bench.core.metrics import format_value, metric
from bench.core.records import RunRecord
from bench.analysis.rows import (
    TEXT_COLUMNS,
    Group,
    base_marks,
    baseline,
    best_cells,
    columns,
    group_columns,
    group_rows,
    interval_text,
    labels,
    multi_seed,
    ordered,
    row_cell,
    seed_groups,
    summary_rows,
)


@dataclass(frozen=True)
class Cell:
    text: str
    best: bool = False
    note: str | None = None  # shown beside the value: the baseline's score, or the trainable share


@dataclass(frozen=True)
class Row:
    cells: list[Cell]
    ok: bool


@dataclass(frozen=True)
class Table:
    headers: list[str]
    numeric: list[bool]  # right-aligned columns
    rows: list[Row]
    # What the marks mean, by kind (bench.report.table.notes), the best mark first: printed under the table.
    notes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    """One row of the summary table, whether a run or a suite entry over seeds."""

    label: str
    method: str
    base_note: Callable[[str], str | None]  # the baseline's value beside a score, where there is one
    tried_merge: bool  # a run that never finished never tried to merge: "-", not its missing status


def base_group(groups: list[Group]) -> Group | None:
    return next((g for g in groups if g.method == BASELINE and g.status == "success"), None)


def summary_table(records: list[RunRecord]) -> Table:
    """One row per run; with seeds, one per suite entry: mean ± 95% interval half-width of scores, mean costs."""
    if multi_seed(records):
        groups = seed_groups(records)
        rows, cols, base = group_rows(groups, records), group_columns(records), base_group(groups)

        def entry(g: Group) -> _Entry:
            def note(name: str) -> str | None:
                if base is None or g is base or base.summary(name) is None:
                    return None
                return f"base {interval_text(name, base.summary(name))}"
            return _Entry(g.name, g.method, note, bool(g.ok))

        return _table(rows, cols, [entry(g) for g in groups], notes(records, rows))
    rows, names, base = summary_rows(records), labels(records), baseline(records)

    def run_entry(rec: RunRecord) -> _Entry:
        def note(name: str) -> str | None:
            if base is None or rec is base or base.metrics.get(name) is None:
                return None
            return f"base {format_value(name, base.metrics[name])}"
        return _Entry(names[id(rec)] + base_marks(rec), rec.method, note, rec.ok or rec.merge is not None)

    return _table(rows, columns(records), [run_entry(r) for r in ordered(records)], notes(records, rows))


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], entries: list[_Entry],
           table_notes: dict[str, str]) -> Table:
    # The method and the trainable share ride in the run and trainable cells: two fewer columns to scroll past.
    cols = [(n, h) for n, h in columns if n not in ("method", "trainable_pct")]
    renamed = {"run": "run / method", "trainable_params": "trainable params"}
    best = best_cells(rows, [n for n, _ in cols])
    out = []
    for i, (e, row) in enumerate(zip(entries, rows)):
        cells = []
        for name, _ in cols:
            value = row.get(name)
            text = e.label if name == "run" else row_cell(name, row)
            if name == "merge" and not e.tried_merge:
                text = "-"
            note = None
            if name == "run" and e.method != e.label:
                note = e.method
            elif name == "trainable_params" and row.get("trainable_pct") is not None:
                note = f"{format_value('trainable_pct', row['trainable_pct'])}%"
            elif metric(name).kind == "score" and value is not None and name not in TEXT_COLUMNS:
                note = e.base_note(name)
            cells.append(Cell(text, (i, name) in best, note))
        out.append(Row(cells, row["status"] == "success"))
    return Table([renamed.get(n, h) for n, h in cols], [n not in TEXT_COLUMNS for n, _ in cols], out, table_notes)


def notes(records: list[RunRecord], rows: list[dict[str, Any]]) -> dict[str, str]:
    """What the table's marks and headline columns mean, by kind, the best mark first; "base" explains the
    baseline's value beside each score (the terminal leaves those out)."""
    out = {"best": "the best value in each column among finished trained runs, by the metric's direction (not "
                   "marked where all runs tie)."}
    if baseline(records) is not None:
        out["base"] = "Scores show the untrained baseline's value beside them (base ...)."
    if any(r.get("warmup_steps") is not None for r in rows):
        out["steady"] = headline.STEADY_NOTE
    if any(r.get("whole_run") for r in rows):
        out["whole_run"] = (headline.WHOLE_RUN_NOTE + " The best mark compares them with steady figures only where "
                            "no run has any.")
    return out
