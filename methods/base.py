"""The method record: what every file in `methods/` declares."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Literal

Merge = Literal["exact", "lossy", "none"]


@dataclass(frozen=True)
class Method:
    """One fine-tuning method.

    `config` is a pure function from the method's parameters to a PEFT config (`None` trains every
    parameter). Its keyword arguments, with their defaults and annotations, are the parameters a suite may set:
    they are PEFT's own kwarg names, so PEFT's docs explain them.
    """

    id: str
    summary: str
    config: Callable[..., Any]
    merge: Merge
    load_in_4bit: bool = False
    # Prompt-learning methods prepend virtual tokens to each row, so rows cannot hold several packed examples.
    packable: bool = True
    # PEFT drops position ids for prompt tuning and P-tuning (peft_model._adjust_prompt_learning_kwargs), so with
    # left padding the distance between virtual and real tokens depends on the padding: generate without padding.
    left_pad_safe: bool = True
    # transformers' KV-cache generate() gives the trained model's own greedy answers. Not so for prompt learning with
    # transformers 5.24 / peft 0.21.2: from the second new token on, generate() disagrees with a full forward pass
    # (prompt tuning and P-tuning produce garbage, prefix tuning answers as if untrained); those methods decode with
    # the harness's own cached loop (bench.evaluation.greedy_virtual). tests/test_generation.py checks every method.
    kv_cache_generate: bool = True
    # Learning rates `sweep: {learning_rate: default}` tries: methods that train few parameters need far larger steps.
    lr_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    # Bumped whenever results would change, so stored records stop matching and get rerun.
    version: int = 1

    def defaults(self) -> dict[str, Any]:
        return {
            name: p.default
            for name, p in inspect.signature(self.config).parameters.items()
            if p.default is not inspect.Parameter.empty
        }

    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.config).parameters)
