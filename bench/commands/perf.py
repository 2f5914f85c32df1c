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
from pathlib import Path

import torch

from bench.core.config import Budget, DatasetSpec, Eval, ModelSpec, Training, TrainingOverrides
from bench.core.console import EXIT_FAIL, EXIT_OK, EXIT_USAGE, console, err
from bench.spec.suite import RunSpec, Suite

# What the perf suite should reach on an H100: (run, metric, value).
GOALS = [("full", "mfu", 0.45), ("lora", "mfu", 0.35)]
MEMORY_GOAL = 1.5  # lora-memory's peak over qlora-memory's


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


def perf_suite(out: Path, data: Path, *, dry_run: bool, steps: int, batch_size: int, seq_len: int) -> Suite:
    """Throughput and memory of every method on TinyLlama-1.1B's shape (the tiny preset in a dry run) with random
    weights, every row exactly `seq_len` tokens. Cost only: eval is off."""
    lora = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
    # QLoRA's point is memory: one sequence per step with activations recomputed, where the weights dominate.
    memory = TrainingOverrides(batch_size=1, gradient_checkpointing=True)
    return Suite(
        name="perf", version=1, source=str(out / "perf.yaml"), output=str(out),
        description=f"`python -m bench perf{' --dry-run' if dry_run else ''}`: throughput and memory per method",
        model=ModelSpec(preset="tiny-llama" if dry_run else "tinyllama-1.1b"),
        dataset=DatasetSpec(path=data.name, eval_size=2),
        budget=Budget(max_steps=steps),
        # Rows are all exactly max_seq_len: nothing to pack, and no padding.
        training=Training(learning_rate=1e-4, batch_size=batch_size, max_seq_len=seq_len, packing=False,
                          precision="fp32" if dry_run else "bf16", timeout_s=900),
        eval=Eval(enabled=False), baseline=False,
        # Full fine-tuning keeps no weights: a 4.4 GB fp32 save that no figure of the check reads.
        runs=[RunSpec(method="full", training=TrainingOverrides(learning_rate=1e-5, save_weights=False)),
              RunSpec(method="lora", params=lora), RunSpec(method="qlora", params=lora),
              RunSpec(method="prefix_tuning", params={"num_virtual_tokens": 20}),
              RunSpec(method="prompt_tuning", params={"num_virtual_tokens": 20}),
              RunSpec(method="p_tuning", params={"num_virtual_tokens": 20, "encoder_hidden_size": 256}),
              RunSpec(method="ia3"),
              RunSpec(name="lora-memory", method="lora", params=lora, training=memory),
              RunSpec(name="qlora-memory", method="qlora", params=lora, training=memory)],
    )


