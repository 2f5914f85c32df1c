"""QLoRA: LoRA on a base quantised to 4-bit NF4 with double quantisation (Dettmers et al., 2023)."""

from methods import lora
from methods.base import Method

METHOD = Method(
    id="qlora",
    summary="LoRA on a bitsandbytes NF4 4-bit base (double quantisation); merging re-quantises, so it is lossy.",
    peft_type="LORA",
    preset=lora.PRESET,  # the same adapter as LoRA: only the base differs (see load_in_4bit)
    load_in_4bit=True,
)
