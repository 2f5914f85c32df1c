"""`python -m bench plan SUITE [--json]`: what every run of a suite trains and stores, before any weight is downloaded
or any step is run: trainable and total parameters of the model as the run builds it (from its config, on the meta
device), the adapter's size on disk, and the base weights' size at the run's precision and at 4-bit NF4."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.config import BASELINE, RunConfig
from bench.console import EXIT_OK, EXIT_USAGE, console, err

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class PlanRow:
    run: str
    method: str
    trainable_params: int | None
    total_params: int | None
    adapter_bytes: int | None
    base_bytes: int | None  # the frozen base at the run's precision
    base_bytes_4bit: int | None  # linear layers of the decoder in NF4 (0.5 byte + bitsandbytes' scales), rest 16-bit
    precision: str
    weights: str  # meta: counted without weights; random: a tuner that needs weights got random ones
    note: str = ""


def architecture(cfg: RunConfig) -> dict[str, Any]:
    """The model's config as a dict with its model_type: a preset, the suite's config, a folder's config.json, or
    the Hub's (a config file only, never weights)."""
    from bench.presets import PRESETS

    m = cfg.model
    if m.preset is not None:
        return dict(PRESETS[m.preset])
    if m.config is not None:
        return dict(m.config)
    if m.path is not None:
        return json.loads((Path(m.path) / "config.json").read_text())
    if m.hub is not None:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(m.hub, revision=m.revision).to_dict()
    raise ValueError("a GGUF model's architecture is known only once it is converted; plan it from its preset or "
                     "config")


def plan_row(cfg: RunConfig) -> PlanRow:
    from bench.tuners import NeedsWeights, apply
    from methods import METHODS, Plan

    precision = cfg.training.precision if cfg.training.precision != "auto" else "bf16"
    row = PlanRow(cfg.run, cfg.method, None, None, None, None, None, precision, "meta")
    try:
        arch = architecture(cfg)
    except Exception as e:  # the Hub offline, a missing file: said in the row, the other runs still plan
        row.note = f"architecture unknown: {e}"
        return row
    row.base_bytes, row.base_bytes_4bit, total = base_sizes(arch, BYTES[precision])
    if cfg.method == BASELINE:
        row.trainable_params, row.total_params, row.adapter_bytes = 0, total, 0
        return row
    spec = cfg.training.optimizer
    special = special_token_ids(cfg.model)
    if special is None:
        row.note = "the tokenizer cannot be read here: its special tokens (trainable_tokens' default rows) count as one"
    try:
        applied = apply(arch, METHODS[cfg.method], cfg.params, Plan(total_steps=cfg.budget.max_steps or 1000,
                                                                    special_token_ids=special or (0,)),
                        spec and spec.name, spec.kwargs if spec else None)
    except NeedsWeights as e:
        row.weights, row.note = "needs weights", str(e)
        return row
    row.trainable_params, row.total_params = applied.trainable, applied.total
    row.adapter_bytes, row.weights = applied.adapter_bytes, applied.weights
    return row


@functools.lru_cache(maxsize=16)
def _special_token_ids(model_json: str) -> tuple[int, ...] | None:
    from bench.config import ModelSpec
    from bench.models import load_tokenizer

    model = ModelSpec.model_validate_json(model_json)
    try:  # a tokenizer is a few small files: read where the weights would not be
        tokenizer = load_tokenizer(model, model.path or model.hub)
    except Exception:  # the Hub offline, a GGUF (its tokenizer comes with the conversion)
        return None
    return tuple(sorted(tokenizer.all_special_ids))


def special_token_ids(model) -> tuple[int, ...] | None:
    """The special tokens of the run's tokenizer, as the run's plan has them (bench.train.plan_of); None where the
    tokenizer cannot be read here."""
    return None if model.gguf else _special_token_ids(model.model_dump_json())


def base_sizes(arch: dict[str, Any], width: int) -> tuple[int, int, int]:
    """Bytes of the base at `width` bytes per weight and in 4-bit NF4 (bitsandbytes quantises the decoder's linear
    layers: half a byte per weight plus one 8-bit scale per 64-weight block and double quantisation's few), and the
    parameter count."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.tuners import model_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(arch))
    total = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n != "lm_head")
    return total * width, int(linear * (0.5 + 1 / 64)) + (total - linear) * 2, total


def cmd_plan(args) -> int:
    from bench.metrics import human_bytes
    from bench.suite import load_suite
    from bench.yamlio import SuiteError

    try:
        suite = load_suite(args.suite)
    except SuiteError as e:
        err.print(e.render(), markup=False)
        return EXIT_USAGE
    rows = [plan_row(cfg) for cfg in suite.resolved_runs()]
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
        return EXIT_OK
    from rich.table import Table

    table = Table(title=f"{suite.name}: what each run trains and stores (no weights loaded)")
    for col in ("run", "method", "trainable", "total", "trainable %", "adapter", "base", "base 4-bit", "note"):
        table.add_column(col, overflow="fold")
    for r in rows:
        pct = f"{100 * r.trainable_params / r.total_params:.3f}" if r.total_params else "-"
        size = (lambda n: human_bytes(n) if n is not None else "-")
        table.add_row(r.run, r.method, _count(r.trainable_params), _count(r.total_params), pct, size(r.adapter_bytes),
                      f"{size(r.base_bytes)} {r.precision}", size(r.base_bytes_4bit),
                      r.note or ("random weights" if r.weights == "random" else ""))
    console.print(table)
    return EXIT_OK


def _count(n: int | None) -> str:
    return f"{n:,}" if n is not None else "-"
