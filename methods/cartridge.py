"""Cartridges: a trained KV-cache prefix that stands in for a long context (Eyuboglu et al., 2025; PEFT's
CartridgeConfig), best started from that context's own cache with `init_kv_cache_prefix` (methods/prefix_tuning.py)."""

from methods.prefix_tuning import EXTRAS, KVPrefix

METHOD = KVPrefix(
    id="cartridge",
    summary="A trained KV-cache prefix standing in for a long context (from text with init_kv_cache_prefix); cannot "
            "be merged.",
    peft_type="CARTRIDGE",
    preset=dict(num_virtual_tokens=20),  # PEFT has no default; prefix tuning's
    lr_grid=(1e-2, 3e-2, 1e-1, 3e-1),
    extras=EXTRAS,
)
