"""Quantised bases: the quantisation a run's base loads with (`training.quantization`, or qlora's NF4), how each
backend quantises it, what validate checks of it, and what the record says of it."""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING, Any

from bench.core.config import Quantization, RunConfig

if TYPE_CHECKING:
    import torch

    from methods import Method

# qlora's base (Dettmers et al., 2023): NF4 with double quantisation, computing in the run's dtype.
QLORA = Quantization(backend="bitsandbytes", bits=4, quant_type="nf4", double_quant=True)

# The package each backend needs, and the extra that installs it.
PACKAGES = {"bitsandbytes": "bitsandbytes", "torchao": "torchao", "hqq": "hqq"}


def of_run(cfg: RunConfig, method: Method | None) -> Quantization | None:
    """The quantisation the run's base loads with: qlora's own, else the run's `training.quantization`."""
    if method is not None and method.load_in_4bit:
        return QLORA
    return cfg.training.quantization


def describe(q: Quantization) -> str:
    """A short name for tables and messages: 'bitsandbytes nf4 (double quant)', 'torchao int8', 'hqq 4-bit'."""
    if q.backend == "bitsandbytes" and q.bits == 4:
        return f"bitsandbytes {q.quant_type}{' (double quant)' if q.double_quant else ''}"
    if q.backend == "torchao":
        return f"torchao int{q.bits} weight-only"
    return f"{q.backend} {q.bits}-bit"


def compute_dtype(q: Quantization, dtype: torch.dtype) -> torch.dtype:
    import torch

    if q.compute_dtype in (None, "auto"):
        return dtype
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[q.compute_dtype]


def hf_config(q: Quantization, dtype: torch.dtype, shardable: bool = False):
    """The transformers quantization_config that loads the base this way; None for HQQ, which transformers 5.23
    does not load ("QuantizationMethod.HQQ is not available yet"): `quantize_hqq` quantises it after loading."""
    import torch

    if q.backend == "bitsandbytes":
        from transformers import BitsAndBytesConfig

        # Unset, transformers keeps the output head (and what is tied to it) in full precision; a list replaces that.
        skip = {"llm_int8_skip_modules": ["lm_head", *q.skip_modules]} if q.skip_modules else {}
        if q.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, **skip)
        storage = dtype if shardable else {"uint8": torch.uint8, "fp32": torch.float32, "bf16": torch.bfloat16,
                                           "fp16": torch.float16}[q.quant_storage]
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                                  bnb_4bit_use_double_quant=q.double_quant,
                                  bnb_4bit_compute_dtype=compute_dtype(q, dtype), bnb_4bit_quant_storage=storage,
                                  **skip)
    if q.backend == "torchao":
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        kind = Int8WeightOnlyConfig() if q.bits == 8 else Int4WeightOnlyConfig(group_size=q.group_size)
        return TorchAoConfig(kind, modules_to_not_convert=["lm_head", *q.skip_modules])
    return None


def quantize_hqq(model, q: Quantization, dtype: torch.dtype, device: torch.device):
    """Every linear layer but the output head and `skip_modules` replaced by hqq's HQQLinear (PEFT's LoRA wraps it
    in HqqLoraLinear)."""
    import torch
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    config = BaseQuantizeConfig(nbits=q.bits, group_size=q.group_size)
    skip = {"lm_head", *q.skip_modules}
    for name, module in list(model.named_modules()):
        for child, layer in list(module.named_children()):
            full = f"{name}.{child}" if name else child
            if isinstance(layer, torch.nn.Linear) and child not in skip and full not in skip:
                setattr(module, child, HQQLinear(layer, config, compute_dtype=compute_dtype(q, dtype),
                                                 device=str(device), del_orig=True))
    return model


def in_place_merge(q: Quantization) -> bool:
    """Whether the merge check merges into the quantised base itself (PEFT de-quantises, adds, re-quantises), not
    into a de-quantised copy: transformers de-quantises bitsandbytes bases only."""
    return q.backend != "bitsandbytes"


def environment(q: Quantization | None, dtype: torch.dtype, master_weights: bool | None) -> dict[str, Any]:
    """What the record's environment says of the base's quantisation and of where the weights that train live."""
    out: dict[str, Any] = {"master_weights": "none (pure bf16)"} if master_weights is False else {}
    if q is not None:
        out["quantization"] = q.model_dump() | {
            "name": describe(q), "package": f"{PACKAGES[q.backend]}=={importlib.metadata.version(PACKAGES[q.backend])}",
            **({"computes_in": str(compute_dtype(q, dtype)).removeprefix("torch.")}
               if q.compute_dtype is not None else {})}
    return out

