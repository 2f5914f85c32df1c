"""Sweep selection against hand-made records, and a real swept suite through the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.core.records import RunRecord, load_records
from bench.analysis.sweeps import selected, sweeps
from tests.conftest import ROOT, make_config


def rec(run, group, sweep, val, status="success", seed=None, started="") -> RunRecord:
    cfg = make_config(run, group, **({"group": group, "sweep": sweep} if sweep else {}), seed=seed)
    metrics = {"validation_loss": val, "exact_match": 1 - val} if status == "success" else {}
    return RunRecord(suite="s", run=run, method=group, status=status, config=cfg, config_hash="x", metrics=metrics,
                     started_at=started)


def test_the_lowest_mean_validation_loss_wins_and_a_point_with_a_failed_seed_cannot():
    records = [
        rec("lora@lr=1e-4@seed0", "lora", {"learning_rate": 1e-4}, 0.50, seed=0, started="1"),
        rec("lora@lr=1e-4@seed1", "lora", {"learning_rate": 1e-4}, 0.30, seed=1, started="2"),  # mean 0.40
        rec("lora@lr=1e-3@seed0", "lora", {"learning_rate": 1e-3}, 0.35, seed=0, started="3"),
        rec("lora@lr=1e-3@seed1", "lora", {"learning_rate": 1e-3}, 0.47, seed=1, started="4"),  # mean 0.41
        rec("lora@lr=1e-2@seed0", "lora", {"learning_rate": 1e-2}, 0.10, seed=0, started="5"),
        rec("lora@lr=1e-2@seed1", "lora", {"learning_rate": 1e-2}, 0.0, status="diverged", seed=1, started="6"),
        rec("ia3", "ia3", None, 0.9, started="7"),
    ]
    (s,) = sweeps(records)
    assert s.group == "lora" and [p.values["learning_rate"] for p in s.points] == [1e-4, 1e-3, 1e-2]
    assert abs(s.points[0].validation_loss - 0.40) < 1e-12 and s.points[2].validation_loss is None
    assert s.chosen is s.points[0]
    assert [r.run for r in selected(records)] == ["lora@lr=1e-4@seed0", "lora@lr=1e-4@seed1", "ia3"]


def test_a_sweep_with_no_successful_point_keeps_every_record_visible():
    records = [rec("p@lr=1", "p", {"learning_rate": 1.0}, 0, status="failed"),
               rec("p@lr=2", "p", {"learning_rate": 2.0}, 0, status="diverged")]
    assert sweeps(records)[0].chosen is None and selected(records) == records


@pytest.mark.worker
def test_a_swept_suite_runs_every_point_on_the_same_rows_and_reports_the_choice(tmp_path):
    suite = tmp_path / "sweep.yaml"
    suite.write_text(f"""
name: sweep
version: 1
model: {{preset: tiny-llama}}
dataset: {{path: {ROOT / 'data' / 'smoke.jsonl'}, eval_size: 8}}
budget: {{max_steps: 3}}
training: {{batch_size: 4, max_seq_len: 384}}
eval: {{max_examples: 4, batch_size: 4, max_new_tokens: 4}}
baseline: false
output: {tmp_path / 'out'}
runs:
  - method: lora
    sweep: {{learning_rate: [1e-4, 1e-2]}}
  - method: ia3
""")
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(suite)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = {r.run: r for r in load_records(tmp_path / "out")}
    assert sorted(records) == ["ia3", "lora@lr=0.0001", "lora@lr=0.01"]
    # The same held-out rows for every run, swept or not; eval untouched.
    assert {(r.data.train_rows, r.data.validation_rows, r.data.eval_rows) for r in records.values()} == \
        {(36, 4, 4)}
    (s,) = sweeps(list(records.values()))
    losses = {p.values["learning_rate"]: p.validation_loss for p in s.points}
    assert s.chosen.values["learning_rate"] == min(losses, key=losses.get)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Sweeps" in report and "chose learning_rate=" in report
