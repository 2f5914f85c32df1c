"""The rich summary table for the terminal."""

from __future__ import annotations

from rich.table import Table

from bench.config import BASELINE
from bench.records import RunRecord
from bench.rows import best, cell, columns, group_cell, group_columns, group_rows, multi_seed, seed_groups, summary_rows


def summary_table(records: list[RunRecord], title: str | None = None) -> Table:
    """One row per run; with seeds, one per suite entry: mean ± 95% interval half-width of scores, mean costs."""
    seeds = multi_seed(records)
    rows = group_rows(seed_groups(records), records) if seeds else summary_rows(records)
    cols = group_columns(records) if seeds else columns(records)
    table = Table(title=title, header_style="bold")
    for name, header in cols:
        table.add_column(header, justify="left" if name in ("run", "method", "merge", "serve", "status") else "right")
    for row in rows:
        cells = []
        for name, _ in cols:
            text = group_cell(name, row) if seeds else cell(name, row.get(name))
            if row["status"] == "success" and row["method"] != BASELINE and row.get(name) is not None \
                    and row.get(name) == best(rows, name):
                text = f"[bold green]{text}[/]"
            if name == "status" and row["status"] != "success":
                text = f"[red]{text}[/]"
            cells.append(text)
        table.add_row(*cells)
    return table
