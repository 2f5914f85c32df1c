"""IA3: learned per-channel rescaling of keys, values and feed-forward activations (Liu et al., 2022)."""

from peft import IA3Config

from methods.base import Method


def config(
    target_modules: list[str] | None = None,
    feedforward_modules: list[str] | None = None,
) -> IA3Config:
    # None lets PEFT pick its per-architecture defaults (k_proj, v_proj, down_proj for Llama).
    return IA3Config(
        task_type="CAUSAL_LM",
        target_modules=target_modules,
        feedforward_modules=feedforward_modules,
    )


METHOD = Method(
    id="ia3",
    summary="Learned rescaling vectors on attention keys/values and the feed-forward input; merges exactly.",
    config=config,
    merge="exact",
    lr_grid=(3e-3, 1e-2, 3e-2),
)
