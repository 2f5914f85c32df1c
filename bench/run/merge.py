"""The last two stages of a run: save what the method produced, then merge it where the method can and measure how
far the merged model is from the adapter model."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import torch

from bench.run import evaluation as E
from bench.run import models as M
from bench.core.config import Quantization, RunConfig
from bench.run.device import Place
from bench.run.load import count_params
from bench.run.memory import Meter, Peak
from bench.core.metrics import human_bytes
from bench.run.quantization import describe, in_place_merge, of_run
from bench.core.records import MergeCheck

if TYPE_CHECKING:
    from bench.run.load import Loaded
    from methods import Method


def dir_bytes(folder: Path, pattern: str = "*.safetensors") -> int:
    return sum(f.stat().st_size for f in folder.glob(pattern))


@dataclass
class Saved:
    folder: Path  # adapter/ or, for full fine-tuning, model/
    full: bool  # a whole model, not an adapter
    metrics: dict[str, float]


def save(cfg: RunConfig, method: Method, model, tokenizer, run_dir: Path) -> Saved:
    """The adapter (a plain PEFT adapter folder), or the whole model where every weight trained."""
    full = method.peft_type is None
    folder = run_dir / ("model" if full else "adapter")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Saved(folder, full, {"checkpoint_bytes" if full else "adapter_bytes": dir_bytes(folder)})


@dataclass
class Merged:
    check: MergeCheck
    metrics: dict[str, float] = field(default_factory=dict)


def check_merge(cfg: RunConfig, method: Method, model, loaded: Loaded, gens: E.Generations | None, place: Place,
                saved: Saved, train_peak: Peak | None = None) -> Merged:
    """Merge with `merge_and_unload` where the method can, outside autocast (ΔW in fp32, rounded once into the
    stored weight), and measure the merge three ways:
    - layer by layer in float64 (`merge_layers`): the merge's own error, apart from it the rounding of the merged
      weights to the dtype they are stored in (bf16 on a GPU), and the merged weights the model now holds against
      W + ΔW in float64 within a stated bound; one layer in float64 at a time;
    - end to end in the run's precision: logits at the last positions of the eval prompts and greedy answers of the
      merged model against the adapter model, what a user serving the merged model sees.
    Over a bitsandbytes base (QLoRA's NF4, 8-bit) the merge goes into a de-quantised copy of it; LoRA over 4-bit is
    also checked one de-quantised layer at a time on the quantised model (`quantized_layers`, always), and where the
    whole copy does not fit in what training used (`train_peak`) the record says "checked by layer" with the sizes
    (other bitsandbytes bases: "skipped", with the sizes). Over a torchao or HQQ base PEFT merges into the quantised
    layers themselves (de-quantise, add, re-quantise), checked end to end: lossy either way."""
    quant = of_run(cfg, method)
    kind = "none" if method.merge == "none" else "lossy" if quant is not None else "exact"
    if saved.full:
        return Merged(MergeCheck(status="nothing to merge", note="full fine-tuning changes the weights themselves"))
    if kind == "none":
        return Merged(MergeCheck(status="not mergeable", note=f"{method.id} adds virtual tokens at inference; there "
                                 "are no weights to fold in"))
    if gens is None:
        return Merged(MergeCheck(status="not checked", note="eval.enabled is false: the merge check needs the eval "
                                 "set"))
    t = time.perf_counter()
    examples, tokenizer, device = loaded.eval_examples, loaded.tokenizer, place.device
    m: dict[str, float] = {}
    # PEFT refuses some merges (BEFT: a bias adapter on a layer without bias; Lily, Shadow: not a static weight
    # delta; IA3 or LoHa into quantised layers); a quantised layer may also refuse the arithmetic a merge needs.
    refused = (ValueError, NotImplementedError) + ((RuntimeError, TypeError) if quant is not None else ())
    with place.autocast():
        before = E.prompt_logits(model, tokenizer, examples, device)
    try:
        if quant is None:
            # Outside autocast: PEFT computes each ΔW in fp32 and adds it into the stored weight, rounding once.
            layers = merge_layers(model)
            merged, how = unload_merged(model, layers), "merge_and_unload into the base weights (fp32 ΔW, no autocast)"
        elif in_place_merge(quant):
            layers, merged = LayerErrors(), model.merge_and_unload()
            how = (f"merge_and_unload into the {describe(quant)} base itself (PEFT de-quantises each layer, adds "
                   "the adapter, re-quantises)")
        else:
            done = _into_dequantized(cfg, model, loaded, saved, place, train_peak, quant, m, gens, t)
            if isinstance(done, Merged):
                return done
            layers, merged, how = done
    except refused as e:
        return Merged(MergeCheck(status="not mergeable", note=f"PEFT refused the merge: {type(e).__name__}: {e}"))
    with place.autocast():
        after = E.prompt_logits(merged, tokenizer, examples, device)
        merged_gens = E.generate(merged, tokenizer, examples, cfg.eval.batch_size, cfg.eval.max_new_tokens, device)
    check, m = _verdict(kind, how, layers, before, after, gens, merged_gens, m, time.perf_counter() - t)
    return Merged(*_end_to_end_only(check, m) if quant is not None and in_place_merge(quant) else (check, m))


def _end_to_end_only(check: MergeCheck, m: dict[str, float]) -> tuple[MergeCheck, dict[str, float]]:
    """A merge into quantised layers (torchao, HQQ), which do not copy to float64: no per-layer figures to show."""
    per_layer = ("merge_layer_rel_error_fp64", "merge_storage_rel_error", "merge_weight_error_of_bound")
    return (check.model_copy(update={"exact": None, "layer_rel_error_fp64": None, "storage_rel_error": None,
                                     "weight_error_of_bound": None}),
            {k: v for k, v in m.items() if k not in per_layer})


def _into_dequantized(cfg: RunConfig, model, loaded: Loaded, saved: Saved, place: Place, train_peak: Peak | None,
                      quant: Quantization, m: dict[str, float], gens: E.Generations, t: float):
    """A bitsandbytes base: the adapter merged into a de-quantised copy of the base it trained against, its merged
    weights judged against W + ΔW in float64, and how far the quantised kernels alone are from the de-quantised
    weights (adapter off). Where the copy does not fit: LoRA over 4-bit checked layer by layer, else skipped, with
    the sizes."""
    by_layer = quantized_layers(model, place.dtype)  # LoRA over 4-bit, one de-quantised layer at a time: always fits
    with model.disable_adapter(), place.autocast():
        base_quantized = E.prompt_logits(model, loaded.tokenizer, loaded.eval_examples, place.device)
    too_big = dequantized_too_big(model, place, train_peak)
    if too_big and by_layer.checked:
        check, m = _verdict("lossy", "layer by layer only", by_layer, None, None, gens, None, m,
                            time.perf_counter() - t)
        return Merged(check.model_copy(update={"status": "checked by layer", "note": too_big}), m)
    if too_big:
        return Merged(MergeCheck(status="skipped", kind="lossy", note=too_big, seconds=time.perf_counter() - t))
    with place.autocast():
        peft_deq, base_deq = dequantized(cfg, loaded, saved.folder, place, quant)
    # The part of the merge difference that is not the merge's doing.
    m["quantized_base_max_abs_logit_diff"] = E.logit_diff(base_quantized, base_deq)["max_abs"]
    layers = merge_layers(peft_deq)
    return layers, unload_merged(peft_deq, layers), ("merge_and_unload into a de-quantised copy of the "
                                                 f"{describe(quant)} base the adapter trained against")


def _verdict(kind: str, how: str, layers: LayerErrors, before, after, gens: E.Generations,
             merged_gens: E.Generations | None, m: dict[str, float],
             seconds: float) -> tuple[MergeCheck, dict[str, float]]:
    """The merge check's record; `before`/`after` None where only the layers were checked."""
    m |= {"merge_layer_rel_error_fp64": layers.own, "merge_storage_rel_error": layers.rounding,
          "merge_weight_error_of_bound": layers.weights}
    end_to_end: dict = {}
    if before is not None:
        diff = E.logit_diff(before, after)
        m |= {"merge_max_abs_logit_diff": diff["max_abs"], "merge_mean_abs_logit_diff": diff["mean_abs"],
              "merged_generate_tokens_per_second": merged_gens.tokens_per_second}
        same = sum(a == b for a, b in zip(gens.token_ids, merged_gens.token_ids))
        end_to_end = dict(max_abs_logit_diff=diff["max_abs"], mean_abs_logit_diff=diff["mean_abs"],
                          greedy_identical=same == len(gens.token_ids), greedy_identical_count=same,
                          compared=len(gens.token_ids),
                          logits_compared=f"{len(before)} prompts x last {before[0].shape[0] if before else 0} "
                                          "positions, run precision, logits in fp32")
    check = MergeCheck(
        status="merged", kind=kind, how=how,
        quantized_base_max_abs_logit_diff=m.get("quantized_base_max_abs_logit_diff"), seconds=seconds,
        layers_checked=layers.checked, layers_replaced=layers.replaced, layer_rel_error_fp64=layers.own,
        storage_dtype=layers.storage, storage_rel_error=layers.rounding, weight_error_of_bound=layers.weights,
        exact=layers.own <= EXACT, **end_to_end)
    return check, m


# A merge whose own error (float64, relative to the layer's output) stays below this is exact: float64 sums of the
# same numbers in another order differ by about 1e-15 relative; an adapter lost or applied twice by 1e-2 or more.
EXACT = 1e-9


@dataclass
class LayerErrors:
    checked: int = 0  # adapter layers probed
    replaced: int = 0  # modules_to_save copies: merging swaps them in whole, so they are exact by construction
    own: float = 0.0  # the merge's own error: max |merged(x) - adapter(x)| / max |adapter(x)|, float64
    rounding: float = 0.0  # the same for the merged weights rounded to their storage dtype, against float64
    storage: str = ""
    # The merged weights the model holds against W + ΔW in float64, element by element, as a share of the bound
    # `weight_bound` allows (<= 1: every weight is the correctly rounded float64 merge, give or take fp32 noise).
    weights: float = 0.0
    merged: list = field(default_factory=list)  # the adapter layers merge_layers merged in place

    def add(self, own: float, rounding: float, weights: float, storage: torch.dtype) -> None:
        self.checked += 1
        self.own, self.rounding = max(self.own, own), max(self.rounding, rounding)
        self.weights = max(self.weights, weights)
        self.storage = str(storage).removeprefix("torch.")


# fp32 roundings a merge may add beyond the storage dtype's own half-ulp: ΔW's product and the sum into W.
FP32_ROUNDINGS = 16


def weight_bound(reference: torch.Tensor, original: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """What a merged weight stored in `storage` may differ from its float64 value `reference` (= W + ΔW) by: half a
    unit in the last place of the storage dtype at that value, plus FP32_ROUNDINGS fp32 roundings of |W| and of the
    row's largest |ΔW| (ΔW is computed in fp32)."""
    _, exponent = torch.frexp(reference)
    exponent = exponent.clamp_min(int(math.log2(torch.finfo(storage).tiny)) + 1)  # subnormals: the smallest ulp
    half_ulp = torch.ldexp(torch.full_like(reference, 0.5 * torch.finfo(storage).eps), exponent - 1)
    delta = (reference - original).abs().amax(dim=-1, keepdim=True)
    return half_ulp + FP32_ROUNDINGS * torch.finfo(torch.float32).eps * (original.abs() + delta)


def weight_error(merged: torch.Tensor, reference: torch.Tensor, original: torch.Tensor) -> float:
    """The worst merged weight's distance from its float64 value, as a share of its bound (see weight_bound)."""
    error = (merged.to(torch.float64) - reference).abs()
    return float((error / weight_bound(reference, original, merged.dtype)).max())


def _adapter_layers(model, out: LayerErrors):
    """The adapter layers the merge folds into a weight (Linear, Embedding), one by one; counts the others."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            out.replaced += 1
            continue
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else None
        if base is None or base is module or not hasattr(base, "weight"):
            continue
        if base.weight.dtype.itemsize < 2:
            yield module, base  # a 4-bit layer: quantized_layers takes it
            continue
        if not isinstance(base, (torch.nn.Linear, torch.nn.Embedding)):
            out.replaced += 1  # a norm layer (LN tuning): merging swaps in the trained copy whole
            continue
        yield module, base


@torch.no_grad()
def layer_errors(model) -> LayerErrors:
    """Every adapter layer, one at a time, in a float64 copy: its output on a seeded probe with the adapter, then
    merged, then with the merged weights rounded to the dtype the base stores them in. The model is not merged."""
    out = LayerErrors()
    generator = torch.Generator().manual_seed(0)
    for module, base in list(_adapter_layers(model, out)):
        own, rounding, _, _ = _one_layer(module, base.weight.dtype, generator)
        out.add(own, rounding, 0.0, base.weight.dtype)
    return out


@torch.no_grad()
def merge_layers(model, autocast=contextlib.nullcontext) -> LayerErrors:
    """Merge every adapter layer in place, one at a time, and judge it: the float64 copy's errors as
    `layer_errors` finds them, and the weights the merge left in the model against the float64 merge (W + ΔW)
    within `weight_bound`. Memory: one layer in float64. `autocast`: the context the real merge runs in (none:
    PEFT computes ΔW in its adapter's fp32; the gpu-check plants autocast to show the check catches it)."""
    out = LayerErrors()
    generator = torch.Generator().manual_seed(0)
    for module, base in list(_adapter_layers(model, out)):
        storage = base.weight.dtype
        own, rounding, reference, original = _one_layer(module, storage, generator)
        with autocast():
            module.merge()
        out.merged.append(module)
        out.add(own, rounding, weight_error(base.weight.data, reference, original), storage)
    return out


def unload_merged(model, layers: LayerErrors):
    """merge_and_unload after merge_layers: the layers merge_layers merged are unloaded, not merged again (not every
    PEFT layer refuses a second merge: OSF's adds its ΔW again); modules_to_save copies and the rest merge as usual."""
    for module in layers.merged:
        module.merge = lambda *args, **kwargs: None
    return model.merge_and_unload()


def _one_layer(layer, storage: torch.dtype, generator: torch.Generator):
    """A float64 copy of the layer: the merge's own error and the storage rounding's, relative to the layer's
    output; and its weight merged (float64) and before the merge."""
    device = layer.get_base_layer().weight.device
    clone = copy.deepcopy(layer).to(torch.float64).eval()
    if isinstance(getattr(clone, "dtype", None), torch.dtype):
        # A layer that keeps the dtype it was built in and casts its input to it (AdaMSS) computes in float64 too.
        clone.dtype = torch.float64
    base = clone.get_base_layer()
    original = base.weight.data.clone()
    if isinstance(base, torch.nn.Embedding):
        probe = torch.randint(base.num_embeddings, (4, 8), generator=generator).to(device)
    else:
        probe = torch.randn(4, base.in_features, generator=generator, dtype=torch.float64).to(device)
    adapted = clone(probe)
    clone.merge()
    merged = clone(probe)
    reference = base.weight.data.clone()
    base.weight.data = base.weight.data.to(storage).to(torch.float64)
    stored = clone(probe)
    scale = adapted.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return (float((merged - adapted).abs().max() / scale), float((stored - merged).abs().max() / scale), reference,
            original)


@torch.no_grad()
def quantized_layers(model, dtype: torch.dtype) -> LayerErrors:
    """QLoRA's merge, layer by layer on the device: each 4-bit weight de-quantised to the run's dtype (as the
    de-quantised copy holds it), ΔW added the way PEFT's merge adds it (fp32, no autocast), against the float64
    merge W + scale·B·A within `weight_bound`; the merge's own and the storage rounding's error on a probe.
    Memory: one layer's de-quantised weight in float64; the model is not changed."""
    import bitsandbytes as bnb

    out = LayerErrors()
    generator = torch.Generator().manual_seed(0)
    for module, base in list(_adapter_layers(model, out)):
        if not hasattr(base.weight, "quant_state") or not hasattr(module, "lora_A"):
            continue  # 8-bit weights, or a method other than LoRA: checked in the de-quantised copy
        deq = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state).to(dtype)
        original = deq.to(torch.float64)
        reference = original.clone()
        merged = deq.clone()
        for name in module.active_adapters:
            if name not in module.lora_A:
                continue
            a, b = module.lora_A[name].weight.to(torch.float64), module.lora_B[name].weight.to(torch.float64)
            reference += (b @ a) * module.scaling[name]
            merged += module.get_delta_weight(name)
        probe = torch.randn(4, original.shape[1], generator=generator, dtype=torch.float64).to(deq.device)
        adapted = probe @ original.T + sum((probe @ module.lora_A[n].weight.to(torch.float64).T)
                                           @ module.lora_B[n].weight.to(torch.float64).T * module.scaling[n]
                                           for n in module.active_adapters if n in module.lora_A)
        exact = probe @ reference.T
        scale = adapted.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
        own = float((exact - adapted).abs().max() / scale)
        rounding = float((probe @ merged.to(torch.float64).T - exact).abs().max() / scale)
        out.add(own, rounding, weight_error(merged, reference, original), dtype)
    return out


def dequantized_too_big(model, place: Place, train_peak: Peak | None) -> str | None:
    """Why the de-quantised copy QLoRA's merge needs does not fit; None when it fits. On a GPU it must fit in what
    training used (QLoRA is chosen to fit a card: its check must not need a bigger one); on a CPU, in the memory the
    machine has free."""
    _, total = count_params(model)
    need = total * torch.finfo(place.dtype).bits // 8
    if not place.cuda:
        free = psutil.virtual_memory().available
        if need <= free // 2:
            return None
        return (f"the de-quantised copy of the base needs {human_bytes(need)}, more than half the "
                f"{human_bytes(free)} of memory free; merge it where there is room: python -m bench export RUN --out DIR")
    now = Meter(place.device).now()
    if train_peak is None or now + need <= train_peak.used:
        return None
    return (f"the de-quantised copy of the base needs {human_bytes(need)} beside the {human_bytes(now)} in use, "
            f"more than training's peak of {human_bytes(train_peak.used)}; merge it where there is room: "
            "python -m bench export RUN --out DIR")


def dequantized(cfg: RunConfig, loaded: Loaded, adapter_dir: Path, place: Place, quant: Quantization):
    """The same bitsandbytes base (QLoRA's NF4, 8-bit), de-quantised to the run's dtype, with the adapter loaded on
    it (not merged yet); also the de-quantised base's own logits."""
    from peft import PeftModel

    base = M.load_model(cfg.model, loaded.folder, dtype=place.dtype, load_in_4bit=False, seed=cfg.training.seed,
                        device=place.device if place.cuda else None, quantization=quant)
    base = base.dequantize(dtype=place.dtype)
    # transformers leaves the load-time flags set on the de-quantised model, and PEFT's IA3 will not merge while
    # they say 8-bit or 4-bit.
    base.is_loaded_in_8bit = base.is_loaded_in_4bit = False
    base.to(place.device)
    base_logits = E.prompt_logits(base, loaded.tokenizer, loaded.eval_examples, place.device)
    return PeftModel.from_pretrained(base, adapter_dir), base_logits
