"""Training memory of a run predicted before it runs, on a GPU or a CPU, from its real architecture at reduced depth.

What is counted and what is measured:
- weights, gradients and optimiser state are the bytes of the tensors themselves, after one forward, backward and
  optimiser step of the model built with the method applied (PEFT's own tuner, bench.run.optim's optimiser);
- activations are the bytes autograd saves for backward (torch.autograd.graph.saved_tensors_hooks, each storage once,
  parameters left out), in the run's dtype, at its batch shape;
- both are measured on the model built with 1 and 2 decoder layers at full width, and with 1 and 2 rows of the batch,
  then extended to the real depth and batch: every figure is taken as affine in depth and in rows (exact for stacks
  of identical layers: the two builds' difference is one layer's share, the rest is what depth does not change);
- the forward, backward and step run on fake tensors (torch's FakeTensorMode: shapes and dtypes, no arithmetic), so
  a 3B model's layer costs a second and no memory; where a method's ops need values (data-dependent shapes, .item())
  they run for real on a CPU at short sequences (32 and 64 tokens, one row), affine in tokens;
- a 4-bit (NF4) base is measured as its 16-bit layers (bitsandbytes' frozen 4-bit matmul saves what a frozen 16-bit
  linear saves: its input only when something upstream trains; tests/test_memplan.py checks this on a real layer),
  and stored at the bytes bitsandbytes' own quantised tensor has (packed weights plus its quantisation constants);
- the loss's transient is stated, not measured: the logits the model returns (kept until backward) and two fp32
  buffers of the logits' size in the loss's backward, over the fp32 log-softmax that autograd saves; at the positions
  the build returned logits for (a prompt-learning method's virtual tokens too: prompt tuning prepends them);
- gradient checkpointing (non-reentrant) keeps each layer's input and recomputes one layer at a time in backward: its
  activations are the layers' inputs, one layer's saved tensors, and what lies outside the layers;
- on a GPU, a stated allowance: the caching allocator reserves ALLOCATOR_SHARE more than it hands out, and the CUDA
  context takes CUDA_CONTEXT outside torch's figures; on a CPU the measured resident floor of torch and the libraries,
  one step's activations that glibc's heap keeps resident between steps, and a quantised base's checkpoint pages
  where the checkpoint stays mapped (stored in the run's dtype).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Any

GIB = 2**30
ALLOCATOR_SHARE = 0.05  # reserved / allocated - 1: large blocks round to 2 MiB and are cached, not returned
CUDA_CONTEXT = GIB // 2  # kernels and the context, outside torch.cuda's reserved figure
MFU_BAND = (0.25, 0.45)  # model FLOPs utilisation a single-GPU bf16 fine-tuning run reaches, low and high
REAL_TOKENS = (32, 64)  # sequence lengths of the real-tensor fallback, one row each
RANDOM_BUILD_BYTES = 6 * GIB  # most RAM a real-weights build at reduced depth may take here

# Memory of the cards in bench.run.flops.BF16_PEAK, by the same names (most specific first), from the data sheets.
CARD_MEMORY = [("H100 NVL", 94e9), ("H100 PCIe", 80e9), ("H100", 80e9), ("H200 NVL", 141e9), ("H200", 141e9),
               ("A100", 80e9), ("L40S", 48e9), ("L4", 24e9)]


@dataclass(frozen=True)
class Setting:
    """How a run trains, as far as memory goes."""

    batch_size: int
    seq_len: int  # the longest batch's length: max_seq_len, packed rows, or the data's longest batch
    dtype: str = "bf16"  # storage and compute dtype of the base: bf16, fp16, fp32
    device: str = "cuda"  # cuda: allocator allowance; cpu: resident floor
    trainable_fp32: bool = True  # the harness keeps every weight that trains in fp32; PEFT's benchmark only adapters
    # Pure bf16 (training.master_weights: false): with trainable_fp32 off, the adapters PEFT upcasts to fp32 are cast
    # to the base's dtype too, as the run does (bench.run.load.trainable_in): weights, gradients and states at 2 bytes.
    pure: bool = False
    autocast: bool = True  # the harness computes under autocast; PEFT's benchmark runs the bf16 model as loaded
    four_bit: bool = False
    # A base quantised by training.quantization (its settings as JSON, so the setting hashes): its linear layers at
    # the bytes per weight bench.run.quantsize measures on a real layer of that backend and setting.
    quantization: str | None = None
    gradient_checkpointing: bool = False
    optimizer: str | None = None  # None: AdamW
    optimizer_kwargs: str = "{}"  # JSON, so the setting hashes


@dataclass(frozen=True)
class Counted:
    """One build's figures, in bytes (flops per token)."""

    frozen: int
    trainable: int
    gradients: int
    optimizer: int
    saved: int
    flops: int
    how: str  # "fake" or "real"
    # Positions per row the model returns logits for beyond the input's tokens: a prompt-learning method's virtual
    # tokens (prompt tuning, P-tuning, CPT prepend them to the input), read off the logits the build returned.
    extra_positions: int = 0
    replaced: int = 0  # bytes, in the storage dtype, of the frozen layers a quantised base stores quantised


