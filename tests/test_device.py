"""Where a run computes: the device and precision chosen once per process."""

from __future__ import annotations

import pytest
import torch

from bench.run.device import Place, pick_dtype


def test_auto_precision_is_fp32_on_a_cpu_and_explicit_precisions_are_kept():
    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype("bf16", cpu) == torch.bfloat16 and pick_dtype("fp32", cpu) == torch.float32


def test_bench_device_picks_the_place(monkeypatch):
    monkeypatch.setenv("BENCH_DEVICE", "cpu")
    place = Place.create("auto")
    assert (place.device, place.dtype, place.main, place.cuda) == (torch.device("cpu"), torch.float32, True, False)


@pytest.mark.gpu
def test_auto_precision_on_cuda_is_bf16_where_the_card_computes_it():
    place = Place.create("auto")
    assert place.cuda
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert place.dtype == (torch.bfloat16 if native else torch.float32)
