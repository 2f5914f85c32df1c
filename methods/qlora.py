"""QLoRA: LoRA on a base quantised to 4-bit NF4 with double quantisation (Dettmers et al., 2023)."""

from peft import LoraConfig

from methods.base import Method


def config(
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
) -> LoraConfig:
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
    )


METHOD = Method(
    id="qlora",
    summary="LoRA on a bitsandbytes NF4 4-bit base (double quantisation); merging re-quantises, so it is lossy.",
    config=config,
    merge="lossy",
    load_in_4bit=True,
)
