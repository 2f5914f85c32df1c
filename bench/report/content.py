"""What a report says, as plain data built from records: the Markdown and HTML renderers only lay it out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bench import headline
from bench.config import BASELINE
from bench.metrics import format_value, metric
from bench.recommend import Explanation, explain, recommend
from bench.records import ENVIRONMENT_KEYS, RunRecord, environment_signature, error_headline
from bench.report.plots import MARKERS, PALETTE, pareto_front
from bench.rows import (Group, baseline, group_columns, labels, multi_seed, ordered, score_names, seed_groups,
                        unsupported)
from bench.table import Table, base_group, summary_table
from bench.util import flatten
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


def plain(value: Any) -> str:
    """A config or environment value as a person writes it in YAML."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def groups(values: list[tuple[str, str]]) -> dict[str, list[str]]:
    """(run, value) pairs to value -> runs, in first-seen order."""
    out: dict[str, list[str]] = {}
    for run, value in values:
        out.setdefault(value, []).append(run)
    return out


def grouped_text(g: dict[str, list[str]]) -> str:
    if len(g) == 1:
        return next(iter(g))
    return "; ".join(f"{value} ({', '.join(runs)})" for value, runs in g.items())


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


def _env(r: RunRecord) -> dict[str, str]:
    return {k: plain(v) for k, v in flatten(r.environment).items()}


def machine(r: RunRecord) -> str:
    """The machine and device a run ran on, as the report names them."""
    return f"{r.placement.machine}: {r.placement.device_name or '?'}"


def placement_rows(records: list[RunRecord]) -> list[tuple[str, str]]:
    """Runs grouped by the machine (and device) that ran them, and by Ray node where a cluster ran them."""
    names = labels(records)
    placed = [r for r in ordered(records) if r.placement is not None]
    if not placed:
        return []
    rows = [("machine", grouped_text(groups([(names[id(r)], machine(r)) for r in placed])))]
    on_ray = [r for r in placed if r.placement.ray_node]
    if on_ray:
        rows.append(("Ray node", grouped_text(groups([(names[id(r)], r.placement.ray_node[:8]) for r in on_ray]))))
    retried = [f"{names[id(r)]} (attempt {r.placement.attempt})" for r in placed if r.placement.attempt > 1]
    if retried:
        rows.append(("retried after a lost node", ", ".join(retried)))
    return rows


def environment(records: list[RunRecord]) -> list[tuple[str, str]]:
    names = labels(records)
    recs = [r for r in ordered(records) if r.environment]
    keys: list[str] = []
    for r in recs:
        keys += [k for k in _env(r) if k not in keys]
    rows = placement_rows(records)
    rows += [(k, grouped_text(groups([(names[id(r)], _env(r).get(k, "-")) for r in recs]))) for k in keys]
    missing = [names[id(r)] for r in ordered(records) if not r.environment]
    if missing:
        rows.append(("not recorded", ", ".join(missing)))
    return rows


def warnings(records: list[RunRecord]) -> list[str]:
    names = labels(records)
    out = []

    def check(what: str, pairs: list[tuple[str, str]], why: str) -> None:
        g = groups(pairs)
        if len(g) > 1:
            out.append(f"Records differ in {what}: {grouped_text(g)}. {why}")

    recs = ordered(records)
    check("suite", [(names[id(r)], str(r.suite)) for r in recs],
          "Runs of different suites are side by side.")
    check("suite version", [(names[id(r)], plain(r.config.suite_version)) for r in recs],
          "The suite changed between these runs.")
    check("record schema", [(names[id(r)], str(r.schema_version)) for r in recs],
          "Before schema 2, peak memory was the whole process's peak (evaluation and merge check included), not "
          "training's.")
    check("model", [(names[id(r)], plain(flatten(r.stored_config.get("model", {})))) for r in recs],
          "Scores of different base models do not compare.")
    check("dataset fingerprint", [(names[id(r)], r.data.fingerprint) for r in recs
                                  if r.data and r.data.fingerprint], "The runs saw different data.")
    signatures = [(r, environment_signature(r)) for r in recs if r.environment]
    keys = {k for _, sig in signatures for k in sig}
    if recs and all(r.placement is not None for r in recs):
        keys.discard("device")  # said per suite below, with the machines
        out += device_warnings(recs)
    for key in [k for k in ENVIRONMENT_KEYS if k in keys] + sorted(k for k in keys if k.startswith("packages.")):
        check(key.removeprefix("packages."), [(names[id(r)], sig.get(key, "absent")) for r, sig in signatures],
              "Costs and scores may not compare like with like.")
    if records and baseline(records) is None:
        out.append("No successful baseline run: scores have no untrained reference beside them.")
    out += [f"{names[id(r)]} ran code from outside the harness: {'; '.join(r.environment['remote_code'])}."
            for r in recs if r.environment.get("remote_code")]
    for suite in dict.fromkeys(r.suite for r in recs):
        trained = [r for r in recs if r.suite == suite and r.method != BASELINE]
        single = [names[id(r)] for r in trained if r.config.group is None]
        if single and len(single) < len(trained):
            out.append(f"Suite {suite} has runs over seeds and runs without: {', '.join(single)}. Records from "
                       "before the suite had seeds stay in the folder until removed; each shows as a row of its own.")
    return out


