"""VeRA: shared frozen random low-rank projections, scaled per layer by trainable vectors (Kopiczko et al., 2024)."""

from peft import VeraConfig

from methods.base import Method


def config(
    r: int = 256,
    target_modules: str | list[str] = "all-linear",
    projection_prng_key: int = 0,
    save_projection: bool = True,
    vera_dropout: float = 0.0,
    d_initial: float = 0.1,
) -> VeraConfig:
    return VeraConfig(
        task_type="CAUSAL_LM",
        r=r,
        target_modules=target_modules,
        projection_prng_key=projection_prng_key,
        save_projection=save_projection,
        vera_dropout=vera_dropout,
        d_initial=d_initial,
    )


METHOD = Method(
    id="vera",
    summary="Shared frozen random projections scaled by two trainable vectors per layer; merges exactly.",
    config=config,
    merge="exact",
    # Only scaling vectors train (a few thousand numbers), so like IA3 it needs far larger steps than LoRA.
    lr_grid=(1e-3, 3e-3, 1e-2),
)
