"""The regression gate: `python -m bench compare BASELINE CURRENT` checks each run's metrics against a baseline.

BASELINE and CURRENT are each a results folder or a stored baseline file (one JSON file holding a list of records,
made with `python -m bench.compare save-baseline RESULTS FILE`). Runs are matched by name; each metric gets a
verdict (ok / regression / improved / missing) against a tolerance in its worse direction. Exit 1 on any gated
regression, 2 when the two sides are not like with like (suite version, model, dataset) unless --force, else 0.

Why the defaults are what they are. Measured on the smoke suite (tiny random Llama, 6 steps per method):
- Same code, same environment, two runs: bit-identical loss curves, eval losses, scores and greedy predictions
  for every run, on the CPU (float32) and on an H100 (bf16 autocast) alike. The loop is seeded and the batches
  depend only on the data and the seed.
- Same code on another machine (Intel Xeon, 16 threads, torch 2.11 CUDA build vs AMD EPYC, 2 threads, torch 2.13
  CPU build): loss curves equal to within 5e-7, eval losses and predictions identical; peak RSS 71-76% higher.
- Code changes made in this repository: a fix to packed attention moved final train losses by 0.004-0.005;
  ending training examples at the end-of-turn token moved eval losses by 0.011-0.014. A tolerance of 0.02 would
  have let both through unseen.
So losses are gated at absolute 0.001: thousands of times the numerical noise, below the smallest real change seen.
A change meant to move results then comes with a new baseline, as it should. Scores (exact match and the like) move
in steps of 1/N examples and are gated at absolute 0.02.
- Peak memory repeats within 1% (CUDA max allocated exactly) in one environment: +10% catches a leak or a layer
  left unfrozen. Another environment loads other libraries (the CUDA build of torch alone adds hundreds of MB), so
  memory and time are gated only where the environment (device, dtype, Python, library versions) is the baseline's.
- Time is reported but not gated: on this shared CPU machine the same run's training took 2.6 s and 14.9 s
  minutes apart (other processes hold the cores), and even on the H100 it varied by up to 37% between two runs
  (six steps of a tiny model: launch overheads and warm-up, not arithmetic). A suite that runs long on a card of
  its own can gate it: `warn_only: []`, or `warn_only_on_cpu: [train_seconds]` to gate it on GPUs only.
- Trainable parameters and optimiser steps are exact: a different count means the method or the budget changed.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, NonNegativeFloat, ValidationError, field_validator, model_validator

from bench.records import METRICS, RecordError, RunRecord, format_value, human_bytes, load_records, metric
from bench.stats import Summary

Verdict = Literal["ok", "regression", "improved", "missing"]

BASELINE_KIND = "peft-bench baseline"


class Tolerance(BaseModel):
    """How far a metric may move in its worse direction: an absolute amount, or a share of the baseline value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    absolute: NonNegativeFloat | None = None
    relative: NonNegativeFloat | None = None  # 0.25 = 25% of the baseline value

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.absolute is None) == (self.relative is None):
            raise ValueError("give exactly one of absolute or relative")
        return self

    def allowed(self, baseline: float) -> float:
        return self.absolute if self.absolute is not None else self.relative * abs(baseline)

    def label(self) -> str:
        return f"±{self.absolute:g}" if self.absolute is not None else f"±{self.relative * 100:g}%"


def _known_metrics(names: list[str]) -> list[str]:
    """Metrics a record can hold, as records name them (Hub scores without 'hub:'): a misspelt name would
    otherwise never match anything and its tolerance would silently not apply."""
    from bench.metrics import SCORERS

    known = [*METRICS, *SCORERS]
    problems = []
    for name in names:
        if not name.startswith("hub:") and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else " (a Hub score is written hub:NAME)"
            problems.append(f"unknown metric '{name}'{hint}")
    if problems:
        raise ValueError("; ".join(problems))
    return [n.removeprefix("hub:") for n in names]


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "eval_loss": Tolerance(absolute=0.001),
    "final_train_loss": Tolerance(absolute=0.001),
    "peak_memory_bytes": Tolerance(relative=0.10),
    "cuda_max_allocated_bytes": Tolerance(relative=0.10),
    "train_seconds": Tolerance(relative=0.25),
    "trainable_params": Tolerance(absolute=0),
    "train_steps": Tolerance(absolute=0),
}


