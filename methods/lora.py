"""LoRA: low-rank updates added beside frozen linear layers (Hu et al., 2021)."""

from peft import LoraConfig

from methods.base import Method


def config(
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    use_dora: bool = False,
) -> LoraConfig:
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        use_dora=use_dora,
    )


METHOD = Method(
    id="lora",
    summary="Low-rank adapters on the linear layers; merges exactly into the base weights.",
    config=config,
    merge="exact",
)
