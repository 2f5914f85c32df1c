"""The first-GPU checks: what a CPU cannot show about precision, memory, merges, attention and evaluation on a GPU.

Run: `python -m bench gpu-check` on a CUDA machine (no network needed; `bash scripts/gpu_check.sh` runs it after
`bench perf`), or `--dry-run` for the same checks on the CPU with tiny shapes. One line per check, PASS / FAIL / SKIP
with what was measured; exit 1 when any check fails. Everything runs in this one process: no suite, no records.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from bench.core.config import Budget, DatasetSpec, Eval, ModelSpec, ResolvedTraining, RunConfig
from bench.core.console import EXIT_FAIL, EXIT_OK, EXIT_USAGE, console, err
from bench.run.device import Place
from bench.run.memory import Meter
from bench.core.metrics import human_bytes
from bench.run.presets import PRESETS


@dataclass(frozen=True)
class Shapes:
    """The sizes the checks use: TinyLlama-1.1B's on a GPU, the tiny preset's in a dry run."""

    preset: str
    layers: int  # for the checks that need a model of the preset's width, not its depth
    seq_len: int
    vocab_eval: tuple[int, int, int]  # rows, tokens per row, vocabulary of the eval-memory check
    chunk_bytes: int  # fp32 logits per chunk in the eval-memory check
    qlora_model: dict  # changes to the preset for the QLoRA memory check: a model whose weights dominate

    @classmethod
    def of(cls, dry_run: bool) -> Shapes:
        if dry_run:  # weights still dominate a CPU's resident memory: 4 layers 1024 wide, small vocabulary
            wide = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4, "num_attention_heads": 8,
                    "num_key_value_heads": 8, "vocab_size": 512}
            return cls("tiny-llama", 2, 128, (4, 1024, 32000), 8 * 1024 ** 2, wide)
        return cls("tinyllama-1.1b", 4, 2048, (30, 2000, 128256), 256 * 1024 ** 2, {})


def config(shapes: Shapes, method: str, params: dict | None = None, layers: int | None = None,
           model: dict | None = None, **training):
    """A run config for a random-weight model of the preset's shape (fewer layers where `layers` says, other
    fields where `model` says)."""
    spec = PRESETS[shapes.preset] | ({"num_hidden_layers": layers} if layers else {}) | (model or {})
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
        cast: torch.dtype | None = None, built: Callable[[torch.nn.Module], None] = lambda _: None):
    """Train `steps` steps over `data` (repeated) the harness's way; `cast`: the whole model in that dtype first,
    trainable weights too (how a run trained before fp32 master weights); `built`: called once the model is built,
    before training. The losses, and the model."""
    from bench.run.load import build
    from bench.run.train import train
    from methods import METHODS

    model = build(cfg, None, place, METHODS[cfg.method])
    if cast is not None:
        model.to(cast)
    built(model)
    tr = cfg.training.model_copy(update={"learning_rate": lr, "max_grad_norm": None, "warmup_ratio": 0.0})
    result = train(model, iter(data * math.ceil(steps / len(data))), tr, Budget(max_steps=steps), steps, place)
    return [p["loss"] for p in result.curve], model


def changed_share(cfg: RunConfig, place: Place, data, cast: torch.dtype | None) -> float:
    """The share of weights one AdamW step at the tinyllama suite's full fine-tuning rate (2e-5) changes."""
    from bench.run.load import build
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


