"""The first-GPU checks: what a CPU cannot show about precision, memory, merges, attention and evaluation on a GPU.

Run: `python -m bench gpu-check` on a CUDA machine (no network needed; `bash scripts/gpu_check.sh` runs it after
`bench perf`), or `--dry-run` for the same checks on the CPU with tiny shapes. One line per check, PASS / FAIL / SKIP
with what was measured; exit 1 when any check fails. Everything runs in this one process: no suite, no records.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from bench.config import Budget, DatasetSpec, Eval, ModelSpec, ResolvedTraining, RunConfig
from bench.console import EXIT_FAIL, EXIT_OK, EXIT_USAGE, console, err
from bench.device import Place
from bench.memory import Meter
from bench.metrics import human_bytes
from bench.presets import PRESETS


@dataclass(frozen=True)
class Shapes:
    """The sizes the checks use: TinyLlama-1.1B's on a GPU, the tiny preset's in a dry run."""

    preset: str
    layers: int  # for the checks that need a model of the preset's width, not its depth
    seq_len: int
    vocab_eval: tuple[int, int, int]  # rows, tokens per row, vocabulary of the large-vocabulary eval

    @classmethod
    def of(cls, dry_run: bool) -> Shapes:
        return cls("tiny-llama", 2, 128, (30, 64, 128256)) if dry_run else cls("tinyllama-1.1b", 4, 2048,
                                                                                 (30, 2000, 128256))


def config(shapes: Shapes, method: str, params: dict | None = None, layers: int | None = None, **training):
    """A run config for a random-weight model of the preset's shape (fewer layers where `layers` says)."""
    spec = PRESETS[shapes.preset] | ({"num_hidden_layers": layers} if layers else {})
    return RunConfig(suite="gpu-check", suite_version=1, run=method, method=method, params=params or {},
                     model=ModelSpec(config=spec), dataset=DatasetSpec(path="none"), budget=Budget(max_steps=1),
                     training=ResolvedTraining(**training), eval=Eval())


def batches(vocab: int, seq_len: int, rows: int, n: int, seed: int = 0) -> list[tuple[float, dict]]:
    """n random batches (the same n every time: loss falls as the model memorises them)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(vocab, (rows, seq_len), generator=g)
        out.append((0.0, {"input_ids": ids, "labels": ids.clone()}))
    return out


def fit(cfg: RunConfig, place: Place, data: list[tuple[float, dict]], steps: int, lr: float,
        cast: torch.dtype | None = None):
    """Train `steps` steps over `data` (repeated) the harness's way; `cast`: the whole model in that dtype first,
    trainable weights too (how a run trained before fp32 master weights). The losses, and the model."""
    from bench.load import build
    from bench.train import train
    from methods import METHODS

    model = build(cfg, None, place, METHODS[cfg.method])
    if cast is not None:
        model.to(cast)
    tr = cfg.training.model_copy(update={"learning_rate": lr, "max_grad_norm": None, "warmup_ratio": 0.0})
    result = train(model, iter(data * math.ceil(steps / len(data))), tr, Budget(max_steps=steps), steps,
                   place.device, autocast=place.autocast)
    return [p["loss"] for p in result.curve], model


def changed_share(cfg: RunConfig, place: Place, data, cast: torch.dtype | None) -> float:
    """The share of weights one AdamW step at the tinyllama suite's full fine-tuning rate (2e-5) changes."""
    from bench.load import build
    from methods import METHODS

    model = build(cfg, None, place, METHODS[cfg.method])
    if cast is not None:
        model.to(cast)
    before = [p.detach().clone() for p in model.parameters()]
    fit_model_step(model, place, data[0][1], 2e-5)
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
    return changed / sum(b.numel() for b in before)


def fit_model_step(model, place: Place, batch: dict, lr: float) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    with place.autocast():
        model(**{k: v.to(place.device) for k, v in batch.items()}, use_cache=False).loss.backward()
    opt.step()


