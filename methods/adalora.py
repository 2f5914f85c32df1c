"""AdaLoRA: LoRA in SVD form whose ranks are reallocated by importance during training (Zhang et al., 2023).

What it needs of the loop: `total_step` (the rank schedule's length) is the run's planned step count unless the suite
sets it, and `update_and_allocate` runs after every optimiser step while gradients are still there. Its orthogonal
regulariser (orth_reg_weight) PEFT's AdaLoraModel.forward adds to the loss itself, to any loss it computes, in
training and evaluation alike: the training curve is that objective, while the harness's eval loss and forgetting
turn it off (`measuring`), so they are the task's loss per token as for every other method.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from methods.base import Method, RunFacts


@dataclass(frozen=True)
class AdaLora(Method):
    def prepare(self, params: dict, plan: RunFacts | None) -> dict:
        if params.get("total_step") is None and plan is not None:
            return params | {"total_step": plan.total_steps}
        return params

    def on_step(self, model, step: int) -> None:
        model.base_model.update_and_allocate(step)

    @contextlib.contextmanager
    def measuring(self, model):
        config = model.peft_config[model.active_adapter]
        weight, config.orth_reg_weight = config.orth_reg_weight, 0.0
        try:
            yield
        finally:
            config.orth_reg_weight = weight


METHOD = AdaLora(
    id="adalora",
    summary="LoRA in SVD form whose rank budget moves to the layers that matter during training; merges exactly.",
    peft_type="ADALORA",
    preset=dict(target_modules="all-linear"),
)
