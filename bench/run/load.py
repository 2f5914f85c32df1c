"""The first two stages of a run: load (model source, tokenizer, data) and build (the base model and its method)."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any

import torch

from bench.datasets import batches as B
from bench.datasets import examples as D
from bench.run import models as M
from bench.core.config import RunConfig
from bench.run.device import Place
from bench.core.records import DataNotes
from methods import METHODS, Method, RunFacts


@dataclass
class Loaded:
    """What a run reads before any model exists: the model's folder (None for a preset), the tokenizer, the data."""

    folder: str | None
    model_info: dict[str, Any]
    tokenizer: Any
    train: list[B.Features]
    eval_examples: list[D.Example]
    eval: list[B.Features]
    validation: list[B.Features]
    notes: DataNotes

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


@dataclass
class Inputs:
    """What loading reads before tokenising: the model's folder and tokenizer, the data split into its parts."""

    folder: str | None
    model_info: dict[str, Any]
    tokenizer: Any
    train: list[D.Example]
    eval: list[D.Example]
    validation: list[D.Example]
    notes: DataNotes


def read_inputs(cfg: RunConfig) -> Inputs:
    """Resolve the model source (a GGUF converts once into the cache), load the tokenizer, load and split the data:
    the same for every run of a suite (bench.commands.session's pre-flight reads them once before any run starts)."""
    folder, model_info = M.resolve(cfg.model)
    tokenizer = M.load_tokenizer(cfg.model, folder)
    train_ex, eval_ex, notes = D.load_examples(cfg.dataset, max_eval=cfg.eval.max_examples)
    notes.formatting = B.use_formatting(tokenizer, cfg.dataset, notes.source)
    eval_ex = D.check_references(eval_ex, cfg.eval.extract, cfg.dataset, notes, numeric=D.numeric(cfg.eval))
    train_ex, val_ex = D.split_validation(train_ex, cfg.dataset, notes)
    return Inputs(folder, model_info, tokenizer, train_ex, eval_ex, val_ex, notes)


def tokenize(inputs: Inputs, examples: list[D.Example], max_seq_len: int, cfg: RunConfig) -> list[B.Features]:
    return B.tokenize(examples, inputs.tokenizer, max_seq_len, cfg.dataset, inputs.notes, inputs.notes.source)


def load(cfg: RunConfig) -> Loaded:
    """The run's inputs (read_inputs), tokenised to its max_seq_len."""
    inputs = read_inputs(cfg)
    train_f, eval_f, val_f = (tokenize(inputs, part, cfg.training.max_seq_len, cfg)
                              for part in (inputs.train, inputs.eval, inputs.validation))
    notes = inputs.notes
    if inputs.validation:
        notes.validation_rows, notes.train_rows = len(val_f), len(train_f)
    return Loaded(inputs.folder, inputs.model_info, inputs.tokenizer, train_f, inputs.eval, eval_f, val_f, notes)


def method_of(cfg: RunConfig) -> Method | None:
    """The run's method; None for the untrained baseline."""
    return METHODS[cfg.method] if cfg.trains else None


def attention(cfg: RunConfig, method: Method | None, place: Place, folder: str | None = None) -> str:
    """The attention kernel: the suite's; for packed runs on CUDA one that keeps packed examples apart without a
    dense block-diagonal mask (which keeps SDPA off its flash kernel): flash-attention's variable-length path where
    flash-attn is installed, else transformers' flex-attention with a document mask (from the restarting position
    ids; it compiles its kernel once per process) where the model supports it; else SDPA."""
    if cfg.training.attn_implementation is not None:
        return cfg.training.attn_implementation
    packed = method is not None and cfg.training.packing and method.packable
    if packed and place.cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    if packed and place.cuda and supports_flex(cfg, folder):
        return "flex_attention"
    return "sdpa"


