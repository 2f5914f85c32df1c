"""The regression gate's comparison: each run's metrics against the reference records' (a stored file or a results
folder; "baseline" is the untrained run), matched by run name, as plain data.

Every metric gets a verdict (ok / regression / improved / missing) against its tolerance (bench.core.regression) in its
worse direction; `Comparison.failed` is whether the gate fails. Refusals say when the two sides are not like with like
(suite version, model, dataset) and warnings when their environments differ. Rendering is bench.report.gate, stored
reference records bench.choose.reference, the command `python -m bench compare` in bench.cli.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.core.metrics import metric
from bench.analysis.paired import describe
from bench.core.records import RunRecord, environment_signature
from bench.core.regression import Regression
from bench.analysis.stats import Summary
from bench.core.util import flatten

Verdict = Literal["ok", "regression", "improved", "missing"]


@dataclass(frozen=True)
class Row:
    """One check: a metric of a run (or the run's status, or the run itself) against the reference records."""

    run: str
    metric: str  # a metric name, "status", or "run" when the whole run is missing
    reference: float | str | None
    current: float | str | None
    verdict: Verdict
    gated: bool = True
    better: str = "none"
    tolerance: str = ""
    delta: float | None = None
    relative_delta: float | None = None
    # Seeded runs compare by their mean over seeds; these are the half-widths of the means' 95% intervals.
    reference_half_width: float | None = None
    current_half_width: float | None = None
    # A score's 95% interval over the current run's eval examples, and how many: whether the change is within it.
    current_interval: tuple[float, float, int] | None = None
    # Both runs scored the same eval examples, one seed each: a paired test of current against reference over them
    # (bench.analysis.paired), its evidence in words and whether the difference is more than the examples' noise.
    paired: str | None = None
    paired_supported: bool | None = None

    @property
    def within_noise(self) -> bool | None:
        """Whether the reference value lies inside the current score's interval over its eval examples."""
        if self.current_interval is None or not isinstance(self.reference, float):
            return None
        return self.current_interval[0] <= self.reference <= self.current_interval[1]


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    refusals: list[str] = field(default_factory=list)  # not like with like: compare only with --force
    warnings: list[str] = field(default_factory=list)  # environment differences: compared, but read with care
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.gated and r.verdict in ("regression", "missing")]

    @property
    def failed(self) -> bool:
        return bool(self.regressions)


def verdict(better: str, base: float, cur: float, allowed: float) -> Verdict:
    """Beyond the tolerance in the worse direction is a regression, in the better one an improvement; a metric
    with no better direction (a count) regresses when it moves at all beyond its tolerance."""
    if not math.isfinite(cur):
        return "ok" if not math.isfinite(base) else "regression"
    worse = {"higher": base - cur, "lower": cur - base, "none": abs(cur - base)}[better]
    if worse > allowed:
        return "regression"
    if better != "none" and -worse > allowed:
        return "improved"
    return "ok"


def compared_metrics(record: RunRecord, settings: Regression) -> list[str]:
    """The suite's scores first (stored without a 'hub:' prefix), then every metric with a tolerance."""
    scores = [n.removeprefix("hub:") for n in record.config.eval.metrics]
    return scores + [n for n in settings.tolerances if n not in scores]


def _key(r: RunRecord) -> tuple[str, str]:
    return r.suite, r.run


def by_group(records: list[RunRecord]) -> tuple[list[RunRecord], dict[tuple[str, str], dict[str, Summary]]]:
    """Runs over seeds as one record per suite entry, named by its group: each metric is its mean over the seeds
    that finished, its status success only when every seed finished. Their statistics come back beside them.
    Runs without seeds pass through as they are, so single-seed reference records compare with a seeded suite's
    means."""
    from bench.analysis.rows import seed_groups

    out, spread = [], {}
    for g in seed_groups(records):
        if not g.seeded:
            out += g.records
            continue
        first = (g.ok or list(g.records))[0]
        failed = next((r for r in g.records if r.status != "success"), None)
        summaries = {k: g.summary(k) for r in g.ok for k in r.metrics}
        out.append(first.model_copy(update={
            "run": first.config.group, "status": g.status, "error": failed.error if failed else None,
            "metrics": {k: v.mean for k, v in summaries.items() if v is not None},
            "intervals": {}}))  # one seed's interval over the eval examples is not the mean's
        spread[(first.suite, first.config.group)] = summaries
    return out, spread


