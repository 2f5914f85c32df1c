"""The HTML report: one self-contained file (plots inline as data: URIs, no fonts or scripts from anywhere)."""

from __future__ import annotations

import base64

from bench.core.metrics import format_value
from bench.core.records import RunRecord
from bench.report import plots
from bench.report.content import RECOMMEND_HINT, Report, Tradeoff, build


def data_uri(svg: bytes) -> str:
    # An <img> per plot, not inline <svg>: each SVG keeps its own ids, so two charts never share a clip path.
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def front_text(t: Tradeoff) -> str:
    return ", ".join(f"{p.run} ({format_value(t.name, p.x)}, {format_value(t.score, p.y)})" for p in t.front)


def figures(rep: Report) -> list[dict[str, str]]:
    out = []
    for t in rep.tradeoffs:
        points = [(p.x / t.x_divisor, p.y, p.run, p.colour, p.marker) for p in t.points]
        svg = plots.scatter_svg(points, t.x_label, t.y_label,
                                x_better=t.x_better, y_better=t.y_better,
                                log_x=t.log_x, baseline_y=t.baseline_y)
        out.append({"title": f"{t.y_label} vs {t.x_label}", "src": data_uri(svg),
                    "caption": f"Pareto front: {front_text(t)}"})
    if rep.curves:
        svg = plots.curves_svg([(c.run, c.colour, c.steps, c.losses, c.finished) for c in rep.curves])
        out.append({"title": "training loss", "src": data_uri(svg),
                    "caption": "Loss of every run against optimiser step; dashed lines did not finish."})
    return out


def environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(loader=PackageLoader("bench.report", "templates"), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_html(records: list[RunRecord]) -> str:
    rep = build(records)
    hint = RECOMMEND_HINT.replace("`", "")
    return environment().get_template("report.html.j2").render(rep=rep, figures=figures(rep), hint=hint)