def check_fp32_masters(shapes: Shapes, place: Place) -> tuple[str, str]:
    """Full fine-tuning in bf16 keeps fp32 master weights: its loss falls as an all-fp32 run's does, and a small
    step changes the weights; bf16 weights without masters round most of such a step away."""
    cfg = config(shapes, "full", layers=shapes.layers, precision="bf16")
    data = batches(PRESETS[shapes.preset]["vocab_size"], min(shapes.seq_len, 256), 2, 2)
    harness, _ = fit(cfg, place, data, 20, 1e-4)
    reference, _ = fit(cfg, Place(place.device, torch.float32), data, 20, 1e-4)
    share, share_bf16 = changed_share(cfg, place, data, None), changed_share(cfg, place, data, torch.bfloat16)
    drop, ref_drop = harness[0] - harness[-1], reference[0] - reference[-1]
    ok = ref_drop > 0 and 0.8 <= drop / ref_drop <= 1.25 and share > 0.99
    return ("PASS" if ok else "FAIL", f"loss {harness[0]:.3f} -> {harness[-1]:.3f} in 20 steps (all-fp32 reference "
            f"{reference[0]:.3f} -> {reference[-1]:.3f}); one step at lr 2e-5 changed {share:.1%} of the weights "
            f"(bf16 weights without fp32 masters: {share_bf16:.1%})")


def check_qlora_memory(shapes: Shapes, place: Place) -> tuple[str, str]:
    """QLoRA's training peak against LoRA's at one sequence per step with activations recomputed."""
    lora = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
    vocab = PRESETS[shapes.preset]["vocab_size"]
    data = batches(vocab, shapes.seq_len, 1, 3)
    peaks = {}
    for method in ("lora", "qlora"):
        cfg = config(shapes, method, lora, precision="bf16", gradient_checkpointing=True)
        meter = Meter(place.device)
        meter.reset()
        fit(cfg, place, data, 3, 1e-4)
        peaks[method] = meter.peak().used
        if place.cuda:
            torch.cuda.empty_cache()
    ratio = peaks["lora"] / peaks["qlora"]
    # A tiny model's resident peak on a CPU is mostly the libraries themselves: nothing to judge there.
    status = ("PASS" if ratio > 1 else "FAIL") if place.cuda else "SKIP"
    return (status, f"training peak LoRA {human_bytes(peaks['lora'])}, QLoRA "
            f"{human_bytes(peaks['qlora'])}: {ratio:.2f}x lower (goal on an H100: 1.5x)")


def check_bf16_merge(shapes: Shapes, place: Place) -> tuple[str, str]:
    """A LoRA merge in bf16: exact layer by layer in float64, while the merged weights' bf16 rounding is what moves
    the logits."""
    from bench.merge import layer_errors

    cfg = config(shapes, "lora", {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}, layers=shapes.layers,
                 precision="bf16")
    vocab = PRESETS[shapes.preset]["vocab_size"]
    _, model = fit(cfg, place, batches(vocab, 128, 2, 2), 10, 1e-3)
    layers = layer_errors(model)
    probe = torch.randint(vocab, (4, 64), generator=torch.Generator().manual_seed(1)).to(place.device)
    with torch.no_grad(), place.autocast():
        model.eval()
        before = model(input_ids=probe).logits.float()
        merged = model.merge_and_unload()
        after = merged(input_ids=probe).logits.float()
    same = float((before.argmax(-1) == after.argmax(-1)).float().mean())
    ok = layers.own < 1e-9 and layers.checked > 0
    return ("PASS" if ok else "FAIL", f"{layers.checked} layers: merge's own error {layers.own:.1e} (float64), "
            f"{layers.storage} storage rounding {layers.rounding:.1e}; end to end max |Δlogit| "
            f"{float((before - after).abs().max()):.3f}, greedy next tokens equal at {same:.1%} of positions")


