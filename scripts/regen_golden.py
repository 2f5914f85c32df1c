"""Rewrite the golden Markdown report from the fixture records: `python scripts/regen_golden.py`.

tests/test_report.py compares render_markdown(tests/fixtures/records) with reports/golden/report.md byte for
byte. When a report change is intended, run this and review the diff of reports/golden/report.md in the commit.
"""

from __future__ import annotations

from pathlib import Path

from bench.core.records import load_records
from bench.report.markdown import render_markdown

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "records"
GOLDEN = ROOT / "reports" / "golden" / "report.md"


def main() -> None:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(render_markdown(load_records(FIXTURES)), encoding="utf-8")
    print(f"wrote {GOLDEN.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