def check_fp32_masters(shapes: Shapes, place: Place, plant: bool = False) -> tuple[str, str]:
    """Full fine-tuning in bf16 keeps fp32 master weights: its loss falls as an all-fp32 run's does, and a small
    step changes the weights; bf16 weights without masters round most of such a step away. Planted fault: the
    model cast to bf16 before training (no fp32 masters)."""
    cfg = config(shapes, "full", layers=shapes.layers, precision="bf16")
    data = batches(PRESETS[shapes.preset]["vocab_size"], min(shapes.seq_len, 256), 2, 2)
    cast = torch.bfloat16 if plant else None
    harness, _ = fit(cfg, place, data, 20, 1e-4, cast)
    reference, _ = fit(cfg, Place(place.device, torch.float32), data, 20, 1e-4)
    share, share_bf16 = changed_share(cfg, place, data, cast), changed_share(cfg, place, data, torch.bfloat16)
    drop, ref_drop = harness[0] - harness[-1], reference[0] - reference[-1]
    ok = ref_drop > 0 and 0.8 <= drop / ref_drop <= 1.25 and share > 0.99
    return ("PASS" if ok else "FAIL", f"loss {harness[0]:.3f} -> {harness[-1]:.3f} in 20 steps (all-fp32 reference "
            f"{reference[0]:.3f} -> {reference[-1]:.3f}, bound: a drop 0.8-1.25x the reference's); one step at lr "
            f"2e-5 changed {share:.1%} of the weights (bound: > 99%; bf16 weights without fp32 masters: "
            f"{share_bf16:.1%})")


def check_qlora_memory(shapes: Shapes, place: Place, plant: bool = False) -> tuple[str, str]:
    """QLoRA's training peak against LoRA's at one sequence per step with activations recomputed, each measured from
    the end of its model's load (the 4-bit build's full-precision transient is the load's, not training's), above
    what was in use before the model was built; judged against the goal of MEMORY_GOAL times lower. Planted fault:
    the peak reset before the load."""
    from bench.commands.perf import MEMORY_GOAL

    lora = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
    vocab = (PRESETS[shapes.preset] | shapes.qlora_model)["vocab_size"]
    data = batches(vocab, shapes.seq_len, 1, 3)
    peaks = {}
    for method in ("lora", "qlora"):
        cfg = config(shapes, method, lora, model=shapes.qlora_model, precision="bf16", gradient_checkpointing=True)
        meter = Meter(place.device)
        _release(place)
        before = meter.now()
        meter.reset()
        fit(cfg, place, data, 3, 1e-4, built=lambda _: None if plant else (_release(place), meter.reset()))
        peaks[method] = meter.peak().used - before
        _release(place)
    ratio = peaks["lora"] / max(peaks["qlora"], 1)
    # A CPU's resident memory is not its tensors': bitsandbytes' CPU kernels de-quantise in full precision, and
    # freed pages stay resident. Measured here 0.94x (trimmed heap) to 0.51x: nothing to judge QLoRA's goal by.
    status = ("PASS" if ratio >= MEMORY_GOAL else "FAIL") if place.cuda else "SKIP"
    return (status, f"training peak above what was in use before the load, reset after the load: LoRA "
            f"{human_bytes(peaks['lora'])}, QLoRA {human_bytes(peaks['qlora'])}: {ratio:.2f}x lower (bound: >= "
            f"{MEMORY_GOAL}x, the goal{'' if place.cuda else '; judged on CUDA only'})")


def _release(place: Place) -> None:
    """Free what earlier work left: collected objects and, on CUDA, the allocator's cached blocks; on a CPU (glibc)
    the heap's free pages go back to the system, so resident memory is what is alive, not what a load left freed."""
    import ctypes
    import gc

    gc.collect()
    if place.cuda:
        torch.cuda.empty_cache()
    else:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: resident memory keeps freed pages
            pass


