"""Generation scores only mean something if they are the trained model's own answers: for every method, the harness's
batched generation must equal greedy decoding by a full forward pass, one prompt at a time, with no cache."""

from __future__ import annotations

import pytest
import torch

from bench import data as D
from bench.evaluation import end_token_ids, generate
from bench.models import byte_tokenizer
from bench.train import train
from bench.worker import build
from methods import METHODS
from tests.conftest import tiny_config

CPU = torch.device("cpu")


@torch.no_grad()
def reference_greedy(model, tokenizer, example, max_new_tokens: int) -> list[int]:
    stops = end_token_ids(tokenizer)
    ids = tokenizer(D.prompt_text(tokenizer, example.messages[:-1]), return_tensors="pt",
                    add_special_tokens=False).input_ids
    new = []
    for _ in range(max_new_tokens):
        nxt = int(model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
        new.append(nxt)
        if nxt in stops:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return new


@pytest.mark.parametrize("method_id", list(METHODS))
def test_harness_generation_is_the_models_own_greedy_answer(method_id, smoke_examples):
    method = METHODS[method_id]
    cfg = tiny_config(method_id)
    tokenizer = byte_tokenizer()
    model = build(cfg, method, None, CPU, torch.float32)
    train_ex, eval_ex = smoke_examples
    feats = D.tokenize(train_ex, tokenizer, cfg["training"]["max_seq_len"], cfg["dataset"], D.DataReport(source="test"), "train")
    batches = D.batches(feats, 4, 0, tokenizer.pad_token_id, method.packable, 1000.0)
    # Trained hard enough that virtual tokens, prefixes and adapters move the answers away from the base model's.
    train(model, batches, cfg["training"] | {"learning_rate": 3e-2}, {"max_steps": 4}, 4, CPU)
    model.eval()
    examples = sorted(eval_ex, key=lambda e: len(e.prompt))[:: max(1, len(eval_ex) // 4)][:4]
    got = generate(model, tokenizer, examples, batch_size=4, max_new_tokens=8, device=CPU,
                   pad_free=not method.left_pad_safe, cached=method.kv_cache_generate)
    assert got.token_ids == [reference_greedy(model, tokenizer, e, 8) for e in examples]
