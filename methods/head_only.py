"""Head only: train the LM head (lm_head) as a whole, everything else frozen - the seed's "transfer learning"."""

from methods import catalog
from methods.base import Method

# PEFT's `modules_to_save` trains a copy of lm_head and saves only that copy (vocab x hidden), not the whole model. A
# LoRA config is its carrier: PEFT's DUMMY_TARGET_MODULES is its sentinel for "no adapter layers". With tied embeddings
# (SmolLM2) the copy unties the head: input embeddings stay frozen and merging sets tie_word_embeddings=False.
# ensure_weight_tying=True keeps them tied, so the head and the input embeddings train as one tensor (what unfreezing
# lm_head does in plain PyTorch on a tied model). merge_and_unload swaps the trained copy in for the head: exact.
METHOD = Method(
    id="head_only",
    summary="Train only the LM head (a PEFT modules_to_save copy; the adapter holds just the head); merges exactly.",
    peft_type="LORA",
    preset=dict(ensure_weight_tying=False),
    fixed=dict(target_modules=catalog.dummy_target_modules(), modules_to_save=["lm_head"]),
)