def check_merge(shapes: Shapes, place: Place, plant: bool = False) -> tuple[str, str]:
    """A LoRA merge in bf16 as the harness merges (bench.run.merge.merge_layers, outside autocast): every merged weight
    the model holds is W + scale·B·A in float64 within half a bf16 ulp (plus fp32 noise); the merge's own error in
    float64 is noise; end to end the merged model's logits and greedy tokens against the adapter model's. QLoRA's
    merge is checked the same way one de-quantised layer at a time. Planted fault: the merge inside autocast."""
    from bench.run.merge import EXACT, merge_layers, quantized_layers, unload_merged

    lora = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
    vocab = PRESETS[shapes.preset]["vocab_size"]
    cfg = config(shapes, "lora", lora, layers=shapes.layers, precision="bf16")
    _, model = fit(cfg, place, batches(vocab, 128, 2, 2), 10, 1e-3)
    probe = torch.randint(vocab, (4, 64), generator=torch.Generator().manual_seed(1)).to(place.device)
    model.eval()
    with torch.no_grad(), place.autocast():
        before = model(input_ids=probe).logits.float()
    layers = merge_layers(model, place.autocast if plant else contextlib.nullcontext)
    merged = unload_merged(model, layers)
    with torch.no_grad(), place.autocast():
        after = merged(input_ids=probe).logits.float()
    same = float((before.argmax(-1) == after.argmax(-1)).float().mean())
    _, qmodel = fit(config(shapes, "qlora", lora, layers=shapes.layers, precision="bf16"), place,
                    batches(vocab, 128, 2, 2), 10, 1e-3)
    q = quantized_layers(qmodel, place.dtype)
    ok = layers.checked > 0 and q.checked > 0 and max(layers.weights, q.weights) <= 1 and layers.own < EXACT
    return ("PASS" if ok else "FAIL",
            f"LoRA, {layers.checked} layers: worst merged weight at {layers.weights:.2f} of its bound (bound: 1 = half "
            f"a {layers.storage} ulp of W + ΔW in float64 + 16 fp32 roundings), merge's own error {layers.own:.1e} "
            f"(bound {EXACT:.0e}); end to end max |Δlogit| {float((before - after).abs().max()):.3f}, greedy next "
            f"tokens equal at {same:.1%} of positions. QLoRA, {q.checked} layers de-quantised one at a time: worst "
            f"merged weight at {q.weights:.2f} of its bound")


def check_packed_attention(shapes: Shapes, place: Place, plant: bool = False) -> tuple[str, str]:
    """Packed rows (position ids restarting, no mask) give the padded rows' loss under the kernel a packed run gets
    (bench.run.load.attention: flash-attention's variable-length path where flash-attn is installed, else
    flex-attention with a document mask on CUDA, SDPA on a CPU)."""
    from bench.datasets.batches import Features, collate
    from bench.run.load import attention
    from bench.run.models import load_model
    from methods import METHODS

    kernel = attention(config(shapes, "lora", layers=2), METHODS["lora"], place)
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
    bound = 2e-2 if place.dtype != torch.float32 else 1e-5
    return ("PASS" if diff < bound else "FAIL", f"{model.config._attn_implementation}: packed loss "
            f"{losses[True]:.5f}, padded {losses[False]:.5f} (bound: |difference| < {bound:.0e})")


def check_eval_memory(shapes: Shapes, place: Place, plant: bool = False) -> tuple[str, str]:
    """The eval loss's peak memory over long rows at a large vocabulary stays within a bound set by the chunk size:
    what the model's forward needs without logits (measured: the same rows with one position's logits) plus three
    chunks of fp32 logits (the chunk's logits in the compute dtype, their fp32 copy, log-softmax). An unchunked
    loss holds every position's logits at once, far above it. Planted fault: the eval unchunked."""
    from bench.datasets.batches import Features, collate
    from bench.run.evaluation import eval_loss
    from bench.run.loss import chunk_positions
    from bench.run.models import load_model

    rows, tokens, vocab = shapes.vocab_eval
    spec = ModelSpec(config=PRESETS[shapes.preset] | {"num_hidden_layers": 2, "vocab_size": vocab})
    model = load_model(spec, None, dtype=place.dtype, load_in_4bit=False, seed=0,
                       device=place.device if place.cuda else None).to(place.device).eval()
    g = torch.Generator().manual_seed(3)
    feats = [Features(ids := torch.randint(vocab, (tokens,), generator=g).tolist(), ids) for _ in range(rows)]
    meter = Meter(place.device)
    body = _peak_of(meter, place, lambda: _forward_without_logits(model, collate(feats[:2], 0, packed=False), place))
    t = time.perf_counter()
    chunk = None if plant else shapes.chunk_bytes
    losses = []
    with place.autocast():
        peak = _peak_of(meter, place, lambda: losses.append(eval_loss(model, feats, 2, 0, place.device,
                                                                      chunk_bytes=chunk)))
    loss = losses[0]
    # Resident memory (a CPU) also counts heap pages glibc reuses or keeps between the two measurements, which the
    # CUDA allocator's counters do not: two chunks more there, still far below an unchunked batch's logits.
    slack = 0 if place.cuda else 2
    bound = body + (3 + slack) * shapes.chunk_bytes
    whole = 2 * tokens * vocab * 4
    ok = math.isfinite(loss) and peak <= bound
    return ("PASS" if ok else "FAIL", f"{rows} rows x {tokens} tokens, vocabulary {vocab:,}, 2 rows a batch: loss "
            f"{loss:.3f} in {time.perf_counter() - t:.1f} s, eval peak {human_bytes(peak)} (bound: "
            f"{human_bytes(bound)} = forward without logits {human_bytes(body)} + 3 chunks of "
            f"{human_bytes(shapes.chunk_bytes)}, {chunk_positions(vocab, shapes.chunk_bytes):,} positions each"
            f"{f', + {slack} for resident-memory noise' if slack else ''}; one batch's fp32 logits unchunked: "
            f"{human_bytes(whole)})")


