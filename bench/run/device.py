"""Where a run computes: its device and precision, chosen once per process, and the autocast every stage uses."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
import torch

from bench.core.config import Precision
from bench.run.distributed import Ranks


def pick_device() -> torch.device:
    wanted = os.environ.get("BENCH_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """The dtype the run computes in. `auto`: bf16 where the device computes it natively (CUDA with bf16 tensor
    cores), else fp32: emulated bf16 (a CPU without it, or a pre-Ampere GPU, where torch emulates it) is many times
    slower, not faster. fp16 needs CUDA (its loss scaling is there; `bench validate` refuses it on a machine
    without CUDA)."""
    if precision == "auto":
        native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float32
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"training.precision fp16 needs a CUDA device; this run is on {device}: use bf16 or fp32")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass(frozen=True)
class Place:
    """The device and compute dtype of this process, and its place among the run's processes (`ranks`: this one
    alone unless given)."""

    device: torch.device
    dtype: torch.dtype
    ranks: Ranks = field(default=None, compare=False)  # type: ignore[assignment]  # from `device` when not given

    def __post_init__(self):
        if self.ranks is None:
            object.__setattr__(self, "ranks", Ranks(self.device))

    @classmethod
    def create(cls, precision: Precision, ranks: Ranks | None = None) -> Place:
        device = ranks.device if ranks is not None else pick_device()  # a process alone unless ranks are given
        if device.type == "cuda" and device.index is not None:
            # Once, for every later call that takes the current device (kernels, caches, bitsandbytes): without it,
            # BENCH_DEVICE=cuda:1 alone would run half the work on GPU 0.
            torch.cuda.set_device(device)
        return cls(device, pick_dtype(precision, device), ranks)

    @property
    def main(self) -> bool:
        """Whether this process writes progress, checkpoints and the record."""
        return self.ranks.main

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """Compute in the run's dtype; fp32 needs no autocast. Autocast's weight cache stays off: it keeps the first
        bf16 copy of every trainable weight for as long as the region lasts, so weights updated inside one region
        (a merge, or training steps) would be computed with their stale copies."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False)

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware: CUDA with bf16 tensor cores, or a CPU with AVX512-BF16 or
    AMX-BF16 (torch's oneDNN kernels use them); elsewhere torch emulates it, many times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
