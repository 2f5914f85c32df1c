"""Faults cost one run at most: a killed, diverged or timed-out run is recorded, the suite goes on, resume finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from bench.core.records import load_records
from tests.conftest import ROOT, default_sigint

pytestmark = pytest.mark.worker  # every test here starts worker processes (tests/conftest.py: the tiers)

SUITE = """
name: faults
version: 1
model: {{preset: tiny-llama}}
dataset: {{path: {data}, eval_size: 8}}
budget: {{max_steps: {steps}}}
training: {{learning_rate: 1e-3, batch_size: 4, max_seq_len: 384}}
eval: {{max_examples: 4, batch_size: 4, max_new_tokens: 4}}
baseline: false
output: {out}
runs:
{runs}
"""


def write_suite(tmp_path, runs: str, steps: int = 6) -> tuple:
    out = tmp_path / "results"
    path = tmp_path / "faults.yaml"
    path.write_text(SUITE.format(data=ROOT / "data" / "smoke.jsonl", out=out, steps=steps, runs=runs))
    return path, out


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "bench", "run", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_sigkill_mid_training_is_recorded_the_suite_goes_on_and_resume_finishes_only_that_run(tmp_path):
    suite, out = write_suite(tmp_path, "  - method: full\n  - method: lora\n  - method: ia3\n", steps=100)
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    progress = out / "lora" / "progress.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (progress.exists() and len(progress.read_text().splitlines()) >= 5):
        time.sleep(0.1)
    workers = [p for p in psutil.process_iter(["cmdline"])
               if "bench.run.worker" in " ".join(p.info["cmdline"] or []) and str(out / "lora") in " ".join(p.info["cmdline"])]
    assert len(workers) == 1, "the lora run's worker process should be running now"
    workers[0].send_signal(signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, stdout
    records = {r.run: r for r in load_records(out)}
    assert records["full"].status == "success" and records["ia3"].status == "success"
    killed = records["lora"]
    assert killed.status == "killed" and "SIGKILL" in killed.error
    assert killed.last_step >= 5 and len(killed.curve) >= 5  # the partial curve survives
    full_before = (out / "full.json").read_bytes()

    again = run_cli(suite)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 run(s) to do" in again.stdout and "skip full: up to date" in again.stdout
    records = {r.run: r for r in load_records(out)}
    assert sorted(records) == ["full", "ia3", "lora"] and all(r.status == "success" for r in records.values())
    assert (out / "full.json").read_bytes() == full_before
    # The killed attempt is kept, not lost.
    history = [json.loads(p.read_text()) for p in (out / "history").glob("lora.*.json")]
    assert [h["status"] for h in history] == ["killed"]


def test_ctrl_c_records_the_run_as_interrupted_writes_nothing_half_and_the_next_invocation_resumes(tmp_path):
    suite, out = write_suite(tmp_path, "  - method: full\n  - method: lora\n  - method: ia3\n", steps=60)
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the CLI and its worker alike.
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=default_sigint)
    progress = out / "lora" / "progress.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (progress.exists() and len(progress.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    assert progress.exists(), "the lora run should be training by now"
    os.killpg(proc.pid, signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout
    assert "Interrupted" in stdout and "Rerun the same command to resume" in stdout
    records = {r.run: r for r in load_records(out)}
    assert sorted(records) == ["full", "lora"], "the suite stops at the interrupted run"
    assert records["full"].status == "success"
    stopped = records["lora"]
    assert stopped.status == "interrupted" and "Ctrl-C" in stopped.error
    assert stopped.last_step >= 3 and len(stopped.curve) >= 3
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".*.json.*")), "no half-written file is left"
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])], \
        "no worker outlives the interrupted suite"
    full_before = (out / "full.json").read_bytes()

    again = run_cli(suite)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 run(s) to do" in again.stdout and "skip full: up to date" in again.stdout
    records = {r.run: r for r in load_records(out)}
    assert sorted(records) == ["full", "ia3", "lora"] and all(r.status == "success" for r in records.values())
    assert (out / "full.json").read_bytes() == full_before
    assert [json.loads(p.read_text())["status"] for p in (out / "history").glob("lora.*.json")] == ["interrupted"]


def test_nan_loss_stops_the_run_at_once_as_diverged(tmp_path):
    suite, out = write_suite(tmp_path, "  - method: full\n    training: {learning_rate: 1e30}\n  - method: ia3\n",
                             steps=50)
    result = run_cli(suite)
    assert result.returncode == 1
    records = {r.run: r for r in load_records(out)}
    diverged = records["full"]
    assert diverged.status == "diverged" and "loss became" in diverged.error
    assert diverged.last_step < 50 and diverged.curve
    assert records["ia3"].status == "success"
    assert "full: diverged" in result.stdout


def test_run_over_its_timeout_is_recorded_as_timeout(tmp_path):
    suite, out = write_suite(tmp_path, "  - method: lora\n    training: {timeout_s: 2}\n  - method: ia3\n",
                             steps=100000)
    suite.write_text(suite.read_text().replace("max_steps: 100000", "max_seconds: 2"))
    # lora: 2 s cannot hold loading and 2 s of training, even forked from the fork server with nothing to import;
    # ia3 gets the default timeout and succeeds.
    result = run_cli(suite)
    records = {r.run: r for r in load_records(out)}
    assert records["lora"].status == "timeout" and "timeout of 2 s" in records["lora"].error
    assert records["ia3"].status == "success" and records["ia3"].metrics["train_seconds"] >= 2
    assert result.returncode == 1


def test_checkpoints_each_epoch_and_every_n_steps_load_with_plain_peft(tmp_path):
    from peft import PeftConfig

    runs = ("  - method: lora\n    training: {save_every: epoch}\n"
            "  - method: ia3\n    name: ia3-steps\n    training: {save_every: 5}\n")
    suite, out = write_suite(tmp_path, runs, steps=12)  # 40 train rows / batch 4: one epoch is 10 steps
    result = run_cli(suite)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (out / "lora" / "checkpoints").iterdir()) == ["epoch-1"]
    assert sorted(p.name for p in (out / "ia3-steps" / "checkpoints").iterdir()) == ["step-10", "step-5"]
    for folder in [out / "lora" / "checkpoints" / "epoch-1", out / "ia3-steps" / "checkpoints" / "step-5"]:
        assert (folder / "adapter_model.safetensors").is_file()
        assert PeftConfig.from_pretrained(folder).peft_type.value in ("LORA", "IA3")
