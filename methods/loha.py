"""LoHa: low-rank Hadamard-product updates beside frozen linear layers (Hyeon-Woo et al., 2022, FedPara)."""

from peft import LoHaConfig

from methods.base import Method


def config(
    r: int = 8,
    alpha: int = 8,
    rank_dropout: float = 0.0,
    module_dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
) -> LoHaConfig:
    return LoHaConfig(
        task_type="CAUSAL_LM",
        r=r,
        alpha=alpha,
        rank_dropout=rank_dropout,
        module_dropout=module_dropout,
        target_modules=target_modules,
    )


METHOD = Method(
    id="loha",
    summary="Hadamard product of two rank-r updates (rank up to r^2, 2x LoRA's parameters at one r); merges exactly.",
    config=config,
    merge="exact",
)
