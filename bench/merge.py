"""The last two stages of a run: save what the method produced, then merge it where the method can and measure how
far the merged model is from the adapter model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench import evaluation as E
from bench import models as M
from bench.config import RunConfig
from bench.device import Place
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
    full = method.config(**cfg.params) is None
    folder = run_dir / ("model" if full else "adapter")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Saved(folder, full, {"checkpoint_bytes" if full else "adapter_bytes": dir_bytes(folder)})


@dataclass
class Merged:
    check: MergeCheck
    metrics: dict[str, float] = field(default_factory=dict)


def check_merge(cfg: RunConfig, method: Method, model, loaded: Loaded, gens: E.Generations | None, place: Place,
                saved: Saved) -> Merged:
    """Merge with `merge_and_unload` where the method can, and compare the merged model's logits and greedy answers
    with the adapter model's on the eval prompts."""
    if saved.full:
        return Merged(MergeCheck(status="nothing to merge", note="full fine-tuning changes the weights themselves"))
    if method.merge == "none":
        return Merged(MergeCheck(status="not mergeable", note=f"{method.id} adds virtual tokens at inference; there "
                                 "are no weights to fold in"))
    if gens is None:
        return Merged(MergeCheck(status="not checked", note="eval.enabled is false: the merge check needs the eval "
                                 "set"))
    t = time.perf_counter()
    m: dict[str, float] = {}
    examples, tokenizer, device = loaded.eval_examples, loaded.tokenizer, place.device
    with place.autocast():
        before = E.prompt_logits(model, tokenizer, examples, device)
        if method.merge == "exact":
            # float64 on CPU is slow: four prompts are enough to see the merge's own error.
            before64 = E.prompt_logits_fp64(model, tokenizer, examples, device, limit=4)
            merged = model.merge_and_unload()
            after64 = E.prompt_logits_fp64(merged, tokenizer, examples, device, limit=4)
            m["merge_max_abs_logit_diff_fp64"] = E.logit_diff(before64, after64)["max_abs"]
            how = "merge_and_unload into the base weights"
        else:
            with model.disable_adapter():
                base_4bit = E.prompt_logits(model, tokenizer, examples, device)
            merged, base_deq = merge_dequantized(cfg, loaded, saved.folder, place)
            # How far the 4-bit kernels alone are from the de-quantised weights, adapter off: the part of the
            # merge difference that is not the merge's doing.
            m["quantized_base_max_abs_logit_diff"] = E.logit_diff(base_4bit, base_deq)["max_abs"]
            how = "merge_and_unload into a de-quantised copy of the 4-bit base the adapter trained against"
        after = E.prompt_logits(merged, tokenizer, examples, device)
        merged_gens = E.generate(merged, tokenizer, examples, cfg.eval.batch_size, cfg.eval.max_new_tokens, device)
    diff = E.logit_diff(before, after)
    m |= {"merge_max_abs_logit_diff": diff["max_abs"], "merge_mean_abs_logit_diff": diff["mean_abs"],
          "merged_generate_tokens_per_second": merged_gens.tokens_per_second}
    same = sum(a == b for a, b in zip(gens.token_ids, merged_gens.token_ids))
    check = MergeCheck(
        status="merged", kind=method.merge, how=how, max_abs_logit_diff=diff["max_abs"],
        max_abs_logit_diff_fp64=m.get("merge_max_abs_logit_diff_fp64"),
        quantized_base_max_abs_logit_diff=m.get("quantized_base_max_abs_logit_diff"),
        mean_abs_logit_diff=diff["mean_abs"], greedy_identical=same == len(gens.token_ids),
        greedy_identical_count=same, compared=len(gens.token_ids), seconds=time.perf_counter() - t)
    return Merged(check, m)


def merge_dequantized(cfg: RunConfig, loaded: Loaded, adapter_dir: Path, place: Place):
    """QLoRA: the same NF4 base, de-quantised to the run's dtype, with the adapter merged into it; also the
    de-quantised base's own logits, before the merge."""
    from peft import PeftModel

    base = M.load_model(cfg.model, loaded.folder, dtype=place.dtype, load_in_4bit=True, seed=cfg.training.seed,
                        device=place.device if place.cuda else None)
    base = base.dequantize(dtype=place.dtype)
    base.to(place.device)
    base_logits = E.prompt_logits(base, loaded.tokenizer, loaded.eval_examples, place.device)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload(), base_logits

