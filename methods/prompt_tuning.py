"""Prompt tuning: trainable soft-prompt embeddings prepended to the input (Lester et al., 2021)."""

from methods.base import Method

METHOD = Method(
    id="prompt_tuning",
    summary="Trainable virtual-token embeddings prepended to every input; cannot be merged.",
    peft_type="PROMPT_TUNING",
    preset=dict(num_virtual_tokens=20, prompt_tuning_init="RANDOM"),
    lr_grid=(1e-2, 3e-2, 1e-1, 3e-1),
)
