"""Pure bf16 with and without stochastic rounding against fp32 master weights, on the same steps (a slow check, not a
test: torchao's optimiser compiles its step with torch.compile, minutes on a CPU).

Run: python scripts/bf16_stochastic_rounding.py

Full fine-tuning of the tiny-llama preset, bf16 autocast, 30 AdamW steps of lr 2e-5 on one batch, three ways: fp32
master weights (the reference, the harness's default), pure bf16 (`training.master_weights: false`: weights and
states in bf16, updates rounded to nearest), and pure bf16 with torchao's AdamW rounding stochastically. Prints the
relative error of the weights' total change against the reference; measured on a 2-core AMD EPYC (2026-12-05):
rounded 0.87, stochastic 0.41.
"""

from __future__ import annotations

import torch

from bench.run.device import Place
from bench.commands.gpucheck import Shapes, batches, config
from bench.run.load import build
from methods import METHODS

BF16 = Place(torch.device("cpu"), torch.bfloat16)


def change(cfg, batch, cast: bool, optimizer, steps: int = 30) -> torch.Tensor:
    torch.manual_seed(0)
    model = build(cfg, None, BF16, METHODS["full"])
    if cast:
        model.to(torch.bfloat16)
    start = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    opt = optimizer([p for p in model.parameters() if p.requires_grad])
    for _ in range(steps):
        with BF16.autocast():
            model(**batch, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad()
    return torch.cat([p.detach().float().flatten() for p in model.parameters()]) - start


def main() -> None:
    from torchao.optim import _AdamW  # torchao 0.18's full-precision-state AdamW, the one with stochastic rounding

    cfg = config(Shapes.of(dry_run=True), "full", precision="bf16")
    batch = batches(320, 64, 2, 1)[0][1]
    lr = 2e-5
    reference = change(cfg, batch, False, lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.0))
    rounded = change(cfg, batch, True, lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.0))
    stochastic = change(cfg, batch, True, lambda ps: _AdamW(ps, lr=lr, weight_decay=0.0, bf16_stochastic_round=True))
    for name, d in (("pure bf16, rounded to nearest", rounded), ("pure bf16, stochastic rounding", stochastic)):
        print(f"{name}: relative error of the total change against fp32 masters "
              f"{float((d - reference).norm() / reference.norm()):.2f}")


if __name__ == "__main__":
    main()