def _peak_of(meter: Meter, place: Place, work: Callable[[], object]) -> int:
    """Peak bytes in use while `work` runs, above what was in use when it started."""
    _release(place)
    before = meter.now()
    meter.reset()
    work()
    return meter.peak().used - before


@torch.no_grad()
def _forward_without_logits(model, batch: dict, place: Place) -> None:
    with place.autocast():
        model(input_ids=batch["input_ids"].to(place.device),
              attention_mask=batch["attention_mask"].to(place.device), logits_to_keep=1, use_cache=False)


# One line per quantisation backend the GPU check runs: (setting, the package it needs).
QUANTIZED = {
    "quant-bnb-8bit": ({"bits": 8}, "bitsandbytes"),
    "quant-bnb-nf4": ({"bits": 4, "quant_type": "nf4", "double_quant": True}, "bitsandbytes"),
    "quant-bnb-fp4": ({"bits": 4, "quant_type": "fp4"}, "bitsandbytes"),
    "quant-torchao-int8": ({"backend": "torchao", "bits": 8}, "torchao"),
    "quant-hqq-4bit": ({"backend": "hqq", "bits": 4, "group_size": 64}, "hqq"),
}
# LoRA on the seven projections: HQQ's layers are not nn.Linear, so "all-linear" would find none there.
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def check_quantized(name: str) -> Callable[[Shapes, Place, bool], tuple[str, str]]:
    """The check for one backend (QUANTIZED[name]): LoRA over the base quantised that way trains a few steps (its
    loss falls), the base's projections hold at most bits/8 + 1/4 bytes per weight (the packed values and their
    scales, bench.run.quantsize.weight_bytes), the training peak above the load is measured, and the merge is judged:
    PEFT's merge_and_unload into the quantised layers end to end (logits, greedy next tokens) and, for bitsandbytes
    4-bit, layer by layer against W + ΔW in float64. Planted fault: the base left unquantised."""
    setting, package = QUANTIZED[name]

    def check(shapes: Shapes, place: Place, plant: bool = False) -> tuple[str, str]:
        import importlib.util

        if importlib.util.find_spec(package) is None:
            return "SKIP", f"{package} is not installed (pip install 'peft-bench[{package}]')"
        return _quantized(shapes, place, setting, plant)

    check.__doc__ = check_quantized.__doc__
    return check