class Regression(BaseModel):
    """A suite's `regression:` section: what `bench compare` checks and which changes fail the gate.

    Every metric in `tolerances`, and every score the suite's eval computes, is compared. All of them are gated
    except those in `warn_only` (always), in `warn_only_on_cpu` (when the current run ran on a CPU) and in
    `same_environment_only` (when the run's environment differs from the baseline's): those are shown with their
    verdict but never fail the gate.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tolerances: dict[str, Tolerance] = DEFAULT_TOLERANCES
    score_tolerance: Tolerance = Tolerance(absolute=0.02)  # any score the suite computes and tolerances omit
    warn_only: list[str] = ["train_seconds"]
    warn_only_on_cpu: list[str] = []
    same_environment_only: list[str] = ["peak_memory_bytes", "cuda_max_allocated_bytes", "train_seconds"]

    @field_validator("tolerances", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        """A suite names only the tolerances it changes; the other defaults stay."""
        if not isinstance(value, dict):
            return value
        return {**DEFAULT_TOLERANCES, **dict(zip(_known_metrics(list(value)), value.values()))}

    @field_validator("warn_only", "warn_only_on_cpu", "same_environment_only")
    @classmethod
    def _known_names(cls, value: list[str]) -> list[str]:
        return _known_metrics(value)

    def tolerance(self, name: str) -> Tolerance:
        return self.tolerances.get(name) or self.score_tolerance

    def gated(self, name: str, device_type: str | None, same_environment: bool = True) -> bool:
        return (name not in self.warn_only and not (device_type == "cpu" and name in self.warn_only_on_cpu)
                and (same_environment or name not in self.same_environment_only))


@dataclass(frozen=True)
class Row:
    """One check: a metric of a run (or the run's status, or the run itself) against the baseline."""

    run: str
    metric: str  # a metric name, "status", or "run" when the whole run is missing
    baseline: float | str | None
    current: float | str | None
    verdict: Verdict
    gated: bool = True
    better: str = "none"
    tolerance: str = ""
    delta: float | None = None
    relative_delta: float | None = None
    # Seeded runs compare by their mean over seeds; these are the half-widths of the means' 95% intervals.
    baseline_half_width: float | None = None
    current_half_width: float | None = None


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
    scores = [n.removeprefix("hub:") for n in record.config.get("eval", {}).get("metrics", [])]
    return scores + [n for n in settings.tolerances if n not in scores]


def _key(r: RunRecord) -> tuple[str, str]:
    return r.suite, r.run


def by_group(records: list[RunRecord]) -> tuple[list[RunRecord], dict[tuple[str, str], dict[str, Summary]]]:
    """Runs over seeds as one record per suite entry, named by its group: each metric is its mean over the seeds
    that finished, its status success only when every seed finished. Their statistics come back beside them.
    Runs without seeds pass through as they are, so a single-seed baseline compares with a seeded suite's means."""
    from bench.rows import seed_groups

    out, spread = [], {}
    for g in seed_groups(records):
        if not g.seeded:
            out += g.records
            continue
        first = (g.ok or list(g.records))[0]
        failed = next((r for r in g.records if r.status != "success"), None)
        summaries = {k: g.summary(k) for r in g.ok for k in r.metrics}
        out.append(first.model_copy(update={
            "run": first.config["group"], "status": g.status, "error": failed.error if failed else None,
            "metrics": {k: v.mean for k, v in summaries.items() if v is not None}}))
        spread[(first.suite, first.config["group"])] = summaries
    return out, spread


def compare(baseline: list[RunRecord], current: list[RunRecord], settings: Regression) -> Comparison:
    """Every check of the current records against the baseline records, matched by suite and run name (runs over
    seeds: by suite entry, their means compared)."""
    baseline, base_spread = by_group(baseline)
    current, cur_spread = by_group(current)
    cur_by = {_key(r): r for r in current}
    base_keys = {_key(r) for r in baseline}
    several_suites = len({r.suite for r in baseline + current}) > 1
    rows: list[Row] = []
    notes: list[str] = []
    pairs = []
    for b in baseline:
        name = f"{b.suite}/{b.run}" if several_suites else b.run
        c = cur_by.get(_key(b))
        if c is None:
            rows.append(Row(name, "run", "present", None, "missing"))
            continue
        pairs.append((b, c))
        if b.status != "success" or c.status != "success":
            if b.status == "success":
                rows.append(Row(name, "status", b.status, c.status, "regression"))
            elif c.status == "success":
                rows.append(Row(name, "status", b.status, c.status, "improved"))
                notes.append(f"{name}: {b.status} in the baseline, so its metrics have nothing to compare with")
            else:
                rows.append(Row(name, "status", b.status, c.status, "ok"))
                notes.append(f"{name}: not successful in either ({b.status} in the baseline, {c.status} now)")
            continue
        device_type = c.environment.get("device_type")
        same_env = not environment_differences([(b, c)])
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
            bs, cs = base_spread.get(_key(b), {}).get(m), cur_spread.get(_key(c), {}).get(m)
            rows.append(Row(name, m, base, cur, verdict(better, base, cur, tol.allowed(base)), gated, better,
                            tol.label(), delta, delta / abs(base) if base else None,
                            bs.half_width if bs else None, cs.half_width if cs else None))
        changed = config_changes(b.config, c.config)
        if changed:
            notes.append(f"{name}: resolved config differs from the baseline's in {', '.join(changed)}")
    for c in current:
        if _key(c) not in base_keys:
            notes.append(f"{f'{c.suite}/{c.run}' if several_suites else c.run}: new run, no baseline to compare with")
    if base_spread or cur_spread:
        notes.append("runs over seeds are compared by their mean over the seeds that finished; ± is the half-width "
                     "of the mean's 95% confidence interval (Student's t)")
    if any(environment_differences([p]) for p in pairs) and settings.same_environment_only:
        notes.append(f"{', '.join(settings.same_environment_only)}: not gated where the environment differs")
    refusals = mismatches(pairs)
    if not pairs and baseline:
        refusals.append(f"no run matches: baseline has {', '.join(sorted({r.suite for r in baseline}))} runs, "
                        f"current has {', '.join(sorted({r.suite for r in current})) or 'none'}")
    return Comparison(rows, refusals, environment_differences(pairs), notes)


# What identifies a model in record.model_info; file and cache paths differ between machines and are left out.
MODEL_IDENTITY = ("source", "preset", "config", "id", "revision", "sha256", "config_sha256")


def _grouped(found: dict[tuple[str, str, str], list[str]], n_pairs: int, what: str) -> list[str]:
    """One line per distinct difference, naming the runs it affects (or 'all N runs')."""
    lines = []
    for (place, b, c), runs in found.items():
        where = f"all {n_pairs} runs" if len(runs) == n_pairs and n_pairs > 1 else f"run{'s' * (len(runs) > 1)} " + \
            ", ".join(runs)
        lines.append(f"{place} {what}: baseline {b}, current {c} ({where})")
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
    fields = [("config.suite_version", lambda r: r.config.get("suite_version"))]
    fields += [(f"model_info.{k}", lambda r, k=k: r.model_info.get(k)) for k in MODEL_IDENTITY]
    fields.append(("data.fingerprint", lambda r: r.data.get("fingerprint") or None))
    return _grouped(_collect(pairs, fields), len(pairs), "differs")


def environment_differences(pairs: list[tuple[RunRecord, RunRecord]]) -> list[str]:
    """Device and library versions: results may differ for reasons outside the code under test."""
    packages = sorted({p for b, c in pairs for p in (*b.environment.get("packages", {}), *c.environment.get(
        "packages", {}))})
    fields = [(f"environment.{k}", lambda r, k=k: r.environment.get(k)) for k in ("device", "dtype", "python")]
    fields += [(f"environment.packages.{p}", lambda r, p=p: r.environment.get("packages", {}).get(p, "absent"))
               for p in packages]
    return _grouped(_collect(pairs, fields), len(pairs), "differs")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(base: dict[str, Any], cur: dict[str, Any]) -> list[str]:
    """Resolved-config keys that differ (the tolerances themselves excluded: they judge the run, not shape it)."""
    skip = ("config_hash", "regression")
    b = _flat({k: v for k, v in base.items() if k not in skip})
    c = _flat({k: v for k, v in cur.items() if k not in skip})
    return sorted(k for k in b.keys() | c.keys() if b.get(k) != c.get(k))


def settings_from(records: list[RunRecord]) -> Regression:
    """The suite's regression settings as resolved into the current records' config; the defaults otherwise."""
    stored = next((r.config["regression"] for r in records if "regression" in r.config), None)
    return Regression() if stored is None else Regression.model_validate(stored)


# ---- rendering ------------------------------------------------------------------------------------------------


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
    return text if row.gated or row.verdict == "improved" else f"{text} (not gated)"


BETTER = {"higher": "↑", "lower": "↓", "none": "="}


def _table(rows: list[Row]) -> list[str]:
    out = ["| run | metric | baseline | current | Δ | better | tolerance | verdict |",
           "|---|---|---:|---:|---:|:---:|---:|---|"]
    for r in rows:
        label = r.metric if r.metric in ("status", "run") else metric(r.metric).label
        cells = [r.run, label, _value(r.metric, r.baseline, r.baseline_half_width),
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
                      "The baseline and the current results are not like with like:", "",
                      *(f"- {line}" for line in refusals), "",
                      "Make a new baseline for the changed suite, or compare anyway with `--force`.", ""])