def cmd_perf(args) -> int:
    from bench.core.records import load_records
    from bench.commands.session import Options, run_suite

    if not args.dry_run and not torch.cuda.is_available():
        err.print("bench perf: no CUDA device here; `bench perf --dry-run` checks everything but the device on the "
                  "CPU", markup=False)
        return EXIT_USAGE
    steps = args.steps or (3 if args.dry_run else 20)
    batch_size = args.batch_size or (1 if args.dry_run else 8)
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "perf-data.jsonl"
    # Enough rows that no run repeats an example; each longer than the sequence (byte-level tokens ~ characters).
    write_data(data, n=max(steps * batch_size, 8) + 2, prompt_chars=args.seq_len // 2, response_chars=args.seq_len)
    suite = perf_suite(out, data, dry_run=args.dry_run, steps=steps, batch_size=batch_size, seq_len=args.seq_len)
    write_suite(suite, out / "perf.yaml")  # to rerun or edit by hand: python -m bench run results/perf/perf.yaml
    code = run_suite(suite, Options(force=True, only=tuple(args.only or ()), report=False))
    if code not in (EXIT_OK, EXIT_FAIL):
        return code
    ran = sorted((r for r in load_records(out) if r.suite == "perf"), key=lambda r: r.started_at)
    table, verdicts = perf_table({r.run: r for r in ran})
    with_eval = eval_suite(suite)
    if not args.only or {"lora", "qlora"} & set(args.only):
        code = max(code, run_suite(with_eval, Options(force=True, report=False)))
        table += "\n\n" + phase_table([r for r in load_records(Path(with_eval.output)) if r.suite == with_eval.name])
    console.print(table, markup=False)
    for line in verdicts:  # PASS / FAIL / SKIP lines, as gpu-check prints them (scripts/gpu_check.sh collects them)
        status = "PASS" if ": met" in line else "FAIL" if "MISSED" in line else "SKIP"
        console.print(f"{status} perf: {line}", markup=False)
    (out / "perf.md").write_text(table + "\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
    console.print(f"wrote {out / 'perf.md'}")
    return code


def eval_suite(perf: Suite) -> Suite:
    """LoRA and QLoRA of the perf suite again, one sequence per step, with evaluation and the merge check on: what
    each phase costs in memory at the model's real size."""
    memory = TrainingOverrides(batch_size=1, gradient_checkpointing=True)
    runs = [r.model_copy(update={"training": memory}) for r in perf.runs if r.run_name in ("lora", "qlora")]
    return perf.model_copy(update={
        "name": "perf-eval", "output": str(Path(perf.output) / "eval"), "baseline": False, "runs": runs,
        "eval": Eval(max_examples=8, batch_size=8, max_new_tokens=16, forgetting=False)})


PHASE_COLUMNS = [("load_memory_bytes", "after load"), ("peak_memory_bytes", "training"),
                 ("eval_peak_memory_bytes", "eval"), ("merge_peak_memory_bytes", "merge check"),
                 ("cuda_max_reserved_bytes", "training reserved"), ("eval_peak_reserved_bytes", "eval reserved"),
                 ("merge_peak_reserved_bytes", "merge reserved")]


def phase_table(records) -> str:
    """Memory by phase of the runs with evaluation and the merge check, and the merge verdict."""
    from bench.core.metrics import format_value

    head = "| run | status | " + " | ".join(h for _, h in PHASE_COLUMNS) + " | merge |"
    lines = [head, "|---|---|" + "---:|" * len(PHASE_COLUMNS) + "---|"]
    for r in sorted(records, key=lambda r: r.started_at):
        merge = r.merge.status if r.merge else "-"
        if r.merge and r.merge.layer_rel_error_fp64 is not None:
            merge += f" (per layer {r.merge.layer_rel_error_fp64:.0e}, {r.merge.greedy_identical_count}/" \
                     f"{r.merge.compared} greedy equal)"
        cells = [format_value(k, r.metrics.get(k)) for k, _ in PHASE_COLUMNS]
        lines.append(f"| {r.run} (eval on) | {r.status} | " + " | ".join(cells) + f" | {merge} |")
    return "\n".join(lines)


def write_suite(suite: Suite, path: Path) -> None:
    """The suite as YAML, as a person would write it: only what differs from the defaults."""
    from ruamel.yaml import YAML

    doc = suite.model_dump(mode="json", exclude_defaults=True)
    with path.open("w") as f:
        f.write(f"# Written by python -m bench perf. {suite.description}\n")
        YAML().dump(doc, f)


def perf_table(records: dict) -> tuple[str, list[str]]:
    """A Markdown table of the perf records and one line per goal (met, missed, or not measurable here)."""
    from bench.core.metrics import format_value

    head = ("| run | batch | grad ckpt | status | steady tok/s | model TFLOP/s | MFU | peak memory | CUDA reserved |\n"
            "|---|---:|---|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for name, r in records.items():
        tr, m = r.config.training, r.metrics
        mfu = m.get("mfu")
        lines.append(
            f"| {name} | {tr.batch_size} | {'yes' if tr.gradient_checkpointing else 'no'} | {r.status} | "
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
