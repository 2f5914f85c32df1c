"""`bench plan`'s memory predictor for a CPU run against the training peaks the harness measured (a check, not a test).

Run: python scripts/plan_vs_cpu.py SUITE RESULTS_DIR [--tolerance 0.15]
e.g. after `python -m bench run suites/smoke.yaml --output /tmp/smoke`:
     python scripts/plan_vs_cpu.py suites/smoke.yaml /tmp/smoke
For each run of SUITE with a record in RESULTS_DIR, the CPU prediction (fp32, no allocator allowance; the resident
floor of a fresh worker process, measured here: bench.choose.memplan.resident_floor; one step's activations, which
glibc's heap keeps resident between steps; a quantised base's checkpoint pages where it stays mapped) is set beside
the record's metrics.peak_memory_bytes (the training phase's resident high-water mark). Exit 1 if a run is off by more than the
tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MIB = 2**20


def compare(suite_path: Path, results: Path) -> list[dict]:
    """Per run with a measured training peak: measured, predicted and the parts, in bytes."""
    from bench.core.config import BASELINE
    from bench.choose.memplan import predict, resident_floor
    from bench.choose.plan import architecture, planned_setting
    from bench.spec.suite import load_suite
    from methods import METHODS, RunFacts

    rows = []
    for cfg in load_suite(suite_path).resolved_runs():
        record = results / f"{cfg.run}.json"
        if cfg.method == BASELINE or not record.is_file():
            continue
        measured = json.loads(record.read_text())["metrics"].get("peak_memory_bytes")
        if measured is None:
            continue
        plan = RunFacts(total_steps=cfg.budget.max_steps or 1000, special_token_ids=(0,))
        setting, length_from = planned_setting(cfg, "cpu")
        p = predict(architecture(cfg), METHODS[cfg.method], cfg.params, setting, plan)
        rows.append({"run": cfg.run, "measured": measured, "predicted": p.allocated, "floor": resident_floor(), "retained": p.allowance - resident_floor(),
                     "length": f"{setting.batch_size}x{setting.seq_len} {length_from.split(':')[0].split(' ')[0]}",
                     "model": p.allocated - p.allowance, "error": p.allocated / measured - 1})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.15)
    args = parser.parse_args()
    rows = compare(args.suite, args.results)
    print(f"{'run':16} {'measured':>9} {'predicted':>9} {'floor':>7} {'retained':>8} {'model':>7} {'error':>7}  batch")
    for r in rows:
        print(f"{r['run'][:16]:16} {r['measured'] / MIB:8.0f}M {r['predicted'] / MIB:8.0f}M {r['floor'] / MIB:6.0f}M {r['retained'] / MIB:7.0f}M "
              f"{r['model'] / MIB:6.1f}M {100 * r['error']:+6.1f}%  {r['length']}")
    outside = [r["run"] for r in rows if abs(r["error"]) > args.tolerance]
    print(f"{len(rows)} runs, {len(outside)} outside +-{100 * args.tolerance:.0f}%{': ' if outside else ''}"
          f"{', '.join(outside)}")
    return 1 if outside or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
