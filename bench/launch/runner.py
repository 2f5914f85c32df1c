"""The runner: each run in a fresh process with a timeout; its outcome, whatever it is, becomes one record. Runs
go one at a time, or in parallel over device slots (`bench run --devices`); a distributed run's process is
`accelerate launch` and the worker processes it starts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import psutil

from bench.launch import forkserver
from bench.core.config import RunConfig
from bench.core.layout import CONFIG, LOG, PROGRESS, RESULT, read_progress, run_path
from bench.core.records import Placement, RecordError, RunRecord, read_record, record_path, write_record

# Written into the run folder when the suite names no accelerate config: plain DDP on this machine. accelerate starts
# its processes through torchrun only for a multi-GPU type; on a CPU the worker asks for gloo (bench.run.worker).
DDP_CONFIG = """\
# Written by bench.launch.runner: training.distributed names no accelerate config, so this run is plain DDP on one machine.
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 1
machine_rank: 0
num_processes: {num_processes}
main_process_port: 0  # a free port: parallel runs on one machine must not share one
gpu_ids: all
mixed_precision: 'no'  # precision is the suite's training.precision, applied by the worker
dynamo_config: {{}}
"""



def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Decision:
    """Whether `bench run` runs a config or skips it, and why."""

    config: RunConfig
    action: str  # "run" or "skip"
    why: str


def plan(configs: list[RunConfig], out_dir: Path, force: bool = False,
         only: list[str] | None = None) -> list[Decision]:
    """What to run: a run whose successful record matches its resolved config is skipped unless forced. `only`
    names runs, methods or suite entries (an entry's name selects all its seeds)."""
    plans = []
    for cfg in configs:
        if only and not {cfg.run, cfg.method, cfg.group} & set(only):
            continue
        path = record_path(out_dir, cfg.run)
        if force:
            plans.append(Decision(cfg, "run", "forced"))
            continue
        if not path.exists():
            plans.append(Decision(cfg, "run", "no record yet"))
            continue
        try:
            old = read_record(path)
        except RecordError:
            plans.append(Decision(cfg, "run", "unreadable record"))
            continue
        if old.status != "success":
            plans.append(Decision(cfg, "run", f"last run {old.status}"))
        elif old.config_hash != cfg.config_hash:
            plans.append(Decision(cfg, "run", "config changed"))
        else:
            plans.append(Decision(cfg, "skip", "up to date"))
    return plans


def warm_up(configs: list[RunConfig], out_dir: Path, force: bool = False, only: list[str] | None = None) -> None:
    """Start the fork server's imports now, beside the runner's own preparations, when a run will fork from it."""
    if any(p.action == "run" and not p.config.distributed for p in plan(configs, out_dir, force, only)):
        forkserver.SERVER.start()


@dataclass(frozen=True)
class Slot:
    """Where one run at a time goes: GPUs (CUDA_VISIBLE_DEVICES) or the CPU, with its share of the cores."""

    name: str  # "cuda:1", "cuda:0+1", "cpu#0": the record's environment.slot
    env: dict[str, str] = field(default_factory=dict)
    gpus: int = 0


class DevicesError(ValueError):
    """A --devices value that names no usable set of slots."""


def parse_devices(spec: str, cores: int | None = None) -> list[Slot]:
    """`--devices`: comma-separated slots, each a GPU index, GPUs joined by '+' (one run on the group), or 'cpu'.
    Every slot gets an equal share of the cores as its thread count, so parallel workers do not oversubscribe."""
    parts = [p.strip() for p in spec.split(",")]
    cores = cores or len(os.sched_getaffinity(0))
    threads = str(max(1, cores // len(parts)))
    slots: list[Slot] = []
    taken: set[str] = set()
    for part in parts:
        if part == "cpu":
            n = sum(s.gpus == 0 for s in slots)
            env = {"BENCH_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads}
            slots.append(Slot(f"cpu#{n}", env))
            continue
        ids = part.split("+")
        if not all(i.isdigit() for i in ids):
            raise DevicesError(f"--devices {spec}: '{part}' is not a GPU index, GPUs joined by '+' (e.g. 0+1) or 'cpu'")
        twice = sorted(taken & set(ids) | {i for i in ids if ids.count(i) > 1}, key=int)
        if twice:
            raise DevicesError(f"--devices {spec}: GPU {', '.join(twice)} is named twice; a GPU belongs to one slot")
        taken |= set(ids)
        slots.append(Slot("cuda:" + "+".join(ids), {"CUDA_VISIBLE_DEVICES": ",".join(ids), "OMP_NUM_THREADS": threads},
                          gpus=len(ids)))
    return slots


def slot_problems(configs: list[RunConfig], slots: list[Slot]) -> list[str]:
    """Distributed runs that a GPU slot is too small for: plain DDP puts one process on each GPU of the slot."""
    problems = []
    for cfg in configs:
        dist = cfg.training.distributed
        if not cfg.distributed or dist.config is not None:
            continue
        small = [s.name for s in slots if 0 < s.gpus < dist.num_processes]
        if small:
            problems.append(f"run {cfg.run} trains on {dist.num_processes} processes, one per GPU, but slot "
                            f"{', '.join(small)} has fewer GPUs: group them with '+', e.g. --devices 0+1,2+3")
    return problems


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def worker_command(cfg: RunConfig, cfg_path: Path, run_dir: Path) -> list[str]:
    """The run's process: the worker, or for a distributed run `accelerate launch` starting one worker per process
    with the accelerate config copied into the run folder (DDP on this machine when the suite names none)."""
    worker = ["-m", "bench.run.worker", str(cfg_path), str(run_dir)]
    if not cfg.distributed:
        return [sys.executable, *worker]
    dist = cfg.training.distributed
    launch_config = run_dir / "accelerate.yaml"
    if dist.config is None:
        launch_config.write_text(DDP_CONFIG.format(num_processes=dist.num_processes))
    else:
        launch_config.write_bytes(Path(dist.config).read_bytes())
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config),
            "--num_processes", str(dist.num_processes), *worker]


def _parent_death_signal() -> Callable[[], None]:
    """For the child, between fork and exec: Linux's prctl(PR_SET_PDEATHSIG, SIGKILL), so the kernel kills it when
    the thread that started it dies (libc is looked up before the fork)."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def _kill(proc: subprocess.Popen | forkserver.Forked) -> None:
    """SIGKILL the run's process group, and the worker processes torchrun starts in sessions of their own."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # a forked run killed before its first line made it a group of its own
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def execute(cfg: RunConfig, out_dir: Path, on_poll: Callable[[list], None] = lambda _: None,
            env: dict[str, str] | None = None, slot: Slot | None = None,
            stop: threading.Event | None = None,
            on_record: Callable[[RunRecord], RunRecord] = lambda r: r) -> RunRecord:
    """Run one config in its own process and return its record (already written to disk). `slot` says where (its
    environment variables, recorded as environment.slot); `stop` set by another thread ends it like Ctrl-C;
    `on_record` sees the finished record before it is written and returns it, amended (the trackers' errors)."""
    record = on_record(attempt(cfg, run_path(out_dir, cfg.run), on_poll, env, slot, stop))
    store(out_dir, record)
    if record.status == "interrupted":
        raise KeyboardInterrupt
    return record


def attempt(cfg: RunConfig, run_dir: Path, on_poll: Callable[[list], None] = lambda _: None,
            env: dict[str, str] | None = None, slot: Slot | None = None,
            stop: threading.Event | None = None, die_with_parent: bool = False) -> RunRecord:
    """Run one config's process in `run_dir` (the run's artifacts stay there) and return its record, complete with
    timing and where it ran, without storing it: a Ray task runs this on its node (bench.launch.cluster), with
    `die_with_parent` so that a Ray worker killed with its node takes the run's process with it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT, PROGRESS, LOG):
        (run_dir / stale).unlink(missing_ok=True)
    cfg_path = run_dir / CONFIG
    cfg_path.write_text(cfg.model_dump_json(indent=2))
    started, t0 = now(), time.monotonic()
    env = {**(slot.env if slot else {}), **(env or {})}
    if cfg.distributed and "OMP_NUM_THREADS" in env:  # the slot's threads are shared by the run's processes
        per_process = int(env["OMP_NUM_THREADS"]) // cfg.training.distributed.num_processes
        env["OMP_NUM_THREADS"] = str(max(1, per_process))
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, **env}
    with (run_dir / LOG).open("w") as log:
        proc, how = start(cfg, cfg_path, run_dir, env, log, die_with_parent)
        ended = _watch(proc, cfg.training.timeout_s, run_dir, on_poll, stop)
    record = _outcome(cfg, proc, ended, run_dir)
    return record.model_copy(update={
        "started_at": started, "finished_at": now(), "wall_seconds": time.monotonic() - t0,
        "environment": record.environment | {"process": how} | ({"slot": slot.name} if slot else {}),
        "placement": placement(cfg, record, env)})


def start(cfg: RunConfig, cfg_path: Path, run_dir: Path, env: dict[str, str], log,
          die_with_parent: bool = False) -> tuple[subprocess.Popen | forkserver.Forked, str]:
    """The run's process, and how it started (the record's environment.process): forked from the fork server, which
    has imported the worker once, or spawned where a fork cannot be the same run (bench.launch.forkserver says when)."""
    if cfg.distributed:
        why = "accelerate launch starts the run's processes"
    elif die_with_parent:
        why = "the run's process must die with the Ray worker that started it"
    else:
        why = forkserver.SERVER.refusal(env)
        if why is None:
            try:
                return forkserver.SERVER.fork(["bench.run.worker", str(cfg_path), str(run_dir)], env, log.name), \
                    "fork server"
            except forkserver.ForkRefused as e:
                why = str(e)
        forkserver.SERVER.note(why)
    proc = subprocess.Popen(
        worker_command(cfg, cfg_path, run_dir),
        # Idle OpenMP threads spin by default; on a shared 2-core machine that slowed runs up to 100x.
        stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,  # Ctrl-C reaches the runner alone; it ends the worker itself
        preexec_fn=_parent_death_signal() if die_with_parent else None,
    )
    return proc, f"spawn: {why}"


def placement(cfg: RunConfig, record: RunRecord, env: dict[str, str]) -> Placement:
    """The machine and devices the run's process had: CUDA_VISIBLE_DEVICES as it was given (a run on a GPU without
    it uses the first GPU, or one per process for a distributed run); none on the CPU."""
    device_type = record.environment.get("device_type")
    ids: list[str] = []
    if device_type == "cuda":
        given = env.get("CUDA_VISIBLE_DEVICES")
        processes = cfg.training.distributed.num_processes if cfg.distributed else 1
        ids = given.split(",") if given else [str(i) for i in range(processes)]
    return Placement(node=socket.gethostname(), device_ids=ids, device_name=record.environment.get("device"))


def store(out_dir: Path, record: RunRecord) -> None:
    """Write a run's record into the results folder, the one it replaces moved to history/."""
    _keep_previous(out_dir, record.run)
    write_record(record_path(out_dir, record.run), record)


