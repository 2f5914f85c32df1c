"""The one training loop every method shares: plain PyTorch over PEFT models, bound by the suite's budget."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from bench.datasets import batches as D
from bench.core.config import Budget, RunConfig, Training
from bench.datasets.batches import IGNORE
from bench.run.device import Place
from bench.run.flops import peak_flops, train_flops
from bench.core.layout import PROGRESS

if TYPE_CHECKING:
    from bench.run.distributed import Ranks
    from bench.run.load import Loaded
    from methods import Method, RunFacts

Batch = dict[str, torch.Tensor]


class Diverged(Exception):
    """The loss became NaN or infinite; training stopped at that step."""


@dataclass
class TrainResult:
    steps: int = 0
    epochs: float = 0.0
    real_tokens: int = 0  # tokens that are not padding, processed by forward passes
    processed_tokens: int = 0  # every input position, padding included
    target_tokens: int = 0  # tokens the loss was computed on (the responses)
    attention_pairs: int = 0  # sum over examples of length squared: the causal attention work, in token pairs
    seconds: float = 0.0  # training alone: what the callbacks took (progress, checkpoint saves) is not in it
    callback_seconds: float = 0.0  # time in on_step / on_epoch: writing progress and saving checkpoints
    # The same counts from the end of the first `warmup_steps` steps on (kernel selection, allocator growth and
    # first-touch costs excluded): what throughput and FLOPs utilisation are computed from.
    steady: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    stopped_by: str = ""


def planned_steps(budget: Budget, n_batches_per_epoch: int, grad_accum: int, epochs: float) -> int:
    """Optimiser steps the scheduler plans for: the step budget, or the epoch cap when tokens/seconds bind."""
    by_epochs = max(1, math.floor(n_batches_per_epoch * epochs / grad_accum))
    return min(budget.max_steps, by_epochs) if budget.max_steps is not None else by_epochs


def facts_of(cfg: RunConfig, loaded: Loaded) -> RunFacts:
    """What the method's hooks know of the run before the model exists: its planned optimiser steps and the
    tokenizer's special tokens."""
    from methods import RunFacts

    tr = cfg.training
    steps_per_epoch = len(D.batch_order(loaded.train, tr.batch_size, tr.seed))
    return RunFacts(total_steps=planned_steps(cfg.budget, steps_per_epoch, tr.grad_accum, tr.epochs),
                    special_token_ids=tuple(sorted(loaded.tokenizer.all_special_ids)))


