"""GPU throughput and memory check, and the FLOPs count behind model FLOPs utilisation (MFU).

Run on a GPU machine (no network needed): `python -m bench perf` (or `bash scripts/gpu_check.sh`). It trains every
method for a few dozen steps on TinyLlama-1.1B's architecture with random weights, sequences of 2048 tokens, bf16,
and prints tokens/s, MFU and peak memory per method against the goals below. `--dry-run` runs the same suite on the
CPU with the tiny preset and three steps: everything is checked except the device.
"""

from __future__ import annotations

import json
import random
import string
from argparse import Namespace
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity), in FLOP/s.
BF16_PEAK = {
    "H100": 989e12,  # SXM; the PCIe card is 756e12
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}

# PEFT's own modules: their matrices are adapters or frozen copies, not the base model's.
_NOT_BASE = {"original_module", "prompt_encoder"}

# What the perf suite should reach on an H100 (issue #6): (run, metric, comparison, value).
GOALS = [("full", "mfu", 0.45), ("lora", "mfu", 0.35)]
MEMORY_GOAL = 1.5  # lora-memory's peak over qlora-memory's


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H100" in name and "PCIe" in name:
        return 756e12
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def matmul_flops_per_token(model: torch.nn.Module) -> int:
    """FLOPs of every linear layer for one token of one training step: 2·in·out forward, 2·in·out for the input
    gradient, and 2·in·out more for the weight gradient only where the weight trains (so LoRA's frozen base costs
    4·in·out, full fine-tuning 6·in·out: the usual 6N). Embedding lookups are not matrix multiplies; a tied
    output head is an nn.Linear and is counted. 4-bit layers count at their logical shape."""
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or _NOT_BASE & set(name.split(".")):
            continue
        trains = module.weight.requires_grad
        total += (6 if trains else 4) * module.in_features * module.out_features
    return total


def attention_flops(model: torch.nn.Module, attention_pairs: int) -> int:
    """Causal attention scores and weighted sum: per layer, QKᵀ and AV each cost d·s² forward (half of 2·d·s², the
    causal half), twice that backward: 6·d·s² for a sequence of s tokens, with d = heads x head size. Packed
    examples count separately (they do not attend to each other). Virtual tokens of prompt-learning methods are
    left out."""
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not layers or not heads:
        return 0
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 6 * layers * heads * head_dim * attention_pairs


def train_flops(model: torch.nn.Module, real_tokens: int, attention_pairs: int) -> float:
    """Model FLOPs of training on `real_tokens` tokens (padding is waste, not work; recomputation under gradient
    checkpointing is not counted, as in PaLM's MFU)."""
    return float(matmul_flops_per_token(model) * real_tokens + attention_flops(model, attention_pairs))


# ---------------------------------------------------------------------------------------------------------------
# The perf suite


def write_data(path: Path, n: int, prompt_chars: int, response_chars: int, seed: int = 0) -> None:
    """Random-word examples longer than the sequence length, so every row is cut to exactly max_seq_len tokens and
    no batch holds padding."""
    rng = random.Random(seed)

    def text(chars: int) -> str:
        words = []
        while sum(len(w) + 1 for w in words) < chars:
            words.append("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))))
        return " ".join(words)

    with path.open("w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": text(prompt_chars), "response": text(response_chars)}) + "\n")


def suite_text(out: Path, data: Path, *, dry_run: bool, steps: int, batch_size: int, seq_len: int) -> str:
    model = "tiny-llama" if dry_run else "tinyllama-1.1b"
    precision = "fp32" if dry_run else "bf16"
    return f"""\
# Written by `python -m bench perf{' --dry-run' if dry_run else ''}`: throughput and memory of every method on
# {model} with random weights, sequences of {seq_len} tokens, {precision}. Cost only: eval is off.
name: perf
version: 1
model:
  preset: {model}
dataset:
  path: {data.name}
  eval_size: 2
budget:
  max_steps: {steps}
training:
  learning_rate: 1e-4
  batch_size: {batch_size}
  max_seq_len: {seq_len}
  precision: {precision}
  packing: false  # rows are all exactly max_seq_len: nothing to pack, and no padding
  timeout_s: 900
eval:
  enabled: false
baseline: false
output: {out}
runs:
  - method: full
    training: {{learning_rate: 1e-5}}
  - method: lora
    params: {{r: 16, lora_alpha: 32, target_modules: all-linear}}
  - method: qlora
    params: {{r: 16, lora_alpha: 32, target_modules: all-linear}}
  - method: prefix_tuning
    params: {{num_virtual_tokens: 20}}
  - method: prompt_tuning
    params: {{num_virtual_tokens: 20}}
  - method: p_tuning
    params: {{num_virtual_tokens: 20, encoder_hidden_size: 256}}
  - method: ia3
  # QLoRA's point is memory: one sequence per step with activations recomputed, where the weights dominate.
  - name: lora-memory
    method: lora
    params: {{r: 16, lora_alpha: 32, target_modules: all-linear}}
    training: {{batch_size: 1, gradient_checkpointing: true}}
  - name: qlora-memory
    method: qlora
    params: {{r: 16, lora_alpha: 32, target_modules: all-linear}}
    training: {{batch_size: 1, gradient_checkpointing: true}}
"""


