"""A whole suite run through the fork server against the same suite with every run spawned (BENCH_FORK_SERVER=0):
wall time of each `bench run`, their ratio, and whether the records agree to the digit on what each run learned
(bench.core.records.result_differences: loss curve, scores, eval answers, merge figure).

Run: python scripts/fork_vs_spawn.py [SUITE] [--pairs 1] [--out DIR]    (SUITE: suites/quickstart.yaml)

A benchmark, not a test (tests/test_forkserver.py checks the smoke suite's records the same way). Pairs alternate
which goes first, so drift in what else the machine does falls on both alike; every run is forced (--force) and no
report is written. Prints one line per command and pair, then the medians, their ratio and any record that differs.
Exit status 1 when a record differs or a command fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.core.records import load_records, result_differences  # noqa: E402


def timed_run(suite: str, out: Path, fork: bool) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "BENCH_FORK_SERVER": "1" if fork else "0"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench", "run", suite, "--output", str(out), "--force", "--no-report"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench run ({'forked' if fork else 'spawned'}) failed with exit {proc.returncode}:\n"
                 f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", nargs="?", default="suites/quickstart.yaml")
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--out", type=Path, help="keep the results here (default: a temporary folder, deleted)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.out or Path(tmp)
        times: dict[bool, list[float]] = {True: [], False: []}
        for pair in range(args.pairs):
            for fork in ((True, False) if pair % 2 == 0 else (False, True)):
                took = timed_run(args.suite, base / f"{'forked' if fork else 'spawned'}-{pair}", fork)
                times[fork].append(took)
                print(f"pair {pair + 1}: {'forked ' if fork else 'spawned'} {took:7.1f} s", flush=True)
        forked, spawned = statistics.median(times[True]), statistics.median(times[False])
        print(f"{args.suite}: forked {forked:.1f} s ({forked / 60:.2f} min), spawned {spawned:.1f} s "
              f"({spawned / 60:.2f} min); forked/spawned {forked / spawned:.3f}, medians of {args.pairs} pair(s)")
        differ = 0  # records that differ, over every pair
        for pair in range(args.pairs):
            here = 0
            a = {r.run: r for r in load_records(base / f"forked-{pair}")}
            b = {r.run: r for r in load_records(base / f"spawned-{pair}")}
            for run in sorted(a.keys() | b.keys()):
                found = result_differences(a[run], b[run]) if run in a and run in b else ["missing on one side"]
                here += bool(found)
                for line in found:
                    print(f"pair {pair + 1} {run}: {line}")
            print(f"pair {pair + 1}: {len(a)} records forked, {len(b)} spawned; "
                  f"{'all equal in loss curve, scores, answers and merge' if not here else f'{here} differ'}")
            differ += here
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
