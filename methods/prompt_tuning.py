"""Prompt tuning: trainable soft-prompt embeddings prepended to the input (Lester et al., 2021)."""

from peft import PromptTuningConfig

from methods.base import Method


def config(num_virtual_tokens: int = 20, prompt_tuning_init: str = "RANDOM") -> PromptTuningConfig:
    return PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=num_virtual_tokens,
        prompt_tuning_init=prompt_tuning_init,
    )


METHOD = Method(
    id="prompt_tuning",
    summary="Trainable virtual-token embeddings prepended to every input; cannot be merged.",
    config=config,
    merge="none",
    packable=False,
    left_pad_safe=False,
    kv_cache_generate=False,
    lr_grid=(1e-2, 3e-2, 1e-1, 3e-1),
)
