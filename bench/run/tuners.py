"""A method applied to a model built from its config alone, without weights: what validation checks (PEFT applies
the tuner to this architecture) and what `bench plan` counts (trainable and total parameters, adapter size)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

from methods import Method, RunFacts

# Above this many base parameters a tuner that needs real weights is not built with random ones at full depth: the
# decomposition of a billion-parameter model's weights on a CPU takes minutes (`apply(scaled=True)` builds two layers).
RANDOM_WEIGHTS_LIMIT = 300_000_000
# ... nor at depth 1 and 2 (fp32) above this: a 3B model's two layers and embeddings are 0.6B.
SCALED_WEIGHTS_LIMIT = 1_500_000_000


@dataclass(frozen=True)
class Applied:
    trainable: int
    total: int
    adapter_bytes: int  # what save_pretrained writes: the trainable tensors and the buffers PEFT saves beside them
    weights: str  # "meta" (no weights) or "random" (a tuner that needs weights got random ones)


def model_config(config: dict[str, Any]):
    """A transformers config from a dict with its model_type (as the presets and `model.config` are written)."""
    from transformers import AutoConfig

    fields = dict(config)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def apply(config: dict[str, Any], method: Method, params: dict[str, Any], plan: RunFacts, optimizer: str | None = None,
          optimizer_kwargs: dict | None = None, scaled: bool = False) -> Applied:
    """Build the model from `config` on the meta device (with random weights on the CPU where the tuner needs real
    ones and the model is small), apply the method, and count. Raises what PEFT raises. `scaled`: where the model is
    too big for random weights, build it with random weights at depth 1 and 2, full width, and extend the counts to
    its depth (each is affine in depth for a stack of identical layers), rather than raise NeedsWeights."""
    key = json.dumps([config, method.id, params, plan.total_steps, list(plan.special_token_ids), optimizer,
                      optimizer_kwargs], sort_keys=True, default=str)
    try:
        return _apply(key)
    except NeedsWeights:
        if not scaled:
            raise
    one, two = (_apply(json.dumps([at_depth(config, d), *json.loads(key)[1:]], sort_keys=True, default=str))
                for d in (1, 2))
    depth = config["num_hidden_layers"]
    extend = (lambda a, b: a + (depth - 1) * (b - a))
    return Applied(extend(one.trainable, two.trainable), extend(one.total, two.total),
                   extend(one.adapter_bytes, two.adapter_bytes), "random, depth 1 and 2 extended")


def at_depth(config: dict[str, Any], depth: int) -> dict[str, Any]:
    """The architecture with `depth` decoder layers (per-layer lists, such as layer_types, cut to match)."""
    out = dict(config, num_hidden_layers=depth)
    for key, value in config.items():
        if isinstance(value, list) and len(value) == config["num_hidden_layers"]:
            out[key] = value[:depth]
    return out


@functools.lru_cache(maxsize=256)
def _apply(key: str) -> Applied:
    from methods import METHODS

    config, method_id, params, total_steps, special, optimizer, optimizer_kwargs = json.loads(key)
    method = METHODS[method_id]
    plan = RunFacts(total_steps=total_steps, special_token_ids=tuple(special))
    if not (method.needs_weights or _mica(params)):
        try:
            return _build(config, method, params, plan, optimizer, optimizer_kwargs, "meta")
        except (NotImplementedError, RuntimeError) as e:
            if "meta" not in str(e).lower():
                raise
            # This tuner reads the weights as it builds (BOFT, UniLoRA): give it random ones, as below.
    _check_small(config, method, RANDOM_WEIGHTS_LIMIT if config["num_hidden_layers"] > 2 else SCALED_WEIGHTS_LIMIT)
    return _build(config, method, params, plan, optimizer, optimizer_kwargs, "cpu")


def _check_small(config: dict[str, Any], method: Method, limit: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        size = sum(p.numel() for p in AutoModelForCausalLM.from_config(model_config(config)).parameters())
    if size > limit:
        raise NeedsWeights(f"{method.id} reads the base weights as PEFT builds it; {size:,} parameters are too many "
                           "to build with random ones here")


def built(config: dict[str, Any], method: Method, params, plan: RunFacts, device: str, base=None, **from_config):
    """The architecture `config` on `device` (meta: shapes only) with random weights (seed 0), frozen, and the method
    applied as a run applies it (every weight trains where the method has no PEFT config); transformers' and PEFT's
    warnings kept quiet. `from_config`: more arguments for from_config (dtype, attn_implementation). `base`: that
    model, already built (a copy the method may change), instead of a new one. Returns the model and its PEFT
    config."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = base if base is not None else AutoModelForCausalLM.from_config(model_config(config), **from_config)
        model.requires_grad_(False)
        peft_config = method.config(plan, **params)
        if peft_config is None:
            model.requires_grad_(True)
        else:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
    return model, peft_config


def _build(config, method: Method, params, plan: RunFacts, optimizer, optimizer_kwargs, device: str) -> Applied:
    model, peft_config = built(config, method, params, plan, device)
    if peft_config is not None:
        method.check(model, params)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if optimizer is not None:
            from bench.run.optim import make_optimizer

            make_optimizer(model, optimizer, optimizer_kwargs or {}, lr=1e-4, weight_decay=0.0)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        size = _adapter_bytes(model, peft_config)
    return Applied(trainable, total, size, "meta" if device == "meta" else "random")


class NeedsWeights(Exception):
    """A tuner PEFT builds from the base weights, on a model too big to give random ones."""


def _mica(params: dict[str, Any]) -> bool:
    return params.get("init_lora_weights") == "mica"


def _adapter_bytes(model, peft_config) -> int:
    """Bytes of the tensors save_pretrained writes (PEFT's own selection of the state dict), safetensors' header
    aside; for full fine-tuning, every weight."""
    if peft_config is None:
        return sum(p.numel() * p.element_size() for p in model.parameters())
    from peft.utils import get_peft_model_state_dict

    if peft_config.is_prompt_learning:
        # PEFT saves the virtual-token embeddings the encoder produces (its get_prompt_embedding_to_save copies them
        # to the CPU, which a meta tensor cannot do): one row per virtual token and transformer stack, of the
        # hidden size, or of every layer's key and value for a KV-cache prefix.
        c = peft_config
        width = c.token_dim * (2 * c.num_layers if c.peft_type in ("PREFIX_TUNING", "CARTRIDGE") else 1)
        return c.num_virtual_tokens * c.num_transformer_submodules * width * 4
    state = get_peft_model_state_dict(model)
    return sum(t.numel() * t.element_size() for t in state.values())