@dataclass
class Prediction:
    """The predicted training-phase peak and its parts, in bytes."""

    device: str
    batch_size: int
    seq_len: int
    base: int  # frozen weights in their storage dtype
    trainable: int
    gradients: int
    optimizer: int
    activations: int  # saved for backward
    logits: int  # the loss's transient
    head_gradients: int  # gradients made before the layers' (the output head's, tied embeddings')
    allowance: int  # GPU: allocator share + CUDA context; CPU: resident floor and the C allocator's retained blocks
    allocated: int  # GPU: torch's allocated peak; CPU: the resident peak
    reserved: int  # GPU: the allocator's reserved peak (what a card must hold, less the context)
    per_row: int  # activation and loss bytes each further row of the batch adds
    flops_per_token: int
    measured: str

    def fits(self, card_bytes: float) -> bool:
        return self.need <= card_bytes

    @property
    def need(self) -> int:
        """Bytes of the device the run needs: reserved plus the context on a GPU, the resident peak on a CPU."""
        return self.reserved + (CUDA_CONTEXT if self.device == "cuda" else 0)

    def largest_batch(self, card_bytes: float) -> int:
        """The largest batch size that fits, 0 if not even one row does."""
        scale = 1 + ALLOCATOR_SHARE if self.device == "cuda" else 1
        front = self.activations + self.logits + self.head_gradients
        weights = self.need / scale - max(front, self.gradients) - (CUDA_CONTEXT / scale if scale > 1 else 0)
        room = (card_bytes - (CUDA_CONTEXT if scale > 1 else 0)) / scale - weights
        if room < self.gradients or not self.per_row:
            return 0
        return max(0, int((room - (front - self.per_row * self.batch_size)) // self.per_row))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"need": self.need}


def predict(arch: dict[str, Any], method, params: dict[str, Any], setting: Setting, plan) -> Prediction:
    """The training-phase peak of `method` with `params` on the architecture `arch` under `setting`."""
    layers = arch["num_hidden_layers"]
    at, how = _extended(arch, method, params, setting, plan)
    rows = setting.batch_size if how == "fake" else setting.batch_size * setting.seq_len / REAL_TOKENS[0]
    width = {"bf16": 2, "fp16": 2, "fp32": 4}[setting.dtype]
    hidden_row = setting.seq_len * arch["hidden_size"] * width
    vocab = arch["vocab_size"]
    positions = setting.seq_len + grid_value(at, "extra_positions")

    def peak(r: float) -> tuple[int, int]:
        saved = at("saved", layers, r)
        if setting.gradient_checkpointing:
            one_layer = at("saved", 1, r) - at("saved", 0, r)
            saved = at("saved", 0, r) + one_layer + layers * hidden_row * _batch(r, setting, how)
        logits = _batch(r, setting, how) * positions * vocab * (width + 8)
        return int(saved), int(logits)

    acts, logits = peak(rows)
    parts = [int(at(f, layers, 1)) for f in ("frozen", "trainable", "gradients", "optimizer")]
    if setting.device == "cpu" and _mapped(arch, setting):
        parts[0] += int(at("replaced", layers, 1))
    parts.append(max(0, int(at("gradients", 0, 1))))  # the gradients outside the layers: the head's, first in backward
    return _assemble(setting, parts, acts, logits, peak, rows, int(at("flops", layers, 1)), how)


def _mapped(arch: dict[str, Any], setting: Setting) -> bool:
    """Whether a CPU run's quantised base keeps its checkpoint resident beside the quantised copies. transformers
    memory-maps a safetensors checkpoint; weights stored in the dtype the run computes in are used in place (views of
    the mapping: its pages are the weights, no copy), so the mapping lives as long as the model. Quantising at load
    reads every page of the layers it replaces, and those pages stay resident (mapped, counted in the process's
    resident set) beside their quantised copies. A checkpoint in another dtype is copied at load and unmapped."""
    stored = arch.get("dtype") or arch.get("torch_dtype")
    return bool(setting.four_bit or setting.quantization) and \
        {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(str(stored)) == setting.dtype


# PEFT config fields that count the decoder layers a method adapts from the top (AdaptionPrompt's adapter_layers). A
# build cannot hold more than its depth, and the layers below the lowest adapted one save nothing for backward
# (nothing under them trains), while the lowest adapted layer saves less than the others (its input needs no
# gradient): such a method is built at depth 2 and 3 with 2 and 3 layers adapted, and at depth 3 with 2, and its
# figures taken as affine in depth and in adapted layers from two on.
LAYER_COUNTS = ("adapter_layers",)


def _extended(arch: dict[str, Any], method, params: dict[str, Any], setting: Setting, plan):
    """`at(field, depth, r)`: a figure of the builds at reduced depth and 1 and 2 rows, extended to `depth` layers
    and `r` rows (affine in both); and how the builds were counted ("fake" or "real")."""
    field = next((f for f in LAYER_COUNTS if isinstance(params.get(f), int) and params[f] > 0), None)
    adapted = min(params[field], arch["num_hidden_layers"]) if field else None
    points = ((2, 2), (3, 2), (3, 3)) if field and adapted > 1 else ((1, 1), (2, 1)) if field else ((1, 1), (2, 2))

    def build(depth: int, layers: int, r: int) -> Counted:
        return measure(arch, method, {**params, field: layers} if field else params, setting, plan, depth, r)

    grid = {(d, a, r): build(d, a, r) for d, a in points for r in (1, 2)}

    def at(name: str, depth: float, r: float) -> float:
        f = {(d, a): (lambda v: v[1] + (v[2] - v[1]) * (r - 1))({r_: getattr(grid[d, a, r_], name) for r_ in (1, 2)})
             for d, a in points}
        if len(points) == 2:  # every layer alike (or the one adapted layer on top)
            (d0, a0), (d1, a1) = points
            return f[d0, a0] + (depth - d0) * (f[d1, a1] - f[d0, a0])
        a = min(adapted, depth)
        return f[2, 2] + (depth - 2) * (f[3, 2] - f[2, 2]) + (a - 2) * (f[3, 3] - f[3, 2])

    return at, grid[points[0] + (1,)].how


def grid_value(at, name: str) -> int:
    """A figure that neither depth nor rows change (the builds agree on it), read off the builds."""
    return int(round(at(name, 1, 1)))


def _batch(r: float, setting: Setting, how: str) -> float:
    """Rows of the batch that `r` measured units stand for."""
    return r if how == "fake" else r * REAL_TOKENS[0] / setting.seq_len


def _assemble(setting: Setting, parts: list[int], acts: int, logits: int, peak, rows: float, flops: int,
              how: str) -> Prediction:
    base, trainable, gradients, optimizer, head_gradients = parts
    # Backward frees each layer's saved tensors as it makes that layer's gradients: the peak is at its start (every
    # activation, the loss's transient, the head's gradients) or at its end (every gradient).
    allocated = base + trainable + optimizer + max(acts + logits + head_gradients, gradients)
    one_more = rows + (1 if how == "fake" else setting.seq_len / REAL_TOKENS[0])
    per_row = max(sum(peak(one_more)) - acts - logits, 0)
    if setting.device == "cuda":
        allowance = int(ALLOCATOR_SHARE * allocated) + CUDA_CONTEXT
        reserved = int(allocated * (1 + ALLOCATOR_SHARE))
    else:
        # glibc's malloc raises its mmap threshold to the size of each mmapped block freed (up to 32 MiB): after the
        # first step, the activations' blocks come from its heap, and the blocks one step frees stay resident beside
        # the next step's (the resident peak climbs over the first steps; with a fixed M_MMAP_THRESHOLD it does
        # not). Allowed for as one step's saved activations (blocks under 32 MiB; the logits' are larger and mmapped).
        allowance = resident_floor() + (acts if _glibc() else 0)
        allocated += allowance
        reserved = allocated
    measured = ("fake tensors at full width and batch shape, depth 1 and 2, extended to the model's depth"
                if how == "fake" else f"real tensors on the CPU at {REAL_TOKENS} tokens, depth 1 and 2, extended to "
                "the model's depth and the batch's tokens (the method's ops need values)")
    return Prediction(setting.device, setting.batch_size, setting.seq_len, base, trainable, gradients, optimizer, acts,
                      logits, head_gradients, allowance, allocated, reserved, int(per_row), flops, measured)


def measure(arch, method, params, setting: Setting, plan, depth: int, rows: int) -> Counted:
    """One build's bytes at `depth` decoder layers, `rows` rows of the batch: on fake tensors where the method's ops
    allow, else for real on the CPU at short sequences."""
    key = json.dumps([arch, method.id, params, asdict(setting), plan.total_steps, list(plan.special_token_ids), depth,
                      rows], sort_keys=True, default=str)
    return _measure(key)


@functools.lru_cache(maxsize=512)
def _measure(key: str) -> Counted:
    from methods import METHODS, RunFacts

    arch, method_id, params, setting, total_steps, special, depth, rows = json.loads(key)
    method, setting = METHODS[method_id], Setting(**setting)
    plan = RunFacts(total_steps=total_steps, special_token_ids=tuple(special))
    build = json.dumps([arch, method_id, params, asdict(setting) | {"seq_len": 0, "batch_size": 0}, total_steps,
                        special, depth], sort_keys=True, default=str)
    if build not in _NEEDS_VALUES:
        try:
            return _count(_small_model(arch, depth, method, params, setting, plan), setting, rows, "fake")
        except Exception as e:  # noqa: BLE001 - an op that needs values; it runs for real below
            _NEEDS_VALUES[build] = f"{type(e).__name__}: {str(e)[:120]}"
    if _real_bytes(json.dumps(arch, sort_keys=True), depth, setting.dtype) > RANDOM_BUILD_BYTES:
        raise RuntimeError(f"{method_id}'s ops need values ({_NEEDS_VALUES[build]}) and a real build at depth "
                           f"{depth} is too large here")
    return _real_count(build, rows)


# Builds whose ops need values (fake tensors failed), with why: later lengths and batch sizes go straight to the real
# count, which depends on neither (it runs at REAL_TOKENS).
_NEEDS_VALUES: dict[str, str] = {}


@functools.lru_cache(maxsize=256)
def _real_count(build: str, rows: int) -> Counted:
    from methods import METHODS, RunFacts

    arch, method_id, params, setting, total_steps, special, depth = json.loads(build)
    method, setting = METHODS[method_id], Setting(**setting)
    plan = RunFacts(total_steps=total_steps, special_token_ids=tuple(special))
    model = _small_model(arch, depth, method, params, setting, plan, real=True)
    return _count(model, setting, 1, "real", tokens=REAL_TOKENS[rows - 1])


@functools.lru_cache(maxsize=16)
def _real_bytes(arch: str, depth: int, dtype: str) -> int:
    """Bytes of a real build of `arch` (JSON) at `depth` layers, weights in `dtype` (adapters aside)."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.run.tuners import at_depth, model_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(at_depth(json.loads(arch), depth)))
    return sum(p.numel() for p in model.parameters()) * {"fp32": 4}.get(dtype, 2)


def _small_model(arch, depth: int, method, params, setting: Setting, plan, real: bool = False):
    """The model at `depth` layers with the method applied as the run applies it: on the meta device, or with random
    weights on the CPU where PEFT reads them as it builds (or `real`). A copy of a cached build (the count consumes
    it; a real build with PEFT's decompositions takes seconds) that shares the cached build's frozen weights."""
    from bench.run.tuners import _mica

    real = real or method.needs_weights or _mica(params)  # built on the CPU either way: one build serves both
    key = json.dumps([arch, depth, method.id, params, setting.dtype, setting.trainable_fp32, setting.pure,
                      plan.total_steps, list(plan.special_token_ids), real], sort_keys=True, default=str)
    return shared_copy(_built(key))


def shared_copy(model):
    """A deep copy of `model` whose frozen parameters are new Parameter objects over the same storage (tied ones
    stay tied): what a method replaces or re-assigns in the copy leaves the original alone; the bytes are not copied
    (a random 3B model's embeddings are 0.8 GB)."""
    import copy

    import torch

    memo: dict[int, Any] = {}
    for p in model.parameters():
        if not p.requires_grad and id(p) not in memo:
            memo[id(p)] = torch.nn.Parameter(p.detach(), requires_grad=False)
    return copy.deepcopy(model, memo)


@functools.lru_cache(maxsize=4)
def _built(key: str):
    from bench.run.tuners import _mica
    from methods import METHODS, RunFacts

    arch, depth, method_id, params, dtype, trainable_fp32, pure, total_steps, special, real = json.loads(key)
    method, plan = METHODS[method_id], RunFacts(total_steps=total_steps, special_token_ids=tuple(special))
    setting = Setting(batch_size=1, seq_len=1, dtype=dtype, trainable_fp32=trainable_fp32, pure=pure)
    if not (real or method.needs_weights or _mica(params)):
        try:
            return _construct(arch, depth, method, params, plan, setting, "meta")
        except (NotImplementedError, RuntimeError) as e:
            if "meta" not in str(e).lower():
                raise
            # This tuner reads the weights as it builds (BOFT, UniLoRA): random ones, as below.
    if _real_bytes(json.dumps(arch, sort_keys=True), depth, dtype) > RANDOM_BUILD_BYTES:
        raise RuntimeError(f"{method.id} needs real weights and {depth} layer(s) of this model take more than "
                           f"{RANDOM_BUILD_BYTES / GIB:.0f} GiB here")
    return _construct(arch, depth, method, params, plan, setting, "cpu")


def _construct(arch, depth: int, method, params, plan, setting: Setting, device: str):
    import torch

    from bench.run.tuners import at_depth, built

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[setting.dtype]
    base = None
    if device == "cpu":  # the random base is built once per shape and shared: its weights' values matter to no count
        base = shared_copy(_random_base(json.dumps(arch, sort_keys=True), depth, setting.dtype))
    model, _ = built(at_depth(arch, depth), method, params, plan, device, base=base, dtype=dtype,
                     attn_implementation="sdpa")
    from bench.run.load import trainable_in, trainable_in_fp32

    if setting.trainable_fp32:
        trainable_in_fp32(model)
    elif setting.pure:
        trainable_in(model, dtype)
    return model


@functools.lru_cache(maxsize=2)
def _random_base(arch: str, depth: int, dtype: str):
    """`arch` (JSON) at `depth` layers on the CPU with transformers' random initialisation (seed 0), frozen."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.run.tuners import at_depth, model_config

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(
            model_config(at_depth(json.loads(arch), depth)), attn_implementation="sdpa",
            dtype={"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype])
    return model.requires_grad_(False)


def _fakeify(model, mode) -> None:
    """Every parameter and buffer replaced by a fake CPU tensor of its shape and dtype (tied ones stay tied)."""
    import torch

    made: dict[int, Any] = {}
    for module in model.modules():
        for store, as_param in ((module._parameters, True), (module._buffers, False)):
            for name, t in list(store.items()):
                if t is None:
                    continue
                if id(t) not in made:
                    with mode:
                        fake = torch.empty(t.shape, dtype=t.dtype, device="cpu")
                    made[id(t)] = torch.nn.Parameter(fake, requires_grad=t.requires_grad) if as_param else fake
                store[name] = made[id(t)]


def _key(t) -> int:
    return t.untyped_storage()._cdata


class SavedBytes:
    """Bytes autograd saves for backward inside the block, each storage once, the module's own parameters and
    buffers (saved by reference, already counted as weights) left out."""

    def __init__(self, module):
        self.weights = {_key(t) for t in [*module.parameters(), *module.buffers()]}
        self.seen: dict[int, int] = {}

    def _pack(self, t):
        for part in (t._indices(), t._values()) if t.is_sparse else (t,):  # a sparse tensor (SHiRA's delta)
            if _key(part) not in self.weights:
                self.seen[_key(part)] = part.untyped_storage().nbytes()
        return t

    def __enter__(self) -> SavedBytes:
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())


def _count(model, setting: Setting, rows: int, how: str, tokens: int | None = None) -> Counted:
    """Run one forward, backward and optimiser step and count the bytes of what each leaves behind."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from bench.run.flops import matmul_flops_per_token
    from bench.run.optim import make_optimizer

    mode = FakeTensorMode(allow_non_fake_inputs=True) if how == "fake" else contextlib.nullcontext()
    if how == "fake":
        _fakeify(model, mode)
    autocast = setting.autocast and setting.dtype != "fp32"
    dtype = torch.float16 if setting.dtype == "fp16" else torch.bfloat16
    with mode, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = make_optimizer(model, setting.optimizer, json.loads(setting.optimizer_kwargs), lr=1e-4,
                                   weight_decay=0.0)
        ids = torch.zeros(rows, tokens or setting.seq_len, dtype=torch.long)
        with SavedBytes(model) as saved, torch.autocast("cpu", dtype=dtype, enabled=autocast):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        optimizer.step()
    replaced = replaced_bytes(model, setting.four_bit, setting.quantization)
    return Counted(frozen_bytes(model, setting.four_bit, setting.quantization), _unique_bytes(p for p in model.parameters() if p.requires_grad),
                   _unique_bytes(p.grad for p in model.parameters() if p.grad is not None),
                   _unique_bytes(t for state in optimizer.state.values() for t in state.values()
                                 if isinstance(t, torch.Tensor) and t.dim() > 0),  # step counters aside
                   saved.bytes, matmul_flops_per_token(model), how, out.logits.shape[-2] - ids.shape[-1], replaced)


def _unique_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        seen[_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def frozen_bytes(model, four_bit: bool, quantization: str | None = None) -> int:
    """Bytes of the weights that do not train, in their storage dtype; with `four_bit` (qlora), the linear layers
    bitsandbytes quantises (every frozen nn.Linear but the output head) at their NF4 size; with `quantization` (a
    training.quantization as JSON), the same layers, less its skip_modules, at the bytes per weight its backend
    stores (bench.run.quantsize)."""
    quantised, per_weight = _quantised(model, four_bit, quantization)
    seen: dict[int, int] = {}
    for p in model.parameters():
        if p.requires_grad:
            continue
        if id(p) not in quantised:
            seen[id(p)] = p.numel() * p.element_size()
        else:
            seen[id(p)] = nf4_bytes(p.numel()) if four_bit else math.ceil(p.numel() * per_weight)
    return sum(seen.values())


def replaced_bytes(model, four_bit: bool, quantization: str | None = None) -> int:
    """Bytes, in their storage dtype, of the frozen weights a quantised base stores quantised (0 for none)."""
    quantised, _ = _quantised(model, four_bit, quantization)
    return _unique_bytes(p for p in model.parameters() if id(p) in quantised)


def _quantised(model, four_bit: bool, quantization: str | None) -> tuple[set[int], float | None]:
    """The ids of the frozen weights the base's quantisation replaces, and its bytes per weight (None for NF4)."""
    import torch

    # Per-row and per-block constants make the bytes per weight depend on a layer's width and, for backends that keep
    # them in the compute dtype (HQQ), on the dtype: measured at the model's.
    width, dtype = model.config.hidden_size, str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")
    per_weight, skip = (None, []) if quantization is None else _quantized_weight(quantization, width, dtype)
    return {id(m.weight) for name, m in model.named_modules()
            if (four_bit or per_weight) and isinstance(m, torch.nn.Linear) and not m.weight.requires_grad
            and name.rpartition(".")[2] not in ("lm_head", *skip)}, per_weight


@functools.lru_cache(maxsize=16)
def _quantized_weight(quantization: str, width: int, dtype: str) -> tuple[float, list[str]]:
    """Bytes per weight of a `width`-wide linear layer quantised as `quantization` (JSON) says from a base in `dtype`
    (a torch dtype's name), measured on a real layer once per setting, width and dtype, and the modules it leaves
    unquantised."""
    from bench.core.config import Quantization
    from bench.run.quantsize import base_bytes_per_param

    q = Quantization(**json.loads(quantization))
    return base_bytes_per_param(q, dtype, width=width), list(q.skip_modules or [])


@functools.lru_cache(maxsize=64)
def nf4_bytes(numel: int) -> int:
    """Bytes of a weight of `numel` elements as bitsandbytes stores it in NF4 with double quantisation (as the
    harness loads a 4-bit base): the packed weights and every tensor of its quantisation state, read off
    bitsandbytes' own quantised tensor."""
    import torch
    from bitsandbytes.functional import quantize_4bit

    packed, state = quantize_4bit(torch.zeros(numel, dtype=torch.bfloat16), blocksize=64, compress_statistics=True,
                                  quant_type="nf4")
    parts = [packed, state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
    return sum(t.numel() * t.element_size() for t in parts)


@functools.lru_cache(maxsize=1)
def _glibc() -> bool:
    """Whether this Python runs on glibc (whose malloc's dynamic mmap threshold keeps freed blocks resident)."""
    import platform

    return platform.libc_ver()[0] == "glibc"


@functools.lru_cache(maxsize=1)
def resident_floor() -> int:
    """Resident bytes of a fresh worker process before its model: Python, torch, transformers, PEFT and the harness
    imported, and one tiny forward and backward run (autograd's engine and the thread pool started). Measured in a
    subprocess."""
    import subprocess
    import sys

    code = ("import peft, bench.run.worker, torch, psutil; m = torch.nn.Linear(8, 8); m(torch.zeros(2, 8)).sum().backward(); "
            "print(psutil.Process().memory_info().rss)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def card_bytes(text: str) -> tuple[float, str]:
    """Bytes of device memory from --gpu-memory: a size (24GB = 24e9, 24GiB = 24 x 2^30) or a card named in
    bench.run.flops.BF16_PEAK (its data sheet's memory); raises ValueError saying what is accepted."""
    size = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(GB|GiB|MB|MiB|TB|TiB)\s*", text, re.IGNORECASE)
    if size:
        unit = size.group(2).lower()
        scale = {"gb": 1e9, "gib": 2**30, "mb": 1e6, "mib": 2**20, "tb": 1e12, "tib": 2**40}[unit]
        return float(size.group(1)) * scale, text.strip()
    for name, memory in CARD_MEMORY:
        if name.lower() in text.lower():
            return memory, f"{name} ({memory / 1e9:.0f} GB)"
    cards = ", ".join(name for name, _ in CARD_MEMORY)
    raise ValueError(f"--gpu-memory: expected a size such as 24GB or 80GiB, or a card ({cards}); got {text!r}")


def time_estimate(pred: Prediction, arch: dict[str, Any], card: str, steps: int) -> dict[str, Any] | None:
    """Tokens per second and seconds for `steps` optimiser steps on `card`, from model FLOPs at the ends of MFU_BAND:
    an estimate, not a measurement. None for a card without a known peak."""
    from bench.run.flops import peak_for

    peak, _ = peak_for(card)
    if peak is None:
        return None
    heads = arch["num_attention_heads"]
    head_dim = arch.get("head_dim") or arch["hidden_size"] // heads
    attention = 6 * arch["num_hidden_layers"] * heads * head_dim * pred.seq_len
    per_token = pred.flops_per_token + attention
    rates = [mfu * peak / per_token for mfu in MFU_BAND]
    tokens = steps * pred.batch_size * pred.seq_len
    return {"card": card, "mfu_band": list(MFU_BAND), "tokens_per_s": [round(r) for r in rates],
            "seconds": [math.ceil(tokens / r) for r in reversed(rates)], "estimate": True}


def setting_of(cfg, device: str = "cuda") -> Setting:
    """How a harness run (bench.core.config.RunConfig) trains: its micro-batch of batch_size rows of max_seq_len tokens
    (packed rows fill it; unpacked batches are padded to their longest row, so it bounds them), base in the run's
    precision (auto: bf16 on a GPU, fp32 on a CPU), weights that train in fp32 under autocast."""
    from methods import METHODS

    tr = cfg.training
    precision = tr.precision if tr.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    spec = tr.optimizer
    quant = tr.quantization and json.dumps(tr.quantization.model_dump(), sort_keys=True)
    pure = tr.master_weights is False  # pure bf16: weights that train, their gradients and states in bf16
    return Setting(batch_size=tr.batch_size, seq_len=tr.max_seq_len, dtype=precision, device=device,
                   trainable_fp32=not pure, pure=pure, autocast=not pure, four_bit=METHODS[cfg.method].load_in_4bit,
                   quantization=quant, gradient_checkpointing=tr.gradient_checkpointing,
                   optimizer=spec and spec.name, optimizer_kwargs=json.dumps(spec.kwargs if spec else {}, sort_keys=True))