def _watch(proc: subprocess.Popen | forkserver.Forked, timeout: float, run_dir: Path, on_poll: Callable[[list], None],
           stop: threading.Event | None) -> tuple[str, str] | None:
    """Wait for the run's process; (status, error) when the runner ended it (timeout, Ctrl-C), else None."""
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                _kill(proc)
                return "timeout", f"run exceeded its timeout of {timeout:.0f} s"
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            on_poll(read_progress(run_dir))
            time.sleep(0.5)
    except KeyboardInterrupt:
        _kill(proc)
        return "interrupted", "interrupted by the user (Ctrl-C); rerun the suite to resume"
    return None


def _outcome(cfg: RunConfig, proc: subprocess.Popen | forkserver.Forked, ended: tuple[str, str] | None,
             run_dir: Path) -> RunRecord:
    """The worker's own record where it left one; otherwise one saying how the process ended, with the steps its
    progress file holds. A run that did not succeed carries the tail of its log."""
    result = run_dir / RESULT
    if ended is None and result.exists():
        try:
            record = read_record(result)
        except RecordError as e:
            record = RunRecord.start(cfg, error=f"the worker's record could not be read: {e}")
    else:
        status, error = ended or _exit_status(proc.returncode)
        record = RunRecord.start(cfg, status=status, error=error)
    if not record.curve:
        curve = read_progress(run_dir)
        record = record.model_copy(update={"curve": curve, "last_step": record.last_step or len(curve)})
    if record.status != "success":
        log_tail = _tail((run_dir / LOG).read_text(errors="replace"))
        error = record.error
        if log_tail and log_tail not in (error or ""):
            error = f"{error}\n--- log tail ---\n{log_tail}" if error else log_tail
        record = record.model_copy(update={"error": error})
    return record