# ---- stored baselines and the command ---------------------------------------------------------------------------


def baseline_document(records: list[RunRecord]) -> str:
    """A stored baseline: the full records (with their provenance) in one JSON file, so it can be committed."""
    return json.dumps({"kind": BASELINE_KIND, "schema_version": 1,
                       "records": [json.loads(r.model_dump_json()) for r in records]}, indent=1) + "\n"


def save_baseline(records: list[RunRecord], path: Path) -> None:
    """Write atomically, as records are: a reader never sees half a baseline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(baseline_document(records))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; a baseline is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_baseline(text: str, where: str) -> list[RunRecord]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise RecordError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != BASELINE_KIND:
        raise RecordError(f"{where}: not a stored baseline (expected an object with \"kind\": \"{BASELINE_KIND}\"; "
                          "make one with `python -m bench.compare save-baseline RESULTS FILE`)")
    records = []
    for i, data in enumerate(doc.get("records", [])):
        try:
            records.append(RunRecord.model_validate(data))
        except ValidationError as e:
            raise RecordError(f"{where}: records[{i}] is not a valid run record ({str(e).splitlines()[0]})") from None
    return records


def load_side(path: str | Path) -> list[RunRecord]:
    """Records from a results folder or a stored baseline file."""
    p = Path(path)
    if p.is_file():
        return parse_baseline(p.read_text(), str(p))
    if not p.exists():
        raise RecordError(f"{p}: no such results folder or baseline file")
    records = load_records(p)
    if not records:
        raise RecordError(f"{p}: no run records found")
    return records


def cmd_compare(args) -> int:
    try:
        baseline, current = load_side(args.baseline), load_side(args.current)
        settings = settings_from(current)
    except RecordError as e:
        print(e, file=sys.stderr)
        return 2
    except ValidationError as e:
        print(f"{args.current}: the records' regression settings are not valid ({str(e).splitlines()[0]})",
              file=sys.stderr)
        return 2
    comparison = compare(baseline, current, settings)
    if comparison.refusals and not args.force:
        for line in comparison.refusals:
            print(f"not comparable: {line}", file=sys.stderr)
        print("Make a new baseline for the changed suite, or compare anyway with --force.", file=sys.stderr)
        if args.markdown:
            Path(args.markdown).write_text(render_refusal(comparison.refusals))
        return 2
    for line in comparison.warnings:
        print(f"warning: environment differs: {line}", file=sys.stderr)
    text = render_markdown(comparison, forced=args.force)
    sys.stdout.write(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 1 if comparison.failed else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.compare save-baseline RESULTS FILE`: store a results folder as a baseline file."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.compare")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save-baseline", help="store the records of a results folder as one baseline file")
    p.add_argument("results")
    p.add_argument("file")
    args = parser.parse_args(argv)
    try:
        records = load_side(args.results)
    except RecordError as e:
        print(e, file=sys.stderr)
        return 2
    failed = [r.run for r in records if r.status != "success"]
    if failed:
        # A baseline with failed runs would let those runs fail forever unnoticed.
        print(f"{args.results}: not every run succeeded ({', '.join(failed)}); rerun before storing a baseline",
              file=sys.stderr)
        return 1
    save_baseline(records, Path(args.file))
    print(f"wrote {args.file} ({len(records)} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
