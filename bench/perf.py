"""Hardware peaks for model FLOPs utilisation."""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity), in FLOP/s.
BF16_PEAK = {
    "H100": 989e12,  # SXM; the PCIe card is 756e12
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H100" in name and "PCIe" in name:
        return 756e12
    return next((v for k, v in BF16_PEAK.items() if k in name), None)