def _quantized(shapes: Shapes, place: Place, setting: dict, plant: bool) -> tuple[str, str]:
    from bench.core.config import Quantization
    from bench.run.quantization import describe

    q = Quantization(**setting)
    cfg = config(shapes, "lora", {"r": 8, "lora_alpha": 16, "target_modules": PROJECTIONS}, layers=shapes.layers,
                 precision="bf16", quantization=None if plant else q)
    vocab = PRESETS[shapes.preset]["vocab_size"]
    meter = Meter(place.device)
    _release(place)
    before = meter.now()
    loads: list[int] = []
    losses, model = fit(cfg, place, batches(vocab, 64, 2, 2), 8, 1e-3,
                        built=lambda _: (_release(place), loads.append(meter.now() - before), meter.reset()))
    peak = meter.peak().used - before
    per_weight = _bytes_per_weight(model)
    bound = q.bits / 8 + 0.25
    merge_ok, merge = _quantized_merge(model, place, vocab, q)
    ok = losses[-1] < losses[0] and per_weight <= bound and merge_ok
    return ("PASS" if ok else "FAIL", f"LoRA over {describe(q)}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in 8 "
            f"steps (bound: falls); base projections {per_weight:.3f} bytes per weight (bound: <= {bound:.3f} = "
            f"bits/8 + 1/4 for scales); after load {human_bytes(loads[0])}, training peak "
            f"{human_bytes(peak)} above what was in use before the load (measured, not judged"
            f"{'' if place.cuda else '; resident memory, libraries included'}); merge: {merge}")


def _bytes_per_weight(model) -> float:
    """Bytes per weight the base's projection layers hold as quantised (bench.run.quantsize.weight_bytes)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from bench.run.quantsize import weight_bytes

    held = weights = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            held += weight_bytes(base)
            weights += base.in_features * base.out_features
    return held / max(weights, 1)


@torch.no_grad()
def _quantized_merge(model, place: Place, vocab: int, q) -> tuple[bool, str]:
    """PEFT's merge into the quantised layers (de-quantise, add, re-quantise), end to end, and for bitsandbytes
    4-bit each layer de-quantised against W + ΔW in float64 (bench.run.merge.quantized_layers): whether it held, and
    what it measured."""
    from bench.run.merge import quantized_layers

    layers = quantized_layers(model, place.dtype) if q.backend == "bitsandbytes" and q.bits == 4 else None
    probe = torch.randint(vocab, (4, 32), generator=torch.Generator().manual_seed(1)).to(place.device)
    model.eval()
    with place.autocast():
        before = model(input_ids=probe).logits.float()
        after = model.merge_and_unload()(input_ids=probe).logits.float()
    diff = float((before - after).abs().max())
    same = float((before.argmax(-1) == after.argmax(-1)).float().mean())
    ok = math.isfinite(diff) and (layers is None or (layers.checked > 0 and layers.weights <= 1))
    text = (f"lossy, PEFT's merge_and_unload into the base's layers: max |Δlogit| {diff:.3g}, greedy next tokens "
            f"equal at {same:.1%} of positions")
    if layers is not None:
        text += (f"; {layers.checked} layers de-quantised one at a time: worst merged weight at {layers.weights:.2f} "
                 "of its bound (bound: 1)")
    return ok, text


CHECKS: dict[str, Callable[[Shapes, Place, bool], tuple[str, str]]] = {
    "fp32-masters": check_fp32_masters,
    "qlora-memory": check_qlora_memory,
    "merge": check_merge,
    "packed-attention": check_packed_attention,
    "eval-memory": check_eval_memory,
    **{name: check_quantized(name) for name in QUANTIZED},
}
# What `--plant CHECK` breaks, to show the check can fail (each check's docstring says how).
PLANTABLE = ("fp32-masters", "qlora-memory", "merge", "eval-memory", *QUANTIZED)


def cmd_gpu_check(args) -> int:
    if not args.dry_run and not torch.cuda.is_available():
        err.print("bench gpu-check: no CUDA device here; --dry-run runs the same checks on the CPU", markup=False)
        return EXIT_USAGE
    shapes = Shapes.of(args.dry_run)
    place = Place.create("auto") if not args.dry_run else Place(torch.device("cpu"), torch.bfloat16)
    plant = set(args.plant or ())
    failed = False
    for name, check in CHECKS.items():
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        try:
            status, detail = check(shapes, place, name in plant)
        except Exception as e:  # one check's crash is that check's FAIL; the others still run
            status, detail = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        failed |= status == "FAIL"
        fault = " [fault planted]" if name in plant else ""
        console.print(f"{status} {name}{fault}: {detail} [{time.perf_counter() - t:.0f} s]", markup=False)
        _release(place)
    return EXIT_FAIL if failed else EXIT_OK
