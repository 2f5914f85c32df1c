"""A suite on a real two-node Ray cluster on loopback (ray.cluster_utils.Cluster): the records equal the sequential
run's, a node killed mid-run costs one recorded attempt, and an interrupted driver resumes with what is missing."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.core.records import load_records, read_record
from tests.conftest import ROOT, assert_same_record, default_sigint

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.worker  # every test here starts worker processes (tests/conftest.py: the tiers)

# The machine has 2 cores and 24 GiB: one CPU per node (one run at a time each) and a small object store.
NODE = {"num_cpus": 1, "object_store_memory": 100 * 1024**2}
SMOKE = ROOT / "suites" / "smoke.yaml"
# Runs of the smoke suite that cover each kind of artifact: none (baseline), an adapter, prompt learning, a whole
# model (full fine-tuning).
SUBSET = ("baseline", "lora", "prefix_tuning", "full")


@pytest.fixture(scope="module")
def cluster():
    """A head node without CPUs (it holds the driver's board, never a run) and two one-CPU nodes for the runs."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * 1024**2,
                                                      "include_dashboard": False})
    for _ in range(2):
        c.add_node(**NODE)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def bench_run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "bench", "run", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


SUITE = """
name: ray
version: 1
model: {{preset: tiny-llama}}
dataset: {{path: {data}, eval_size: 8}}
budget: {{max_steps: {steps}}}
training: {{learning_rate: 1e-3, batch_size: 4, max_seq_len: 384}}
eval: {{max_examples: 8, batch_size: 8, max_new_tokens: 8}}
baseline: {baseline}
output: {out}
runs:
{runs}
"""
# Each optimiser step accumulates this many micro-batches: a run long enough (about 20 s) to act in the middle of.
SLOW = 60


def write_suite(tmp_path: Path, runs: str, baseline: bool = False, steps: int = 6) -> tuple[Path, Path]:
    out = tmp_path / "results"
    path = tmp_path / "ray.yaml"
    path.write_text(SUITE.format(data=ROOT / "data" / "smoke.jsonl", out=out, runs=runs,
                                 baseline=str(baseline).lower(), steps=steps))
    return path, out


def worker_of(run: str) -> psutil.Process | None:
    """The worker process of a run on a node: its run folder is in a bench-ray-* temporary folder."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "bench.run.worker" in cmd and cmd[-1].endswith(f"/{run}") and "bench-ray-" in cmd[-1]:
            return p
    return None


def steps_done(worker: psutil.Process) -> int:
    progress = Path(worker.cmdline()[-1]) / "progress.jsonl"
    return progress.read_text().count("\n") if progress.exists() else 0


def wait_for_steps(runs: list[str], steps: int, timeout: float = 300) -> dict[str, psutil.Process]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        workers = {r: worker_of(r) for r in runs}
        if all(w is not None and steps_done(w) >= steps for w in workers.values()):
            return workers
        time.sleep(0.3)
    raise AssertionError(f"runs {runs} did not reach step {steps} in {timeout} s")


def node_of(c: Cluster, worker: psutil.Process):
    """The cluster node whose raylet the worker's Ray task descends from."""
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in c.list_all_nodes()}
    for parent in worker.parents():
        if parent.pid in raylets:
            return raylets[parent.pid]
    raise AssertionError(f"worker {worker.pid} runs under no raylet of the cluster")