def _exit_status(code: int) -> tuple[str, str]:
    if code < 0 and -code == signal.SIGKILL:
        return "killed", "the run's process was killed (SIGKILL: by a user, or by the kernel when memory ran out)"
    if code < 0:
        return "failed", f"the run's process died from signal {signal.Signals(-code).name}"
    return "failed", f"the run's process exited with code {code} without a result"


def run_all(configs: list[RunConfig], out_dir: Path, slots: list[Slot | None],
            on_start: Callable[[dict, Slot | None], None] = lambda _c, _s: None,
            on_poll: Callable[[dict, list], None] = lambda _c, _p: None,
            on_done: Callable[[dict, RunRecord | None], None] = lambda _c, _r: None,
            on_record: Callable[[RunConfig, RunRecord], RunRecord] = lambda _c, r: r) -> bool:
    """Run configs in order over the slots, each slot one run at a time (one slot, None: one after another, as the
    runner always has). Records and resume are exactly those of `execute` (`on_record` is its hook, with the
    config). Returns True when interrupted (Ctrl-C):
    every run in progress is recorded as interrupted (on_done gets None), and no further run starts."""
    queue = deque(configs)
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def slot_loop(slot: Slot | None) -> None:
        while not stop.is_set():
            with lock:
                if not queue:
                    return
                cfg = queue.popleft()
            on_start(cfg, slot)
            try:
                record = execute(cfg, out_dir, on_poll=lambda points: on_poll(cfg, points), slot=slot, stop=stop,
                                 on_record=lambda r: on_record(cfg, r))
            except KeyboardInterrupt:
                on_done(cfg, None)
                return
            except BaseException as e:  # e.g. the results folder became unwritable: stop every slot, re-raise below
                errors.append(e)
                stop.set()
                return
            on_done(cfg, record)

    threads = [threading.Thread(target=slot_loop, args=(s,), daemon=True) for s in slots]
    for t in threads:
        t.start()
    interrupted = False
    while any(t.is_alive() for t in threads):
        try:
            for t in threads:
                t.join(timeout=0.2)
        except KeyboardInterrupt:  # SIGINT reaches the main thread only; the slots see `stop`
            interrupted = True
            stop.set()
    if errors:
        raise errors[0]
    return interrupted


def _keep_previous(out_dir: Path, run: str) -> None:
    """A record about to be replaced moves to history/, so a rerun never loses what was measured before."""
    path = record_path(out_dir, run)
    if path.exists():
        history = out_dir / "history"
        history.mkdir(exist_ok=True)
        stamp = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%S")
        os.replace(path, run_path(history, run, f".{stamp}.json"))
