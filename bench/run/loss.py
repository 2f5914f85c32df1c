"""The causal-LM loss over response positions only, the output head applied one chunk of positions at a time.

A model's own loss builds logits for every position ([rows, length, vocabulary], prompt positions included) and
their fp32 copy: one 8k-token row at a 128k vocabulary is 4 GB of fp32 logits, more again for log-softmax. Inside
`chunked(model, bytes)` the model's forward runs as usual, but its output head sees only the last position (a
forward pre-hook keeps the hidden states it was given), and the model's loss function (transformers'
`loss_function`, replaced for the block) applies the head to the positions that have a target, `bytes` of fp32
logits at a time. In training each chunk is recomputed in the backward pass (activation checkpointing), so no
chunk's logits outlive it. Whatever the model's forward does to the loss afterwards (AdaLoRA adds its orthogonality
term) still happens, because the loss still comes back as the model's output.loss.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100
# fp32 logits of one chunk: at Llama-3's 128k vocabulary about 2,000 positions.
DEFAULT_CHUNK_BYTES = 1024 ** 3
# PEFT types whose forward needs the model's own head or loss as they are: they keep the model's own loss.
OWN_LOSS = {
    "CPT": "computes its own loss from the full logits",
    # Its auxiliary loss runs the base model's output head on the shadow network's states for every position.
    "SHADOW": "calls the output head itself for its auxiliary loss",
}


def causal_lm(model):
    """The transformers model inside a PEFT model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def chunkable(model) -> str | None:
    """Why the chunked loss cannot stand in for this model's own; None when it can."""
    peft_type = getattr(getattr(model, "active_peft_config", None), "peft_type", None)
    name = str(getattr(peft_type, "value", peft_type))
    if peft_type is not None and name in OWN_LOSS:
        return f"{name} {OWN_LOSS[name]}"
    lm = causal_lm(model)
    if not hasattr(lm, "get_output_embeddings") or lm.get_output_embeddings() is None:
        return f"{type(lm).__name__} has no output head"
    return None


class _Head:
    """The output head while the chunked loss is on: its forward sees the last position only, and the hidden
    states it was given are kept for the loss."""

    def __init__(self, head: torch.nn.Module, softcap: float | None):
        self.head, self.softcap = head, softcap
        self.hidden: torch.Tensor | None = None
        self.direct = False

    def pre_hook(self, _module, args):
        if self.direct:
            return None
        self.hidden = args[0]
        return (args[0][..., -1:, :],) + tuple(args[1:])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        self.direct = True
        try:
            out = self.head(hidden).float()
        finally:
            self.direct = False
        if self.softcap:  # Gemma-2's final_logit_softcapping, applied by the model after its head
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def chunk_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(hidden), targets, reduction="sum")


def response_loss_sum(head: _Head, hidden: torch.Tensor, labels: torch.Tensor, chunk_bytes: int,
                      vocab: int) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropy over the positions with a target, and their count: hidden [rows, length, width]
    predicts labels shifted by one; the head is applied to at most chunk_bytes of fp32 logits at a time."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    h, t = hidden[:, :-1][keep], targets[keep].to(hidden.device)
    per_chunk = max(1, chunk_bytes // (vocab * 4))
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(t), per_chunk):
        hc, tc = h[start:start + per_chunk], t[start:start + per_chunk]
        if torch.is_grad_enabled() and hc.requires_grad:
            # Recomputed in backward: this chunk's logits are freed as soon as its loss is summed.
            total = total + checkpoint(head.chunk_loss, hc, tc, use_reentrant=False)
        else:
            total = total + head.chunk_loss(hc, tc)
    return total, len(t)


@contextlib.contextmanager
def chunked(model, chunk_bytes: int | str | None = None):
    """Within the block the model's forward with `labels` returns the chunked loss as its `loss` (and one
    position's logits). Models the chunked loss cannot stand in for (see `chunkable`), and `chunk_bytes` "off"
    (training.loss_chunk_bytes), keep the model's own loss."""
    if chunk_bytes == "off" or chunkable(model) is not None:
        yield
        return
    lm = causal_lm(model)
    chunk_bytes = chunk_bytes or DEFAULT_CHUNK_BYTES
    head = _Head(lm.get_output_embeddings(), getattr(lm.config, "final_logit_softcapping", None))
    vocab = lm.config.get_text_config().vocab_size

    def loss_function(logits, labels, vocab_size=None, num_items_in_batch=None, ignore_index=IGNORE,
                      shift_labels=None, **_):
        hidden = head.hidden[:, -labels.shape[1]:]  # virtual tokens (prompt tuning) come first: their labels too
        total, n = response_loss_sum(head, hidden, labels, chunk_bytes, vocab)
        divisor = num_items_in_batch if num_items_in_batch is not None else max(n, 1)
        if torch.is_tensor(divisor):
            divisor = divisor.to(total.device)
        return total / divisor

    had = lm.__dict__.get("_loss_function")
    handle = head.head.register_forward_pre_hook(head.pre_hook)
    lm.loss_function = loss_function
    try:
        yield
    finally:
        handle.remove()
        if had is None:
            del lm._loss_function
        else:
            lm._loss_function = had


def chunk_positions(vocab: int, chunk_bytes: int | None = None) -> int:
    """Positions per chunk at this vocabulary."""
    return max(1, (chunk_bytes or DEFAULT_CHUNK_BYTES) // (vocab * 4))



def describe(model, chunk_bytes: int | str | None, distributed: bool) -> str:
    """How the run's losses are computed, for the record's environment."""
    if chunk_bytes == "off":
        return "the model's own loss over every position's logits (training.loss_chunk_bytes: off)"
    why = chunkable(model) or ("training under DDP/FSDP uses the model's own loss; eval is chunked"
                               if distributed else None)
    vocab = causal_lm(model).config.get_text_config().vocab_size
    chunk = chunk_bytes or DEFAULT_CHUNK_BYTES
    how = f"response positions only, output head per chunk of {chunk_positions(vocab, chunk):,} positions"
    return f"{how} ({why})" if why else how
