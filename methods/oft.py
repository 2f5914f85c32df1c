"""OFT: a trainable block-diagonal orthogonal rotation of each frozen weight (Qiu et al., 2023)."""

from methods.base import Method

METHOD = Method(
    id="oft",
    summary="Orthogonal fine-tuning: a block-diagonal rotation learned per linear layer; merges exactly.",
    peft_type="OFT",
    # PEFT takes exactly one of r (number of blocks) and oft_block_size; the other must be 0.
    preset=dict(r=0, oft_block_size=32, module_dropout=0.0, target_modules="all-linear", coft=False,
                use_cayley_neumann=True),
)
