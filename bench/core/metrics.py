"""What every number a record's `metrics` may hold means: its label, which way is better, its unit and format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Metric:
    label: str
    better: Literal["higher", "lower", "none"]
    unit: str
    fmt: str  # format spec for reports
    kind: Literal["score", "cost", "info"] = "info"


# Every number a record's `metrics` may hold, and how to read it. Scores come from bench.core.metrics by name.
METRICS: dict[str, Metric] = {
    "trainable_params": Metric("trainable params", "lower", "", ",.0f", "cost"),
    "total_params": Metric("total params", "none", "", ",.0f"),
    "trainable_pct": Metric("trainable %", "lower", "%", ".4f", "cost"),
    # Memory by phase (bench.run.memory): CUDA's max allocated bytes, or on a CPU the process's resident high-water
    # mark, each reset when its phase starts. peak_memory_bytes is training's, first to last optimiser step.
    "peak_memory_bytes": Metric("peak memory (training)", "lower", "B", "bytes", "cost"),
    "load_memory_bytes": Metric("memory after load", "lower", "B", "bytes"),
    "load_peak_memory_bytes": Metric("peak memory (load)", "lower", "B", "bytes"),
    "load_peak_reserved_bytes": Metric("CUDA max reserved (load)", "lower", "B", "bytes"),
    "eval_peak_memory_bytes": Metric("peak memory (eval)", "lower", "B", "bytes"),
    "merge_peak_memory_bytes": Metric("peak memory (merge check)", "lower", "B", "bytes"),
    "cuda_max_allocated_bytes": Metric("CUDA max allocated (training)", "lower", "B", "bytes", "cost"),
    "cuda_max_reserved_bytes": Metric("CUDA max reserved (training)", "lower", "B", "bytes"),
    "eval_peak_reserved_bytes": Metric("CUDA max reserved (eval)", "lower", "B", "bytes"),
    "merge_peak_reserved_bytes": Metric("CUDA max reserved (merge check)", "lower", "B", "bytes"),
    "load_seconds": Metric("load time", "lower", "s", ".1f"),
    "train_seconds": Metric("train time", "lower", "s", ".1f", "cost"),
    # Writing progress and saving checkpoints during training: left out of train time, throughput and max_seconds.
    "checkpoint_seconds": Metric("checkpoint time", "lower", "s", ".1f"),
    "eval_seconds": Metric("eval time", "lower", "s", ".1f"),
    "train_steps": Metric("optimiser steps", "none", "", ".0f"),
    "train_epochs": Metric("epochs", "none", "", ".2f"),
    "train_tokens": Metric("train tokens (real)", "none", "", ",.0f"),
    "processed_tokens": Metric("tokens processed", "none", "", ",.0f"),
    "real_token_fraction": Metric("non-padding share", "higher", "", ".3f"),
    "train_tokens_per_second": Metric("train tokens/s", "higher", "tok/s", ",.0f", "cost"),
    # After the first few steps (bench.run.train.steady_after); FLOPs as counted by bench.run.flops.train_flops.
    "steady_tokens_per_second": Metric("steady train tokens/s", "higher", "tok/s", ",.0f"),
    # The steps left out of the steady figures (kernel selection, allocator growth, optimiser state) and their
    # time; steady_train_seconds is the rest of train_seconds.
    "warmup_steps": Metric("warm-up steps", "none", "", ".0f"),
    "warmup_seconds": Metric("warm-up time", "none", "s", ".1f"),
    "steady_train_seconds": Metric("steady train time", "lower", "s", ".1f"),
    "model_tflops_per_second": Metric("model TFLOP/s", "higher", "TFLOP/s", ".2f"),
    "model_flops_per_token": Metric("model FLOPs per token", "none", "", ".3e"),
    # Against the peak of the dtype the run computes in (no figure for fp32 runs), times the devices used.
    "mfu": Metric("model FLOPs utilisation", "higher", "", ".3f"),
    "mfu_devices": Metric("devices throughput and MFU are over", "none", "", ".0f"),
    # Distributed runs (training.distributed) only. There peak_memory_bytes is the largest of any process (what one
    # device must hold) and the tokens/s above are of all processes together.
    "world_size": Metric("processes", "none", "", ".0f"),
    "peak_memory_bytes_total": Metric("peak memory, all processes", "lower", "B", "bytes"),
    "train_tokens_per_second_per_process": Metric("train tokens/s per process", "higher", "tok/s", ",.0f"),
    "steady_tokens_per_second_per_process": Metric("steady train tokens/s per process", "higher", "tok/s", ",.0f"),
    "final_train_loss": Metric("final train loss", "lower", "", ".4f"),
    "eval_loss": Metric("eval loss", "lower", "", ".4f", "score"),
    "eval_perplexity": Metric("eval perplexity", "lower", "", ".3f"),
    # Loss on rows held out of train (dataset.validation_size): what picks a sweep's value, so eval stays unseen.
    "validation_loss": Metric("validation loss", "lower", "", ".4f"),
    # Loss per token on general text the task does not contain (eval.forgetting): of the base model (adapters and
    # virtual tokens off), after training, and the rise: what the method costs the model outside the task.
    "general_loss_before": Metric("general-text loss before", "none", "", ".4f"),
    "general_loss": Metric("general-text loss", "lower", "", ".4f"),
    "forgetting": Metric("forgetting (general loss rise)", "lower", "", "+.4f", "cost"),
    "exact_match": Metric("exact match", "higher", "", ".3f", "score"),
    "token_f1": Metric("token F1", "higher", "", ".3f", "score"),
    "rouge_l": Metric("ROUGE-L", "higher", "", ".3f", "score"),
    # Extracted answers equal as numbers (bench.core.scoring.numeric_match): 18 = 18.0 = $18, 1,000 = 1000, 3/4 = 0.75.
    "numeric_match": Metric("numeric match", "higher", "", ".3f", "score"),
    # PEFT's own rule (bench.core.scoring.numeric_match_peft): 1,000 is text, not 1000, as in PEFT's published accuracy.
    "numeric_match_peft": Metric("numeric match (PEFT)", "higher", "", ".3f", "score"),
    "generate_tokens_per_second": Metric("generation tok/s", "higher", "tok/s", ",.1f"),
    "merged_generate_tokens_per_second": Metric("merged generation tok/s", "higher", "tok/s", ",.1f"),
    "adapter_bytes": Metric("adapter size", "lower", "B", "bytes", "cost"),
    "checkpoint_bytes": Metric("checkpoint size", "lower", "B", "bytes"),
    "merge_max_abs_logit_diff": Metric("merge max |Δlogit|", "lower", "", ".2e"),
    "merge_mean_abs_logit_diff": Metric("merge mean |Δlogit|", "lower", "", ".2e"),
    # Records before the layer check: both whole models evaluated in float64.
    "merge_max_abs_logit_diff_fp64": Metric("merge max |Δlogit| (fp64)", "lower", "", ".2e"),
    # Layer by layer in float64: the merge's own relative error, and the rounding of the merged weights to storage.
    "merge_layer_rel_error_fp64": Metric("merge error per layer (fp64, relative)", "lower", "", ".2e"),
    "merge_storage_rel_error": Metric("merged weights' storage rounding (relative)", "lower", "", ".2e"),
    # The merged weights the model holds against W + ΔW in float64, worst element as a share of its bound
    # (bench.run.merge.weight_bound: half an ulp of the storage dtype + fp32 noise); <= 1 passes.
    "merge_weight_error_of_bound": Metric("merged weights vs fp64 merge (share of bound)", "lower", "", ".3f"),
    # QLoRA: the 4-bit base against its de-quantised copy, adapter off (bitsandbytes' kernels, not the merge).
    "quantized_base_max_abs_logit_diff": Metric("4-bit vs de-quantised base max |Δlogit|", "lower", "", ".2e"),
}


# What each metric measures, for the metric reference (docs/reference/metrics.md, made by scripts/gen_docs.py; a test
# fails on a metric without one).
DESCRIPTIONS: dict[str, str] = {
    "trainable_params": "parameters that receive gradients, counted after the optimiser is built (LoRA-FA freezes A)",
    "total_params": "every parameter of the model as trained, adapter included",
    "trainable_pct": "trainable_params as a percentage of total_params",
    "peak_memory_bytes": "training phase's peak, from the optimiser's creation to the last step: CUDA's max "
                         "allocated, or on a CPU the process's resident high-water mark; in a distributed run the "
                         "largest process's",
    "load_memory_bytes": "memory in use once the model is built (method applied)",
    "load_peak_memory_bytes": "peak while loading and building the model",
    "load_peak_reserved_bytes": "CUDA's max_memory_reserved while loading and building the model (CUDA only)",
    "eval_peak_memory_bytes": "peak during evaluation: eval loss, generation, forgetting",
    "merge_peak_memory_bytes": "peak during the merge check; only where a merge ran",
    "cuda_max_allocated_bytes": "CUDA's max_memory_allocated over training (CUDA only)",
    "cuda_max_reserved_bytes": "CUDA's max_memory_reserved over training: what the caching allocator held",
    "eval_peak_reserved_bytes": "CUDA's max_memory_reserved during evaluation",
    "merge_peak_reserved_bytes": "CUDA's max_memory_reserved during the merge check",
    "load_seconds": "wall time to load the model, tokenizer and data and build the method",
    "train_seconds": "wall time of the optimiser steps alone; progress writes and checkpoints left out",
    "checkpoint_seconds": "time spent writing progress and saving checkpoints during training",
    "eval_seconds": "wall time of evaluation (loss, generation, forgetting, lm-eval)",
    "train_steps": "optimiser steps taken",
    "warmup_steps": "the first steps left out of the steady figures: min(5, steps/4) (kernel selection, allocator "
                    "growth)",
    "warmup_seconds": "wall time of the warm-up steps",
    "steady_train_seconds": "train_seconds less the warm-up steps' time: what the steady figures divide by",
    "train_epochs": "passes over the training rows (fractional)",
    "train_tokens": "non-padding tokens the model was trained on",
    "processed_tokens": "tokens the model processed, padding included",
    "real_token_fraction": "train_tokens / processed_tokens: 1.0 when packed, lower with padded batches",
    "train_tokens_per_second": "train_tokens / train_seconds",
    "steady_tokens_per_second": "tokens per second after the first min(5, steps/4) steps (kernel selection and "
                                "allocator growth left out)",
    "model_tflops_per_second": "model FLOPs per second at steady state, FLOPs as bench.run.flops.train_flops counts "
                               "them (no recomputation, no padding)",
    "model_flops_per_token": "model FLOPs per real token: 6N for full fine-tuning, 4N for a frozen base, plus "
                             "attention and the adapter's own",
    "mfu": "model FLOP/s over the dense peak of the dtype the run computes in (bf16/fp16) times the devices used; "
           "absent for fp32 runs and on a device not in bench.run.flops' table",
    "mfu_devices": "how many devices the run's processes used: the peak mfu divides by is theirs together",
    "world_size": "processes a distributed run used",
    "peak_memory_bytes_total": "sum of every process's training peak in a distributed run",
    "train_tokens_per_second_per_process": "train_tokens_per_second divided by world_size",
    "steady_tokens_per_second_per_process": "steady_tokens_per_second divided by world_size",
    "final_train_loss": "loss of the last optimiser step (mean over its response tokens)",
    "eval_loss": "mean loss per response token on the eval rows",
    "eval_perplexity": "exp(eval_loss)",
    "validation_loss": "loss on the validation rows held out of training (dataset.validation_size): what picks a "
                       "sweep's value",
    "general_loss_before": "loss per token on general text before training (adapters and virtual tokens off)",
    "general_loss": "loss per token on general text after training",
    "forgetting": "general_loss - general_loss_before: what training cost the model outside the task",
    "exact_match": "share of eval examples whose greedy answer equals the reference (after eval.extract)",
    "token_f1": "token-level F1 between answer and reference, averaged over eval examples",
    "rouge_l": "ROUGE-L F-measure between answer and reference, averaged over eval examples",
    "numeric_match": "share of eval examples whose extracted answer equals the reference as a number",
    "numeric_match_peft": "share of eval examples right by PEFT's own rule (convert_to_decimal and get_accuracy in "
                          "its MetaMathQA benchmark): a number is a Decimal or one '/' between two, so '1,430' is "
                          "not 1430; compares with PEFT's published accuracy",
    "generate_tokens_per_second": "new tokens per second of batched greedy generation with the trained model",
    "merged_generate_tokens_per_second": "the same with the merged model (merge check)",
    "adapter_bytes": "size on disk of the saved adapter folder (weights, config, tokenizer)",
    "checkpoint_bytes": "full fine-tuning: size on disk of the saved model folder (it has no adapter)",
    "merge_max_abs_logit_diff": "largest |logit difference| between adapter model and merged model on up to 8 eval "
                                "prompts, in the run's precision",
    "merge_mean_abs_logit_diff": "mean |logit difference| between adapter model and merged model",
    "merge_max_abs_logit_diff_fp64": "older records: the largest |logit difference| with both models in float64",
    "merge_layer_rel_error_fp64": "largest relative error of a merged layer against its adapter layer, in float64 "
                                  "on a seeded probe: the merge's own error",
    "merge_storage_rel_error": "relative rounding of the merged weights to the dtype they are stored in",
    "merge_weight_error_of_bound": "the merged weight furthest from W + ΔW in float64, as a share of its allowance "
                                   "(half a storage ulp plus fp32 roundings of |W| and the row's largest |ΔW|): at "
                                   "most 1 is a correct merge",
    "quantized_base_max_abs_logit_diff": "over a bitsandbytes base (QLoRA, NF4, FP4, 8-bit): largest |logit "
                                         "difference| between the quantised base and its de-quantised copy, "
                                         "adapter off",
}


# A prompt-learning run's scores as transformers' generate() gives them, beside the harness's own decoding's.
VIA_GENERATE = "via_generate_"


def metric(name: str) -> Metric:
    """Known metrics, a score through generate(), or a score from a Hub metric (higher is better unless told
    otherwise)."""
    if name.startswith(VIA_GENERATE):
        m = metric(name.removeprefix(VIA_GENERATE))
        return Metric(f"{m.label} via generate()", m.better, m.unit, m.fmt, "info")
    return METRICS.get(name) or Metric(name, "higher", "", ".3f", "score")


def format_value(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    m = metric(name)
    if m.fmt == "bytes":
        return human_bytes(value)
    return format(value, m.fmt)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
