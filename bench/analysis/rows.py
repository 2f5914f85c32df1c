"""Records to table rows: pure functions shared by the terminal, Markdown and HTML reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.core import headline
from bench.core.config import BASELINE
from bench.core.metrics import format_value, metric
from bench.core.records import RunRecord, error_headline
from bench.analysis.stats import Difference, Summary, summarize, welch

# Columns of the summary table, in order: (metric name, header). Time and throughput are the headline figures
# (bench.core.headline: steady state), the warm-up they leave out beside them.
SUMMARY = [
    ("trainable_params", "trainable"),
    ("trainable_pct", "trainable %"),
    ("peak_memory_bytes", "peak mem"),
    (headline.TIME, "train s"),
    (headline.THROUGHPUT, "tok/s"),
    ("warmup", "warm-up"),
    ("eval_loss", "eval loss"),
]
# Columns shown as text: never marked best, never a metric.
TEXT_COLUMNS = ("run", "method", "seeds", "warmup", "merge", "serve", "status")


def score_names(records: list[RunRecord]) -> list[str]:
    names: list[str] = []
    for r in records:
        for n in r.config.eval.metrics:
            name = n[4:] if n.startswith("hub:") else n
            if name not in names:
                names.append(name)
    return names


def ordered(records: list[RunRecord]) -> list[RunRecord]:
    """Baseline first, then the suite's order (records carry no order, so by start time), failures last."""
    return sorted(records, key=lambda r: (r.method != BASELINE, r.status != "success", r.started_at, r.run))


def labels(records: list[RunRecord]) -> dict[int, str]:
    """A name per record (keyed by id): the run name; suite/run where a merged folder holds one run name from two
    suites; and its start time too where it holds the same run of the same suite twice."""
    runs = [r.run for r in records]
    pairs = [(r.suite, r.run) for r in records]

    def name(r: RunRecord) -> str:
        if runs.count(r.run) == 1:
            return r.run
        if pairs.count((r.suite, r.run)) == 1:
            return f"{r.suite}/{r.run}"
        return f"{r.suite}/{r.run} @ {r.started_at}"

    return {id(r): name(r) for r in records}


def base_marks(r: RunRecord) -> str:
    """What the summary table adds to a run's name where its base or its weights are not the usual: the base's
    quantisation (training.quantization, qlora's NF4) and pure bf16 (no fp32 master weights)."""
    env = r.environment
    marks = [env["quantization"]["name"]] if isinstance(env.get("quantization"), dict) else []
    if env.get("master_weights", "").startswith("none"):
        marks.append("pure bf16, no fp32 masters")
    return f" ({'; '.join(marks)})" if marks else ""


def baseline(records: list[RunRecord]) -> RunRecord | None:
    return next((r for r in records if r.method == BASELINE and r.status == "success"), None)


def merge_cell(r: RunRecord) -> str:
    m = r.merge
    if m is None:
        return "-"
    if m.status != "merged":
        return m.status
    same = "same greedy" if m.greedy_identical else f"{m.greedy_identical_count}/{m.compared} same"
    text = f"{m.kind} Δ{m.max_abs_logit_diff:.1e}, {same}"
    if m.layer_rel_error_fp64 is not None:  # records from before the per-layer check have none
        text += f", per layer {m.layer_rel_error_fp64:.0e}" + ("" if m.exact or m.kind != "exact" else " NOT EXACT")
    return text


def serve_cell(r: RunRecord) -> str:
    """Which serving stacks load the run's adapter as it is, and what the others need (bench.analysis.serving); "-" for the
    baseline and for a run that saved nothing."""
    from bench.analysis.serving import cell, verdicts

    return cell(verdicts(r.method, r.config.params)) if r.trained and r.ok else "-"