def supports_flex(cfg: RunConfig, folder: str | None) -> bool:
    """Whether the run's model class has transformers' flex-attention path (read from its config, no weights)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if folder is not None:
        config = AutoConfig.from_pretrained(folder)
    elif cfg.model.preset is not None or cfg.model.config is not None:
        config = M.build_config(cfg.model)
    else:
        return False
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    return bool(model_class is not None and getattr(model_class, "_supports_flex_attn", False))


def build(cfg: RunConfig, folder: str | None, place: Place, method: Method | None, plan: RunFacts | None = None,
          tokenizer=None) -> torch.nn.Module:
    """The model as this run trains it: the base in the run's dtype (4-bit NF4 when the method says so), frozen,
    then the method's PEFT wrapping, with every weight that trains in fp32 (see `trainable_in_fp32`), and the
    method's `after_build` hook (which may read the tokenizer); with no method, the frozen base. `plan`
    (bench.run.train.facts_of; default: the step budget) is what the method's hooks read."""
    from bench.run.quantization import of_run

    quant = of_run(cfg, method)
    sharded = cfg.distributed and cfg.training.distributed.config is not None
    model = M.load_model(cfg.model, folder, dtype=place.dtype, load_in_4bit=False, seed=cfg.training.seed,
                         device=place.device if place.cuda or quant and quant.backend == "hqq" else None,
                         attention=attention(cfg, method, place, folder), quantization=quant,
                         shardable_4bit=bool(quant and quant.bits == 4 and sharded))
    if quant is None:
        model.to(place.device)
    model.requires_grad_(False)
    if method is None:
        return model
    if cfg.training.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings (every PEFT method)
        # and 4-bit bases work without PEFT's prepare_model_for_kbit_training, whose fp32 upcast of every other
        # weight (embeddings, norms, lm_head) costs gigabytes at 8B and puts the residual stream in fp32.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_config = method.config(plan or RunFacts(total_steps=cfg.budget.max_steps or 1000), **cfg.params)
    if peft_config is None:
        model.requires_grad_(True)
    else:
        from peft import get_peft_model

        if cfg.model.hub is not None:
            # Saved in adapter_config.json beside the Hub id, so a client loads the very base it trained on.
            peft_config.revision = cfg.model.revision
        torch.manual_seed(cfg.training.seed)  # adapter initialisation is seeded too
        model = get_peft_model(model, peft_config)
    if cfg.training.master_weights is False:
        trainable_in(model, place.dtype)
    else:
        trainable_in_fp32(model)
    if not any(p.requires_grad for p in model.parameters()):
        from methods.base import NOTHING_TRAINS

        raise ValueError(f"PEFT cannot apply {method.id} to this model: {NOTHING_TRAINS}")
    method.check(model, cfg.params)
    method.after_build(model, tokenizer, cfg.params)
    return model


def trainable_in_fp32(model: torch.nn.Module) -> None:
    """Weights that train are kept in fp32 and computed under autocast: AdamW's update to a bf16 weight rounds away
    whenever it is below half a bf16 step (a 2e-5 step on weights of size 0.02 left 30% of them unchanged; weights
    near 1.0, the norms, never move). PEFT upcasts its adapter layers itself, but not modules_to_save copies and not
    a fully fine-tuned model."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def trainable_in(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Pure bf16 (`training.master_weights: false`), as PEFT's benchmark, litgpt's bf16-true and torchtune train:
    the weights that train, and so their gradients and optimiser states, in the compute dtype. PEFT upcasts its
    adapter layers to fp32 (autocast_adapter_dtype); this undoes it. Updates below half a bf16 step round away
    (tests/test_precision.py measures how many)."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != dtype:
            p.data = p.data.to(dtype)


def weight_dtypes(model: torch.nn.Module) -> dict[str, str]:
    """What the record says of the weights: the dtype of those that train and of those that do not."""
    def names(params) -> str:
        kinds = sorted({_kind(p) for p in params})
        return "+".join(kinds) or "-"

    params = list(model.parameters())
    return {"trainable": names(p for p in params if p.requires_grad),
            "frozen": names(p for p in params if not p.requires_grad)}


def _kind(p: torch.nn.Parameter) -> str:
    """A weight's dtype, or its quantised format: nf4 or fp4 (bitsandbytes 4-bit), int8 (bitsandbytes 8-bit),
    torchao's tensor subclass (int8tensor), hqq's packed uint8."""
    if p.__class__.__name__ == "Params4bit":
        return p.quant_type
    if type(p.data) is not torch.Tensor and p.data.__class__.__module__.startswith("torchao"):
        return p.data.__class__.__name__.lower()
    return str(p.dtype).removeprefix("torch.")


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """Trainable and total parameters, 4-bit layers counted at their real parameter count (as PEFT counts them);
    an HQQ layer at its weight's shape (its packed bytes say less)."""
    trainable = total = 0
    hqq = [m for m in model.modules() if m.__class__.__name__ == "HQQLinear"]
    packed = {id(p) for m in hqq for p in m.parameters()}
    total = sum(math.prod(m.meta["shape"]) for m in hqq)
    for p in model.parameters():
        if id(p) in packed:
            continue
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n = n * 2 * p.element_size()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total

