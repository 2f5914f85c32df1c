"""Prefix tuning: trainable key/value prefixes in every attention layer (Li & Liang, 2021); random, or from text with
`init_kv_cache_prefix` (methods.kv_prefix)."""

from methods.kv_prefix import EXTRAS, KVPrefix

METHOD = KVPrefix(
    id="prefix_tuning",
    summary="Trainable key/value prefixes in every attention layer (from text with init_kv_cache_prefix); cannot be "
            "merged.",
    peft_type="PREFIX_TUNING",
    preset=dict(num_virtual_tokens=20, prefix_projection=False),
    lr_grid=(1e-2, 3e-2, 1e-1, 3e-1),
    extras=EXTRAS,
)
