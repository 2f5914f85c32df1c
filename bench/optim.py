"""The optimiser a run trains with: any `torch.optim` class with its kwargs, or one of PEFT's (`peft.optimizers`):
LoRA+ (B learns faster than A), LoRA-FA (A frozen, B's gradient projected) and Riemannian-preconditioned LoRA."""

from __future__ import annotations

import inspect
from typing import Any

# PEFT's optimisers by the names PEFT's benchmark gives them (training_params.json's optimizer_type).
PEFT_OPTIMIZERS = {"lora+": "create_loraplus_optimizer", "lora-fa": "create_lorafa_optimizer",
                   "riemannian": "create_riemannian_optimizer"}
# Set from the suite's training fields, so a sweep over learning_rate means the same for every optimiser.
FROM_TRAINING = ("lr", "weight_decay")


def torch_optimizers() -> list[str]:
    import torch

    return [n for n, c in vars(torch.optim).items()
            if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer]


def accepted_kwargs(name: str) -> list[str] | None:
    """The kwargs an optimiser takes beyond the parameters, lr and weight_decay; None for an unknown name."""
    import torch

    if name in PEFT_OPTIMIZERS:
        import peft.optimizers

        own = [k for k in inspect.signature(getattr(peft.optimizers, PEFT_OPTIMIZERS[name])).parameters
               if k not in ("model", "kwargs", *FROM_TRAINING)]
        # LoRA+ and Riemannian wrap a torch optimiser (optimizer_cls, a name here) and pass it the rest.
        return own + (["betas", "eps", "amsgrad", "foreach", "fused"] if name != "lora-fa" else [])
    if name not in torch_optimizers():
        return None
    cls = getattr(torch.optim, name)
    return [k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "params", *FROM_TRAINING)]


def optimizer_problems(name: str, kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    """(place under training.optimizer, message) for every problem of an optimiser spec."""
    from bench.util import did_you_mean

    accepted = accepted_kwargs(name)
    if accepted is None:
        known = list(PEFT_OPTIMIZERS) + torch_optimizers()
        return [("name", f"unknown optimiser '{name}'{did_you_mean(name, known)}; a torch.optim class (AdamW, SGD, "
                 f"...) or one of PEFT's: {', '.join(PEFT_OPTIMIZERS)}")]
    problems = []
    for key in kwargs:
        if key in FROM_TRAINING:
            field = "learning_rate" if key == "lr" else key
            problems.append((f"kwargs.{key}", f"set training.{field} instead (it is the same for every optimiser, "
                             "and sweeps and schedules read it there)"))
        elif key not in accepted:
            problems.append((f"kwargs.{key}", f"{name} takes {', '.join(accepted) or 'no other kwargs'} - not "
                             f"'{key}'{did_you_mean(key, accepted)}"))
    base = kwargs.get("optimizer_cls")
    if base is not None and base not in torch_optimizers():
        problems.append(("kwargs.optimizer_cls", f"unknown torch.optim class '{base}'"
                         f"{did_you_mean(base, torch_optimizers())}"))
    return problems


def describe(name: str | None, kwargs: dict[str, Any]) -> str:
    """What the record says of the optimiser."""
    if name is None:
        return "torch.optim.AdamW"
    if name in PEFT_OPTIMIZERS:
        return f"peft.optimizers.{PEFT_OPTIMIZERS[name]} ({name}) over torch.optim.{kwargs.get('optimizer_cls', 'AdamW')}"
    return f"torch.optim.{name}"


def make_optimizer(model, name: str | None, kwargs: dict[str, Any], *, lr: float, weight_decay: float,
                   fused: bool = False):
    """The optimiser over the model's trainable parameters. LoRA-FA freezes every lora_A (requires_grad False): count
    trainable parameters after this."""
    import torch

    kwargs = dict(kwargs)
    params = [p for p in model.parameters() if p.requires_grad]
    if name is None:
        # One fused kernel for the whole update on CUDA (the per-tensor loop is launch-bound for full fine-tuning).
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name not in PEFT_OPTIMIZERS:
        cls = getattr(torch.optim, name)
        if "weight_decay" in inspect.signature(cls.__init__).parameters:
            kwargs["weight_decay"] = weight_decay
        return cls(params, lr=lr, **kwargs)
    import peft.optimizers

    create = getattr(peft.optimizers, PEFT_OPTIMIZERS[name])
    if name == "lora-fa":
        config = model.peft_config[model.active_adapter]
        kwargs.setdefault("r", config.r)
        kwargs.setdefault("lora_alpha", config.lora_alpha)
        return create(model, lr=lr, weight_decay=weight_decay, **kwargs)
    kwargs["optimizer_cls"] = getattr(torch.optim, kwargs.get("optimizer_cls", "AdamW"))
    return create(model, lr=lr, weight_decay=weight_decay, **kwargs)
