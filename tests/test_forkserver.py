"""The fork server (bench/launch/forkserver.py): runs forked from one pre-imported process still cost only themselves when
killed, crashed or timed out; the server holds no CUDA context; and its records equal those of spawned runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from bench.core.records import load_records, result_differences
from tests.conftest import ROOT

# The runner in a process of its own, its fork server preloading tests/faults.py beside the worker.
RUN_ALL = """
import sys
from pathlib import Path
from bench.launch import forkserver, runner
from bench.spec.suite import load_suite
forkserver.PRELOAD.append("tests.faults")
configs = load_suite(sys.argv[1]).resolved_runs()
runner.run_all(configs, Path(sys.argv[2]), [None])
"""

SUITE = """
name: forked
version: 1
model: {{preset: tiny-llama}}
dataset: {{path: {data}, eval_size: 8}}
budget: {{max_steps: 3}}
training: {{learning_rate: 1e-3, batch_size: 4, max_seq_len: 384}}
eval: {{max_examples: 4, batch_size: 4, max_new_tokens: 4}}
baseline: false
runs:
  - {{method: lora, name: crash}}
  - {{method: lora, name: killed}}
  - {{method: lora, name: hang, training: {{timeout_s: 6}}}}
  - {{method: lora}}
"""


def worker_of(folder) -> psutil.Process | None:
    """The run's process, found as a user finds it: by its title, `python -m bench.run.worker CONFIG RUN_DIR`."""
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if "bench.run.worker" in line and str(folder) in line:
            return p
    return None


@pytest.mark.fast  # the fast tier's one end-to-end run: runner, fork server, worker, records
def test_a_killed_a_crashed_and_a_timed_out_run_cost_only_themselves_under_the_fork_server(tmp_path):
    suite, out = tmp_path / "forked.yaml", tmp_path / "results"
    suite.write_text(SUITE.format(data=ROOT / "data" / "smoke.jsonl"))
    proc = subprocess.Popen([sys.executable, "-c", RUN_ALL, str(suite), str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline, killed = time.time() + 300, None
    while killed is None and time.time() < deadline and proc.poll() is None:
        killed = worker_of(out / "killed")
        time.sleep(0.2)
    assert killed is not None, "the killed run's process should be running by now"
    server = killed.parent()
    assert "multiprocessing.forkserver" in " ".join(server.cmdline()), "the run is a child of the fork server"
    time.sleep(1)  # into its training stage
    killed.send_signal(signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout
    records = {r.run: r for r in load_records(out)}
    assert {r: records[r].environment["process"] for r in records} == dict.fromkeys(
        ["crash", "killed", "hang", "lora"], "fork server")
    assert records["crash"].status == "failed" and "exited with code 3 without a result" in records["crash"].error
    assert records["killed"].status == "killed" and "SIGKILL" in records["killed"].error
    assert records["hang"].status == "timeout" and "timeout of 6 s" in records["hang"].error
    lora = records["lora"]
    assert lora.status == "success" and lora.last_step == 3 and lora.metrics["trainable_params"] > 0
    # The server ends once the runner's end closes its pipe: a moment after the runner, not before.
    _, alive = psutil.wait_procs([server], timeout=30)
    assert not alive or server.status() == psutil.STATUS_ZOMBIE, "the fork server outlived the runner"
    assert worker_of(out) is None, "no run's process outlives the runner"


CHILD = """
import json, sys
from bench.launch import forkserver
forkserver.SERVER.start()
forkserver.SERVER.fork(["tests.child_report", sys.argv[1]], dict(__import__("os").environ), sys.argv[2]).wait()
"""


@pytest.mark.worker
def test_the_fork_server_preloads_the_worker_and_holds_no_cuda_context(tmp_path):
    report, log = tmp_path / "child.json", tmp_path / "log.txt"
    log.write_text("")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(report), str(log)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr + log.read_text()
    seen = json.loads(report.read_text())
    # datasets is left out: only a Hub dataset needs it, and every run's resident figures would carry its pages.
    assert seen["preloaded"] == {"torch": True, "transformers": True, "peft": True, "bitsandbytes": True,
                                 "bench.run.worker": True, "datasets": False}
    # Nothing in the server initialised CUDA: the child could use a GPU (torch would refuse one in a bad fork).
    assert seen["cuda_initialized"] is False and seen["bad_fork"] is False
    assert seen["session_leader"] is True and seen["title"].endswith(f"-m tests.child_report {report}")


@pytest.mark.worker
def test_records_from_the_fork_server_equal_spawned_runs_on_the_smoke_suite(smoke_results, tmp_path):
    forked_dir, _ = smoke_results
    spawned_dir = tmp_path / "spawned"
    env = {**os.environ, "BENCH_FORK_SERVER": "0"}
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(ROOT / "suites" / "smoke.yaml"), "--output",
                           str(spawned_dir), "--no-report"], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "runs start as fresh processes instead of from the fork server: BENCH_FORK_SERVER=0" in proc.stderr
    forked = {r.run: r for r in load_records(forked_dir)}
    spawned = {r.run: r for r in load_records(spawned_dir)}
    assert sorted(forked) == sorted(spawned)
    for run, f in forked.items():
        s = spawned[run]
        assert f.environment["process"] == "fork server"
        assert s.environment["process"] == "spawn: BENCH_FORK_SERVER=0"
        assert result_differences(f, s) == [], run
    # The comparison itself can fail: a record with one changed loss, score, answer or merge figure differs.
    f = forked["lora"]
    changed = [f.model_copy(update={"curve": [{**f.curve[0], "loss": f.curve[0]["loss"] + 1e-9}, *f.curve[1:]]}),
               f.model_copy(update={"metrics": {**f.metrics, "token_f1": f.metrics["token_f1"] + 1e-9}}),
               f.model_copy(update={"predictions": [f.predictions[0].model_copy(update={"prediction": "x"}),
                                                    *f.predictions[1:]]}),
               f.model_copy(update={"merge": f.merge.model_copy(update={"max_abs_logit_diff": 1.0})})]
    assert [len(result_differences(f, c)) for c in changed] == [1, 1, 1, 1]