def summary_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per run: raw values (for sorting, CSV and best-marking) and their formatted text. Time and
    throughput are the headline figures; `whole_run` names those shown as the whole run's (an older record)."""
    scores = score_names(records)
    rows = []
    for r in ordered(records):
        values: dict[str, Any] = {"run": r.run, "method": r.method, "status": r.status}
        for name in [n for n, _ in SUMMARY if n not in TEXT_COLUMNS] + scores + ["adapter_bytes"]:
            values[name] = headline.value(r.metrics, name)[0]
        values |= {"warmup_steps": r.metrics.get("warmup_steps"), "warmup_seconds": r.metrics.get("warmup_seconds"),
                   "whole_run": " ".join(headline.stand_ins(r.metrics))}
        values["merge"] = merge_cell(r)
        values["serve"] = serve_cell(r)
        values["error"] = error_headline(r.error)
        rows.append(values)
    return rows


def columns(records: list[RunRecord]) -> list[tuple[str, str]]:
    return (
        [("run", "run"), ("method", "method")]
        + SUMMARY
        + [(n, metric(n).label) for n in score_names(records)]
        + [("adapter_bytes", "adapter"), ("merge", "merge"), ("serve", "serve as-is"), ("status", "status")]
    )


def best_cells(rows: list[dict[str, Any]], names: list[str]) -> set[tuple[int, str]]:
    """The cells a summary table marks best, as (row index, column name): the best value of each numeric column
    among finished trained runs, by the metric's direction. Not marked where those runs all tie (a mark on every
    cell says nothing); the headline time and throughput are judged among the steady figures alone where any run
    has them (a whole-run figure includes warm-up: not like with like)."""
    out = set()
    for name in [n for n in names if n not in TEXT_COLUMNS and metric(n).better != "none"]:
        found = [(i, r[name]) for i, r in enumerate(rows) if r["status"] == "success" and r["method"] != BASELINE
                 and isinstance(r.get(name), (int, float))]
        steady = [(i, v) for i, v in found if name not in rows[i].get("whole_run", "").split()]
        if name in headline.WHOLE_RUN and steady:
            found = steady
        if len({v for _, v in found}) < 2:
            continue
        top = (max if metric(name).better == "higher" else min)(v for _, v in found)
        out |= {(i, name) for i, v in found if v == top}
    return out


def cell(name: str, value: Any) -> str:
    if name in TEXT_COLUMNS or name == "error":
        return str(value) if value not in (None, "") else "-"
    return format_value(name, value)


