"""AdaMSS: SVD subspaces of each weight, clustered, trained and pruned adaptively (PEFT's AdamssConfig).

Its subspace pruning (use_asa) runs in `update_and_allocate` after every optimiser step, as AdaLoRA's; PEFT builds
the subspaces from the base weights (SVD and k-means, hence scikit-learn), so it needs real weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.base import Method


@dataclass(frozen=True)
class Adamss(Method):
    def on_step(self, model, step: int) -> None:
        model.base_model.update_and_allocate(step)


METHOD = Adamss(
    id="adamss",
    summary="Adaptive multi-subspace updates from an SVD of each weight (needs scikit-learn); merges exactly.",
    peft_type="ADAMSS",
    needs_weights=True,
)
