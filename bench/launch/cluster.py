"""A suite on a Ray cluster: `bench run SUITE --ray [ADDRESS]`. Every run is one Ray task that does what a slot of
`--devices` does on its node (the run's own worker process with its timeout, bench.launch.runner.attempt) and sends back
the record and the run folder; the driver stores them as a sequential run would. Imported only with --ray."""

from __future__ import annotations

import io
import os
import socket
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray
from ray.exceptions import NodeDiedError, ObjectLostError, OwnerDiedError, TaskCancelledError, WorkerCrashedError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from bench.launch import runner
from bench.core.config import RunConfig
from bench.core.layout import LOG, PROGRESS, RESULT, run_path
from bench.core.records import LostAttempt, Placement, RunRecord

# What Ray raises when a task's node or worker went away, or its result did: the run itself never failed.
LOST = (NodeDiedError, WorkerCrashedError, ObjectLostError, OwnerDiedError)
POST_EVERY_S = 1.0  # how often a task sends its progress to the driver
CANCEL_WAIT_S = 60.0  # how long an interrupted task has to end its worker and send back its record


@dataclass(frozen=True)
class RayOptions:
    """`bench run --ray` and the flags beside it."""

    address: str | None = None  # None: the cluster `ray start` made on this machine, else a new local one
    shared_dir: Path | None = None  # run folders written there by the nodes instead of sent back
    retries: int = 2  # further attempts for a run whose node died or whose task Ray lost
    cpus_per_process: int = 1  # CPUs each task asks for, per process of the run (its threads)


def connect(address: str | None) -> str:
    """Join the cluster (or start a local one) and say what it has."""
    ray.init(address=address or local_address(), log_to_driver=False, logging_level="WARNING")
    nodes = [n for n in ray.nodes() if n["Alive"]]
    total = ray.cluster_resources()
    gpus = f", {total['GPU']:g} GPUs" if total.get("GPU") else ""
    return f"Ray cluster {ray.get_runtime_context().gcs_address}: {len(nodes)} nodes, {total.get('CPU', 0):g} CPUs{gpus}"


def local_address() -> str:
    """RAY_ADDRESS where set, else the cluster `ray start` made on this machine if it still answers, else "local" (a
    new cluster for this run). Ray's own lookup trusts the address `ray start` left in its temp folder even after that
    cluster died, and then waits on it for minutes (seen with ray 2.60)."""
    from ray._private.services import find_bootstrap_address

    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    found = find_bootstrap_address(None)
    if found:
        host, _, port = found.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return found
        except OSError:
            pass
    return "local"


def resources(cfg: RunConfig, options: RayOptions, gpus: bool) -> dict[str, float]:
    """What a run's task asks for: a GPU per process where the cluster has GPUs, and CPUs for its threads."""
    processes = cfg.training.distributed.num_processes if cfg.distributed else 1
    return {"num_cpus": options.cpus_per_process * processes, "num_gpus": processes if gpus else 0}


