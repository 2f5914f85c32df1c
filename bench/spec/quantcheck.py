"""What `bench validate` checks of a run's quantised base and precision: qlora keeps its own base, the backend is
installed, pure bf16 runs where bf16 is native, and PEFT trains the method over the base as quantised."""

from __future__ import annotations

import functools
import importlib.util
import json
from typing import TYPE_CHECKING

from bench.core.config import ModelSpec, Quantization
from bench.run.quantization import PACKAGES, describe
from bench.core.yamlio import Lines

if TYPE_CHECKING:
    from methods import Method


def quantization_problems(suite, lines: Lines) -> list[tuple[int | None, str]]:
    """Per run: qlora keeps its own base; the backend's package is installed; pure bf16 runs where bf16 is native;
    and PEFT applies the method over the quantised base, where the architecture is known without a download."""
    problems = []
    for i, run in enumerate(suite.runs):
        q = run.training.quantization or suite.training.quantization
        where = ("runs", i, "training", "quantization") if run.training.quantization else ("training", "quantization")
        place = _place(where)
        master = run.training.master_weights if run.training.master_weights is not None else \
            suite.training.master_weights
        precision = run.training.precision or suite.training.precision
        if master is False:
            problems += _pure_bf16_problems(lines, i, run, precision)
        if q is None or run.method is None:
            continue
        from methods import METHODS

        method = METHODS.get(run.method)
        if method is None:
            continue
        if method.load_in_4bit:
            problems.append((lines.of(where), f"{place}: qlora is LoRA over bitsandbytes NF4 with double "
                             "quantisation, its base fixed; to choose the base's quantisation use lora (or any "
                             "method) with training.quantization"))
        elif importlib.util.find_spec(PACKAGES[q.backend]) is None:
            problems.append((lines.of(where), f"{place}: the {q.backend} backend needs the {PACKAGES[q.backend]} "
                             f"package, which is not installed (pip install 'peft-bench[{q.backend}]')"))
        elif (why := peft_refuses(method, q) or applies(suite.model, method, method.defaults() | run.params, q)) \
                is not None:
            problems.append((lines.of(where), f"{place}: {method.id} over {describe(q)}: {why}"))
    return problems


def peft_refuses(method: Method, q: Quantization) -> str | None:
    """PEFT's own refusal of LoRA over torchao int4 weights, whatever the model: PEFT 0.21's TorchaoLoraLinear raises
    on an Int4Tensor weight. Asked of PEFT for real on one layer holding an Int4Tensor made directly (quantising to
    int4 needs torchao's mslk kernels, which a CPU may lack; PEFT's check needs only the tensor's type)."""
    if not (q.backend == "torchao" and q.bits == 4 and method.peft_type == "LORA"):
        return None
    return _lora_over_int4()


