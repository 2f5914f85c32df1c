"""P-tuning: virtual-token embeddings produced by a small trainable encoder (Liu et al., 2021)."""

from methods.base import Method

METHOD = Method(
    id="p_tuning",
    summary="Virtual tokens produced by a trainable MLP/LSTM prompt encoder; cannot be merged.",
    peft_type="P_TUNING",
    preset=dict(num_virtual_tokens=20, encoder_hidden_size=128, encoder_reparameterization_type="MLP"),
    lr_grid=(1e-2, 3e-2, 1e-1, 3e-1),
)
