"""LoRA: low-rank updates added beside frozen linear layers (Hu et al., 2021). Every LoraConfig field is a param
(use_rslora, init_lora_weights: pissa/olora/..., layers_to_transform, rank_pattern, modules_to_save, bias, ...)."""

from methods.base import Method

# r 8 on every linear layer: PEFT's default targets only q_proj and v_proj.
PRESET = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", use_dora=False)

METHOD = Method(
    id="lora",
    summary="Low-rank adapters on the linear layers; merges exactly into the base weights.",
    peft_type="LORA",
    preset=PRESET,
)
