"""The summary table for the terminal: bench.report.table's plain table laid out with rich."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from bench.core.records import RunRecord
from bench.report.table import summary_table

# The notes the terminal keeps: the method and the trainable share, which stand in for columns of their own. The
# baseline's score beside every score is left to the reports (its own row shows it): a terminal is narrow.
NOTED = ("run / method", "trainable params")


def rich_table(records: list[RunRecord], title: str | None = None) -> Table:
    """One row per run; with seeds, one per suite entry: mean ± 95% interval half-width of scores, mean costs.
    The best cells in bold green, what the marks mean under the table."""
    data = summary_table(records)
    notes = [text for kind, text in data.notes.items() if kind != "base"]
    table = Table(title=title, header_style="bold", caption_justify="left",
                  caption=("Bold green: " + " ".join(notes)) if notes else None)
    for header, numeric in zip(data.headers, data.numeric):
        table.add_column(header, justify="right" if numeric else "left")
    for row in data.rows:
        cells = []
        for header, c in zip(data.headers, row.cells):
            text = escape(c.text)
            if c.best:
                text = f"[bold green]{text}[/]"
            if header == "status" and not row.ok:
                text = f"[red]{text}[/]"
            noted = c.note is not None and header in NOTED
            cells.append(text + (f" [dim]({escape(c.note)})[/]" if noted else ""))
        table.add_row(*cells)
    return table
