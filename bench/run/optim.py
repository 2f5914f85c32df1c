"""The optimiser a run trains with: any `torch.optim` class with its kwargs, one of PEFT's (`peft.optimizers`):
LoRA+ (B learns faster than A), LoRA-FA (A frozen, B's gradient projected) and Riemannian-preconditioned LoRA, or
one of bitsandbytes' (`bnb.optim`: 8-bit states, paged states) by a name torch.optim does not use, or one of
torchao's (`torchao.optim`) as `torchao.NAME` (`torchao.AdamW` takes `bf16_stochastic_round`); and the bytes of
state each keeps per trainable parameter."""

from __future__ import annotations

import functools
import inspect
import json
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


@functools.cache
def bnb_optimizers() -> list[str]:
    """bitsandbytes' optimisers whose names torch.optim does not use (AdamW8bit, PagedAdamW, Lion8bit, ...); torch's
    AdamW stays torch's. Empty without bitsandbytes."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return []
    import bitsandbytes.optim
    import torch

    taken = set(torch_optimizers())
    return [n for n, c in vars(bitsandbytes.optim).items()
            if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and n not in taken]


# torchao's optimisers go by `torchao.` and their name in torchao.optim; its full-precision AdamW, the one that rounds
# bf16 weights stochastically (`bf16_stochastic_round`), is private there (torchao 0.18: `_AdamW`).
TORCHAO_PREFIX = "torchao."
TORCHAO_RENAMED = {"AdamW": "_AdamW"}


@functools.cache
def torchao_optimizers() -> list[str]:
    """torchao's optimisers by the names a suite gives them (torchao.AdamW, torchao.AdamW8bit, torchao.AdamW4bit,
    torchao.AdamWFp8, ...). Empty without torchao."""
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        return []
    import torch
    import torchao.optim

    own = {v: k for k, v in TORCHAO_RENAMED.items()}
    return [TORCHAO_PREFIX + own.get(n, n) for n, c in vars(torchao.optim).items()
            if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and (n in own or not n.startswith("_"))
            and "lr" in inspect.signature(c.__init__).parameters]  # not CPUOffloadOptimizer, which wraps one


def optimizer_class(name: str):
    """The class a torch.optim, bitsandbytes or torchao.NAME name stands for."""
    import torch

    if name in torch_optimizers():
        return getattr(torch.optim, name)
    if name.startswith(TORCHAO_PREFIX):
        import torchao.optim

        short = name.removeprefix(TORCHAO_PREFIX)
        return getattr(torchao.optim, TORCHAO_RENAMED.get(short, short))
    import bitsandbytes.optim

    return getattr(bitsandbytes.optim, name)


def accepted_kwargs(name: str) -> list[str] | None:
    """The kwargs an optimiser takes beyond the parameters, lr and weight_decay; None for an unknown name."""
    import torch

    if name in PEFT_OPTIMIZERS:
        import peft.optimizers

        own = [k for k in inspect.signature(getattr(peft.optimizers, PEFT_OPTIMIZERS[name])).parameters
               if k not in ("model", "kwargs", *FROM_TRAINING)]
        # LoRA+ and Riemannian wrap a torch optimiser (optimizer_cls, a name here) and pass it the rest.
        return own + (["betas", "eps", "amsgrad", "foreach", "fused"] if name != "lora-fa" else [])
    if name not in torch_optimizers() and name not in bnb_optimizers() and name not in torchao_optimizers():
        return None
    cls = optimizer_class(name)
    return [k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "params", *FROM_TRAINING)]


def optimizer_problems(name: str, kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    """(place under training.optimizer, message) for every problem of an optimiser spec."""
    from bench.core.util import did_you_mean

    accepted = accepted_kwargs(name)
    if accepted is None:
        known = list(PEFT_OPTIMIZERS) + torch_optimizers() + bnb_optimizers() + torchao_optimizers()
        return [("name", f"unknown optimiser '{name}'{did_you_mean(name, known)}; a torch.optim class (AdamW, SGD, "
                 f"...), one of PEFT's: {', '.join(PEFT_OPTIMIZERS)}, of bitsandbytes' (AdamW8bit, PagedAdamW8bit, "
                 "...) or of torchao's (torchao.AdamW, torchao.AdamW8bit, ...; pip install 'peft-bench[torchao]')")]
    problems = []
    for key in kwargs:
        if key in FROM_TRAINING:
            field = "learning_rate" if key == "lr" else key
            problems.append((f"kwargs.{key}", f"set training.{field} instead (it is the same for every optimiser, "
                             "and sweeps and schedules read it there)"))
        elif key not in accepted:
            problems.append((f"kwargs.{key}", f"{name} takes {', '.join(accepted) or 'no other kwargs'} - not "
                             f"'{key}'{did_you_mean(key, accepted)}"))
    steps_checked = name in bnb_optimizers() or name.startswith(TORCHAO_PREFIX)  # PEFT's and torch's: built in training
    if not problems and steps_checked and (why := steps(name, json.dumps(kwargs, sort_keys=True))):
        problems.append(("name", why))
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
    if name.startswith(TORCHAO_PREFIX):
        cls = optimizer_class(name)
        rounding = " with bf16 stochastic rounding" if kwargs.get("bf16_stochastic_round") else ""
        return f"torchao.optim.{cls.__name__}{rounding}"
    return f"{'bitsandbytes' if name in bnb_optimizers() else 'torch'}.optim.{name}"


@functools.cache
def steps(name: str, kwargs: str) -> str | None:
    """Why a bitsandbytes or torchao optimiser does not step here (on the CPU, where validate runs: AdEMAMix32bit
    fails, LARS and SGD need momentum); None when one step on a 64k-element weight updates it. torchao's compile
    their step (torch.compile): the first takes seconds."""
    import torch

    p = torch.nn.Parameter(torch.randn(1 << 16))
    try:
        optimizer = optimizer_class(name)([p], lr=1e-3, **json.loads(kwargs))
        p.grad = torch.randn_like(p)
        optimizer.step()
    except Exception as e:  # whatever bitsandbytes raises is the reason
        owner = "torchao's" if name.startswith(TORCHAO_PREFIX) else "bitsandbytes'"
        return f"{owner} {name} does not step on this machine's {p.device.type}: {type(e).__name__}: {e}"
    return None


@functools.cache
def state_bytes_per_param(name: str | None, kwargs: str = "{}", dtype: str = "float32") -> float:
    """Bytes of optimiser state per trainable parameter, measured: one step over a 64k-element weight of `dtype`,
    its state tensors' bytes divided by its elements (AdamW 8, AdamW8bit 2.06 with its block-wise scales, Lion8bit
    1.03; torch's AdamW keeps states in the weight's dtype, so 4 over bf16 weights; paged states are as large, kept
    in memory the GPU pages out). `kwargs` as JSON. For `bench plan`."""
    import torch

    p = torch.nn.Parameter(torch.randn(1 << 16, dtype=getattr(torch, dtype)))
    args = json.loads(kwargs)
    if name in PEFT_OPTIMIZERS:  # LoRA+, Riemannian and LoRA-FA keep AdamW's states (LoRA+: its optimizer_cls's)
        name, args = args.pop("optimizer_cls", "AdamW"), {k: v for k, v in args.items() if k in ("betas", "eps")}
    optimizer = optimizer_class(name or "AdamW")([p], lr=1e-3, **args)
    p.grad = torch.randn_like(p)
    optimizer.step()
    state = optimizer.state[p]
    # Per-tensor scalars (the step count, LAMB's norm) and bitsandbytes' 256-entry code books (qmap) are not
    # per-parameter state; its block-wise scales (absmax, one per 256 elements) are.
    from bench.run.quantsize import tensor_bytes  # torchao's 8- and 4-bit states are tensor subclasses

    return sum(tensor_bytes(v) for k, v in state.items()
               if torch.is_tensor(v) and v.numel() > 1 and not k.startswith("qmap")) / p.numel()


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
        cls = optimizer_class(name)
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
