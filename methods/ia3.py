"""IA3: learned per-channel rescaling of keys, values and feed-forward activations (Liu et al., 2022)."""

from methods.base import Method

METHOD = Method(
    id="ia3",
    summary="Learned rescaling vectors on attention keys/values and the feed-forward input; merges exactly.",
    peft_type="IA3",
    # None lets PEFT pick its per-architecture defaults (k_proj, v_proj, down_proj for Llama).
    preset=dict(target_modules=None, feedforward_modules=None),
    lr_grid=(3e-3, 1e-2, 3e-2),
)
