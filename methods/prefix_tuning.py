"""Prefix tuning: trainable key/value prefixes in every attention layer (Li & Liang, 2021); random, or from text.

KV-cache prefixes (prefix tuning here, cartridges in methods/cartridge.py) may start from text rather than at random:
`init_kv_cache_prefix: TEXT` is PEFT's benchmark's training param of that name, here a param of the method. Once the
model is built, PEFT's `initialize_kv_prefix_from_text` prefills the base model on the text (as a system turn where
the tokenizer has a chat template) and loads the first `num_virtual_tokens` keys and values of its cache into the
prefix, which then trains from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from methods.base import Method, RunFacts

TEXT = "init_kv_cache_prefix"
EXTRAS = {TEXT: Optional[str]}


@dataclass(frozen=True)
class KVPrefix(Method):
    def prepare(self, params: dict[str, Any], plan: RunFacts | None) -> dict[str, Any]:
        if params.get(TEXT) and params.get("prefix_projection"):
            raise ValueError(f"{TEXT} sets the prefix's keys and values themselves, which prefix_projection=True "
                             "computes with an MLP instead (PEFT refuses the pair too); drop one of them")
        return params

    def after_build(self, model, tokenizer, params: dict[str, Any]) -> None:
        text = params.get(TEXT)
        if not text:
            return
        from peft import initialize_kv_prefix_from_text

        try:
            initialize_kv_prefix_from_text(model, tokenizer, text=text)
        except ValueError as e:  # most often: the text is shorter than the prefix
            raise ValueError(f"params.{TEXT}: {e} (num_virtual_tokens is "
                             f"{model.active_peft_config.num_virtual_tokens}; use a longer text or fewer)") from None


METHOD = KVPrefix(
    id="prefix_tuning",
    summary="Trainable key/value prefixes in every attention layer (from text with init_kv_cache_prefix); cannot be "
            "merged.",
    peft_type="PREFIX_TUNING",
    preset=dict(num_virtual_tokens=20, prefix_projection=False),
    lr_grid=(1e-2, 3e-2, 1e-1, 3e-1),
    extras=EXTRAS,
)
