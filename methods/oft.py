"""OFT: a trainable block-diagonal orthogonal rotation of each frozen weight (Qiu et al., 2023)."""

from peft import OFTConfig

from methods.base import Method


def config(
    r: int = 0,
    oft_block_size: int = 32,
    module_dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    coft: bool = False,
    use_cayley_neumann: bool = True,
) -> OFTConfig:
    # PEFT takes exactly one of r (number of blocks) and oft_block_size; the other must be 0.
    return OFTConfig(
        task_type="CAUSAL_LM",
        r=r,
        oft_block_size=oft_block_size,
        module_dropout=module_dropout,
        target_modules=target_modules,
        coft=coft,
        use_cayley_neumann=use_cayley_neumann,
    )


METHOD = Method(
    id="oft",
    summary="Orthogonal fine-tuning: a block-diagonal rotation learned per linear layer; merges exactly.",
    config=config,
    merge="exact",
)
