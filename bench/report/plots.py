"""Report plots: Pareto fronts and charts drawn with matplotlib, returned as SVG bytes (nothing touches disk)."""

from __future__ import annotations

import io
from collections.abc import Sequence

from bench.analysis.stats import Better, pareto_front

# Colour-blind-safe (Okabe-Ito, its yellow swapped for brown, which shows on white); a run keeps its colour
# across every chart. Seven markers against eight colours: no two of the first 56 runs look alike.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#8C6D31"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def _svg(fig) -> bytes:
    import matplotlib

    buf = io.BytesIO()
    # A fixed salt and no date keep the SVG identical from one render to the next; glyphs as paths need no fonts.
    with matplotlib.rc_context({"svg.hashsalt": "peft-bench", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float = 5.2, height: float = 4.2):
    # Figure directly, not pyplot: no global state and never a GUI backend (headless like Agg); savefig picks
    # matplotlib's SVG canvas from the format, whatever backend the process has configured.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    # Type large enough to read when a phone shrinks the chart to its screen width.
    ax.tick_params(labelsize=9)
    ax.xaxis.label.set_size(10)
    ax.yaxis.label.set_size(10)
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _legend(fig, ax) -> None:
    # Below the chart, not inside it: names printed beside dots collide as soon as a few runs cost the same.
    handles, names = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False,
                   handletextpad=0.3, columnspacing=1.2)


def scatter_svg(points: Sequence[tuple[float, float, str, str, str]], x_label: str, y_label: str, *,
                x_better: Better = "lower", y_better: Better = "higher", log_x: bool = False,
                baseline_y: float | None = None) -> bytes:
    """Score against a cost, one dot per run (x, y, label, colour, marker), the Pareto front ringed and joined."""
    fig, ax = _figure()
    front = pareto_front(points, x_better, y_better)
    on_front = {id(p) for p in front}
    for p in points:
        ax.scatter([p[0]], [p[1]], s=80 if id(p) in on_front else 45, color=p[3], marker=p[4], zorder=3,
                   edgecolors="#222222" if id(p) in on_front else "none", linewidths=1.4, alpha=0.9, label=p[2])
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#888888", linewidth=1.2,
                linestyle="--", zorder=1, label="Pareto front")
    if baseline_y is not None:
        ax.axhline(baseline_y, color="#999999", linewidth=1, linestyle=":", zorder=0, label="baseline (untrained)")
    if log_x:
        ax.set_xscale("log")
    else:
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.margins(x=0.1, y=0.15)
    ys = [p[1] for p in points] + ([baseline_y] if baseline_y is not None else [])
    if max(ys) - min(ys) < 1e-12:
        # Every run scored the same (0 on a task none learned): a readable band, not an axis of 1e-17 ticks.
        pad = max(abs(ys[0]) * 0.1, 0.05)
        ax.set_ylim(ys[0] - pad, ys[0] + pad)
    ax.set_xlabel(f"{x_label} ({x_better} is better)")
    ax.set_ylabel(f"{y_label} ({y_better} is better)")
    _legend(fig, ax)
    return _svg(fig)


def curves_svg(curves: Sequence[tuple[str, str, list[float], list[float], bool]]) -> bytes:
    """Training loss against optimiser step, one line per run: (label, colour, steps, losses, finished)."""
    fig, ax = _figure()
    for label, colour, steps, losses, finished in curves:
        ax.plot(steps, losses, color=colour, linewidth=1.6, linestyle="-" if finished else "--",
                marker="o" if len(steps) == 1 else None, label=label if finished else f"{label} (did not finish)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss")
    _legend(fig, ax)
    return _svg(fig)
