"""The chunked loss (bench.run.loss) against the model's own: same loss, same gradients, less memory."""

from __future__ import annotations

import pytest
import torch

from bench.commands.gpucheck import Shapes, config
from bench.run.loss import chunk_positions, chunked
from tests.conftest import CPU32

FAMILIES = [("lora", {"r": 4, "lora_alpha": 8}), ("prompt_tuning", {"num_virtual_tokens": 5}), ("full", {}),
            ("head_only", {}), ("prefix_tuning", {"num_virtual_tokens": 3})]


def model_of(method: str, params: dict):
    from bench.run.load import build
    from methods import METHODS

    torch.manual_seed(0)
    return build(config(Shapes.of(True), method, params), None, CPU32, METHODS[method])


def batch(vocab: int, rows: int = 3, length: int = 40, prompt: int = 15) -> dict:
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(vocab, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    labels[1, 30:] = -100  # a shorter row: padding at its end
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def loss_and_grads(model, b: dict, chunk: int | None) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    n = torch.tensor(int((b["labels"][:, 1:] != -100).sum()))
    if chunk is None:
        loss = model(**b, num_items_in_batch=n, use_cache=False).loss
    else:
        with chunked(model, chunk):
            out = model(**b, num_items_in_batch=n, use_cache=False)
        assert out.logits.shape[1] == 1  # the head ran on one position; the loss came from the chunks
        loss = out.loss
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method,params", FAMILIES, ids=[m for m, _ in FAMILIES])
def test_chunked_loss_and_gradients_equal_the_models_own(method, params):
    model = model_of(method, params)
    model.train()
    vocab = model.config.vocab_size
    b = batch(vocab)
    chunk = vocab * 4 * 7  # 7 positions a chunk: the 3 rows' 62 targets span 9 chunks
    assert chunk_positions(vocab, chunk) == 7
    own, own_grads = loss_and_grads(model, b, None)
    mine, my_grads = loss_and_grads(model, b, chunk)
    assert abs(own - mine) <= 1e-6 * max(1.0, abs(own))
    assert own_grads.keys() == my_grads.keys() and own_grads
    for name, g in own_grads.items():
        assert torch.allclose(my_grads[name], g, rtol=1e-5, atol=1e-6), name
        assert float((my_grads[name] - g).abs().max()) <= 1e-6, name
    # The hook and the loss function are gone afterwards: the model's own loss again.
    assert loss_and_grads(model, b, None)[0] == own


def test_chunked_eval_loss_equals_unchunked():
    from bench.datasets.batches import Features
    from bench.run.evaluation import eval_loss

    model = model_of("lora", {"r": 4, "lora_alpha": 8})
    g = torch.Generator().manual_seed(5)
    feats = []
    for n in (30, 50, 12):
        ids = torch.randint(model.config.vocab_size, (n,), generator=g).tolist()
        feats.append(Features(ids, [-100] * (n // 2) + ids[n // 2:]))
    whole = eval_loss(model, feats, 2, 0, torch.device("cpu"), chunk_bytes=None)
    parts = eval_loss(model, feats, 2, 0, torch.device("cpu"), chunk_bytes=model.config.vocab_size * 4 * 3)
    assert abs(whole - parts) <= 1e-6
