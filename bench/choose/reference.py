"""Reference records: what the regression gate compares a fresh run with, stored as one committable JSON file
(`baselines/` holds the shipped ones), and reading either side of a comparison back. Not "baseline": that is the
untrained run."""

from __future__ import annotations

import json
from pathlib import Path

from bench.core.records import RecordError, RunRecord, load_records, parse_record
from bench.core.util import atomic_write

# The file format's name, as every stored file since the first says it (kept, so they all still read).
REFERENCE_KIND = "peft-bench baseline"


def reference_document(records: list[RunRecord]) -> str:
    """Stored reference records: the full records (with their provenance) in one JSON file, so it can be committed."""
    return json.dumps({"kind": REFERENCE_KIND, "schema_version": 1,
                       "records": [json.loads(r.model_dump_json()) for r in records]}, indent=1) + "\n"


def save_reference(records: list[RunRecord], path: Path) -> None:
    """Write atomically, as records are: a reader never sees half a file."""
    atomic_write(path, reference_document(records))


def parse_reference(text: str, where: str) -> list[RunRecord]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise RecordError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != REFERENCE_KIND:
        raise RecordError(f"{where}: not a stored reference file (expected an object with \"kind\": "
                          f"\"{REFERENCE_KIND}\"; make one with `python -m bench save-reference RESULTS FILE`)")
    return [parse_record(data, f"{where}: records[{i}]") for i, data in enumerate(doc.get("records", []))]


def load_side(path: str | Path) -> list[RunRecord]:
    """Records from a results folder or a stored reference file."""
    p = Path(path)
    if p.is_file():
        return parse_reference(p.read_text(), str(p))
    if not p.exists():
        raise RecordError(f"{p}: no such results folder or reference file")
    records = load_records(p)
    if not records:
        raise RecordError(f"{p}: no run records found")
    return records