def problems(configs: list[RunConfig], options: RayOptions) -> list[str]:
    """Runs no node of the cluster has room for (they would wait forever); checked against the nodes there now."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    gpus = any(n.get("GPU") for n in nodes)
    out = []
    for cfg in configs:
        need = resources(cfg, options, gpus)
        if not any(n.get("CPU", 0) >= need["num_cpus"] and n.get("GPU", 0) >= need["num_gpus"] for n in nodes):
            most = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
            out.append(f"run {cfg.run} needs {need['num_cpus']:g} CPUs and {need['num_gpus']:g} GPUs on one node; "
                       f"the largest node has {most.get('CPU', 0):g} CPUs and {most.get('GPU', 0):g} GPUs "
                       "(lower --ray-cpus, or add a larger node)")
    return out


@ray.remote(num_cpus=0)
class Board:
    """Where tasks post which node they started on and their progress, for the driver to read (one per suite)."""

    def __init__(self) -> None:
        self.news: dict[str, dict[str, Any]] = {}

    def post(self, key: str, news: dict[str, Any]) -> None:
        self.news[key] = self.news.get(key, {}) | news

    def read(self) -> dict[str, dict[str, Any]]:
        return self.news


def _key(run: str, attempt: int) -> str:
    return f"{run}#{attempt}"


def _here(gpu_ids: list[str]) -> tuple[dict[str, Any], runner.Slot]:
    """This task's node, and a slot holding what Ray gave it: its GPUs (none: the CPU) and threads for its CPUs."""
    ctx = ray.get_runtime_context()
    node = {"host": socket.gethostname(), "ray_node": ctx.get_node_id(), "ray_node_ip": ray.util.get_node_ip_address()}
    threads = str(max(1, int(ctx.get_assigned_resources().get("CPU", 1))))
    if gpu_ids:
        env = {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids), "OMP_NUM_THREADS": threads}
        where = "cuda:" + "+".join(gpu_ids)
    else:
        env = {"BENCH_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads}
        where = "cpu"
    return node, runner.Slot(f"ray:{node['ray_node'][:8]}/{where}", env, gpus=len(gpu_ids))


def missing_inputs(cfg: RunConfig) -> list[str]:
    """The suite's local files (data, model, tokenizer, forgetting text, accelerate config) this node does not have:
    the suite resolved them to absolute paths on the driver's machine."""
    forgetting = cfg.eval.forgetting if isinstance(cfg.eval.forgetting, str) else None
    paths = [cfg.dataset.path, cfg.dataset.eval_path, cfg.model.path, cfg.model.tokenizer, forgetting,
             cfg.model.gguf if cfg.model.package is None else None,
             cfg.training.distributed.config if cfg.distributed else None]
    return [p for p in paths if p and Path(p).is_absolute() and not Path(p).exists()]


def pack(run_dir: Path) -> bytes:
    """The run folder as an uncompressed tar (adapters and checkpoints are not compressible to speak of)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(run_dir, arcname=".")
    return buf.getvalue()


def unpack(blob: bytes, run_dir: Path) -> None:
    """Into the driver's run folder, replacing the files a run rewrites, as a sequential rerun does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RESULT, PROGRESS, LOG):
        (run_dir / stale).unlink(missing_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(run_dir, filter="data")


@ray.remote(max_retries=0)  # retries are the driver's, so that each lost attempt is recorded
def run_task(cfg_json: str, attempt: int, shared_dir: str | None, board) -> tuple[str, bytes | None]:
    """One run on the node Ray chose: the record (JSON) and, without a shared folder, the run folder as a tar."""
    cfg = RunConfig.model_validate_json(cfg_json)
    node, slot = _here([str(i) for i in ray.get_gpu_ids()])
    key = _key(cfg.run, attempt)
    board.post.remote(key, {"node": node, "slot": slot.name, "points": []})
    sent = {"at": 0.0, "n": 0}

    def post(points: list) -> None:
        if len(points) != sent["n"] and time.monotonic() - sent["at"] >= POST_EVERY_S:
            board.post.remote(key, {"points": points})
            sent.update(at=time.monotonic(), n=len(points))

    where = dict(ray_node=node["ray_node"], ray_node_ip=node["ray_node_ip"], attempt=attempt)
    missing = missing_inputs(cfg)
    if missing:
        error = (f"node {node['host']} ({node['ray_node_ip']}) has no {', '.join(missing)}: every node needs the "
                 "suite's data and model files at the same path (the same checkout of the suite)")
        record = RunRecord.start(cfg, error=error, placement=Placement(node=node["host"], **where))
        return record.model_dump_json(), None
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        run_dir = run_path(Path(shared_dir or tmp), cfg.run)
        record = runner.attempt(cfg, run_dir, post, slot=slot, die_with_parent=True)
        shared = {"artifacts": str(run_dir)} if shared_dir else {}
        record = record.model_copy(update={"placement": record.placement.model_copy(update=where | shared)})
        return record.model_dump_json(), None if shared_dir else pack(run_dir)


def _placed(node: dict[str, Any] | None, attempt: int) -> Placement | None:
    """Where an attempt ran, from what its task posted on starting; None if it never started."""
    if node is None:
        return None
    return Placement(node=node["host"], ray_node=node["ray_node"], ray_node_ip=node["ray_node_ip"], attempt=attempt)


@dataclass
class Job:
    """A run and its attempts so far."""

    cfg: RunConfig
    attempt: int = 1
    lost: list[LostAttempt] = field(default_factory=list)
    started: bool = False

    @property
    def key(self) -> str:
        return _key(self.cfg.run, self.attempt)


class Driver:
    """Submits every run as a task, stores what comes back, retries lost attempts and cancels on Ctrl-C."""

    def __init__(self, out_dir: Path, options: RayOptions, on_start: Callable, on_poll: Callable,
                 on_done: Callable, on_record: Callable = lambda _c, r: r) -> None:
        self.out_dir, self.options = out_dir, options
        self.on_start, self.on_poll, self.on_done, self.on_record = on_start, on_poll, on_done, on_record
        here = ray.get_runtime_context().get_node_id()  # the board stays with the driver when other nodes die
        self.board = Board.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        self.gpus = bool(ray.cluster_resources().get("GPU"))
        self.jobs: dict[ray.ObjectRef, Job] = {}
        self.news: dict[str, dict[str, Any]] = {}

    def submit(self, job: Job) -> None:
        task = run_task.options(**resources(job.cfg, self.options, self.gpus), name=f"bench {job.key}")
        shared = str(self.options.shared_dir.resolve()) if self.options.shared_dir else None
        self.jobs[task.remote(job.cfg.model_dump_json(), job.attempt, shared, self.board)] = job

    def run(self, configs: list[RunConfig]) -> bool:
        """True when interrupted: every run in flight is then cancelled and recorded as interrupted."""
        for cfg in configs:
            self.submit(Job(cfg))
        try:
            while self.jobs:
                ready, _ = ray.wait(list(self.jobs), num_returns=len(self.jobs), timeout=0.5, fetch_local=False)
                self.follow()
                for ref in ready:
                    self.finish(ref, self.jobs.pop(ref))
        except KeyboardInterrupt:
            self.cancel()
            return True
        return False

    def follow(self) -> None:
        """Progress from the board: a run's start (and node) once, then its steps."""
        self.news = ray.get(self.board.read.remote())
        for job in self.jobs.values():
            news = self.news.get(job.key)
            if news is None:
                continue
            if not job.started:
                job.started = True
                self.on_start(job.cfg, runner.Slot(news["slot"]))
            self.on_poll(job.cfg, news["points"])

    def finish(self, ref: ray.ObjectRef, job: Job) -> None:
        try:
            record_json, blob = ray.get(ref)
        except LOST as e:
            self.lose(job, e)
            return
        except ray.exceptions.RayTaskError as e:  # the harness itself failed on the node (say, its disk is full)
            self.store(self.failed(job, e), job)
            return
        record = RunRecord.model_validate_json(record_json)
        if blob is not None:
            unpack(blob, run_path(self.out_dir, job.cfg.run))
        self.store(record, job)

    def store(self, record: RunRecord, job: Job) -> None:
        if record.placement is not None:
            record = record.model_copy(update={"placement": record.placement.model_copy(update={"lost": job.lost})})
        if not job.started:  # it finished between two looks at the board
            job.started = True
            self.on_start(job.cfg, runner.Slot(record.environment.get("slot", "ray")))
        record = self.on_record(job.cfg, record)  # the trackers' errors, as runner.execute does
        runner.store(self.out_dir, record)
        self.on_done(job.cfg, None if record.status == "interrupted" else record)

    def failed(self, job: Job, e: Exception) -> RunRecord:
        where = _placed(self.news.get(job.key, {}).get("node"), job.attempt)
        return RunRecord.start(job.cfg, placement=where, error=f"the run's Ray task failed: {e}")

    def lose(self, job: Job, e: Exception) -> None:
        """Record the lost attempt; try again while attempts are left, else store the run as lost."""
        node = self.news.get(job.key, {}).get("node")
        name = f"{node['host']} ({node['ray_node_ip']}, Ray node {node['ray_node']})" if node else None
        error = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
        job.lost.append(LostAttempt(attempt=job.attempt, node=name, error=error))
        if job.attempt <= self.options.retries:
            job.attempt, job.started = job.attempt + 1, False
            self.submit(job)
            return
        where = _placed(node, job.attempt)
        tries = len(job.lost)
        record = RunRecord.start(job.cfg, status="lost", placement=where, error=(
            f"lost on all {tries} attempt(s): " + "; ".join(f"attempt {a.attempt} on {a.node or 'no node yet'}: "
                                                            f"{a.error}" for a in job.lost)))
        self.store(record, job)

    def cancel(self) -> None:
        """Ctrl-C: cancel every task; one that had started ends its worker and sends back its interrupted record
        (or, when Ray drops it, the driver records it from the progress it had); one still queued leaves none."""
        for ref in self.jobs:
            ray.cancel(ref)
        for ref, job in self.jobs.items():
            try:
                record_json, blob = ray.get(ref, timeout=CANCEL_WAIT_S)
            except (TaskCancelledError, *LOST, ray.exceptions.GetTimeoutError):
                news = self.news.get(job.key)
                if news is None:
                    continue
                record = RunRecord.start(job.cfg, status="interrupted", curve=news["points"],
                                         last_step=len(news["points"]),
                                         error="interrupted by the user (Ctrl-C); rerun the suite to resume",
                                         placement=_placed(news["node"], job.attempt))
            else:
                record = RunRecord.model_validate_json(record_json)
                if blob is not None:
                    unpack(blob, run_path(self.out_dir, job.cfg.run))
            self.store(record, job)


def run_all(configs: list[RunConfig], out_dir: Path, options: RayOptions, on_start: Callable, on_poll: Callable,
            on_done: Callable, on_record: Callable = lambda _c, r: r) -> bool:
    """runner.run_all's contract on a Ray cluster (connected already): True when interrupted."""
    return Driver(out_dir, options, on_start, on_poll, on_done, on_record).run(configs)
