"""Prefix tuning: trainable key/value prefixes in every attention layer (Li & Liang, 2021)."""

from peft import PrefixTuningConfig

from methods.base import Method


def config(num_virtual_tokens: int = 20, prefix_projection: bool = False) -> PrefixTuningConfig:
    return PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=num_virtual_tokens,
        prefix_projection=prefix_projection,
    )


METHOD = Method(
    id="prefix_tuning",
    summary="Trainable key/value prefixes in every attention layer; cannot be merged.",
    config=config,
    merge="none",
    packable=False,
    kv_cache_generate=False,
    lr_grid=(1e-2, 3e-2, 1e-1, 3e-1),
)