def test_smoke_runs_through_ray_give_the_sequential_records(cluster, smoke_results, tmp_path):
    sequential, _ = smoke_results
    out = tmp_path / "ray"
    result = bench_run(SMOKE, "--output", out, "--only", *SUBSET, "--ray", cluster.address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on the Ray cluster" in result.stdout and "3 nodes, 2 CPUs" in result.stdout
    before = {r.run: r for r in load_records(sequential)}
    after = {r.run: r for r in load_records(out)}
    assert sorted(after) == sorted(SUBSET)
    for run, r in after.items():
        b = before[run]
        assert_same_record(r, b, run)
        where = r.placement
        assert where.attempt == 1 and where.lost == [] and where.device_ids == []
        assert where.ray_node in {n.node_id for n in cluster.worker_nodes}
        assert where.device_name == b.environment["device"] == r.environment["device"]
        assert r.environment["slot"] == f"ray:{where.ray_node[:8]}/cpu" and r.environment["threads"] == 1
        # The run folder came back beside the record, as a sequential run leaves it.
        files = {p.relative_to(out / run).as_posix() for p in (out / run).rglob("*") if p.is_file()}
        expected = {p.relative_to(sequential / run).as_posix() for p in (sequential / run).rglob("*") if p.is_file()}
        assert files == expected, run
    assert (out / "lora" / "adapter" / "adapter_model.safetensors").stat().st_size == \
        (sequential / "lora" / "adapter" / "adapter_model.safetensors").stat().st_size
    assert (out / "full" / "model" / "model.safetensors").is_file()
    # Both run nodes took runs, and the report groups the runs by the machine (one here) that ran them.
    assert len({r.placement.ray_node for r in after.values()}) == 2
    report = (out / "report.md").read_text()
    assert "| machine |" in report


def test_a_node_killed_mid_run_is_recorded_and_the_run_retried_elsewhere(cluster, tmp_path):
    runs = (f"  - {{method: lora, training: {{grad_accum: {SLOW}}}}}\n"
            "  - {method: ia3, training: {learning_rate: 1e-2}}\n")
    suite, out = write_suite(tmp_path, runs)
    driver = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--ray", cluster.address,
                               "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lora = wait_for_steps(["lora"], 2)["lora"]
    doomed = node_of(cluster, lora)
    left_behind = Path(lora.cmdline()[-1]).parent  # a dead node's temporary folder is nobody's to remove
    cluster.remove_node(doomed, allow_graceful=False)
    cluster.add_node(**NODE)  # the fixture's cluster keeps two run nodes for the next test
    stdout, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, stdout
    records = {r.run: r for r in load_records(out)}
    assert records["ia3"].status == "success" and records["ia3"].placement.attempt == 1
    r = records["lora"]
    assert r.status == "success" and len(r.curve) == 6, r.error
    assert r.placement.attempt == 2 and r.placement.ray_node != doomed.node_id
    (lost,) = r.placement.lost
    assert lost.attempt == 1 and doomed.node_id in lost.node and lost.error.startswith("NodeDiedError: ")
    # The lost attempt's worker died with its node (PR_SET_PDEATHSIG), instead of training on as an orphan.
    assert not lora.is_running()
    shutil.rmtree(left_behind)


def test_a_run_lost_on_every_attempt_it_may_have_is_recorded_as_lost(cluster, tmp_path):
    suite, out = write_suite(tmp_path, f"  - {{method: lora, training: {{grad_accum: {SLOW}}}}}\n")
    driver = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--ray", cluster.address,
                               "--ray-retries", "0", "--no-report"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lora = wait_for_steps(["lora"], 1)["lora"]
    doomed, left_behind = node_of(cluster, lora), Path(lora.cmdline()[-1]).parent
    cluster.remove_node(doomed, allow_graceful=False)
    cluster.add_node(**NODE)
    stdout, _ = driver.communicate(timeout=300)
    assert driver.returncode == 1, stdout  # a run did not succeed
    (r,) = load_records(out)
    assert r.status == "lost" and r.placement.ray_node == doomed.node_id and r.placement.attempt == 1
    assert r.error.startswith("lost on all 1 attempt(s): attempt 1 on ") and doomed.node_id in r.error
    assert "NodeDiedError" in r.error and len(r.placement.lost) == 1
    shutil.rmtree(left_behind)


def test_an_interrupted_driver_records_runs_in_flight_and_a_rerun_does_only_what_is_missing(cluster, tmp_path):
    # Many short steps rather than a few long ones: as long a rerun, but more of it left after the step the test
    # waits for, so a Ctrl-C that a loaded machine (pytest -n 2) delivers late still finds both runs training.
    runs = (f"  - {{method: lora, training: {{grad_accum: {SLOW // 4}}}}}\n"
            f"  - {{method: ia3, training: {{learning_rate: 1e-2, grad_accum: {SLOW // 4}}}}}\n"
            "  - {method: head_only, training: {learning_rate: 1e-2}}\n")
    suite, out = write_suite(tmp_path, runs, baseline=True, steps=24)
    driver = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--ray", cluster.address],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                              preexec_fn=default_sigint)
    # The baseline finishes first, on one node; lora and ia3 then train, one on each node; head_only waits.
    workers = wait_for_steps(["lora", "ia3"], 2)
    assert read_record(out / "baseline.json").status == "success"
    driver.send_signal(signal.SIGINT)
    stdout, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, stdout
    records = {r.run: r for r in load_records(out)}
    assert sorted(records) == ["baseline", "ia3", "lora"]  # head_only never started
    for run in ("ia3", "lora"):
        r = records[run]
        assert r.status == "interrupted" and r.last_step >= 2 and len(r.curve) >= 2, (run, r.error)
        assert r.placement.ray_node in {n.node_id for n in cluster.worker_nodes}
        assert not workers[run].is_running(), "a cancelled task ends its worker"
    finished = (out / "baseline.json").read_bytes()
    # Restarted: the baseline is up to date and kept; the interrupted runs and the one never started run.
    result = bench_run(suite, "--ray", cluster.address, "--no-report")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skip baseline: up to date" in result.stdout and "3 run(s) to do" in result.stdout
    assert (out / "baseline.json").read_bytes() == finished
    records = {r.run: r for r in load_records(out)}
    assert all(r.status == "success" for r in records.values())
    history = sorted(p.name.split(".")[0] for p in (out / "history").glob("*.json"))
    assert history == ["ia3", "lora"]  # the interrupted records, kept


def test_shared_dir_keeps_run_folders_where_the_nodes_wrote_them(cluster, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    out = tmp_path / "results"
    result = bench_run(SMOKE, "--output", out, "--only", "lora", "--ray", cluster.address, "--ray-shared-dir",
                       shared, "--no-report")
    assert result.returncode == 0, result.stdout + result.stderr
    record = read_record(out / "lora.json")
    assert record.placement.artifacts == str(shared / "lora")
    assert (shared / "lora" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((shared / "lora" / "config.json").read_text())["run"] == "lora"
    assert not (out / "lora").exists()  # nothing was sent back


def test_a_run_no_node_has_room_for_is_refused_before_anything_starts(cluster, tmp_path):
    runs = "  - {method: lora, training: {distributed: {num_processes: 2}}}\n"
    suite, out = write_suite(tmp_path, runs)
    result = bench_run(suite, "--ray", cluster.address)
    assert result.returncode == 2
    assert ("--ray: run lora needs 2 CPUs and 0 GPUs on one node; the largest node has 1 CPUs and 0 GPUs (lower "
            "--ray-cpus, or add a larger node)") in " ".join(result.stderr.split())
    assert load_records(out) == []
