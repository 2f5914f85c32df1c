"""What tracking costs the runner's process: the finished records of a results folder replayed through each tracker.

Run: python scripts/tracking_cost.py results/smoke [tensorboard mlflow wandb]

Each tracker logs every record as `bench run` would (start, the steps, the final metrics, the adapter) into a fresh
temporary folder (W&B offline); the times are the tracker's set-up (import, store) and each run's calls.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from bench.core.config import TRACKERS, Tracking
from bench.core.records import load_records
from bench.launch.tracking import Session


def main() -> int:
    results, names = Path(sys.argv[1]), sys.argv[2:] or list(TRACKERS)
    os.environ.setdefault("WANDB_MODE", "offline")
    records = [r for r in load_records(results) if r.ok]
    for name in names:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            session = Session(Tracking(**{name: {}}), Path(out), records[0].suite)
            setup = time.perf_counter() - t0
            per_run = []
            for record in records:
                t = time.perf_counter()
                tracked = session.run(record.config)
                tracked.poll(record.curve)
                errors = tracked.finish(record, results / record.run).tracker_errors
                per_run.append(time.perf_counter() - t)
                if errors:
                    print(f"{name}: {record.run}: {errors}", file=sys.stderr)
                    return 1
        runs = ", ".join(f"{s:.2f}" for s in per_run)
        print(f"{name}: set-up {setup:.2f} s; per run {runs} s ({len(records)} runs, "
              f"{sum(len(r.curve) for r in records)} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
