"""DoRA: LoRA on the direction of each weight plus a trainable per-output magnitude (Liu et al., 2024)."""

from methods import lora
from methods.base import Method


def config(
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
):
    return lora.config(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules,
                       use_dora=True)


METHOD = Method(
    id="dora",
    summary="Weight-decomposed LoRA (PEFT's LoraConfig with use_dora=True); merges exactly into the base weights.",
    config=config,
    merge="exact",
)
