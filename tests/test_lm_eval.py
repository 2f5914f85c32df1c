"""eval.lm_eval: lm-evaluation-harness on the trained model, equal to running `lm_eval` by hand on the saved adapter;
runs whose scores through lm-eval would mean nothing say so instead."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bench.run import models as M
from bench.cli import main
from bench.core.config import ModelSpec
from tests.conftest import ROOT

pytestmark = pytest.mark.worker  # every test here starts worker processes (tests/conftest.py: the tiers)

TASKS = ROOT / "data" / "lm_eval"
# The tiny preset's shape with the byte tokenizer's 260 tokens as its vocabulary: lm-eval's `peft=` path resizes
# the embeddings to the tokenizer's length, so a by-hand run equals the harness's only where the two agree.
CONFIG = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, vocab_size=260, tie_word_embeddings=False)

SUITE = f"""\
name: lmeval
version: 1
model:
  config: {json.dumps(CONFIG)}
dataset:
  path: {ROOT / "data" / "smoke.jsonl"}
  eval_size: 4
budget: {{max_steps: 4}}
training: {{learning_rate: 1e-2, batch_size: 4, max_seq_len: 256}}
eval:
  max_examples: 4
  max_new_tokens: 4
  forgetting: false
  lm_eval: {{tasks: [trips_city, trips_city_gen], include_path: {TASKS}, batch_size: 8}}
runs:
  - method: lora
    params: {{r: 8, lora_alpha: 64}}
  - method: prompt_tuning
    params: {{num_virtual_tokens: 4}}
  - method: prefix_tuning
    params: {{num_virtual_tokens: 4}}
"""


@pytest.fixture(scope="module")
def lmeval_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lmeval")
    suite = folder / "lmeval.yaml"
    suite.write_text(SUITE)
    assert main(["run", str(suite), "--output", str(folder / "results"), "--no-report"]) == 0
    return folder


def record(folder, run: str) -> dict:
    return json.loads((folder / "results" / f"{run}.json").read_text())


def by_hand(folder, adapter) -> dict:
    """`lm_eval run` on the saved adapter over a saved copy of the same seeded base, as a user would."""
    base = folder / "base"
    if not base.is_dir():
        model = M.load_model(ModelSpec(config=CONFIG), None, dtype=torch.float32, load_in_4bit=False, seed=0)
        model.save_pretrained(base)
        M.byte_tokenizer().save_pretrained(base)
    out = folder / "by-hand"
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
         f"pretrained={base},peft={adapter}", "--device", "cpu", "--tasks", "trips_city", "--include_path", ".",
         "--batch_size", "8", "--output_path", str(out)],
        cwd=TASKS, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = out.rglob("results_*.json")
    return json.loads(result.read_text())["results"]


def test_lm_eval_scores_of_a_trained_adapter_equal_lm_eval_run_by_hand(lmeval_results):
    lora = record(lmeval_results, "lora")
    assert lora["status"] == "success", lora["error"]
    part = lora["lm_eval"]
    assert part["tasks"]["trips_city"]["n_samples"]["effective"] == 24 and part["not_scored"] == {}
    hand = by_hand(lmeval_results, lmeval_results / "results" / "lora" / "adapter")
    assert lora["metrics"]["lm_eval.trips_city.acc"] == hand["trips_city"]["acc,none"]
    assert part["tasks"]["trips_city"]["scores"]["acc_stderr,none"] == hand["trips_city"]["acc_stderr,none"]
    assert "lm_eval.trips_city_gen.exact_match" in lora["metrics"]
    # The baseline is scored too: the untrained model's line to compare with.
    assert "lm_eval.trips_city.acc" in record(lmeval_results, "baseline")["metrics"]


def test_prompt_learning_runs_say_why_lm_eval_scores_are_left_out(lmeval_results):
    prompt = record(lmeval_results, "prompt_tuning")
    reasons = prompt["lm_eval"]["not_scored"]
    assert reasons["trips_city"].startswith("not scored: prompt_tuning's logits carry 4 virtual-token positions")
    assert "lm_eval.trips_city.acc" not in prompt["metrics"]
    # On the pinned transformers, generate() decodes prompt learning as its forward pass does (measured per run
    # by a probe): generation tasks are scored. Prefix tuning's logits line up with its input: both are scored.
    assert "trips_city_gen" not in reasons and any(k.startswith("lm_eval.trips_city_gen.") for k in prompt["metrics"])
    prefix = record(lmeval_results, "prefix_tuning")
    assert "lm_eval.trips_city.acc" in prefix["metrics"]
    assert prefix["lm_eval"]["not_scored"] == {}
