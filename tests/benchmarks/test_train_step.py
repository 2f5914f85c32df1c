"""Per-step training time of every method through the shared loop (`bench.run.train.train`), tiny-llama preset."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from bench.datasets import batches as D
from bench.core.config import Budget
from bench.run.device import Place
from bench.run.load import build
from bench.run.train import train
from methods import METHODS, SHIPPED

STEPS = 5  # steps per timed call: enough to amortise the optimiser's creation, few enough for many rounds


@pytest.mark.parametrize("run", list(SHIPPED))
def test_train_steps(benchmark, run, smoke_runs, tokenized, cpu):
    cfg = smoke_runs[run]
    method = METHODS[cfg.method]
    features, _, tokenizer = tokenized
    tr = cfg.training
    torch.manual_seed(tr.seed)
    model = build(cfg, None, Place(cpu, torch.float32), method)
    packed = tr.packing and method.packable
    # The same few batches every round: the timing then depends on the code, not on which batches came up.
    batches = list(islice(D.batches(features, tr.batch_size, tr.seed, tokenizer.pad_token_id, packed, tr.epochs),
                          STEPS))

    def steps():
        return train(model, iter(batches), tr, Budget(max_steps=STEPS), STEPS, Place(cpu, torch.float32))

    result = benchmark.pedantic(steps, rounds=10, warmup_rounds=2, iterations=1)
    assert result.steps == STEPS and all(torch.isfinite(torch.tensor(p["loss"])) for p in result.curve)
    benchmark.extra_info.update(steps=STEPS, tokens=result.processed_tokens, packed=packed)