def steady_after(total_steps: int) -> int:
    """Steps left out of throughput: the first few, at most a quarter of the run."""
    return min(5, total_steps // 4)


def example_lengths(batch: Batch) -> list[int]:
    """Lengths of the examples in a batch: packed rows restart their position ids per example, padded rows have a
    mask."""
    if "position_ids" in batch:
        lengths = []
        for row in batch["position_ids"]:
            starts = torch.nonzero(row == 0).flatten().tolist() + [len(row)]
            lengths += [b - a for a, b in zip(starts, starts[1:])]
        return lengths
    if "attention_mask" in batch:
        return batch["attention_mask"].sum(dim=1).tolist()
    return [batch["input_ids"].shape[1]] * batch["input_ids"].shape[0]


def train(
    model: torch.nn.Module,
    batches: Iterator[tuple[float, Batch]],
    training: Training,
    budget: Budget,
    total_steps: int,
    place: Place,
    on_step: Callable[[dict[str, float]], None] = lambda _: None,
    on_epoch: Callable[[int, int], None] = lambda _e, _s: None,
    warmup_steps: int = 0,
    method: Method | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> TrainResult:
    """Train until the budget binds on `place`: its device, its dtype's autocast around each forward pass alone
    (backward runs outside it, as PyTorch advises), and its ranks. With several processes (bench.run.distributed),
    `batches` yields this process's share of each micro-batch; losses and counts in the result and the curve are over
    all processes. `scaler`: fp16's loss scaling (one with PyTorch's defaults when the place computes in fp16).
    Time spent in the callbacks is not training time: it is left out of the clock, of throughput and of the
    max_seconds budget, and counted apart. `method.on_step`: after each optimiser step."""
    ranks, scaler = place.ranks, scaler if scaler is not None else fp16_scaler(place)
    model, optimizer, scheduler = _optimizer(model, training, total_steps, place)
    params = [p for p in model.parameters() if p.requires_grad]  # after the optimiser: LoRA-FA freezes lora_A
    after_step = (lambda step: method.on_step(model, step)) if method is not None else None
    result = TrainResult()
    mark = _counts(result)
    model.train()
    clock = _Clock(ranks)
    epoch_done = 0
    while True:
        micro = _take(batches, training.grad_accum)
        if micro is None:
            result.stopped_by = result.stopped_by or "epochs"
            break
        step_loss = _accumulate(model, micro, result, place, scaler, training.loss_chunk_bytes)
        if not math.isfinite(step_loss):
            result.curve.append({"step": result.steps + 1, "loss": step_loss})
            raise Diverged(f"loss became {step_loss} at step {result.steps + 1}")
        _update(model, params, optimizer, scheduler, training, ranks, scaler, after_step, result.steps)
        place.synchronize()  # on CUDA the step's kernels are done: its time is real, not queued
        result.steps += 1
        result.seconds = clock.seconds()
        if result.steps == warmup_steps:
            mark = _counts(result)
        point = {"step": result.steps, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                 "tokens": result.real_tokens, "seconds": result.seconds, "epoch": result.epochs}
        result.curve.append(point)
        with clock.paused():
            on_step(point)
            if int(result.epochs) > epoch_done:
                epoch_done = int(result.epochs)
                on_epoch(epoch_done, result.steps)
        result.stopped_by = budget_reached(budget, result)
        if result.stopped_by:
            break
    result.seconds, result.callback_seconds = clock.seconds(gather=False), clock.paused_seconds
    if result.steps <= warmup_steps:
        mark = _counts(TrainResult())  # too few steps to leave any out: the whole run is the window
    result.steady = {k: v - mark[k] for k, v in _counts(result).items()}
    return result


def fp16_scaler(place: Place) -> torch.amp.GradScaler | None:
    """fp16's loss scaling with PyTorch's defaults where the place computes in fp16; None elsewhere."""
    return torch.amp.GradScaler(place.device.type) if place.dtype == torch.float16 else None


def _optimizer(model, training: Training, total_steps: int, place: Place):
    """The run's optimiser (AdamW unless training.optimizer names another) over the trainable parameters and the
    suite's schedule, model and optimiser prepared by the place's ranks (accelerate's wrapping under DDP/FSDP)."""
    from transformers import get_scheduler

    from bench.run.optim import make_optimizer

    spec = training.optimizer
    optimizer = make_optimizer(model, spec and spec.name, spec.kwargs if spec else {}, lr=training.learning_rate,
                               weight_decay=training.weight_decay, fused=place.cuda)
    model, optimizer = place.ranks.prepare(model, optimizer)
    scheduler = get_scheduler(training.scheduler, optimizer, num_training_steps=total_steps,
                              num_warmup_steps=int(training.warmup_ratio * total_steps))
    return model, optimizer, scheduler


def budget_reached(budget: Budget, result: TrainResult) -> str:
    """The budget that binds after this step, or '' to go on."""
    if budget.max_steps is not None and result.steps >= budget.max_steps:
        return "max_steps"
    if budget.max_tokens is not None and result.real_tokens >= budget.max_tokens:
        return "max_tokens"
    if budget.max_seconds is not None and result.seconds >= budget.max_seconds:
        return "max_seconds"
    return ""


def _take(batches: Iterator[tuple[float, Batch]], n: int) -> list[tuple[float, Batch]] | None:
    """The next optimiser step's micro-batches, or None when the data runs out before a whole step."""
    micro = []
    for _ in range(n):
        item = next(batches, None)
        if item is None:
            return None
        micro.append(item)
    return micro


def _accumulate(model, micro: list[tuple[float, Batch]], result: TrainResult, place: Place,
                scaler: torch.amp.GradScaler | None, chunk_bytes: int | None) -> float:
    """Forward and backward over one step's micro-batches; the step's loss. The loss is a mean over every response
    token of the step, however they split into micro-batches (and, with several processes, over every process's
    share)."""
    ranks, device = place.ranks, place.device
    n_targets = int(ranks.sum(sum(int((b["labels"][:, 1:] != IGNORE).sum()) for _, b in micro)))
    step_loss = 0.0
    before = _counts(result)
    for i, (progress, batch) in enumerate(micro):
        filler = batch.pop("filler", None) is not None  # bench.datasets.batches.filler: trains nothing, is not data
        batch = {k: v.to(device) for k, v in batch.items()}
        # use_cache=False: with a KV cache transformers skips packed-sequence detection and packed examples would
        # attend to each other.
        with ranks.no_sync(model, last=i == len(micro) - 1):
            with place.autocast(), ranks.loss(model, chunk_bytes):
                out = model(**batch, num_items_in_batch=torch.tensor(n_targets, device=device), use_cache=False)
            # DDP averages gradients over processes; each loss is already a share of the global mean.
            loss = out.loss * ranks.world
            ranks.backward(scaler.scale(loss) if scaler is not None else loss)
        step_loss += out.loss.item()
        result.epochs = progress
        if not filler:
            _count(result, batch)
    step_loss = _all_processes(ranks, result, before, step_loss)
    result.target_tokens += n_targets
    return step_loss


def _count(result: TrainResult, batch: Batch) -> None:
    mask = batch.get("attention_mask")
    result.real_tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    result.processed_tokens += batch["input_ids"].numel()
    result.attention_pairs += sum(n * n for n in example_lengths(batch))


def _update(model, params, optimizer, scheduler, training: Training, ranks: Ranks,
            scaler: torch.amp.GradScaler | None, after_step: Callable[[int], None] | None, step: int) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if training.max_grad_norm:
        ranks.clip_grad_norm_(model, params, training.max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed; the scale then drops
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    if after_step is not None:
        after_step(step)
    optimizer.zero_grad(set_to_none=True)


class _Clock:
    """Training time: wall time since the start, less the time spent in callbacks."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self.start = time.perf_counter()
        self.paused_seconds = 0.0

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - t

    def seconds(self, gather: bool = True) -> float:
        seconds = time.perf_counter() - self.start - self.paused_seconds
        if gather:  # budgets must stop every process at one step: the slowest decides
            seconds = max(row[0] for row in self.ranks.gather([seconds]))
        return seconds


def _all_processes(ranks: Ranks, result: TrainResult, before: dict[str, float], step_loss: float) -> float:
    """The step's loss and token counts summed over processes: the result holds this process's counts before and
    every process's after (one process: its own)."""
    keys = ("real_tokens", "processed_tokens", "attention_pairs")
    rows = ranks.gather([step_loss] + [getattr(result, k) - before[k] for k in keys])
    for j, k in enumerate(keys, start=1):
        setattr(result, k, int(before[k] + sum(row[j] for row in rows)))
    return sum(row[0] for row in rows)


def _counts(r: TrainResult) -> dict[str, float]:
    return {"steps": r.steps, "seconds": r.seconds, "real_tokens": r.real_tokens,
            "processed_tokens": r.processed_tokens, "attention_pairs": r.attention_pairs}


# ---- the train stage: the loop with its progress file and checkpoints ----------------------------------------------


def train_stage(cfg: RunConfig, method: Method, model: torch.nn.Module, loaded: Loaded, place: Place,
                run_dir: Path) -> TrainResult:
    """Train the built model under the run's budget, appending each step to progress.jsonl and saving checkpoints
    where the suite asks for them. Raises Diverged with the steps so far in progress.jsonl."""
    tr, ranks = cfg.training, place.ranks
    packed = tr.packing and method.packable
    steps_per_epoch = len(D.batch_order(loaded.train, tr.batch_size, tr.seed))
    total_steps = planned_steps(cfg.budget, steps_per_epoch, tr.grad_accum, tr.epochs)
    progress = (run_dir / PROGRESS).open("a") if place.main else None

    def save_checkpoint(name: str) -> None:
        state = ranks.state_dict()  # every process takes part: FSDP gathers the shards
        if place.main:
            model.save_pretrained(run_dir / "checkpoints" / name, state_dict=state)

    def on_step(point: dict[str, float]) -> None:
        if progress is not None:
            progress.write(json.dumps(point) + "\n")
            progress.flush()
        if isinstance(tr.save_every, int) and point["step"] % tr.save_every == 0:
            save_checkpoint(f"step-{point['step']}")

    def on_epoch(epoch: int, step: int) -> None:
        if tr.save_every == "epoch":
            save_checkpoint(f"epoch-{epoch}")

    batches = D.batches(loaded.train, tr.batch_size, tr.seed, loaded.pad_id, packed, tr.epochs,
                        rank=ranks.rank, world=ranks.world)
    try:
        return train(model, batches, tr, cfg.budget, total_steps, place, on_step, on_epoch,
                     warmup_steps=steady_after(total_steps), method=method)
    finally:
        if progress is not None:
            progress.close()


def train_metrics(result: TrainResult, model: torch.nn.Module, place: Place) -> dict[str, Any]:
    """What the record says of training: time, steps, tokens, throughput, and FLOPs utilisation where the device's
    peak is known."""
    m: dict[str, Any] = dict(
        train_seconds=result.seconds, checkpoint_seconds=result.callback_seconds, train_steps=result.steps,
        train_epochs=result.epochs,
        train_tokens=result.real_tokens, processed_tokens=result.processed_tokens,
        real_token_fraction=result.real_tokens / max(result.processed_tokens, 1),
        train_tokens_per_second=result.real_tokens / result.seconds if result.seconds else 0.0,
        final_train_loss=result.curve[-1]["loss"] if result.curve else float("nan"),
    )
    w = result.steady
    if not w.get("seconds"):
        return m
    flops = train_flops(model, w["real_tokens"], w["attention_pairs"])
    m |= {"warmup_steps": result.steps - w["steps"], "warmup_seconds": result.seconds - w["seconds"],
          "steady_train_seconds": w["seconds"], "steady_tokens_per_second": w["real_tokens"] / w["seconds"],
          "model_tflops_per_second": flops / w["seconds"] / 1e12,
          "model_flops_per_token": flops / max(w["real_tokens"], 1)}
    # Tokens and FLOPs are every process's: MFU's peak is that of every device they ran on.
    m["mfu_devices"] = devices = place.ranks.world
    peak, _ = peak_flops(place.device, place.dtype)
    if peak:
        m["mfu"] = flops / w["seconds"] / (peak * devices)
    return m
