"""torchao's optimisers by name (`torchao.NAME`): validated, described and sized like the others; and its AdamW with
bf16 stochastic rounding measured against fp32 master weights and pure bf16 rounded to nearest on the same steps."""

from __future__ import annotations

import pytest
import torch

from bench.core.config import Optimizer
from bench.run.device import Place
from bench.commands.gpucheck import Shapes, batches, config, fit
from bench.run.load import build
from methods import METHODS

pytest.importorskip("torchao")

BF16 = Place(torch.device("cpu"), torch.bfloat16)
TINY = Shapes.of(dry_run=True)
SR = {"name": "torchao.AdamW", "kwargs": {"bf16_stochastic_round": True}}


def test_torchaos_optimisers_go_by_name_are_checked_and_sized():
    from bench.run.optim import describe, optimizer_problems, state_bytes_per_param, torchao_optimizers

    names = torchao_optimizers()
    assert {"torchao.AdamW", "torchao.AdamW8bit", "torchao.AdamW4bit", "torchao.AdamWFp8"} <= set(names)
    assert "torchao.CPUOffloadOptimizer" not in names  # it wraps an optimiser; it is not one by a name
    assert optimizer_problems("torchao.AdamW", {"bf16_stochastic_round": True}) == []
    assert optimizer_problems("torchao.AdamW", {"stochastic": True}) == [(
        "kwargs.stochastic", "torchao.AdamW takes betas, eps, amsgrad, bf16_stochastic_round - not 'stochastic' "
        "(did you mean 'bf16_stochastic_round'?)")]
    assert optimizer_problems("torchao.Adamw", {})[0][1].startswith("unknown optimiser 'torchao.Adamw' (did you mean "
                                                                     "'torchao.AdamW'?)")
    assert describe("torchao.AdamW", SR["kwargs"]) == "torchao.optim._AdamW with bf16 stochastic rounding"
    # torchao's 8-bit states: one byte each and an fp32 scale per 128-element block (bitsandbytes': per 256).
    assert state_bytes_per_param("torchao.AdamW8bit") == 2 + 2 * 4 / 128
    assert state_bytes_per_param("torchao.AdamW", '{"bf16_stochastic_round": true}', "bfloat16") == 4.0


def weights(model) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.train
def test_bf16_stochastic_rounding_keeps_small_updates_at_pure_bf16_memory():
    """Full fine-tuning of the tiny preset, 30 steps at lr 2e-5 on one batch, through the harness's loop, three ways:
    fp32 master weights (the reference), pure bf16 rounded to nearest, pure bf16 with torchao's AdamW rounding
    stochastically (chosen by name); constant learning rate. Rounded to nearest, most single updates are lost (below
    half a bf16 step) and the total change is far from the reference's; stochastic rounding lands each in
    expectation (one step still loses most, each landing with probability |update| / bf16 step)."""
    data = batches(320, 64, 2, 1)
    same = {"precision": "bf16", "scheduler": "constant"}
    runs = {"masters": config(TINY, "full", **same),
            "pure": config(TINY, "full", master_weights=False, **same),
            "stochastic": config(TINY, "full", master_weights=False, optimizer=Optimizer(**SR), **same)}
    start = weights(build(runs["masters"], None, BF16, METHODS["full"]))
    change, lost = {}, {}
    for name, cfg in runs.items():
        assert torch.equal(weights(build(cfg, None, BF16, METHODS["full"])), start.bfloat16().float()) or \
            name == "masters"
        _, model = fit(cfg, BF16, data, 1, 2e-5)
        lost[name] = float((weights(model) == (start if name == "masters" else start.bfloat16().float())).float()
                           .mean())
        _, model = fit(cfg, BF16, data, 30, 2e-5)
        change[name] = weights(model) - start
    error = {k: float((change[k] - change["masters"]).norm() / change["masters"].norm())
             for k in ("pure", "stochastic")}
    print(f"one step, share of weights unchanged: {lost}; 30 steps, relative error of the total change: {error}")
    # Unchanged with masters: the weights whose gradient is 0 (embedding rows of tokens not in the batch).
    assert lost["masters"] < 0.2 and lost["pure"] > lost["masters"] + 0.4, lost
    assert error["stochastic"] < 0.75 * error["pure"], error
