"""The regression gate's verdict as Markdown, for the terminal, a CI log or a PR comment."""

from __future__ import annotations

from bench.choose.compare import Comparison, Row
from bench.core.metrics import format_value, human_bytes, metric


def _value(name: str, v: float | str | None, half_width: float | None = None) -> str:
    if name in ("status", "run"):
        return v or "-"
    text = format_value(name, v)
    return text if half_width is None or v is None else f"{text} ± {format_value(name, half_width)}"


def _delta(row: Row) -> str:
    if row.delta is None:
        return "-"
    fmt = metric(row.metric).fmt
    text = (("+" if row.delta >= 0 else "-") + human_bytes(abs(row.delta))) if fmt == "bytes" else \
        format(row.delta, "+" + fmt)
    if row.relative_delta is not None and row.delta != 0:
        text += f" ({row.relative_delta:+.1%})"
    return text


def _verdict(row: Row) -> str:
    if row.verdict == "ok":
        return "ok"
    text = f"**{row.verdict}**" if row.gated and row.verdict in ("regression", "missing") else row.verdict
    text = text if row.gated or row.verdict == "improved" else f"{text} (not gated)"
    if row.paired_supported is not None:
        text += (f"; {'beyond' if row.paired_supported else 'within'} the noise of the eval examples by "
                 f"{row.paired}")
    elif row.within_noise is not None:
        n = row.current_interval[2]
        text += (f"; within the 95% interval over {n} eval examples" if row.within_noise
                 else f"; beyond the 95% interval over {n} eval examples")
    return text


BETTER = {"higher": "↑", "lower": "↓", "none": "="}


def _table(rows: list[Row]) -> list[str]:
    out = ["| run | metric | reference | current | Δ | better | tolerance | verdict |",
           "|---|---|---:|---:|---:|:---:|---:|---|"]
    for r in rows:
        label = r.metric if r.metric in ("status", "run") else metric(r.metric).label
        cells = [r.run, label, _value(r.metric, r.reference, r.reference_half_width),
                 _value(r.metric, r.current, r.current_half_width), _delta(r),
                 BETTER[r.better] if r.metric not in ("status", "run") else "", r.tolerance, _verdict(r)]
        # Some metric labels hold a '|' ("merge max |Δlogit|"), which would split the cell.
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def render_markdown(comparison: Comparison, forced: bool = False) -> str:
    """The verdict as Markdown for a PR comment: a headline, what changed, then every check folded away."""
    c = comparison
    ungated = sum(not r.gated and r.verdict in ("regression", "missing") for r in c.rows)
    improved = sum(r.verdict == "improved" for r in c.rows)
    runs = len({r.run for r in c.rows})
    lines = [f"### Regression gate: {'FAIL' if c.failed else 'PASS'}", "",
             f"{len(c.regressions)} of {len(c.rows)} checks over {runs} runs fail the gate; {ungated} more outside "
             f"tolerance but not gated; {improved} improved."]
    if c.refusals and forced:
        lines += ["", "**Compared with --force although the two sides are not like with like:**"]
        lines += [f"- {line}" for line in c.refusals]
    if c.warnings:
        lines += ["", "Environment differs (numbers may move for reasons outside the code):"]
        lines += [f"- {line}" for line in c.warnings]
    if c.notes:
        lines += [""] + [f"- {line}" for line in c.notes]
    changed = [r for r in c.rows if r.verdict != "ok"]
    if changed:
        lines += ["", *_table(changed)]
    lines += ["", f"<details><summary>All {len(c.rows)} checks</summary>", "", *_table(c.rows), "", "</details>", ""]
    return "\n".join(lines)


def render_refusal(refusals: list[str]) -> str:
    return "\n".join(["### Regression gate: not compared", "",
                      "The reference and the current results are not like with like:", "",
                      *(f"- {line}" for line in refusals), "",
                      "Store new reference records for the changed suite (`bench save-reference`), or compare anyway "
                      "with `--force`.", ""])
