"""Full fine-tuning: every parameter of the base model trains."""

from methods.base import Method

METHOD = Method(
    id="full",
    summary="Train every parameter of the base model (the reference every PEFT method is measured against).",
    peft_type=None,
    lr_grid=(1e-5, 3e-5, 1e-4),
)