def compare(reference: list[RunRecord], current: list[RunRecord], settings: Regression) -> Comparison:
    """Every check of the current records against the reference records, matched by suite and run name (runs over
    seeds: by suite entry, their means compared)."""
    reference, base_spread = by_group(reference)
    current, cur_spread = by_group(current)
    cur_by = {_key(r): r for r in current}
    several_suites = len({r.suite for r in reference + current}) > 1
    rows: list[Row] = []
    notes: list[str] = []
    pairs = []
    for b in reference:
        name = f"{b.suite}/{b.run}" if several_suites else b.run
        c = cur_by.get(_key(b))
        if c is None:
            rows.append(Row(name, "run", "present", None, "missing"))
            continue
        pairs.append((b, c))
        if not (b.ok and c.ok):
            row, note = _status_row(name, b, c)
            rows.append(row)
            notes += [note] if note else []
            continue
        spread = (base_spread.get(_key(b), {}), cur_spread.get(_key(c), {}))
        rows += _metric_rows(name, b, c, settings, spread)
        changed = config_changes(b.stored_config, c.stored_config)
        if changed:
            notes.append(f"{name}: resolved config differs from the reference's in {', '.join(changed)}")
    base_keys = {_key(r) for r in reference}
    notes += [f"{f'{c.suite}/{c.run}' if several_suites else c.run}: new run, no reference to compare with"
              for c in current if _key(c) not in base_keys]
    if base_spread or cur_spread:
        notes.append("runs over seeds are compared by their mean over the seeds that finished; ± is the half-width "
                     "of the mean's 95% confidence interval (Student's t)")
    if any(environment_differences([p]) for p in pairs) and settings.same_environment_only:
        notes.append(f"{', '.join(settings.same_environment_only)}: not gated where the environment differs")
    if any(b.schema_version != c.schema_version for b, c in pairs):
        notes.append("records of different schema versions: before version 2, peak memory was the whole process's "
                     "peak, evaluation and merge check included; memory and time are not gated across versions")
    refusals = mismatches(pairs)
    if not pairs and reference:
        refusals.append(f"no run matches: reference has {', '.join(sorted({r.suite for r in reference}))} runs, "
                        f"current has {', '.join(sorted({r.suite for r in current})) or 'none'}")
    return Comparison(rows, refusals, environment_differences(pairs), notes)


def _status_row(name: str, b: RunRecord, c: RunRecord) -> tuple[Row, str | None]:
    """A run that did not succeed on one side or both: its status is the check."""
    if b.ok:
        return Row(name, "status", b.status, c.status, "regression"), None
    if c.ok:
        return (Row(name, "status", b.status, c.status, "improved"),
                f"{name}: {b.status} in the reference, so its metrics have nothing to compare with")
    return (Row(name, "status", b.status, c.status, "ok"),
            f"{name}: not successful in either ({b.status} in the reference, {c.status} now)")


def _metric_rows(name: str, b: RunRecord, c: RunRecord, settings: Regression,
                 spread: tuple[dict[str, Summary], dict[str, Summary]]) -> list[Row]:
    device_type = c.environment.get("device_type")
    # Before schema 2 a record's peak memory was the whole process's: not the same measurement.
    same_env = not environment_differences([(b, c)]) and b.schema_version == c.schema_version
    rows = []
    for m in compared_metrics(b, settings):
        if m not in b.metrics:
            continue
        tol = settings.tolerance(m)
        gated = settings.gated(m, device_type, same_env)
        better = metric(m).better
        base = float(b.metrics[m])
        if m not in c.metrics:
            rows.append(Row(name, m, base, None, "missing", gated, better, tol.label()))
            continue
        cur = float(c.metrics[m])
        delta = cur - base
        bs, cs = spread[0].get(m), spread[1].get(m)
        ci = c.intervals.get(m)
        test = paired_row(b, c, m) if not (bs or cs) else None
        rows.append(Row(name, m, base, cur, verdict(better, base, cur, tol.allowed(base)), gated, better,
                        tol.label(), delta, delta / abs(base) if base else None,
                        bs.half_width if bs else None, cs.half_width if cs else None,
                        (ci.low, ci.high, ci.n) if ci else None,
                        *((f"{test.method}: {describe(test)}", test.supported) if test else (None, None))))
    return rows


