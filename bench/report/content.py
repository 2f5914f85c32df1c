"""What a report says, as plain data built from records: the Markdown and HTML renderers only lay it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.core import headline
from bench.core.config import BASELINE
from bench.core.metrics import format_value, metric
from bench.choose.recommend import Explanation, explain, recommend
from bench.core.records import RunRecord, error_headline
from bench.report.plots import MARKERS, PALETTE, pareto_front
from bench.analysis.rows import Group, group_columns, labels, multi_seed, ordered, score_names, seed_groups, unsupported
from bench.report.table import Table, base_group, summary_table
from bench.report.provenance import config_sections, data_notes, decoding_warnings, environment, groups, warnings

EXAMPLES = 3  # evaluation examples shown, each with every run's prediction
RECOMMEND_HINT = ("With limits: `python -m bench recommend FOLDER --max-memory 8GB --max-train-time 1h "
                  "--max-adapter-size 50MB --min-score exact_match=0.9`.")


@dataclass(frozen=True)
class Failure:
    run: str
    method: str
    status: str
    last_step: int
    headline: str
    detail: str


@dataclass(frozen=True)
class Point:
    run: str
    x: float
    y: float
    colour: str
    marker: str


@dataclass(frozen=True)
class Tradeoff:
    """One cost axis against the score: the runs as points and which of them make the Pareto front."""

    name: str  # cost metric
    x_label: str
    score: str
    y_label: str
    points: list[Point]
    front: list[Point]
    x_better: str
    y_better: str
    x_divisor: float = 1.0  # bytes are plotted in MB or GB
    log_x: bool = False
    baseline_y: float | None = None


@dataclass(frozen=True)
class Example:
    prompt: str
    reference: str
    answers: list[tuple[str, str]]  # (run, prediction)


@dataclass(frozen=True)
class Curve:
    run: str
    colour: str
    steps: list[float]
    losses: list[float]
    finished: bool


@dataclass(frozen=True)
class Report:
    title: str
    intro: list[str]
    warnings: list[str]
    summary: Table
    summary_notes: list[str]
    score: str | None
    tradeoffs: list[Tradeoff]
    curves: list[Curve]
    failures: list[Failure]
    examples: list[Example]
    environment: list[tuple[str, str]]
    config_common: list[tuple[str, str]]
    config_runs: list[tuple[str, str, str]]  # (run, params, other settings that differ)
    data_notes: list[str]
    intervals: list[str] = field(default_factory=list)  # with seeds: what the ± means, which test judges pairs
    doubts: list[str] = field(default_factory=list)  # per score, the pairs whose difference the seeds do not support
    recommendation: Explanation | None = None
    # Per swept run: (heading, [(value, seeds, validation loss, score, chosen)]); the summary shows chosen points only.
    sweeps: list[tuple[str, list[tuple[str, str, str, str, bool]]]] = field(default_factory=list)
    # Run details: memory by phase (headers, rows) and each score with its interval over the eval examples.
    memory: tuple[list[str], list[list[str]]] | None = None
    score_intervals: tuple[list[str], list[list[str]]] | None = None


def styles(records: list[RunRecord]) -> dict[int, tuple[str, str]]:
    """A colour and a marker per record (keyed by id), the same in every chart; runs at one spot show both. The
    seeds of one suite entry share theirs."""
    return {id(r): (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)])
            for i, g in enumerate(seed_groups(records)) for r in g.records}


def doubts(records: list[RunRecord]) -> list[str]:
    """Per score, the pairs of methods whose difference in mean the seeds do not support (Welch's t-test), each
    better mean first with every worse one it is level with: "full vs lora, ia3; lora vs ia3" (the values are in
    the table; twelve methods make up to 66 pairs)."""
    groups = seed_groups(records)
    out = []
    for name in [n for n, _ in group_columns(records) if metric(n).kind == "score"]:
        level: dict[str, list[str]] = {}
        for a, b, _ in unsupported(groups, name):
            level.setdefault(a.name, []).append(b.name)
        if level:
            out.append(f"{metric(name).label}: " + "; ".join(f"{a} vs {', '.join(bs)}" for a, bs in level.items()))
    return out


def failures(records: list[RunRecord]) -> list[Failure]:
    names = labels(records)
    return [Failure(names[id(r)], r.method, r.status, r.last_step, error_headline(r.error) or "no error recorded",
                    (r.error or "").strip())
            for r in ordered(records) if r.status != "success"]


# Cost axes for the score plots: (metric, axis label, plot on a log axis).
TRADEOFFS = [
    ("peak_memory_bytes", "peak memory", False),
    (headline.TIME, "train time, steady (s)", False),
    ("trainable_params", "trainable parameters", True),
]


def tradeoffs(records: list[RunRecord]) -> list[Tradeoff]:
    """Score against each cost, a point per suite entry (the mean over its seeds, if it has several)."""
    scores = score_names(records)
    if not scores:
        return []
    score = scores[0]
    groups, style = seed_groups(records), styles(records)
    base = base_group(groups)
    out = []
    for name, label, log_x in TRADEOFFS:
        pts = [Point(g.name + _mark(g, name), g.mean(name), g.mean(score), *style[id(g.records[0])])
               for g in groups
               if g.status == "success" and g.method != BASELINE and g.mean(name) is not None
               and g.mean(score) is not None]
        if not pts:
            continue
        divisor, x_label = 1.0, label
        if metric(name).fmt == "bytes":
            divisor = 1024 ** 3 if max(p.x for p in pts) >= 1024 ** 3 else 1024 ** 2
            x_label = f"{label} ({'GB' if divisor == 1024 ** 3 else 'MB'})"
        x_better, y_better = metric(name).better, metric(score).better
        front = [p[2] for p in pareto_front([(p.x, p.y, p) for p in pts], x_better, y_better)]
        base_y = base.mean(score) if base is not None else None
        out.append(Tradeoff(name, x_label, score, metric(score).label, pts, front, x_better, y_better, divisor,
                            log_x, base_y))
    return out


def _mark(g: Group, name: str) -> str:
    """A point whose time is the whole run's (an older record, warm-up included) is marked as the table marks it."""
    whole = any(name in headline.stand_ins(r.metrics) for r in g.ok)
    return f" {headline.MARK}" if whole else ""


def curves(records: list[RunRecord]) -> list[Curve]:
    names, style = labels(records), styles(records)
    return [Curve(names[id(r)], style[id(r)][0], [p["step"] for p in r.curve],
                  [p["loss"] for p in r.curve], r.status == "success")
            for r in ordered(records) if r.curve]


def examples(records: list[RunRecord], n: int = EXAMPLES) -> list[Example]:
    """The first n evaluation prompts, each with every run's answer, so methods compare side by side."""
    names = labels(records)
    # With seeds, each entry's lowest seed answers for it: three near-copies of every answer would bury the others.
    firsts = {id(next(r for r in g.records if r.predictions)) for g in seed_groups(records)
              if any(r.predictions for r in g.records)}
    with_preds = [r for r in ordered(records) if id(r) in firsts]
    if not with_preds:
        return []
    out = []
    for first in with_preds[0].predictions[:n]:
        answers = []
        for r in with_preds:
            hit = next((p for p in r.predictions if p.prompt == first.prompt), None)
            if hit is not None:
                answers.append((names[id(r)], hit.prediction))
        out.append(Example(first.prompt, first.reference, answers))
    return out


# The memory figures of a run, phase by phase (bench.run.memory); the summary's column is training's.
PHASES = [("load_memory_bytes", "after load"), ("load_peak_memory_bytes", "load peak"),
          ("peak_memory_bytes", "training peak"), ("eval_peak_memory_bytes", "eval peak"),
          ("merge_peak_memory_bytes", "merge check peak"), ("cuda_max_reserved_bytes", "training reserved"),
          ("eval_peak_reserved_bytes", "eval reserved"), ("merge_peak_reserved_bytes", "merge reserved")]


def memory_table(records: list[RunRecord]) -> tuple[list[str], list[list[str]]] | None:
    """Memory by phase per run, the columns some run has; None for records from before phases were measured."""
    recs = [r for r in ordered(records) if "load_peak_memory_bytes" in r.metrics]
    cols = [(k, h) for k, h in PHASES if any(k in r.metrics for r in recs)]
    if not recs:
        return None
    names = labels(records)
    return (["run"] + [h for _, h in cols],
            [[names[id(r)]] + [format_value(k, r.metrics.get(k)) for k, _ in cols] for r in recs])


def interval_table(records: list[RunRecord]) -> tuple[list[str], list[list[str]]] | None:
    """Each score with its 95% interval over the eval examples (Wilson for proportions, else bootstrap)."""
    recs = [r for r in ordered(records) if r.intervals]
    if not recs:
        return None
    names = labels(records)
    scores = [s for s in score_names(records) if any(s in r.intervals for r in recs)]

    def text(r: RunRecord, s: str) -> str:
        i = r.intervals.get(s)
        return "-" if i is None else (f"{format_value(s, r.metrics.get(s))} "
                                      f"[{format_value(s, i.low)}, {format_value(s, i.high)}]")

    n = sorted({i.n for r in recs for i in r.intervals.values()})
    return (["run"] + [f"{metric(s).label} (n={'/'.join(map(str, n))})" for s in scores],
            [[names[id(r)]] + [text(r, s) for s in scores] for r in recs])


def sweep_rows(records: list[RunRecord], score: str | None) -> list[tuple[str, list[tuple[str, str, str, str, bool]]]]:
    from statistics import mean

    from bench.analysis.sweeps import sweeps

    out = []
    for s in sweeps(records):
        chosen = s.chosen
        head = (f"{s.group}: chose {point_text(chosen.values)} (lowest validation loss)" if chosen
                else f"{s.group}: no point finished")
        rows = []
        for p in s.points:
            vals = [r.metrics[score] for r in p.records if score and score in r.metrics]
            loss = p.validation_loss
            rows.append((point_text(p.values), str(len(p.records)), "-" if loss is None else f"{loss:.4f}",
                         format_value(score, mean(vals)) if vals else "-", p is chosen))
        out.append((head, rows))
    return out


def point_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format(v, 'g') if isinstance(v, float) else v}" for k, v in values.items())


