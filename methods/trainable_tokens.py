"""Trainable tokens: only the embedding rows of chosen tokens train (PEFT's TrainableTokensConfig).

PEFT requires `token_indices`. Unset, they are the tokens a chat-formatted example adds around the text: the
tokenizer's special tokens (PEFT's benchmark trains the start and end tokens, "sos+eos"), found after the model is
built, from the run's own tokenizer. Indices beyond the model's vocabulary (PEFT's benchmark trains Llama-3's ids
128000 and 128001) are refused at validate time: PEFT would index out of range only in the first forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.base import Method, RunFacts


@dataclass(frozen=True)
class TrainableTokens(Method):
    def prepare(self, params: dict, plan: RunFacts | None) -> dict:
        if not params.get("token_indices") and plan is not None and plan.special_token_ids:
            return params | {"token_indices": list(plan.special_token_ids)}
        return params

    def check(self, model, params: dict) -> None:
        rows = model.get_base_model().config.vocab_size
        beyond = [i for i in params.get("token_indices") or [] if not 0 <= i < rows]
        if beyond:
            raise ValueError(f"token_indices {beyond} are beyond this model's vocabulary of {rows} tokens (ids of "
                             "another tokenizer?); unset, they are this tokenizer's special tokens")


METHOD = TrainableTokens(
    id="trainable_tokens",
    summary="Train only the embedding rows of chosen tokens (default: the tokenizer's special tokens); merges exactly.",
    peft_type="TRAINABLE_TOKENS",
    lr_grid=(1e-2, 3e-2, 1e-1),
)
