"""Prefix tuning: trainable key/value prefixes in every attention layer (Li & Liang, 2021)."""

from methods.base import Method

METHOD = Method(
    id="prefix_tuning",
    summary="Trainable key/value prefixes in every attention layer; cannot be merged.",
    peft_type="PREFIX_TUNING",
    preset=dict(num_virtual_tokens=20, prefix_projection=False),
    lr_grid=(1e-2, 3e-2, 1e-1, 3e-1),
)
