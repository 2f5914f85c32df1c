"""DoRA: LoRA on the direction of each weight plus a trainable per-output magnitude (Liu et al., 2024)."""

from methods.base import Method

METHOD = Method(
    id="dora",
    summary="Weight-decomposed LoRA (PEFT's LoraConfig with use_dora=True); merges exactly into the base weights.",
    peft_type="LORA",
    preset=dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"),
    fixed=dict(use_dora=True),
)
