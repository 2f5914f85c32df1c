"""Bytes a base's linear layers take as quantised, measured on a layer quantised for real: what `bench plan` sizes a
quantised base with (optimiser state per parameter: bench.run.optim.state_bytes_per_param)."""

from __future__ import annotations

from bench.core.config import Quantization


def tensor_bytes(t) -> int:
    """Bytes a tensor holds; a torchao tensor subclass (quantised weights, 8-bit optimiser states) counted by the
    tensors it is made of, not by the dtype it stands for. 0 for anything else."""
    import torch

    if not torch.is_tensor(t):
        return 0
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        return sum(tensor_bytes(getattr(t, name)) for name in t.__tensor_flatten__()[0])
    return t.numel() * t.element_size()


def weight_bytes(module) -> int:
    """Bytes a linear layer's weight takes as quantised: the packed values and every per-block or per-row constant
    (bitsandbytes' absmax, nested ones with double quantisation, SCB; torchao's scales; HQQ's scales and zeros);
    code books shared by every layer (bitsandbytes' 16-entry NF4 code) are left out."""
    size = tensor_bytes
    if module.__class__.__name__ == "HQQLinear":
        return size(module.W_q) + sum(size(v) for k, v in module.meta.items() if k in ("scale", "zero", "scale_q",
                                                                                        "zero_q"))
    weight = module.weight
    state = getattr(weight, "quant_state", None)
    if state is not None:  # bitsandbytes 4-bit
        nested = state.state2.absmax if state.nested else None
        return size(weight.data) + size(state.absmax) + size(nested)
    return size(weight.data) + size(getattr(weight, "SCB", None))


def base_bytes_per_param(q: Quantization | None, dtype: str = "float32", width: int = 1024) -> float:
    """Bytes per weight of a linear layer of the base as quantised (4 or 2 unquantised), measured on a width x width
    layer quantised for real: bitsandbytes 8-bit 1 + a float32 scale per row, NF4 0.5 + a float32 scale per 64,
    with double quantisation 0.5 + about one byte per 64. For `bench plan`; the embeddings and the output head stay
    unquantised."""
    import torch

    from bench.core.config import ModelSpec
    from bench.run.models import load_model

    torch_dtype = getattr(torch, dtype)
    if q is None:
        return float(torch.finfo(torch_dtype).bits // 8)
    spec = ModelSpec(config=dict(model_type="llama", hidden_size=width, intermediate_size=width, num_hidden_layers=1,
                                 num_attention_heads=8, num_key_value_heads=8, vocab_size=64))
    model = load_model(spec, None, dtype=torch_dtype, load_in_4bit=False, seed=0, quantization=q)
    layer = model.model.layers[0].mlp.up_proj
    return weight_bytes(layer) / (width * width)
