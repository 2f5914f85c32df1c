"""Trainable tokens: only the embedding rows of chosen tokens train (PEFT's TrainableTokensConfig).

PEFT requires `token_indices`. Unset, they are the tokens a chat-formatted example adds around the text: the
tokenizer's special tokens (PEFT's benchmark trains the start and end tokens, "sos+eos"), found after the model is
built, from the run's own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.base import Method, Plan


@dataclass(frozen=True)
class TrainableTokens(Method):
    def prepare(self, params: dict, plan: Plan | None) -> dict:
        if not params.get("token_indices") and plan is not None and plan.special_token_ids:
            return params | {"token_indices": list(plan.special_token_ids)}
        return params


METHOD = TrainableTokens(
    id="trainable_tokens",
    summary="Train only the embedding rows of chosen tokens (default: the tokenizer's special tokens); merges exactly.",
    peft_type="TRAINABLE_TOKENS",
    lr_grid=(1e-2, 3e-2, 1e-1),
)
