"""The GPU check's checks can fail: on the CPU (--dry-run shapes) each FAILs when its fault is planted, saying its
bound; and scripts/gpu_check.sh installs a bundle offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.run.device import Place
from bench.commands.gpucheck import (
    QUANTIZED,
    Shapes,
    check_eval_memory,
    check_fp32_masters,
    check_merge,
    check_qlora_memory,
)

ROOT = Path(__file__).resolve().parent.parent
SHAPES = Shapes.of(True)
PLACE = Place(torch.device("cpu"), torch.bfloat16)


@pytest.mark.train
def test_eval_memory_passes_chunked_and_fails_unchunked():
    status, detail = check_eval_memory(SHAPES, PLACE)
    assert status == "PASS", detail
    planted, planted_detail = check_eval_memory(SHAPES, PLACE, plant=True)
    assert planted == "FAIL", planted_detail
    assert "bound: " in planted_detail and "3 chunks of 8.0 MB" in planted_detail
    # The unchunked peak is above the bound by more than a chunk: not a near miss.
    peak, bound = (float(x) for x in re.search(r"eval peak ([\d.]+) MB \(bound: ([\d.]+) MB", planted_detail).groups())
    assert peak > bound + 8


@pytest.mark.train
def test_merge_check_fails_when_the_merge_runs_under_autocast():
    status, detail = check_merge(SHAPES, PLACE, plant=True)
    assert status == "FAIL", detail
    worst = float(re.search(r"worst merged weight at ([\d.]+) of its bound", detail).group(1))
    assert worst > 1.5, detail  # bf16 ΔW: errors well past half a bf16 ulp of W + ΔW


@pytest.mark.train
def test_merge_check_passes_outside_autocast():
    status, detail = check_merge(SHAPES, PLACE)
    assert status == "PASS", detail
    assert "QLoRA, 14 layers de-quantised one at a time" in detail


@pytest.mark.gpu
def test_qlora_memory_fails_when_the_peak_is_reset_before_the_load():
    """On CUDA (allocated bytes are the tensors'): with the reset before the load, QLoRA's figure carries its
    full-precision build and the goal is missed."""
    shapes, place = Shapes.of(False), Place.create("bf16")
    status, detail = check_qlora_memory(shapes, place)
    planted, planted_detail = check_qlora_memory(shapes, place, plant=True)
    assert (status, planted) == ("PASS", "FAIL"), (detail, planted_detail)
    assert "bound: >= 1.5x" in planted_detail


@pytest.mark.train
def test_fp32_masters_fails_without_fp32_master_weights():
    status, detail = check_fp32_masters(SHAPES, PLACE, plant=True)
    assert status == "FAIL", detail


BUNDLE = ROOT / ".gpu-bundle"


@pytest.mark.skipif(not list(BUNDLE.glob("*.whl")), reason="no bundle: build it with bash scripts/gpu_bundle.sh")
def test_gpu_check_sh_installs_the_real_bundle_offline(tmp_path):
    """The bundle scripts/gpu_bundle.sh built installs with pip --no-index into the script's temporary folder (for
    the bundle's Python 3.12 where this one differs), under 40 MiB of wheels."""
    size = sum(w.stat().st_size for w in BUNDLE.glob("*.whl"))
    assert size <= 40 * 1024 ** 2
    env = os.environ | {"PYTHON": sys.executable, "PIP_CONFIG_FILE": os.devnull}
    out = subprocess.run(["bash", "scripts/gpu_check.sh", "--bundle", str(BUNDLE), "--dry-run", "--only-install"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    n = len(list(BUNDLE.glob("*.whl")))
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(rf"PASS install: {n} packages from \S+ installed offline", out.stdout), out.stdout
    assert "PASS imports" in out.stdout


def test_gpu_check_sh_refuses_an_unknown_argument():
    out = subprocess.run(["bash", "scripts/gpu_check.sh", "--bundel", "x"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown argument '--bundel' (expected --bundle DIR, --out DIR, --dry-run, --only-install)" in out.stderr


def test_packed_cuda_runs_get_flex_attention_without_flash_attn():
    import importlib.util

    from bench.commands.gpucheck import config
    from bench.run.load import attention
    from methods import METHODS

    cuda = Place(torch.device("cuda"), torch.bfloat16)  # no CUDA call: the choice reads the config only
    cfg = config(SHAPES, "lora")
    if importlib.util.find_spec("flash_attn") is None:
        assert attention(cfg, METHODS["lora"], cuda) == "flex_attention"
    assert attention(cfg, METHODS["lora"], PLACE) == "sdpa"  # a CPU run
    unpacked = cfg.model_copy(update={"training": cfg.training.model_copy(update={"packing": False})})
    assert attention(unpacked, METHODS["lora"], cuda) == "sdpa"


@pytest.mark.train
def test_packed_and_padded_losses_agree_under_flex_attention():
    """The kernel packed CUDA runs get, here on the CPU (transformers compiles it): packed rows, kept apart by the
    document mask from their restarting position ids, give the padded rows' loss."""
    from bench.core.config import ModelSpec
    from bench.datasets.batches import Features, collate
    from bench.run.models import load_model

    model = load_model(ModelSpec(preset="tiny-llama"), None, dtype=torch.float32, load_in_4bit=False, seed=0,
                       attention="flex_attention").eval()
    assert model.config._attn_implementation == "flex_attention"
    g = torch.Generator().manual_seed(2)
    feats = [Features(ids := torch.randint(300, (n,), generator=g).tolist(), ids) for n in (100, 37, 64)]
    with torch.no_grad():
        packed, padded = (float(model(**collate(feats, 0, packed=p), use_cache=False).loss) for p in (True, False))
    assert abs(packed - padded) < 1e-5, (packed, padded)


@pytest.mark.worker
def test_the_trimmed_perf_keeps_no_full_model(tmp_path):
    """Full fine-tuning in bench perf saves nothing (training.save_weights: false): no figure the check reports
    reads the 4.4 GB fp32 model it would write at TinyLlama's size."""
    import json

    out = subprocess.run([sys.executable, "-m", "bench", "perf", "--dry-run", "--seq-len", "256", "--output",
                          str(tmp_path), "--only", "full"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    record = json.loads((tmp_path / "full.json").read_text())
    assert record["status"] == "success" and record["config"]["training"]["save_weights"] is False
    assert record["metrics"]["steady_tokens_per_second"] > 0 and "checkpoint_bytes" not in record["metrics"]
    assert record["merge"] is None
    assert not list(tmp_path.rglob("*.safetensors"))
    assert "| full | 1 | no | success |" in (tmp_path / "perf.md").read_text()


@pytest.mark.train
@pytest.mark.parametrize("name", list(QUANTIZED))
def test_each_quantisation_backends_line_passes_and_fails_with_the_base_left_unquantised(name):
    """One line per backend (bitsandbytes 8-bit, NF4, FP4, torchao int8, HQQ 4-bit): LoRA over it trains, the base
    holds its bytes per weight, the training peak is measured and the merge judged; with the base left in bf16 (the
    planted fault) the bytes-per-weight bound fails."""
    from bench.commands.gpucheck import CHECKS

    setting, package = QUANTIZED[name]
    pytest.importorskip(package)
    status, detail = CHECKS[name](SHAPES, PLACE)
    assert status == "PASS", detail
    per_weight, bound = (float(x) for x in re.search(r"base projections ([\d.]+) bytes per weight \(bound: <= "
                                                     r"([\d.]+)", detail).groups())
    assert per_weight <= setting["bits"] / 8 + 0.07 and bound == setting["bits"] / 8 + 0.25, detail
    first, last = (float(x) for x in re.search(r"loss ([\d.]+) -> ([\d.]+) in 8 steps", detail).groups())
    assert last < first, detail
    assert re.search(r"training peak [\d.]+ [KMG]?B above", detail) and "merge: lossy" in detail, detail
    if setting.get("bits") == 4 and package == "bitsandbytes":
        assert "14 layers de-quantised one at a time" in detail, detail
    planted, planted_detail = CHECKS[name](SHAPES, PLACE, plant=True)
    assert planted == "FAIL", planted_detail
    assert "base projections 2.000 bytes per weight" in planted_detail  # bf16, unquantised


def test_gpu_check_plants_each_quantisation_backends_fault_by_name():
    """`--plant` takes every check that can be planted, the quantisation lines included (the CLI lists them without
    importing torch)."""
    from bench.cli import build_parser
    from bench.commands.gpucheck import CHECKS, PLANTABLE, QUANTIZED

    assert set(QUANTIZED) <= set(PLANTABLE) <= set(CHECKS)
    args = build_parser().parse_args(["gpu-check", "--dry-run", "--plant", *PLANTABLE])
    assert args.plant == list(PLANTABLE)
