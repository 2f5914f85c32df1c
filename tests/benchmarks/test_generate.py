"""Eval generation throughput: batched greedy generation (`bench.run.evaluation.generate`), tiny-llama preset."""

from __future__ import annotations

import pytest
import torch

from bench.run import evaluation as E
from bench.run.device import Place
from bench.run.load import build
from methods import METHODS


@pytest.mark.parametrize("run", ["baseline", "lora", "prompt_tuning"])
def test_generate(benchmark, run, smoke_runs, tokenized, cpu):
    cfg = smoke_runs[run]
    method = METHODS.get(cfg.method)
    _, eval_ex, tokenizer = tokenized
    model = build(cfg, None, Place(cpu, torch.float32), method)
    ev = cfg.eval
    pad_free = method is not None and not method.left_pad_safe
    cached = method is None or method.kv_cache_generate

    def generate():
        return E.generate(model, tokenizer, eval_ex, ev.batch_size, 16, cpu, pad_free, cached)

    gens = benchmark.pedantic(generate, rounds=10, warmup_rounds=1, iterations=1)
    assert gens.new_tokens > 0 and len(gens.predictions) == len(eval_ex)
    # Tokens per call are fixed (greedy, seeded model): throughput is new_tokens / mean; the last call's own
    # figure is kept too, as the harness reports it.
    benchmark.extra_info.update(new_tokens=gens.new_tokens, last_tokens_per_second=gens.tokens_per_second)
