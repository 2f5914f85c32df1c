"""The terminal's summary table: bench.report.table's cells laid out with rich, with the reports' best marks and notes."""

from __future__ import annotations

import io

from rich.console import Console

from bench.core.records import load_records
from bench.report.table import summary_table
from bench.report.terminal import rich_table
from tests.test_report import FIXTURES, steady


def cells(records) -> dict[str, list[str]]:
    table = rich_table(records)
    return {c.header: [str(x) for x in c._cells] for c in table.columns}


def test_the_terminal_marks_the_cells_the_reports_mark():
    records = load_records(FIXTURES)
    data = summary_table(records)
    shown = cells(records)
    for i, header in enumerate(data.headers):
        marked = [r.cells[0].text for r, text in zip(data.rows, shown[header]) if text.startswith("[bold green]")]
        assert marked == [r.cells[0].text for r in data.rows if r.cells[i].best], header
    assert shown["peak mem"][4] == "[bold green]536.1 MB[/]"  # prompt_tuning: the least memory
    assert shown["status"][-1] == "[red]failed[/]"


def test_the_terminal_leads_with_steady_figures_and_marks_whole_run_ones():
    records = [steady(r, 0.05, 70000.0, 5, 0.129) if r.run == "full" else r for r in load_records(FIXTURES)]
    shown = cells(records)
    runs = [text.split(" [dim]")[0] for text in shown["run / method"]]
    full, lora = runs.index("full"), runs.index("lora")
    headline = ("train s", "tok/s", "warm-up")
    assert [shown[h][full] for h in headline] == ["0.1", "70,000", "5 steps, 0.1 s"]
    assert [shown[h][lora] for h in headline] == ["0.2 †", "22,910 †", "-"]
    assert shown["trainable params"][lora] == "16,384 [dim](12.4696%)[/]"
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(rich_table(records))
    text = " ".join(out.getvalue().split())  # the caption wraps at the table's width
    assert "† whole run, warm-up included" in text and "train s and tok/s leave out the first steps" in text
    assert "(base 5.8158)" not in text  # the baseline's scores stay in its own row in the terminal
