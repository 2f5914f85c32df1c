"""The FLOPs count behind MFU against hand-computed values, and `bench perf --dry-run` end to end on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from bench.run import models as M
from bench.core.config import ModelSpec
from bench.datasets.batches import Features, collate
from bench.run.flops import attention_flops, matmul_flops_per_token, train_flops
from bench.run.train import example_lengths

ROOT = Path(__file__).resolve().parent.parent

# tiny-llama: hidden 64, intermediate 128, 2 layers, 4 heads of 16, 2 key/value heads (k, v project to 32), vocab 320.
LAYER_SHAPES = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]  # q k v o gate up down
HEAD = (64, 320)


def tiny():
    return M.load_model(ModelSpec(preset="tiny-llama"), None, dtype=torch.float32, load_in_4bit=False, seed=0)


def test_full_fine_tuning_counts_six_flops_per_weight():
    per_layer = sum(i * o for i, o in LAYER_SHAPES)
    assert per_layer == 36864
    assert matmul_flops_per_token(tiny()) == 6 * (2 * per_layer + HEAD[0] * HEAD[1]) == 565248


def test_lora_counts_four_for_the_frozen_base_and_six_for_the_adapters():
    model = get_peft_model(tiny(), LoraConfig(r=8, target_modules="all-linear"))
    base = 2 * sum(i * o for i, o in LAYER_SHAPES) + HEAD[0] * HEAD[1]  # all-linear leaves the output head alone
    adapters = 2 * sum(i * 8 + 8 * o for i, o in LAYER_SHAPES)
    assert matmul_flops_per_token(model) == 4 * base + 6 * adapters


def test_attention_is_six_layers_width_pairs():
    model = tiny()
    assert attention_flops(model, 10) == 6 * 2 * 64 * 10
    assert train_flops(model, 100, 10) == 565248 * 100 + 7680


def test_example_lengths_packed_and_padded():
    feats = [Features([1] * n, [1] * n) for n in (3, 5, 2)]
    assert example_lengths(collate(feats, 0, packed=True)) == [3, 5, 2]
    assert example_lengths(collate(feats, 0, packed=False)) == [3, 5, 2]


def test_perf_refuses_without_a_gpu_unless_dry_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real check would run")
    out = subprocess.run([sys.executable, "-m", "bench", "perf", "--output", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "no CUDA device here" in out.stderr and "--dry-run" in out.stderr


@pytest.mark.worker
def test_perf_dry_run_end_to_end(tmp_path):
    runs = ["lora", "lora-memory", "qlora-memory"]
    out = subprocess.run([sys.executable, "-m", "bench", "perf", "--dry-run", "--seq-len", "512", "--output",
                          str(tmp_path), "--only", *runs], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    records = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert sorted(records) == sorted(runs)
    model = get_peft_model(tiny(), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    for name, r in records.items():
        assert r["status"] == "success", r.get("error")
        m = r["metrics"]
        assert m["train_steps"] == 3 and m["steady_tokens_per_second"] > 0
        # Every row is cut to exactly 512 tokens and holds no padding, so each token carries 6·L·d·512 of attention.
        assert m["real_token_fraction"] == 1.0
        assert m["model_flops_per_token"] == pytest.approx(matmul_flops_per_token(model) + 6 * 2 * 64 * 512)
        assert "mfu" not in m  # no peak is known for a CPU
        assert r["config"]["training"]["gradient_checkpointing"] == name.endswith("-memory")
        assert r["merge"]["status"] == "not checked" and "exact_match" not in m
    report = (tmp_path / "perf.md").read_text()
    assert "| lora-memory | 1 | yes | success |" in report
    assert "lora MFU >= 35%: not measured" in report and "not judged on the CPU" in report


def test_head_only_counts_its_body_forward_only():
    """Nothing below the output head trains: the body runs forward only (2·in·out), the head forward and its
    weight gradient (4·in·out), no input gradient anywhere."""
    from bench.commands.gpucheck import Shapes, config
    from bench.run.load import build
    from methods import METHODS
    from tests.conftest import CPU32

    model = build(config(Shapes.of(True), "head_only"), None, CPU32, METHODS["head_only"])
    body = 2 * sum(i * o for i, o in LAYER_SHAPES)
    assert matmul_flops_per_token(model) == 2 * body + 4 * HEAD[0] * HEAD[1]


def test_an_fp32_run_has_no_mfu_against_the_bf16_peak():
    from bench.run.flops import peak_flops

    assert peak_flops(torch.device("cuda"), torch.float32) == (
        None, "the run computes in float32: no peak for it in bench.run.flops")
    assert peak_flops(torch.device("cpu"), torch.bfloat16) == (None, "no peak for a CPU")