def check_packed_attention(shapes: Shapes, place: Place) -> tuple[str, str]:
    """Packed rows (position ids restarting, no mask) give the padded rows' loss, under flash-attention's
    variable-length path where it is installed, else under SDPA."""
    from bench.data import Features, collate
    from bench.models import load_model

    kernel = "flash_attention_2" if place.cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    spec = ModelSpec(config=PRESETS[shapes.preset] | {"num_hidden_layers": 2})
    model = load_model(spec, None, dtype=place.dtype, load_in_4bit=False, seed=0,
                       device=place.device if place.cuda else None, attention=kernel).to(place.device).eval()
    g = torch.Generator().manual_seed(2)
    feats = [Features(ids := torch.randint(300, (n,), generator=g).tolist(), ids) for n in (100, 37, 64)]
    losses = {}
    for packed in (True, False):
        batch = {k: v.to(place.device) for k, v in collate(feats, 0, packed=packed).items()}
        with torch.no_grad(), place.autocast():
            losses[packed] = float(model(**batch, use_cache=False).loss)
    diff = abs(losses[True] - losses[False])
    ok = diff < 2e-2 if place.dtype != torch.float32 else diff < 1e-5
    note = "" if kernel == "flash_attention_2" else " (flash-attn is not installed: its varlen path is unchecked)"
    return ("PASS" if ok else "FAIL", f"{model.config._attn_implementation}: packed loss {losses[True]:.5f}, padded "
            f"{losses[False]:.5f}{note}")


def check_large_vocab_eval(shapes: Shapes, place: Place) -> tuple[str, str]:
    """Eval loss over rows x tokens at a 128k vocabulary in batches that fit the logit budget."""
    from bench.data import Features
    from bench.evaluation import LOGIT_BUDGET_BYTES, eval_loss
    from bench.models import load_model

    rows, tokens, vocab = shapes.vocab_eval
    spec = ModelSpec(config=PRESETS[shapes.preset] | {"num_hidden_layers": 2, "vocab_size": vocab})
    model = load_model(spec, None, dtype=place.dtype, load_in_4bit=False, seed=0,
                       device=place.device if place.cuda else None).to(place.device)
    g = torch.Generator().manual_seed(3)
    feats = [Features(ids := torch.randint(vocab, (tokens,), generator=g).tolist(), ids) for _ in range(rows)]
    meter = Meter(place.device)
    meter.reset()
    t = time.perf_counter()
    with place.autocast():
        loss = eval_loss(model, feats, 30, 0, place.device)
    peak = meter.peak()
    ok = math.isfinite(loss) and (peak is None or peak.used < 80 * 1024 ** 3)
    return ("PASS" if ok else "FAIL", f"{rows} rows x {tokens} tokens, vocabulary {vocab:,}: loss {loss:.3f} in "
            f"{time.perf_counter() - t:.1f} s, peak {human_bytes(peak.used) if peak else '-'} (logit budget "
            f"{human_bytes(LOGIT_BUDGET_BYTES)})")


CHECKS: dict[str, Callable[[Shapes, Place], tuple[str, str]]] = {
    "fp32-masters": check_fp32_masters,
    "qlora-memory": check_qlora_memory,
    "bf16-merge": check_bf16_merge,
    "packed-attention": check_packed_attention,
    "large-vocab-eval": check_large_vocab_eval,
}


def cmd_gpu_check(args) -> int:
    if not args.dry_run and not torch.cuda.is_available():
        err.print("bench gpu-check: no CUDA device here; --dry-run runs the same checks on the CPU", markup=False)
        return EXIT_USAGE
    shapes = Shapes.of(args.dry_run)
    place = Place.create("auto") if not args.dry_run else Place(torch.device("cpu"), torch.bfloat16)
    failed = False
    for name, check in CHECKS.items():
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        try:
            status, detail = check(shapes, place)
        except Exception as e:  # one check's crash is that check's FAIL; the others still run
            status, detail = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        failed |= status == "FAIL"
        console.print(f"{status} {name}: {detail} [{time.perf_counter() - t:.0f} s]", markup=False)
        if place.cuda:
            torch.cuda.empty_cache()
    return EXIT_FAIL if failed else EXIT_OK
