"""Model FLOPs of a training step, counted per layer, and device peaks: what model FLOPs utilisation (MFU) divides."""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peaks from NVIDIA's data sheets (no sparsity), in FLOP/s, by the name CUDA reports
# (torch.cuda.get_device_name), most specific first. A card not listed has no MFU rather than a guessed one.
BF16_PEAK = [
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # "NVIDIA H100 80GB HBM3": the SXM card
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("A100", 312e12),  # SXM and PCIe alike
    ("L40S", 362e12),
    ("L4", 121e12),
]

# PEFT's own modules: their matrices are adapters or frozen copies, not the base model's.
_NOT_BASE = {"original_module", "prompt_encoder"}


def peak_for(name: str) -> tuple[float | None, str]:
    """The dense bf16 peak of a card by its CUDA name, and where the figure comes from (or why there is none)."""
    if "MIG" in name:
        return None, f"{name} is a MIG slice: its share of the card's peak is not known here"
    for key, peak in BF16_PEAK:
        if key in name:
            return peak, f"{key} data sheet, dense bf16"
    return None, f"no peak known for {name!r} (bench.run.flops.BF16_PEAK)"


def peak_flops(device: torch.device, dtype: torch.dtype | None = None) -> tuple[float | None, str]:
    """The device's dense tensor-core peak for the dtype the run computes in (bf16 and fp16 share it on the cards
    listed) and its source; None on a CPU, a card not in the table, or an fp32 run (its peak is not bf16's)."""
    if device.type != "cuda":
        return None, "no peak for a CPU"
    if dtype is not None and dtype not in (torch.bfloat16, torch.float16):
        return None, f"the run computes in {str(dtype).removeprefix('torch.')}: no peak for it in bench.run.flops"
    return peak_for(torch.cuda.get_device_name(device))


def matmul_flops_per_token(model: torch.nn.Module) -> int:
    """FLOPs of every linear layer for one token of one training step: 2·in·out forward, 2·in·out for the input
    gradient where anything upstream trains, and 2·in·out more for the weight gradient where the weight trains (so
    LoRA's frozen base costs 4·in·out, full fine-tuning 6·in·out: the usual 6N; a model that trains only its output
    head runs its body forward only, 2·in·out). Upstream is by block in registration order (the forward order of
    transformers' decoders: embeddings, layers.0, layers.1, ..., norm, head), within a block any other trainable
    module counts; virtual-token encoders feed the input, upstream of everything. Embedding lookups are not matrix
    multiplies; a tied output head is an nn.Linear and is counted. 4-bit layers count at their logical shape."""
    order: dict[str, int] = {}
    trainable: dict[str, set[str]] = {}  # block -> modules in it that hold a trainable weight
    first = None  # the earliest block position holding a trainable weight (-1: a virtual-token encoder)
    for name, module in model.named_modules():
        block = _block(name)
        order.setdefault(block, len(order))
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            trainable.setdefault(block, set()).add(name)
            at = -1 if "prompt_encoder" in name.split(".") else order[block]
            first = at if first is None else min(first, at)
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or _NOT_BASE & set(name.split(".")):
            continue
        block = _block(name)
        upstream = first is not None and (first < order[block] or bool(trainable.get(block, set()) - {name}))
        trains = module.weight.requires_grad
        total += (2 + 2 * upstream + 2 * trains) * module.in_features * module.out_features
    return total


def _block(name: str) -> str:
    """A module's block: its name up to the first layer index (model.layers.3), else its whole name."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return name


def attention_flops(model: torch.nn.Module, attention_pairs: int) -> int:
    """Causal attention scores and weighted sum: per layer, QKᵀ and AV each cost d·s² forward (half of 2·d·s², the
    causal half), twice that backward: 6·d·s² for a sequence of s tokens, with d = heads x head size. Packed
    examples count separately (they do not attend to each other). Virtual tokens of prompt-learning methods are
    left out."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not layers or not heads:
        return 0
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 6 * layers * heads * head_dim * attention_pairs


def train_flops(model: torch.nn.Module, real_tokens: int, attention_pairs: int) -> float:
    """Model FLOPs of training on `real_tokens` tokens (padding is waste, not work; recomputation under gradient
    checkpointing is not counted, as in PaLM's MFU)."""
    return float(matmul_flops_per_token(model) * real_tokens + attention_flops(model, attention_pairs))
