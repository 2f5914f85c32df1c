"""The Markdown report: plain text that reads well in a terminal, a PR comment or GitHub, and diffs cleanly."""

from __future__ import annotations

import re

from bench.core.metrics import format_value
from bench.core.records import RunRecord
from bench.report.content import RECOMMEND_HINT, Report, Table, build

# What Markdown would read as formatting, a link, a tag or a table border inside free text. Underscores inside
# words (prompt_tuning) and brackets that start no link stay as they are, so the raw file reads cleanly too.
_SPECIAL = re.compile(r"([\\`*|<>]|(?<!\w)_|_(?!\w)|\](?=[(\[])|^#)")


def escape(text: str) -> str:
    """Free text (predictions, errors, values) shown literally on one line; ↵ marks a newline."""
    return _SPECIAL.sub(r"\\\1", text).replace("\r\n", "\n").replace("\n", "↵")


def fenced(text: str, lang: str = "text") -> list[str]:
    # A fence longer than any run of backticks inside, so the text cannot close it early.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{lang}", text, fence]


def table(headers: list[str], rows: list[list[str]], numeric: list[bool] | None = None) -> list[str]:
    numeric = numeric or [False] * len(headers)
    return [
        "| " + " | ".join(escape(h) for h in headers) + " |",
        "|" + "|".join("---:" if n else ":---" for n in numeric) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def summary(t: Table) -> list[str]:
    rows = []
    for row in t.rows:
        cells = []
        for c in row.cells:
            text = f"**{escape(c.text)}**" if c.best else escape(c.text)
            cells.append(text + (f" ({escape(c.note)})" if c.note is not None else ""))
        rows.append(cells)
    return table(t.headers, rows, t.numeric)


def render_markdown(records: list[RunRecord]) -> str:
    rep = build(records)
    out = [f"# {escape(rep.title)}", ""]
    out += [" ".join(rep.intro), "",
            ("Built from the run records in this folder alone; `python -m bench report FOLDER` rebuilds it. "
             "Plots are in report.html beside this file."), ""]
    if rep.warnings:
        out += ["## Warnings", ""] + [f"- {escape(w)}" for w in rep.warnings] + [""]
    for section in (_summary, _tradeoffs, _sweeps, _recommendation, _details, _failures, _examples, _environment,
                    _config):
        out += section(rep)
    if rep.data_notes:
        out += ["## Data", ""] + [f"- {escape(n)}" for n in rep.data_notes] + [""]
    return "\n".join(out)


def _summary(rep: Report) -> list[str]:
    out = ["## Summary", ""] + summary(rep.summary) + [""]
    out += ["**Bold**: " + " ".join(rep.summary_notes), ""]
    if rep.intervals:
        out += [escape(" ".join(rep.intervals)), ""]
        if rep.doubts:
            out += ["Differences in mean that the seeds do not support:", ""] + [f"- {escape(d)}" for d in rep.doubts]
        else:
            out.append("The seeds support every difference in mean score between the finished methods.")
        out.append("")
    return out


def _tradeoffs(rep: Report) -> list[str]:
    if not rep.tradeoffs:
        return []
    out = [f"## Cost against {escape(rep.score or '')}", "",
           "The Pareto front holds the runs no other run beats on both cost and score.", ""]
    for t in rep.tradeoffs:
        front = ", ".join(f"{escape(p.run)} ({format_value(t.name, p.x)}, {format_value(t.score, p.y)})"
                          for p in t.front)
        out.append(f"- {escape(t.y_label)} vs {escape(t.x_label)}: {front}")
    return out + [""]


def _sweeps(rep: Report) -> list[str]:
    if not rep.sweeps:
        return []
    out = ["## Sweeps", "", ("Each swept run trained once per value; the value with the lowest loss on rows held "
                             "out of train (validation) is the one the summary shows. Eval scores are shown, "
                             "never used to choose."), ""]
    for head, rows in rep.sweeps:
        out += [f"**{escape(head)}**", ""]
        out += table(["value", "seeds", "validation loss", escape(rep.score or "score"), ""],
                     [[escape(v), n, loss, sc, "chosen" if c else ""] for v, n, loss, sc, c in rows]) + [""]
    return out


def _recommendation(rep: Report) -> list[str]:
    r = rep.recommendation
    if not r:
        return []
    out = ["## Recommendation", "", f"**{escape(r.headline)}**", ""]
    if r.reason:
        out += [escape(r.reason), ""]
    if r.details:
        out += [f"- {escape(d)}" for d in r.details] + [""]
    return out + [RECOMMEND_HINT, ""]


def _details(rep: Report) -> list[str]:
    if not (rep.memory or rep.score_intervals):
        return []
    out = ["## Run details", ""]
    if rep.memory:
        out += ["Memory by phase (CUDA: max allocated, and reserved; CPU: the process's resident peak), each reset "
                "when its phase starts; the summary's memory is the training peak.", ""]
        out += table(rep.memory[0], [[escape(c) for c in row] for row in rep.memory[1]],
                     [False] + [True] * (len(rep.memory[0]) - 1)) + [""]
    if rep.score_intervals:
        out += ["Scores with their 95% interval over the eval examples (Wilson for proportions, bootstrap otherwise).",
                ""]
        out += table(rep.score_intervals[0], [[escape(c) for c in row] for row in rep.score_intervals[1]]) + [""]
    return out


def _failures(rep: Report) -> list[str]:
    if not rep.failures:
        return []
    out = ["## Runs that did not finish", ""]
    for f in rep.failures:
        out += [f"### {escape(f.run)} ({escape(f.method)}): {f.status} at step {f.last_step}", "",
                escape(f.headline), ""]
        out += fenced(f.detail) + [""]
    return out


def _examples(rep: Report) -> list[str]:
    if not rep.examples:
        return []
    out = ["## Example predictions", "",
           f"The first {len(rep.examples)} evaluation examples, answers exactly as generated (↵ marks a newline).", ""]
    for i, ex in enumerate(rep.examples, 1):
        out += [f"**Example {i}.**", ""] + [f"> {escape(line)}" if line else ">"
                                             for line in ex.prompt.splitlines()] + [""]
        rows = [["*reference*", escape(ex.reference)]] + [[escape(run), escape(p)] for run, p in ex.answers]
        out += table(["run", "answer"], rows) + [""]
    return out


def _environment(rep: Report) -> list[str]:
    if not rep.environment:
        return []
    env = [[escape(k), escape(v)] for k, v in rep.environment]
    return ["## Environment", ""] + table(["field", "value"], env) + [""]


def _config(rep: Report) -> list[str]:
    if not rep.config_runs:
        return []
    out = ["## Suite config", "", "Settings every run shares:", ""]
    out += table(["setting", "value"], [[escape(k), escape(v)] for k, v in rep.config_common]) + [""]
    out += ["What each run sets on top:", ""]
    return out + table(["run", "params", "other settings"], [[escape(a), escape(b), escape(c)]
                                                             for a, b, c in rep.config_runs]) + [""]
