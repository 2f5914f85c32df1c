"""The runner: each run in a fresh process with a timeout; its outcome, whatever it is, becomes one record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bench.records import RecordError, RunRecord, read_record, record_path, write_record
from bench.suite import Suite
from bench.worker import PROGRESS, RESULT


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Plan:
    config: dict[str, Any]
    action: str  # "run" or "skip"
    why: str


def plan(suite: Suite, out_dir: Path, force: bool = False, only: list[str] | None = None) -> list[Plan]:
    """What to run: a run whose successful record matches its resolved config is skipped unless forced."""
    plans = []
    for cfg in suite.resolved_runs():
        if only and cfg["run"] not in only and cfg["method"] not in only:
            continue
        path = record_path(out_dir, cfg["run"])
        if force:
            plans.append(Plan(cfg, "run", "forced"))
            continue
        if not path.exists():
            plans.append(Plan(cfg, "run", "no record yet"))
            continue
        try:
            old = read_record(path)
        except RecordError:
            plans.append(Plan(cfg, "run", "unreadable record"))
            continue
        if old.status != "success":
            plans.append(Plan(cfg, "run", f"last run {old.status}"))
        elif old.config_hash != cfg["config_hash"]:
            plans.append(Plan(cfg, "run", "config changed"))
        else:
            plans.append(Plan(cfg, "skip", "up to date"))
    return plans


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _progress(run_dir: Path) -> list[dict[str, float]]:
    p = run_dir / PROGRESS
    if not p.exists():
        return []
    points = []
    for line in p.read_text().splitlines():
        try:
            points.append(json.loads(line))
        except ValueError:  # the process died mid-line
            break
    return points


def execute(cfg: dict[str, Any], out_dir: Path, on_poll: Callable[[list], None] = lambda _: None,
            env: dict[str, str] | None = None) -> RunRecord:
    """Run one config in its own process and return its record (already written to disk)."""
    run_dir = out_dir / cfg["run"]
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT, PROGRESS, "log.txt"):
        (run_dir / stale).unlink(missing_ok=True)
    cfg_path = run_dir / "config.json"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    started = now()
    log_path = run_dir / "log.txt"
    timeout = cfg["training"]["timeout_s"]
    status, error = None, None
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", str(cfg_path), str(run_dir)],
            # Idle OpenMP threads spin by default; on a shared 2-core machine that slowed runs up to 100x.
            stdout=log, stderr=subprocess.STDOUT, env={"OMP_WAIT_POLICY": "PASSIVE", **os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the runner alone; it ends the worker itself
        )
        t0 = time.monotonic()
        try:
            while proc.poll() is None:
                if time.monotonic() - t0 > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    status, error = "timeout", f"run exceeded its timeout of {timeout:.0f} s"
                    break
                on_poll(_progress(run_dir))
                time.sleep(0.5)
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status, error = "interrupted", "interrupted by the user (Ctrl-C); rerun the suite to resume"
    result: dict[str, Any] = {}
    if status is None and (run_dir / RESULT).exists():
        result = json.loads((run_dir / RESULT).read_text())
        status = result["status"]
        error = result.get("error")
    elif status is None:
        code = proc.returncode
        if code < 0 and -code == signal.SIGKILL:
            status = "killed"
            error = "the run's process was killed (SIGKILL: by a user, or by the kernel when memory ran out)"
        elif code < 0:
            status, error = "failed", f"the run's process died from signal {signal.Signals(-code).name}"
        else:
            status, error = "failed", f"the run's process exited with code {code} without a result"
    if status != "success":
        log_tail = _tail(log_path.read_text(errors="replace"))
        if log_tail and log_tail not in (error or ""):
            error = f"{error}\n--- log tail ---\n{log_tail}" if error else log_tail
    curve = result.get("curve") or _progress(run_dir)
    record = RunRecord(
        suite=cfg["suite"], run=cfg["run"], method=cfg["method"], status=status, error=error,
        last_step=result.get("last_step", len(curve)), config=cfg, config_hash=cfg["config_hash"],
        metrics=result.get("metrics", {}), curve=curve, merge=result.get("merge", {}), data=result.get("data", {}),
        predictions=result.get("predictions", []), environment=result.get("environment", {}),
        model_info=result.get("model_info", {}), started_at=started, finished_at=now(),
    )
    _keep_previous(out_dir, cfg["run"])
    write_record(record_path(out_dir, cfg["run"]), record)
    if status == "interrupted":
        raise KeyboardInterrupt
    return record


def _keep_previous(out_dir: Path, run: str) -> None:
    """A record about to be replaced moves to history/, so a rerun never loses what was measured before."""
    path = record_path(out_dir, run)
    if path.exists():
        history = out_dir / "history"
        history.mkdir(exist_ok=True)
        stamp = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%S")
        os.replace(path, history / f"{run}.{stamp}.json")
