"""Stored baselines: the records of a results folder in one committable JSON file, and reading either back."""

from __future__ import annotations

import json
from pathlib import Path

from bench.records import RecordError, RunRecord, load_records, parse_record
from bench.util import atomic_write

BASELINE_KIND = "peft-bench baseline"


def baseline_document(records: list[RunRecord]) -> str:
    """A stored baseline: the full records (with their provenance) in one JSON file, so it can be committed."""
    return json.dumps({"kind": BASELINE_KIND, "schema_version": 1,
                       "records": [json.loads(r.model_dump_json()) for r in records]}, indent=1) + "\n"


def save_baseline(records: list[RunRecord], path: Path) -> None:
    """Write atomically, as records are: a reader never sees half a baseline."""
    atomic_write(path, baseline_document(records))


def parse_baseline(text: str, where: str) -> list[RunRecord]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise RecordError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != BASELINE_KIND:
        raise RecordError(f"{where}: not a stored baseline (expected an object with \"kind\": \"{BASELINE_KIND}\"; "
                          "make one with `python -m bench save-baseline RESULTS FILE`)")
    return [parse_record(data, f"{where}: records[{i}]") for i, data in enumerate(doc.get("records", []))]


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
