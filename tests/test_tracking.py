"""Trackers with the real libraries: what `bench run` logged to TensorBoard, MLflow and W&B, read back with each
library's own reader and checked against the records; resume adds no tracker runs; a dead tracker costs a warning."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core.records import load_records
from tests.conftest import ROOT

pytestmark = pytest.mark.worker  # every test here starts worker processes (tests/conftest.py: the tiers)

SUITE = """\
name: tracked
version: 1
model: {{preset: tiny-llama}}
dataset: {{path: {data}, eval_size: 8}}
budget: {{max_steps: 4}}
training: {{learning_rate: 1e-3, batch_size: 4, max_seq_len: 384}}
eval: {{max_examples: 8, batch_size: 8, max_new_tokens: 8}}
baseline: false
seeds: [0, 1]
{tracking}
runs:
  - method: lora
    params: {{r: 8, lora_alpha: 16}}
"""


def bench_run(suite: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--output", str(out), *extra],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **(env or {})})
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Two seeds of LoRA on the tiny model, mirrored to all three trackers (TensorBoard through --track)."""
    folder = tmp_path_factory.mktemp("tracked")
    suite = folder / "suite.yaml"
    suite.write_text(SUITE.format(data=ROOT / "data" / "smoke.jsonl", tracking="tracking: [mlflow, wandb]"))
    out = folder / "results"
    proc = bench_run(suite, out, "--track", "tensorboard")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = {r.run: r for r in load_records(out)}
    assert sorted(records) == ["lora@seed0", "lora@seed1"]
    assert all(r.ok and not r.tracker_errors and len(r.curve) == 4 for r in records.values())
    return suite, out, records, proc


def final(record) -> dict[str, float]:
    """The record's own metrics: what every tracker must hold under the same names."""
    return {k: float(v) for k, v in record.metrics.items()}


def test_tensorboard_event_files_hold_every_step_and_the_final_metrics(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out, records, _ = tracked
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == sorted(records)  # one folder per run
    for run, record in records.items():
        events = EventAccumulator(str(out / "tensorboard" / run), size_guidance={"scalars": 0})
        events.Reload()
        for field in ("loss", "lr", "tokens"):
            logged = [(e.step, e.value) for e in events.Scalars(f"train/{field}")]
            # TensorBoard stores scalars as float32.
            assert logged == [(p["step"], pytest.approx(p[field], rel=1e-6, abs=1e-12)) for p in record.curve]
        for name, value in final(record).items():
            (event,) = events.Scalars(name)
            assert (event.step, event.value) == (record.last_step, pytest.approx(value, rel=1e-6))
        assert {"config", "outcome", "_hparams_/session_start_info"} <= set(events.Tags()["tensors"])
        outcome = json.loads(events.Tensors("outcome")[0].tensor_proto.string_val[0])
        assert outcome["status"] == "success" and outcome["merge.status"] == "merged"


def test_mlflow_store_holds_one_run_per_seed_with_config_steps_metrics_and_artifacts(tracked):
    from mlflow import MlflowClient

    _, out, records, _ = tracked
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")  # the suite is the experiment
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(records)
    for name, record in records.items():
        run = runs[name]
        assert run.info.status == "FINISHED"
        assert run.data.tags["seed"] == str(record.config.seed) and run.data.tags["group"] == "lora"
        assert run.data.tags["config_hash"] == record.config_hash and run.data.tags["method"] == "lora"
        assert run.data.params["training.learning_rate"] == "0.001" and run.data.params["params.r"] == "8"
        for field in ("loss", "lr", "tokens"):
            history = client.get_metric_history(run.info.run_id, f"train/{field}")
            assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
                (p["step"], p[field]) for p in record.curve]
        assert {k: v for k, v in run.data.metrics.items() if not k.startswith(("train/", "merge."))} == final(record)
        assert run.data.metrics["merge.max_abs_logit_diff"] == record.merge.max_abs_logit_diff
        assert run.data.tags["merge.status"] == "merged" and run.data.tags["status"] == "success"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"adapter", "record.json", "report"}
        adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
        assert adapter == {f"adapter/{p.name}" for p in (out / name / "adapter").iterdir()}
        assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} == {"report/report.md",
                                                                                    "report/report.html"}
    assert (out / "mlartifacts").is_dir()  # the default store keeps its artefacts under the results folder


