"""The rich summary table for the terminal."""

from __future__ import annotations

from rich.table import Table

from bench.records import RunRecord
from bench.rows import best, cell, columns, summary_rows


def summary_table(records: list[RunRecord], title: str | None = None) -> Table:
    rows = summary_rows(records)
    cols = columns(records)
    table = Table(title=title, header_style="bold")
    for name, header in cols:
        table.add_column(header, justify="left" if name in ("run", "method", "merge", "status") else "right")
    for row in rows:
        cells = []
        for name, _ in cols:
            text = cell(name, row.get(name))
            if row["status"] == "success" and row["method"] != "baseline" and row.get(name) is not None \
                    and row.get(name) == best(rows, name):
                text = f"[bold green]{text}[/]"
            if name == "status" and row["status"] != "success":
                text = f"[red]{text}[/]"
            cells.append(text)
        table.add_row(*cells)
    return table