@functools.cache
def _lora_over_int4() -> str | None:
    import torch
    from peft import LoraConfig, get_peft_model
    from torchao.quantization import Int4Tensor

    out, width, group = 64, 128, 128
    weight = Int4Tensor(torch.zeros(out, width // 2, dtype=torch.uint8), torch.ones(width // group, out),
                        torch.zeros(width // group, out), [1, group], torch.Size([out, width]))
    layer = torch.nn.Linear(width, out, bias=False)
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    try:
        get_peft_model(torch.nn.Sequential(layer), LoraConfig(target_modules=["0"], r=8))
    except Exception as e:  # PEFT's reason, in its words
        return f"PEFT refuses it: {type(e).__name__}: {e}"
    return None


# Pre-quantised checkpoints transformers loads through gptqmodel (and optimum for GPTQ), by their quant_method.
PREQUANTIZED = {"gptq": "gptqmodel and optimum", "awq": "gptqmodel"}


def prequantized_problem(config_json) -> str | None:
    """Why a local model folder's pre-quantised GPTQ or AWQ checkpoint (config.json's quantization_config) cannot
    load here: transformers loads both through gptqmodel, which is not installed; None otherwise."""
    try:
        method = (json.loads(config_json.read_text()).get("quantization_config") or {}).get("quant_method")
    except (OSError, ValueError, AttributeError):
        return None  # an unreadable config: loading it says why
    if method not in PREQUANTIZED or all(importlib.util.find_spec(p) for p in PREQUANTIZED[method].split(" and ")):
        return None
    return (f"a {method.upper()} checkpoint (quantization_config.quant_method: {method} in {config_json}): "
            f"transformers loads it through {PREQUANTIZED[method]}, not installed here (pip install "
            f"{PREQUANTIZED[method].replace(' and ', ' ')} in an environment of their own: gptqmodel 7.7 needs torch "
            ">= 2.14.1 and 7.6 pins numpy 2.2.6, beside this project's torch 2.13 and numpy 2.4 pins), or de-quantise "
            "the checkpoint to a float one first")


def _place(where: tuple) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pure_bf16_problems(lines: Lines, i: int, run, precision: str) -> list[tuple[int | None, str]]:
    from bench.run.device import native_bf16, pick_device

    where = ("runs", i, "training", "master_weights") if run.training.master_weights is not None else \
        ("training", "master_weights")
    if precision != "bf16":
        return [(lines.of(where), f"{_place(where)}: false (pure bf16) keeps the weights that train in bf16, so "
                 f"it needs training.precision: bf16, not {precision}")]
    device = pick_device()
    if not native_bf16(device):
        return [(lines.of(where), f"{_place(where)}: false (pure bf16) needs a device that computes bf16 "
                 f"natively, and this {device.type} does not (emulated bf16 is many times slower); keep fp32 master "
                 "weights or validate where the runs will run")]
    return []


def applies(model: ModelSpec, method: Method, params: dict, q: Quantization) -> str | None:
    """Why PEFT (or the backend) cannot train `method` over a base quantised this way: the suite's preset or config
    architecture (one layer of it where it is large: trial_architecture), quantised for real on the CPU, wrapped by
    PEFT, one forward and backward; None when it trains, or when the architecture is not known without loading a
    model (a GGUF, Hub or local model: the run finds out)."""
    from bench.run.models import PRESETS
    from bench.core.yamlio import to_plain

    config = PRESETS.get(model.preset) if model.preset is not None else model.config
    if not isinstance(config, dict) or method.peft_type is None:
        return None
    return _trial(json.dumps(to_plain(config), sort_keys=True), method.id, json.dumps(to_plain(params), sort_keys=True),
                  q.model_dump_json())


# Above this many parameters a combination is tried on one decoder layer and a small vocabulary: PEFT and the backends
# accept or refuse it layer by layer, and an 8B model built in fp32 for the trial takes 32 GB.
TRIAL_PARAMS = 300_000_000
TRIAL_VOCAB = 1024
LAYER_INDEX_PARAMS = ("layers_to_transform", "layers_pattern")  # pick layers by index: one layer has only index 0


def trial_architecture(config: dict, params: dict) -> tuple[dict, dict]:
    """The architecture and method params a combination is tried on: as given up to TRIAL_PARAMS parameters, else
    one decoder layer of the same width and a TRIAL_VOCAB-token vocabulary (token ids beyond it dropped), without
    the params that pick layers by index."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.run.tuners import at_depth, model_config

    with torch.device("meta"):
        total = sum(p.numel() for p in AutoModelForCausalLM.from_config(model_config(config)).parameters())
    if total <= TRIAL_PARAMS:
        return config, params
    small = {k: v for k, v in at_depth(config, 1).items()
             if not (k.endswith("token_id") and isinstance(v, int) and v >= TRIAL_VOCAB)}
    small["vocab_size"] = min(config.get("vocab_size", TRIAL_VOCAB), TRIAL_VOCAB)
    return small, {k: v for k, v in params.items() if k not in LAYER_INDEX_PARAMS}


@functools.cache
def _trial(config: str, method_id: str, params: str, q: str) -> str | None:
    import torch

    from bench.core.config import ModelSpec
    from bench.run.models import load_model
    from methods import METHODS, RunFacts

    method = METHODS[method_id]
    arch, kwargs = trial_architecture(json.loads(config), json.loads(params))
    try:
        base = load_model(ModelSpec(config=arch), None, dtype=torch.float32, load_in_4bit=False, seed=0,
                          quantization=Quantization.model_validate_json(q))
        from peft import get_peft_model

        facts = RunFacts(total_steps=10, special_token_ids=(0,))
        model = get_peft_model(base, method.config(facts, **kwargs))
    except Exception as e:  # whatever PEFT or the backend raises is the reason
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    ids = torch.arange(1, 9).unsqueeze(0)
    for n in (1, 2):  # twice: DoRA over a bitsandbytes 8-bit base on the CPU breaks the base on its first pass
        try:
            model(input_ids=ids, labels=ids).loss.backward()
        except Exception as e:
            return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]} (forward and backward pass {n})"
    if not any(p.requires_grad for p in model.parameters()):
        from methods.base import NOTHING_TRAINS

        return NOTHING_TRAINS
    return None