# ---- seeds: the runs of one suite entry, grouped --------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """The runs of one suite entry over its seeds (config "group" and "seed"); a run without seeds is a group of
    one. Statistics are over the seeds that finished."""

    name: str  # what the report calls it
    method: str
    records: tuple[RunRecord, ...]  # by seed
    seeded: bool

    @property
    def ok(self) -> list[RunRecord]:
        return [r for r in self.records if r.status == "success"]

    @property
    def status(self) -> str:
        """success when every seed finished; otherwise the first other status: one seed in three failing is news."""
        return next((r.status for r in self.records if r.status != "success"), "success")

    @property
    def seeds(self) -> list[int]:
        return [r.config.seed if r.config.seed is not None else r.config.training.seed for r in self.records]

    def values(self, name: str) -> list[float]:
        """A metric over the seeds that finished; the headline time and throughput as bench.core.headline reads them."""
        found = [headline.value(r.metrics, name)[0] for r in self.ok]
        return [float(v) for v in found if isinstance(v, (int, float))]

    def summary(self, name: str) -> Summary | None:
        vals = self.values(name)
        return summarize(vals) if vals else None

    def mean(self, name: str) -> float | None:
        s = self.summary(name)
        return None if s is None else s.mean


def seed_groups(records: list[RunRecord]) -> list[Group]:
    """Records grouped by suite and config group, in the report's order (baseline first, unfinished last).

    A record without a group (a suite without seeds) is always a group of its own, so a folder that merges two
    copies of one run keeps them apart as before."""
    names = labels(records)
    by: dict[Any, list[RunRecord]] = {}
    for r in ordered(records):
        by.setdefault((r.suite, r.config.group) if r.config.group is not None else id(r), []).append(r)
    base = {key: key[1] if isinstance(key, tuple) else names[id(recs[0])] for key, recs in by.items()}
    taken = list(base.values())
    groups = []
    for key, recs in by.items():
        if isinstance(key, tuple):
            # Two suites' seeded groups of one name, or a record from before a suite had seeds: name the suite.
            name = base[key] if taken.count(base[key]) == 1 else f"{key[0]}/{base[key]}"
            recs = sorted(recs, key=lambda r: (r.config.seed or 0, r.started_at))
            groups.append(Group(name, recs[0].method, tuple(recs), True))
        else:
            groups.append(Group(base[key], recs[0].method, tuple(recs), False))
    return sorted(groups, key=lambda g: (g.method != BASELINE, g.status != "success",
                                         min(r.started_at for r in g.records), g.name))


def multi_seed(records: list[RunRecord]) -> bool:
    """True when some suite entry ran over several seeds: reports then show one row per entry, with intervals."""
    return any(len(g.records) > 1 for g in seed_groups(records))


def interval_text(name: str, s: Summary | None) -> str:
    """mean ± half-width of the 95% interval; the mean alone with one seed."""
    if s is None:
        return "-"
    text = format_value(name, s.mean)
    return text if s.half_width is None else f"{text} ± {format_value(name, s.half_width)}"


def _worst_merge(g: Group) -> RunRecord:
    """The seed whose merge strayed furthest: a merge that is exact on two seeds and off on the third is off."""
    merged = [r for r in g.ok if r.merge is not None and r.merge.status == "merged"]
    if merged:
        return max(merged, key=lambda r: (not r.merge.greedy_identical, r.merge.max_abs_logit_diff or 0))
    return (g.ok or list(g.records))[0]


def group_rows(groups: list[Group], records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per group: means (scores with their interval's half-width under NAME±), seeds that finished."""
    rows = []
    for g in groups:
        values: dict[str, Any] = {"run": g.name, "method": g.method, "status": g.status,
                                  "seeds": str(len(g.ok)) if g.status == "success" else
                                  f"{len(g.ok)} of {len(g.records)}"}
        for name in [n for n, _ in SUMMARY if n not in TEXT_COLUMNS] + score_names(records) + ["adapter_bytes",
                                                                                         "warmup_steps",
                                                                                         "warmup_seconds"]:
            s = g.summary(name)
            values[name] = None if s is None else s.mean
            values[f"{name}±"] = s.half_width if s is not None and metric(name).kind == "score" else None
        values["whole_run"] = " ".join(n for n in headline.WHOLE_RUN if any(n in headline.stand_ins(r.metrics)
                                                                              for r in g.ok))
        values["merge"] = merge_cell(_worst_merge(g))
        values["serve"] = serve_cell((g.ok or list(g.records))[0])
        values["error"] = next((error_headline(r.error) for r in g.records if r.status != "success"), "")
        rows.append(values)
    return rows


def group_columns(records: list[RunRecord]) -> list[tuple[str, str]]:
    cols = columns(records)
    return cols[:2] + [("seeds", "seeds")] + cols[2:]


def row_cell(name: str, row: dict[str, Any]) -> str:
    """A summary cell's text, for a run's row or a seed group's: scores with their interval's half-width, the
    warm-up's steps and seconds, and the mark of a whole-run figure standing in for a steady one."""
    if name == "seeds":
        return row["seeds"]
    if name == "warmup":
        return headline.warmup_text(row.get("warmup_steps"), row.get("warmup_seconds"))
    text = cell(name, row.get(name))
    half = row.get(f"{name}±")
    if half is not None and row.get(name) is not None:
        text += f" ± {format_value(name, half)}"
    if name in row.get("whole_run", "").split() and row.get(name) is not None:
        text += f" {headline.MARK}"
    return text


def unsupported(groups: list[Group], name: str) -> list[tuple[Group, Group, Difference]]:
    """Pairs of finished trained groups whose mean difference in a score the seeds do not support (Welch's test).

    Pairs that scored the same on every seed are left out: a tie is not a difference to doubt. The better mean
    comes first in each pair."""
    sign = -1 if metric(name).better == "higher" else 1
    trained = [g for g in groups if g.status == "success" and g.method != BASELINE and len(g.values(name)) > 1]
    trained.sort(key=lambda g: sign * g.mean(name))
    out = []
    for i, a in enumerate(trained):
        for b in trained[i + 1:]:
            d = welch(a.values(name), b.values(name))
            if d.supported is False and not (d.delta == 0 and d.half_width == 0):
                out.append((a, b, d))
    return out
