"""The last two stages of a run: save what the method produced, then merge it where the method can and measure how
far the merged model is from the adapter model."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import torch

from bench import evaluation as E
from bench import models as M
from bench.config import Quantization, RunConfig
from bench.device import Place
from bench.load import count_params
from bench.memory import Meter, Peak
from bench.metrics import human_bytes
from bench.quantization import describe, in_place_merge, of_run
from bench.records import MergeCheck

if TYPE_CHECKING:
    from bench.load import Loaded
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
    """Merge with `merge_and_unload` where the method can, and measure the merge two ways:
    - layer by layer in float64 (`layer_errors`): the merge's own error, and apart from it the rounding of the
      merged weights to the dtype they are stored in (bf16 on a GPU); one layer in memory at a time;
    - end to end in the run's precision: logits at the last positions of the eval prompts and greedy answers of the
      merged model against the adapter model, what a user serving the merged model sees.
    Over a bitsandbytes base (QLoRA's NF4, 8-bit) the merge goes into a de-quantised copy of it, built only where
    it fits in what training used (`train_peak`), else recorded as skipped with the sizes; over a torchao or HQQ
    base PEFT merges into the quantised layers themselves (de-quantise, add, re-quantise): lossy either way."""
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
                layers = layer_errors(model)
                merged, how = model.merge_and_unload(), "merge_and_unload into the base weights"
            elif in_place_merge(quant):
                layers, merged = LayerErrors(), model.merge_and_unload()
                how = (f"merge_and_unload into the {describe(quant)} base itself (PEFT de-quantises each layer, adds "
                       "the adapter, re-quantises)")
            else:
                done = _into_dequantized(cfg, model, loaded, saved, place, train_peak, quant, m)
                if isinstance(done, str):
                    return Merged(MergeCheck(status="skipped", kind=kind, note=done, seconds=time.perf_counter() - t))
                layers, merged, how = done
        except refused as e:
            return Merged(MergeCheck(status="not mergeable", note=f"PEFT refused the merge: {type(e).__name__}: {e}"))
        after = E.prompt_logits(merged, tokenizer, examples, device)
        merged_gens = E.generate(merged, tokenizer, examples, cfg.eval.batch_size, cfg.eval.max_new_tokens, device)
    check, m = _verdict(kind, how, layers, before, after, gens, merged_gens, m, time.perf_counter() - t)
    if quant is not None and in_place_merge(quant):
        # The layers are quantised tensors that do not copy to float64: the check is end to end only.
        check = check.model_copy(update={"exact": None, "layer_rel_error_fp64": None, "storage_rel_error": None})
        m = {k: v for k, v in m.items() if k not in ("merge_layer_rel_error_fp64", "merge_storage_rel_error")}
    return Merged(check, m)


def _into_dequantized(cfg: RunConfig, model, loaded: Loaded, saved: Saved, place: Place, train_peak: Peak | None,
                      quant: Quantization, m: dict[str, float]):
    """A bitsandbytes base: the adapter merged into a de-quantised copy of the base it trained against, and how far
    the quantised kernels alone are from the de-quantised weights (adapter off); a string saying why not where the
    copy does not fit."""
    with model.disable_adapter():
        base_quantized = E.prompt_logits(model, loaded.tokenizer, loaded.eval_examples, place.device)
    too_big = dequantized_too_big(model, place, train_peak)
    if too_big:
        return too_big
    peft_deq, base_deq = dequantized(cfg, loaded, saved.folder, place, quant)
    # The part of the merge difference that is not the merge's doing.
    m["quantized_base_max_abs_logit_diff"] = E.logit_diff(base_quantized, base_deq)["max_abs"]
    layers = layer_errors(peft_deq)
    return layers, peft_deq.merge_and_unload(), ("merge_and_unload into a de-quantised copy of the "
                                                 f"{describe(quant)} base the adapter trained against")


def _verdict(kind: str, how: str, layers: LayerErrors, before, after, gens: E.Generations,
             merged_gens: E.Generations, m: dict[str, float], seconds: float) -> tuple[MergeCheck, dict[str, float]]:
    diff = E.logit_diff(before, after)
    m |= {"merge_max_abs_logit_diff": diff["max_abs"], "merge_mean_abs_logit_diff": diff["mean_abs"],
          "merged_generate_tokens_per_second": merged_gens.tokens_per_second,
          "merge_layer_rel_error_fp64": layers.own, "merge_storage_rel_error": layers.rounding}
    same = sum(a == b for a, b in zip(gens.token_ids, merged_gens.token_ids))
    check = MergeCheck(
        status="merged", kind=kind, how=how, max_abs_logit_diff=diff["max_abs"],
        quantized_base_max_abs_logit_diff=m.get("quantized_base_max_abs_logit_diff"),
        mean_abs_logit_diff=diff["mean_abs"], greedy_identical=same == len(gens.token_ids),
        greedy_identical_count=same, compared=len(gens.token_ids), seconds=seconds,
        layers_checked=layers.checked, layers_replaced=layers.replaced, layer_rel_error_fp64=layers.own,
        storage_dtype=layers.storage, storage_rel_error=layers.rounding, exact=layers.own <= EXACT,
        logits_compared=f"{len(before)} prompts x last {before[0].shape[0] if before else 0} positions, "
                        "run precision, logits in fp32")
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


@torch.no_grad()
def layer_errors(model) -> LayerErrors:
    """Every adapter layer, one at a time: a float64 copy of it with the adapter, its output on a seeded probe, then
    merged, its output again, and again with the merged weights rounded to the dtype the base stores them in. The
    memory is one layer in float64 at a time, whatever the model's size."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    out = LayerErrors()
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            out.replaced += 1
            continue
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else None
        if base is None or base is module or not hasattr(base, "weight") or base.weight.dtype.itemsize < 2:
            continue
        if not isinstance(base, (torch.nn.Linear, torch.nn.Embedding)):
            out.replaced += 1  # a norm layer (LN tuning): merging swaps in the trained copy whole
            continue
        storage = base.weight.dtype
        own, rounding = _one_layer(module, storage, generator)
        out.checked += 1
        out.own, out.rounding = max(out.own, own), max(out.rounding, rounding)
        out.storage = str(storage).removeprefix("torch.")
    return out


def _one_layer(layer, storage: torch.dtype, generator: torch.Generator) -> tuple[float, float]:
    device = layer.get_base_layer().weight.device
    clone = copy.deepcopy(layer).to(torch.float64).eval()
    if isinstance(getattr(clone, "dtype", None), torch.dtype):
        # A layer that keeps the dtype it was built in and casts its input to it (AdaMSS) computes in float64 too.
        clone.dtype = torch.float64
    base = clone.get_base_layer()
    if isinstance(base, torch.nn.Embedding):
        probe = torch.randint(base.num_embeddings, (4, 8), generator=generator).to(device)
    else:
        probe = torch.randn(4, base.in_features, generator=generator, dtype=torch.float64).to(device)
    adapted = clone(probe)
    clone.merge()
    merged = clone(probe)
    base.weight.data = base.weight.data.to(storage).to(torch.float64)
    stored = clone(probe)
    scale = adapted.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return float((merged - adapted).abs().max() / scale), float((stored - merged).abs().max() / scale)


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
