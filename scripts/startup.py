"""A run's fixed cost: seconds from the start of its process to its first training step, forked from the fork server
(bench/launch/forkserver.py) against spawned as a fresh `python -m bench.run.worker`, in alternating pairs.

Run: python scripts/startup.py [--pairs 5]

A benchmark, not a test. Each attempt is the smoke suite's LoRA run (tiny random Llama, one optimiser step) through
`bench.launch.runner.attempt`, as `bench run` starts it; the first training step is the moment its progress file gets its
first line (polled every 10 ms). The server's own start (its imports, once per `bench run`, beside the runner's data
check) is timed apart. Pairs alternate fork/spawn, so drift in what else the machine does falls on both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from bench.launch import forkserver, runner  # noqa: E402
from bench.core.config import Budget  # noqa: E402
from bench.core.layout import PROGRESS  # noqa: E402
from bench.spec.suite import load_suite  # noqa: E402


def first_step(cfg, run_dir: Path, env: dict[str, str]) -> tuple[float, str]:
    """Seconds from the attempt's start to its progress file's first line, and how its process started."""
    seen: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            path = run_dir / PROGRESS
            if path.exists() and path.stat().st_size > 0:
                seen.append(time.monotonic())
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    t0 = time.monotonic()
    watcher.start()
    record = runner.attempt(cfg, run_dir, env=env)
    done.set()
    watcher.join()
    assert record.status == "success" and seen, record.error
    return seen[0] - t0, record.environment["process"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args()
    suite = load_suite(ROOT / "suites" / "smoke.yaml")
    cfg = next(c for c in suite.resolved_runs() if c.run == "lora")
    cfg = cfg.model_copy(update={"budget": Budget(max_steps=1)})
    t0 = time.monotonic()
    assert forkserver.SERVER.ready() is None, forkserver.SERVER.broken
    print(f"fork server start (its imports and one empty fork): {time.monotonic() - t0:.2f} s")
    times: dict[str, list[float]] = {"fork server": [], "spawn": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            for how, env in (("fork server", {}), ("spawn", {"BENCH_FORK_SERVER": "0"})):
                seconds, process = first_step(cfg, Path(tmp) / f"{i}-{how}", env)
                assert process.startswith(how), process
                times[how].append(seconds)
                print(f"pair {i + 1} {how:11s} process start to first step: {seconds:.2f} s")
    fork, spawn = (statistics.median(times[k]) for k in ("fork server", "spawn"))
    print(f"median: fork server {fork:.2f} s, spawn {spawn:.2f} s, spawn/fork {spawn / fork:.1f}x")


if __name__ == "__main__":
    main()
