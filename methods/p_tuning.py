"""P-tuning: virtual-token embeddings produced by a small trainable encoder (Liu et al., 2021)."""

from peft import PromptEncoderConfig

from methods.base import Method


def config(
    num_virtual_tokens: int = 20,
    encoder_hidden_size: int = 128,
    encoder_reparameterization_type: str = "MLP",
) -> PromptEncoderConfig:
    return PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=num_virtual_tokens,
        encoder_hidden_size=encoder_hidden_size,
        encoder_reparameterization_type=encoder_reparameterization_type,
    )


METHOD = Method(
    id="p_tuning",
    summary="Virtual tokens produced by a trainable MLP/LSTM prompt encoder; cannot be merged.",
    config=config,
    merge="none",
    packable=False,
    left_pad_safe=False,
    kv_cache_generate=False,
    lr_grid=(1e-2, 3e-2, 1e-1, 3e-1),
)