def paired_row(b: RunRecord, c: RunRecord, name: str):
    """The paired test of current against reference on a score, where both stored (or can rebuild) per-example
    scores on the same eval examples; None otherwise."""
    from bench.analysis.paired import example_values, paired, same_examples

    vb, vc = example_values(b, name), example_values(c, name)
    if vb is None or vc is None or len(vb) != len(vc) or not same_examples(b, c):
        return None
    return paired(vc, vb)


# What identifies a model in record.model_info; file and cache paths differ between machines and are left out.
MODEL_IDENTITY = ("source", "preset", "config", "id", "revision", "sha256", "config_sha256")


def _grouped(found: dict[tuple[str, str, str], list[str]], n_pairs: int, what: str) -> list[str]:
    """One line per distinct difference, naming the runs it affects (or 'all N runs')."""
    lines = []
    for (place, b, c), runs in found.items():
        where = f"all {n_pairs} runs" if len(runs) == n_pairs and n_pairs > 1 else f"run{'s' * (len(runs) > 1)} " + \
            ", ".join(runs)
        lines.append(f"{place} {what}: reference {b}, current {c} ({where})")
    return lines


def _collect(pairs, fields) -> dict[tuple[str, str, str], list[str]]:
    found: dict[tuple[str, str, str], list[str]] = {}
    for b, c in pairs:
        for place, get in fields:
            bv, cv = get(b), get(c)
            if bv is None or cv is None or bv == cv:
                continue  # a run that failed before loading has no fingerprint: nothing to compare
            found.setdefault((place, json.dumps(bv), json.dumps(cv)), []).append(b.run)
    return found


def mismatches(pairs: list[tuple[RunRecord, RunRecord]]) -> list[str]:
    """Differences that make the comparison meaningless: suite version, model identity, dataset fingerprint."""
    fields = [("config.suite_version", lambda r: r.config.suite_version)]
    fields += [(f"model_info.{k}", lambda r, k=k: r.model_info.get(k)) for k in MODEL_IDENTITY]
    fields.append(("data.fingerprint", lambda r: (r.data.fingerprint or None) if r.data else None))
    return _grouped(_collect(pairs, fields), len(pairs), "differs")


def environment_differences(pairs: list[tuple[RunRecord, RunRecord]]) -> list[str]:
    """Device, precision and library versions (records.ENVIRONMENT_KEYS): results may differ for reasons outside the
    code under test."""
    sigs = [(environment_signature(b), environment_signature(c)) for b, c in pairs]
    keys = list(dict.fromkeys(k for pair in sigs for sig in pair for k in sig))
    fields = [(f"environment.{k}", lambda r, k=k: environment_signature(r).get(k, "absent") if r.environment
               else None) for k in keys]
    return _grouped(_collect(pairs, fields), len(pairs), "differs")


def config_changes(base: dict[str, Any], cur: dict[str, Any]) -> list[str]:
    """Resolved-config keys that differ (the tolerances themselves excluded: they judge the run, not shape it)."""
    skip = ("config_hash", "regression")
    b = flatten({k: v for k, v in base.items() if k not in skip})
    c = flatten({k: v for k, v in cur.items() if k not in skip})
    return sorted(k for k in b.keys() | c.keys() if b.get(k) != c.get(k))


def settings_from(records: list[RunRecord]) -> Regression:
    """The suite's regression settings as resolved into the current records' config; the defaults otherwise."""
    return next((r.config.regression for r in records), Regression())
