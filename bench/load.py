"""The first two stages of a run: load (model source, tokenizer, data) and build (the base model and its method)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench import data as D
from bench import models as M
from bench.config import RunConfig
from bench.device import Place
from bench.records import DataNotes
from methods import METHODS, Method


@dataclass
class Loaded:
    """What a run reads before any model exists: the model's folder (None for a preset), the tokenizer, the data."""

    folder: str | None
    model_info: dict[str, Any]
    tokenizer: Any
    train: list[D.Features]
    eval_examples: list[D.Example]
    eval: list[D.Features]
    validation: list[D.Features]
    notes: DataNotes

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def load(cfg: RunConfig) -> Loaded:
    """Resolve the model source (a GGUF converts once into the cache), load the tokenizer, load, split and tokenise
    the data."""
    folder, model_info = M.resolve(cfg.model)
    tokenizer = M.load_tokenizer(cfg.model, folder)
    train_ex, eval_ex, notes = D.load_examples(cfg.dataset, max_eval=cfg.eval.max_examples)
    train_ex, val_ex = D.split_validation(train_ex, cfg.dataset)

    def tokenize(examples: list[D.Example]) -> list[D.Features]:
        return D.tokenize(examples, tokenizer, cfg.training.max_seq_len, cfg.dataset, notes, notes.source)

    train_f, eval_f, val_f = tokenize(train_ex), tokenize(eval_ex), tokenize(val_ex)
    if val_ex:
        notes.validation_rows, notes.train_rows = len(val_f), len(train_f)
    return Loaded(folder, model_info, tokenizer, train_f, eval_ex, eval_f, val_f, notes)


def method_of(cfg: RunConfig) -> Method | None:
    """The run's method; None for the untrained baseline."""
    return METHODS[cfg.method] if cfg.trains else None


def build(cfg: RunConfig, folder: str | None, place: Place, method: Method | None) -> torch.nn.Module:
    """The model as this run trains it: base (4-bit when the method says so), then the method's PEFT wrapping;
    with no method, the frozen base."""
    four_bit = bool(method and method.load_in_4bit)
    model = M.load_model(cfg.model, folder, dtype=place.dtype, load_in_4bit=four_bit, seed=cfg.training.seed,
                         device=place.device if place.cuda else None)
    if not four_bit:
        model.to(place.device)
    if method is None:
        model.requires_grad_(False)
        return model
    checkpointing = cfg.training.gradient_checkpointing
    # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings (every PEFT method) work.
    gc_kwargs = {"use_reentrant": False}
    if checkpointing and not four_bit:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    peft_config = method.config(**cfg.params)
    if peft_config is None:
        model.requires_grad_(True)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if four_bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    torch.manual_seed(cfg.training.seed)  # adapter initialisation is seeded too
    return get_peft_model(model, peft_config)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """Trainable and total parameters, 4-bit layers counted at their real parameter count (as PEFT counts them)."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n = n * 2 * p.element_size()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