def build(records: list[RunRecord]) -> Report:
    from bench.analysis.sweeps import selected

    every = records
    records = selected(records)  # a sweep shows as its chosen point; the Sweeps section shows every point
    recs = ordered(records)
    names = labels(records)
    suites = list(dict.fromkeys(r.suite for r in recs))
    unfinished = [names[id(r)] for r in recs if r.status != "success"]
    intro = [f"{len(recs)} runs" + (f", {len(unfinished)} did not finish ({', '.join(unfinished)})."
                                     if unfinished else ", all finished.") if recs else "No run records yet."]
    starts = sorted(r.started_at for r in recs if r.started_at)
    ends = sorted(r.finished_at for r in recs if r.finished_at)
    if starts and ends:
        intro.append(f"Runs started between {starts[0]} and {starts[-1]}; the last finished at {ends[-1]}.")
    scores = score_names(records)
    intervals = []
    if multi_seed(records):
        seeded = [g for g in seed_groups(records) if len(g.records) > 1]
        seeds = sorted({s for g in seeded for s in g.seeds})
        rows = len(seed_groups(records))
        intro.append(f"{'Every row' if len(seeded) == rows else f'{len(seeded)} of the {rows} rows'} ran over seeds "
                     f"{', '.join(map(str, seeds))}; each row is one suite entry.")
        intervals = ["Scores are the mean over the seeds ± the half-width of its 95% confidence interval "
                     "(Student's t with n - 1 degrees of freedom); costs are means; seeds counts those that "
                     "finished, and the statistics use those alone.",
                     "Two methods' difference in a score counts as supported when Welch's t-test finds it at the 5% "
                     "level (the 95% interval of the difference excludes zero)."]
    shared, per_run = config_sections(records)
    table = summary_table(records)
    return Report(
        title=f"{', '.join(suites) or 'No runs'}: PEFT benchmark report",
        intro=intro,
        warnings=warnings(records) + decoding_warnings(records),
        summary=table,
        summary_notes=list(table.notes.values()),
        score=metric(scores[0]).label if scores else None,
        tradeoffs=tradeoffs(records),
        curves=curves(records),
        failures=failures(records),
        examples=examples(records),
        environment=environment(records),
        config_common=shared,
        config_runs=per_run,
        data_notes=data_notes(records),
        intervals=intervals,
        doubts=doubts(records) if intervals else [],
        recommendation=explain(recommend(records)) if records else None,
        sweeps=sweep_rows(every, scores[0] if scores else None),
        memory=memory_table(records),
        score_intervals=interval_table(records),
    )