def wandb_records(path: Path):
    """The protobuf records of a W&B transaction log (.wandb): a 7-byte W&B header, then LevelDB's log format
    (32 KiB blocks of chunks, each with a 7-byte header: checksum, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            pos += block - pos % block
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            yield pb.Record.FromString(parts)


def read_wandb_run(path: Path) -> dict:
    run, history, summary, artifacts, exit_code = None, [], {}, [], None
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
        elif kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary |= {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.summary.update}
        elif kind == "artifact":
            artifacts.append((r.artifact.name, sorted(c.path for c in r.artifact.manifest.contents)))
        elif kind == "exit":
            exit_code = r.exit.exit_code
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    return dict(run=run, history=history, summary=summary, artifacts=artifacts, exit_code=exit_code, config=config)


def test_wandb_offline_files_hold_every_step_and_the_summary(tracked):
    _, out, records, _ = tracked
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    logged = {w["run"].display_name: w for w in map(read_wandb_run, files)}
    # One W&B run per harness run, and one more holding the suite's report.
    assert sorted(logged) == sorted(records) + ["tracked report"] and len(files) == len(records) + 1
    report = logged.pop("tracked report")
    assert report["run"].run_group == "tracked" and report["run"].job_type == "report"
    assert report["artifacts"] == [("tracked-report", ["report.html", "report.md"])]
    for name, record in records.items():
        w = logged[name]
        assert w["run"].run_group == "tracked" and w["run"].job_type == "lora"  # the suite is the group
        assert w["config"]["seed"] == record.config.seed and w["config"]["config_hash"] == record.config_hash
        steps = [h for h in w["history"] if "train/loss" in h]
        assert [(h["_step"], h["train/loss"], h["train/lr"], h["train/tokens"]) for h in steps] == [
            (p["step"], p["loss"], p["lr"], p["tokens"]) for p in record.curve]
        assert {k: w["summary"][k] for k in record.metrics} == final(record)
        assert w["summary"]["status"] == "success" and w["summary"]["merge.status"] == "merged"
        adapter = sorted(p.name for p in (out / name / "adapter").iterdir())
        assert w["artifacts"] == [(f"tracked-{name.replace('@', '-')}", adapter)] and w["exit_code"] == 0


def test_resumed_suite_adds_no_tracker_runs(tracked):
    from mlflow import MlflowClient

    suite, out, records, _ = tracked
    before = sorted(p.name for p in (out / "wandb").glob("offline-run-*")), sorted(
        str(p.relative_to(out)) for p in (out / "tensorboard").rglob("*"))
    proc = bench_run(suite, out, "--track", "tensorboard")
    assert proc.returncode == 0 and "0 run(s) to do" in proc.stdout, proc.stdout + proc.stderr
    after = sorted(p.name for p in (out / "wandb").glob("offline-run-*")), sorted(
        str(p.relative_to(out)) for p in (out / "tensorboard").rglob("*"))
    assert after == before
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    assert len(client.search_runs([experiment.experiment_id])) == len(records)


def test_dead_tracker_address_costs_a_warning_and_every_record_is_complete(tmp_path):
    suite = tmp_path / "suite.yaml"
    tracking = 'tracking:\n  tensorboard: {}\n  mlflow: {tracking_uri: "http://127.0.0.1:9"}'
    text = SUITE.format(data=ROOT / "data" / "smoke.jsonl", tracking=tracking)
    text = text.replace("baseline: false\nseeds: [0, 1]\n", "").replace("max_steps: 4", "max_steps: 3")
    # A run that times out is tracked like any other: its tracker run ends with its status. Forked from the fork
    # server, a tiny run may finish within a second: 0.2 s holds no run.
    suite.write_text(text + "  - method: ia3\n    training: {timeout_s: 0.2}\n")
    out = tmp_path / "results"
    proc = bench_run(suite, out, "--no-report")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the timeout, not the tracker
    said = " ".join(proc.stdout.split())  # where the runs go is said before the first run, whether it answers or not
    assert f"sending run configs, metrics and predictions to TensorBoard event files in {out.resolve()}/tensorboard/ " \
           "sending run configs, metrics and predictions to MLflow at http://127.0.0.1:9 (experiment " in said
    warning = " ".join(proc.stderr.split())
    assert "warning: tracker mlflow failed on 3 of 3 run(s)" in warning and "127.0.0.1" in warning
    records = {r.run: r for r in load_records(out)}
    assert sorted(records) == ["baseline", "ia3", "lora"] and records["ia3"].status == "timeout"
    for record in (records["baseline"], records["lora"]):
        assert record.ok and "exact_match" in record.metrics and math.isfinite(record.metrics["eval_loss"])
    for record in records.values():
        assert list(record.tracker_errors) == ["mlflow"] and "127.0.0.1" in record.tracker_errors["mlflow"]
    assert len(records["lora"].curve) == 3 and records["lora"].merge.status == "merged"
    # The first run's failure turns MLflow off for the rest of the suite: one wait, not one per run.
    assert records["lora"].tracker_errors["mlflow"].startswith("not tracked: failed on run baseline")
    # The other tracker is unaffected: TensorBoard has every run, the baseline's metrics at step 0.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def events(run: str) -> EventAccumulator:
        acc = EventAccumulator(str(out / "tensorboard" / run))
        acc.Reload()
        return acc

    assert [(e.step, e.value) for e in events("baseline").Scalars("eval_loss")] == [
        (0, pytest.approx(records["baseline"].metrics["eval_loss"], rel=1e-6))]
    assert [e.step for e in events("lora").Scalars("train/loss")] == [1, 2, 3]
    outcome = json.loads(events("ia3").Tensors("outcome")[0].tensor_proto.string_val[0])
    assert outcome == {"status": "timeout"}