def cmd_perf(args) -> int:
    from bench.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, cmd_run, console, err
    from bench.records import load_records

    if not args.dry_run and not torch.cuda.is_available():
        err.print("bench perf: no CUDA device here; `bench perf --dry-run` checks everything but the device on the "
                  "CPU", markup=False)
        return EXIT_USAGE
    steps = args.steps or (3 if args.dry_run else 30)
    batch_size = args.batch_size or (1 if args.dry_run else 8)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "perf-data.jsonl"
    # Enough rows that no run repeats an example; each longer than the sequence (byte-level tokens ~ characters).
    write_data(data, n=max(steps * batch_size, 8) + 2, prompt_chars=args.seq_len // 2, response_chars=args.seq_len)
    suite = out / "perf.yaml"
    suite.write_text(suite_text(out.resolve(), data, dry_run=args.dry_run, steps=steps, batch_size=batch_size,
                                seq_len=args.seq_len))
    code = cmd_run(Namespace(suite=str(suite), force=True, only=args.only, output=None, no_report=True,
                             devices=None))
    if code not in (EXIT_OK, EXIT_FAIL):
        return code
    ran = sorted((r for r in load_records(out) if r.suite == "perf"), key=lambda r: r.started_at)
    records = {r.run: r for r in ran}
    table, verdicts = perf_table(records)
    console.print(table, markup=False)
    for line in verdicts:
        console.print(line, markup=False)
    (out / "perf.md").write_text(table + "\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
    console.print(f"wrote {out / 'perf.md'}")
    return code


def perf_table(records: dict) -> tuple[str, list[str]]:
    """A Markdown table of the perf records and one line per goal (met, missed, or not measurable here)."""
    from bench.records import format_value

    head = ("| run | batch | grad ckpt | status | steady tok/s | model TFLOP/s | MFU | peak memory | CUDA reserved |\n"
            "|---|---:|---|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for name, r in records.items():
        tr, m = r.config["training"], r.metrics
        mfu = m.get("mfu")
        lines.append(
            f"| {name} | {tr['batch_size']} | {'yes' if tr.get('gradient_checkpointing') else 'no'} | {r.status} | "
            f"{format_value('steady_tokens_per_second', m.get('steady_tokens_per_second'))} | "
            f"{format_value('model_tflops_per_second', m.get('model_tflops_per_second'))} | "
            f"{'-' if mfu is None else f'{mfu:.1%}'} | "
            f"{format_value('peak_memory_bytes', m.get('peak_memory_bytes'))} | "
            f"{format_value('cuda_max_reserved_bytes', m.get('cuda_max_reserved_bytes'))} |"
        )
    verdicts = []
    for run, name, goal in GOALS:
        value = records[run].metrics.get(name) if run in records else None
        if value is None:
            verdicts.append(f"{run} MFU >= {goal:.0%}: not measured (needs a CUDA device of known peak)")
        else:
            verdicts.append(f"{run} MFU >= {goal:.0%}: {'met' if value >= goal else 'MISSED'} ({value:.1%})")
    lo, q = records.get("lora-memory"), records.get("qlora-memory")
    on_cuda = all(r.environment.get("device_type") == "cuda" for r in (lo, q) if r)
    if lo and q and not on_cuda:
        verdicts.append("QLoRA vs LoRA peak memory: not judged on the CPU (peak RSS of a tiny model is mostly torch)")
    elif lo and q and lo.metrics.get("peak_memory_bytes") and q.metrics.get("peak_memory_bytes"):
        ratio = lo.metrics["peak_memory_bytes"] / q.metrics["peak_memory_bytes"]
        what = "met" if ratio >= MEMORY_GOAL else "MISSED"
        verdicts.append(f"QLoRA peak memory {MEMORY_GOAL}x lower than LoRA's (batch 1, checkpointing): {what} "
                        f"({ratio:.2f}x)")
    else:
        verdicts.append("QLoRA vs LoRA peak memory: not measured (lora-memory or qlora-memory did not succeed)")
    return "\n".join(lines), verdicts
