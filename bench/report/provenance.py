"""Where the numbers come from, as the report says it: machines and environment, the warnings a reader needs
before comparing runs, the config they share and differ in, the data each saw."""

from __future__ import annotations

import json
from typing import Any

from bench.core.config import BASELINE
from bench.core.metrics import format_value, metric
from bench.core.records import ENVIRONMENT_KEYS, RunRecord, environment_signature
from bench.analysis.rows import baseline, labels, ordered, score_names
from bench.core.util import flatten


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


def decoding_warnings(records: list[RunRecord]) -> list[str]:
    """Runs whose scores through transformers' generate() differ from the harness's own decoding of them."""
    from bench.core.metrics import VIA_GENERATE

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
