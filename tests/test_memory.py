"""Memory per phase: the training peak is training's alone, evaluation and the merge check have their own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bench.run.memory import Meter, reset_rss_peak, rss_peak
from tests.conftest import ROOT


def test_the_resident_peak_resets_to_what_is_in_use():
    assert reset_rss_peak() is None  # Linux with a writable /proc: every CI and development machine here
    big = torch.ones(256 * 1024 * 1024 // 4)  # 256 MB touched
    high = rss_peak()
    del big
    reset_rss_peak()
    assert rss_peak() < high - 200 * 1024 * 1024


def test_a_phase_measures_its_own_peak_not_the_one_before():
    meter, peaks = Meter(torch.device("cpu")), {}
    with meter.phase(peaks, "first"):
        big = torch.ones(256 * 1024 * 1024 // 4)
        del big
    with meter.phase(peaks, "second"):
        small = torch.ones(1024)
        del small
    assert peaks["first"].used > peaks["second"].used + 200 * 1024 * 1024


SUITE = """\
name: mem
version: 1
model:
  config: {{model_type: llama, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
           num_key_value_heads: 2, max_position_embeddings: 1024, vocab_size: 8192, tie_word_embeddings: false}}
dataset: {{path: {data}, eval_size: 48}}
budget: {{max_steps: 3}}
training: {{batch_size: 2, max_seq_len: 384, loss_chunk_bytes: off}}
eval: {{max_examples: {examples}, batch_size: {examples}, max_new_tokens: {new}, forgetting: false}}
output: {out}
runs:
  - method: lora
  - method: qlora
"""


def run_suite(tmp_path, name: str, examples: int, new: int) -> dict:
    out = tmp_path / name
    path = tmp_path / f"{name}.yaml"
    path.write_text(SUITE.format(data=ROOT / "data" / "trips.jsonl", examples=examples, new=new, out=out))
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--no-report"], capture_output=True,
                          text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {p.stem: json.loads(p.read_text())["metrics"] for p in out.glob("*.json")}


@pytest.mark.worker
def test_heavier_evaluation_moves_the_eval_peak_and_not_the_training_peak(tmp_path):
    """An 8k vocabulary makes eval logits big: 48 rows of some 300 tokens are about 1.2 GB of them, against a
    few megabytes per training step. The old whole-process figure took whatever evaluation needed. The suite turns
    the chunked loss off (bench/run/loss.py keeps any eval's logits to a chunk): the model's own loss makes them all."""
    light = run_suite(tmp_path, "light", examples=2, new=2)
    heavy = run_suite(tmp_path, "heavy", examples=48, new=16)
    for run in ("lora", "qlora"):
        assert abs(heavy[run]["peak_memory_bytes"] / light[run]["peak_memory_bytes"] - 1) < 0.05, run
        assert heavy[run]["eval_peak_memory_bytes"] > light[run]["eval_peak_memory_bytes"] + 300 * 1024 ** 2, run
        assert heavy[run]["eval_peak_memory_bytes"] > heavy[run]["peak_memory_bytes"] + 300 * 1024 ** 2, run
        # QLoRA's merge builds a de-quantised copy of its base; none of that is training's.
        assert heavy[run]["merge_peak_memory_bytes"] > 0 and heavy[run]["load_memory_bytes"] > 0
    # The untrained baseline trains nothing: a load and an eval figure, no training peak.
    assert "peak_memory_bytes" not in heavy["baseline"] and heavy["baseline"]["eval_peak_memory_bytes"] > 0
