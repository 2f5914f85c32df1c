"""LoHa: low-rank Hadamard-product updates beside frozen linear layers (Hyeon-Woo et al., 2022, FedPara)."""

from methods.base import Method

METHOD = Method(
    id="loha",
    summary="Hadamard product of two rank-r updates (rank up to r^2, 2x LoRA's parameters at one r); merges exactly.",
    peft_type="LOHA",
    preset=dict(r=8, alpha=8, rank_dropout=0.0, module_dropout=0.0, target_modules="all-linear"),
)