def device_warnings(records: list[RunRecord]) -> list[str]:
    """Per suite: runs that ran on different device types (on a cluster, nodes need not be alike)."""
    names = labels(records)
    out = []
    for suite in dict.fromkeys(r.suite for r in records):
        runs = [r for r in records if r.suite == suite and r.placement is not None]
        by_kind: dict[str, list[RunRecord]] = {}
        for r in runs:
            by_kind.setdefault(r.placement.device_name or "?", []).append(r)
        if len(by_kind) > 1:
            where = "; ".join(f"{kind} on {', '.join(dict.fromkeys(r.placement.machine for r in rs))} "
                              f"({', '.join(names[id(r)] for r in rs)})" for kind, rs in by_kind.items())
            out.append(f"Runs of suite {suite} ran on different device types: {where}. Their times, memory and "
                       "throughput do not compare like with like.")
    return out


# The memory figures of a run, phase by phase (bench.memory); the summary's column is training's.
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


def decoding_warnings(records: list[RunRecord]) -> list[str]:
    """Runs whose scores through transformers' generate() differ from the harness's own decoding of them."""
    from bench.metrics import VIA_GENERATE

    names, out = labels(records), []
    for r in ordered(records):
        differ = [(s, r.metrics[s], r.metrics[VIA_GENERATE + s]) for s in score_names(records)
                  if s in r.metrics and VIA_GENERATE + s in r.metrics and r.metrics[s] != r.metrics[VIA_GENERATE + s]]
        if differ:
            s, own, outside = differ[0]
            out.append(f"{names[id(r)]}: {metric(s).label} {format_value(s, own)} with the harness's decoding but "
                       f"{format_value(s, outside)} through transformers' generate(), which lm-eval, vLLM and most "
                       "serving stacks use: with transformers "
                       f"{r.environment.get('packages', {}).get('transformers', '?')} / peft "
                       f"{r.environment.get('packages', {}).get('peft', '?')}, generate() mis-decodes prompt-learning "
                       "adapters (transformers 5.24.0 does; 5.0 to 5.23.0 with peft 0.21.2 decode them as their "
                       "forward pass does). Do not choose it on a score your serving stack cannot reproduce.")
    return out


def config_sections(records: list[RunRecord]) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """The settings every run shares, then per run its params and whatever else differs from the rest."""
    names = labels(records)
    recs = ordered(records)
    flat = [{k: v for k, v in flatten(r.stored_config).items() if k not in ("run", "method", "config_hash")}
            for r in recs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    common = [k for k in keys if all(k in f and plain(f[k]) == plain(flat[0][k]) for f in flat)]
    shared = [(k, plain(flat[0][k])) for k in common]
    per_run = []
    for r, f in zip(recs, flat):
        params = ", ".join(f"{k[7:]}={plain(v)}" for k, v in f.items() if k.startswith("params.") and k not in common)
        other = ", ".join(f"{k}={plain(v)}" for k, v in f.items() if not k.startswith("params.") and k not in common)
        per_run.append((names[id(r)], params or "-", other or "-"))
    return shared, per_run


def data_notes(records: list[RunRecord]) -> list[str]:
    names = labels(records)
    recs = ordered(records)
    notes = []

    def describe(r: RunRecord) -> str:
        d = r.data
        text = f"{d.source}: {d.train_rows} train rows, {d.eval_rows} eval rows"
        text += ("; skipped " + ", ".join(f"{n} ({why})" for why, n in d.skipped.items())) if d.skipped \
            else "; none skipped"
        max_len = r.config.training.max_seq_len
        text += f"; {d.truncated} truncated to max_seq_len {max_len}" if d.truncated else "; none truncated"
        text += "".join(f"; {n} left out ({why})" for why, n in d.filtered.items())
        text += f"; formatted with {d.formatting}" if d.formatting else ""
        return text + (f" (fingerprint {d.fingerprint})" if d.fingerprint else "")

    g = groups([(names[id(r)], describe(r)) for r in recs if r.data])
    for text, runs in g.items():
        notes.append(text if len(g) == 1 and len(runs) == len(recs) else f"{text} - runs {', '.join(runs)}")
    missing = [names[id(r)] for r in recs if not r.data]
    if missing:
        notes.append(f"no data recorded: {', '.join(missing)}")
    return notes


def sweep_rows(records: list[RunRecord], score: str | None) -> list[tuple[str, list[tuple[str, str, str, str, bool]]]]:
    from statistics import mean

    from bench.sweeps import sweeps

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
    from bench.sweeps import selected

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
