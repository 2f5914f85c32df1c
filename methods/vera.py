"""VeRA: shared frozen random low-rank projections, scaled per layer by trainable vectors (Kopiczko et al., 2024)."""

from methods.base import Method

METHOD = Method(
    id="vera",
    summary="Shared frozen random projections scaled by two trainable vectors per layer; merges exactly.",
    peft_type="VERA",
    preset=dict(r=256, target_modules="all-linear", projection_prng_key=0, save_projection=True, vera_dropout=0.0,
                d_initial=0.1),
    # Only scaling vectors train (a few thousand numbers), so like IA3 it needs far larger steps than LoRA.
    lr_grid=(1e-3, 3e-3, 1e-2),
)
