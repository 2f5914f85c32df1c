"""Records to table rows: pure functions shared by the terminal, Markdown and HTML reports."""

from __future__ import annotations

from typing import Any

from bench.records import RunRecord, error_headline, format_value, metric

# Columns of the summary table, in order: (metric name, header).
SUMMARY = [
    ("trainable_params", "trainable"),
    ("trainable_pct", "trainable %"),
    ("peak_memory_bytes", "peak mem"),
    ("train_seconds", "train s"),
    ("train_tokens_per_second", "tok/s"),
    ("eval_loss", "eval loss"),
]


def score_names(records: list[RunRecord]) -> list[str]:
    names: list[str] = []
    for r in records:
        for n in r.config.get("eval", {}).get("metrics", []):
            name = n[4:] if n.startswith("hub:") else n
            if name not in names:
                names.append(name)
    return names


def ordered(records: list[RunRecord]) -> list[RunRecord]:
    """Baseline first, then the suite's order (records carry no order, so by start time), failures last."""
    return sorted(records, key=lambda r: (r.method != "baseline", r.status != "success", r.started_at, r.run))


def baseline(records: list[RunRecord]) -> RunRecord | None:
    return next((r for r in records if r.method == "baseline" and r.status == "success"), None)


def merge_cell(r: RunRecord) -> str:
    m = r.merge
    if not m:
        return "-"
    if m.get("status") != "merged":
        return m.get("status", "?")
    same = "same greedy" if m.get("greedy_identical") else f"{m.get('greedy_identical_count')}/{m.get('compared')} same"
    return f"{m['kind']} Δ{m['max_abs_logit_diff']:.1e}, {same}"


def summary_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per run: raw values (for sorting, CSV and best-marking) and their formatted text."""
    scores = score_names(records)
    rows = []
    for r in ordered(records):
        values: dict[str, Any] = {"run": r.run, "method": r.method, "status": r.status}
        for name, _ in SUMMARY:
            values[name] = r.metrics.get(name)
        for name in scores:
            values[name] = r.metrics.get(name)
        values["adapter_bytes"] = r.metrics.get("adapter_bytes")
        values["merge"] = merge_cell(r)
        values["error"] = error_headline(r.error)
        rows.append(values)
    return rows


def columns(records: list[RunRecord]) -> list[tuple[str, str]]:
    return (
        [("run", "run"), ("method", "method")]
        + SUMMARY
        + [(n, metric(n).label) for n in score_names(records)]
        + [("adapter_bytes", "adapter"), ("merge", "merge"), ("status", "status")]
    )


def best(rows: list[dict[str, Any]], name: str) -> Any:
    """The best value of a column among successful trained runs, by the metric's direction."""
    direction = metric(name).better
    vals = [r[name] for r in rows if r["status"] == "success" and r["method"] != "baseline"
            and isinstance(r.get(name), (int, float))]
    if not vals or direction == "none":
        return None
    return max(vals) if direction == "higher" else min(vals)


def cell(name: str, value: Any) -> str:
    if name in ("run", "method", "status", "merge", "error"):
        return str(value) if value not in (None, "") else "-"
    return format_value(name, value)
