"""The real CLI on the smoke suite: one successful, sane record per run, then export of the seed workflow."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import torch

from bench.core.config import ModelSpec
from bench.core.records import load_records
from methods import SHIPPED
from tests.conftest import ROOT

RUNS = ["baseline", *SHIPPED]


def test_smoke_suite_records_one_successful_sane_record_per_run(smoke_results):
    out, stdout = smoke_results
    records = {r.run: r for r in load_records(out)}
    assert sorted(records) == sorted(RUNS)
    for run, r in records.items():
        assert r.status == "success", (run, r.error)
        m = r.metrics
        assert math.isfinite(m["eval_loss"]) and m["eval_loss"] > 0
        assert 0 <= m["exact_match"] <= 1 and 0 <= m["token_f1"] <= 1
        if run == "baseline":  # it trains nothing: load and eval figures, no training peak
            assert "peak_memory_bytes" not in m and m["eval_peak_memory_bytes"] > m["load_memory_bytes"] * 0.5 > 0
        else:
            assert m["peak_memory_bytes"] > m["load_memory_bytes"] * 0.5 > 0
        assert r.environment["packages"]["torch"] and r.environment["dtype"] == "float32"
        assert r.data.fingerprint == records["baseline"].data.fingerprint
        if run == "baseline":
            assert m["trainable_params"] == 0 and not r.curve
            continue
        assert m["train_steps"] == 6 and len(r.curve) == 6
        assert all(math.isfinite(p["loss"]) for p in r.curve)
        assert m["train_tokens"] > 0 and m["train_tokens_per_second"] > 0
        if run != "full":
            assert 0 < m["trainable_params"] < m["total_params"]
            assert m["adapter_bytes"] > 0
    for run in ("full", "lora"):
        losses = [p["loss"] for p in records[run].curve]
        assert losses[-1] < losses[0], (run, losses)
    # Packing: methods that allow it process no padding at all.
    assert records["lora"].metrics["real_token_fraction"] == 1.0
    assert records["prompt_tuning"].metrics["real_token_fraction"] < 1.0
    # Merges behave as each method declares.
    assert records["lora"].merge.status == "merged" and records["lora"].merge.greedy_identical
    assert records["lora"].merge.max_abs_logit_diff < 1e-4
    assert records["ia3"].merge.max_abs_logit_diff < 1e-4
    assert records["qlora"].merge.kind == "lossy"
    for run in ("prefix_tuning", "prompt_tuning", "p_tuning"):
        assert records[run].merge.status == "not mergeable"
    assert records["full"].merge.status == "nothing to merge" and records["full"].metrics["checkpoint_bytes"] > 0
    assert "smoke (suite version 1)" in stdout


def test_the_smoke_suite_passes_the_regression_gate(smoke_results, capsys):
    """What scripts/ci_gate.sh does, on the session's smoke run rather than a second one: the real `bench compare`
    against the committed baseline, its table printed into the test log either way."""
    out, _ = smoke_results
    proc = subprocess.run([sys.executable, "-m", "bench", "compare", "baselines/smoke.json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    with capsys.disabled():
        print("\n" + proc.stdout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("### Regression gate: PASS")


def test_rerun_skips_up_to_date_runs(smoke_results):
    out, _ = smoke_results
    before = {p.name: p.read_bytes() for p in out.glob("*.json")}
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "suites/smoke.yaml", "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "0 run(s) to do" in proc.stdout
    assert {p.name: p.read_bytes() for p in out.glob("*.json")} == before


GENERATE = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
out = []
for p in prompts:
    text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    gen = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    out.append(gen[0, ids.shape[1]:].tolist())
print(json.dumps(out))
"""


def test_exported_merged_model_reloads_in_a_fresh_process_with_the_same_answers(smoke_results, tmp_path):
    from peft import PeftModel

    from bench.run import models as M
    from bench.run.export import locate, merge_to_folder

    out, _ = smoke_results
    record, run_dir = locate(str(out / "lora"))
    folder = tmp_path / "merged"
    merge_to_folder(record, run_dir, folder)
    assert (folder / "model.safetensors").is_file() and "lora" in (folder / "README.md").read_text()
    prompts = [p.prompt for p in record.predictions[:3]]

    # The adapter model as plain peft loads it, outside the harness.
    tok = M.load_tokenizer(ModelSpec(path=str(run_dir / "adapter")), str(run_dir / "adapter"))
    base = M.load_model(record.config.model, None, dtype=torch.float32, load_in_4bit=False, seed=0)
    adapter_model = PeftModel.from_pretrained(base, run_dir / "adapter")
    expected = []
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        gen = adapter_model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        expected.append(gen[0, ids.shape[1]:].tolist())

    proc = subprocess.run([sys.executable, "-c", GENERATE, str(folder), json.dumps(prompts)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected


def test_export_refuses_prompt_learning_and_push_fails_cleanly_offline(smoke_results, tmp_path, capsys):
    from bench.cli import main

    out, _ = smoke_results
    assert main(["export", str(out / "prompt_tuning"), "--out", str(tmp_path / "x")]) == 2
    assert "prompt_tuning is not mergeable" in capsys.readouterr().out
    folder = tmp_path / "ia3"
    code = main(["export", str(out / "ia3"), "--out", str(folder), "--prompt", "hi", "--max-new-tokens", "4",
                 "--push-to-hub", "nobody/never"])
    text = capsys.readouterr().out
    assert code == 1
    assert "push to nobody/never failed:" in text and f"the model is still in {folder}/" in text
    assert (folder / "model.safetensors").is_file()
