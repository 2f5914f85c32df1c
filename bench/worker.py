"""One run in its own process: load, train, evaluate, merge, save; the runner starts it as
`python -m bench.worker CONFIG.json RUN_DIR` and turns what it leaves in RUN_DIR into the run's record."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import psutil
import torch

from bench import data as D
from bench import evaluation as E
from bench import models as M
from bench.distributed import Ranks, is_distributed
from bench.env import environment
from bench.suite import BASELINE
from bench.train import Diverged, planned_steps, train
from methods import METHODS, Method

RESULT = ".result.json"
PROGRESS = "progress.jsonl"


def pick_device() -> torch.device:
    wanted = os.environ.get("BENCH_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """bf16 where the device computes it natively (CUDA with bf16 support), else fp32: emulated bf16 on a CPU
    without native support is many times slower, not faster."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def count_params(model) -> tuple[int, int]:
    """Trainable and total parameters, 4-bit layers counted at their real parameter count (as PEFT counts them)."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n = n * 2 * p.element_size()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def dir_bytes(folder: Path, pattern: str = "*.safetensors") -> int:
    return sum(f.stat().st_size for f in folder.glob(pattern))


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def build(cfg: dict[str, Any], method: Method | None, folder: str | None, device: torch.device, dtype: torch.dtype):
    """The model as this run trains it: base (4-bit when the method says so), then the method's PEFT wrapping."""
    four_bit = bool(method and method.load_in_4bit)
    model = M.load_model(cfg["model"], folder, dtype=dtype, load_in_4bit=four_bit, seed=cfg["training"]["seed"],
                         device=device if device.type == "cuda" else None)
    if not four_bit:
        model.to(device)
    if method is None:
        model.requires_grad_(False)
        return model
    checkpointing = cfg["training"].get("gradient_checkpointing", False)
    # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings (every PEFT method) work.
    gc_kwargs = {"use_reentrant": False}
    if checkpointing and not four_bit:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    if method.prepare:
        method.prepare(model)
    peft_config = method.config(**cfg["params"])
    if peft_config is None:
        model.requires_grad_(True)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if four_bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    torch.manual_seed(cfg["training"]["seed"])  # adapter initialisation is seeded too
    return get_peft_model(model, peft_config)


def run(cfg: dict[str, Any], run_dir: Path, ranks: Ranks | None = None) -> dict[str, Any] | None:
    """The run's result; with `ranks` (a distributed run) None on every process but the main one."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"status": "failed", "metrics": {}, "merge": {}, "curve": []}
    device = ranks.device if ranks else pick_device()
    tr, ev = cfg["training"], cfg["eval"]
    peaks = None
    main = ranks is None or ranks.main
    dtype = pick_dtype(tr["precision"], device)
    out["environment"] = environment(device) | {"dtype": str(dtype).removeprefix("torch.")}
    if ranks:
        out["environment"]["distributed"] = ranks.describe()
    torch.manual_seed(tr["seed"])
    method = None if cfg["method"] == BASELINE else METHODS[cfg["method"]]

    folder, out["model_info"] = M.resolve(cfg["model"])
    tokenizer = M.load_tokenizer(cfg["model"], folder)
    train_ex, eval_ex, report = D.load_examples(cfg["dataset"], max_eval=ev["max_examples"])
    train_ex, val_ex = D.split_validation(train_ex, cfg["dataset"])
    src = report.source
    train_f = D.tokenize(train_ex, tokenizer, tr["max_seq_len"], cfg["dataset"], report, src)
    eval_f = D.tokenize(eval_ex, tokenizer, tr["max_seq_len"], cfg["dataset"], report, src)
    val_f = D.tokenize(val_ex, tokenizer, tr["max_seq_len"], cfg["dataset"], report, src)
    out["data"] = vars(report) | ({"validation_rows": len(val_f), "train_rows": len(train_f)} if val_ex else {})

    model = build(cfg, method, folder, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
        out["metrics"]["load_memory_bytes"] = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        out["metrics"]["load_memory_bytes"] = psutil.Process().memory_info().rss
    trainable, total = count_params(model)
    out["metrics"].update(trainable_params=trainable, total_params=total, trainable_pct=100 * trainable / total)
    out["metrics"]["load_seconds"] = time.perf_counter() - t0

    general = None
    if ev.get("enabled", True) and ev.get("forgetting", False):
        general = E.paragraphs(E.GENERAL_TEXT if ev["forgetting"] is True else ev["forgetting"])

        def general_loss() -> float:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                return E.text_loss(model, tokenizer, general, tr["max_seq_len"], ev["batch_size"], device)

        from peft import PeftModel

        # "Before" is the base model itself: adapters and virtual tokens off (for QLoRA, its 4-bit base).
        with model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext():
            out["metrics"]["general_loss_before"] = general_loss()

    pad_id = tokenizer.pad_token_id
    if method is not None:
        packed = tr["packing"] and method.packable
        steps_per_epoch = len(D.batch_order(train_f, tr["batch_size"], tr["seed"]))
        total_steps = planned_steps(cfg["budget"], steps_per_epoch, tr["grad_accum"], tr["epochs"])
        progress = (run_dir / PROGRESS).open("a") if main else None

        def save_checkpoint(name: str) -> None:
            state = ranks.state_dict() if ranks else None  # every process takes part: FSDP gathers the shards
            if main:
                model.save_pretrained(run_dir / "checkpoints" / name, state_dict=state)

        def on_step(point):
            if main:
                progress.write(json.dumps(point) + "\n")
                progress.flush()
            if isinstance(tr["save_every"], int) and point["step"] % tr["save_every"] == 0:
                save_checkpoint(f"step-{point['step']}")

        def on_epoch(epoch, step):
            if tr["save_every"] == "epoch":
                save_checkpoint(f"epoch-{epoch}")

        batches = D.batches(train_f, tr["batch_size"], tr["seed"], pad_id, packed, tr["epochs"],
                            rank=ranks.rank if ranks else 0, world=ranks.world if ranks else 1)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            try:
                result = train(model, batches, tr, cfg["budget"], total_steps, device, on_step, on_epoch,
                               warmup_steps=steady_after(total_steps), ranks=ranks)
            except Diverged as e:
                out.update(status="diverged", error=str(e), last_step=len(_read_progress(run_dir)))
                out["curve"] = _read_progress(run_dir)
                return out
        if main:
            progress.close()
        if ranks:
            model = whole_model(ranks, cfg, method, folder, device, dtype, model)
        out["curve"] = result.curve
        out["last_step"] = result.steps
        m = out["metrics"]
        m.update(
            train_seconds=result.seconds, train_steps=result.steps, train_epochs=result.epochs,
            train_tokens=result.real_tokens, processed_tokens=result.processed_tokens,
            real_token_fraction=result.real_tokens / max(result.processed_tokens, 1),
            train_tokens_per_second=result.real_tokens / result.seconds if result.seconds else 0.0,
            final_train_loss=result.curve[-1]["loss"] if result.curve else float("nan"),
        )
        out["stopped_by"] = result.stopped_by
        m.update(throughput(model, result, device))
    if ranks:
        # Peaks so far of every process; the main one's own is replaced by its final peak (after evaluation).
        peaks = [row[0] for row in ranks.gather([device_peak(device)])]
        if not main:
            return None
        m = out["metrics"]
        m["world_size"] = ranks.world
        for name in ("train_tokens_per_second", "steady_tokens_per_second"):
            if name in m:
                m[f"{name}_per_process"] = m[name] / ranks.world

    if not ev.get("enabled", True):
        if method is not None:
            save_and_merge(cfg, method, model, tokenizer, folder, eval_ex, None, device, dtype, run_dir, out)
        finish(out, device, peaks)
        return out

    t_eval = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = E.eval_loss(model, eval_f, ev["batch_size"], pad_id, device)
        if val_f:
            out["metrics"]["validation_loss"] = E.eval_loss(model, val_f, ev["batch_size"], pad_id, device)
        pad_free = method is not None and not method.left_pad_safe
        cached = method is None or method.kv_cache_generate
        gens = E.generate(model, tokenizer, eval_ex, ev["batch_size"], ev["max_new_tokens"], device, pad_free,
                          cached)
    out["environment"]["generation"] = "generate() with KV cache" if cached else "greedy_virtual with KV cache"
    scores, out["predictions"] = E.summary(gens, eval_ex, ev["metrics"], ev["extract"], ev["keep_predictions"])
    out["metrics"].update(scores)
    out["metrics"].update(eval_loss=loss, eval_perplexity=E.perplexity(loss),
                          generate_tokens_per_second=gens.tokens_per_second)
    if general is not None:
        m = out["metrics"]
        m["general_loss"] = general_loss() if method is not None else m["general_loss_before"]
        if method is not None:
            m["forgetting"] = m["general_loss"] - m["general_loss_before"]
    out["metrics"]["eval_seconds"] = time.perf_counter() - t_eval

    if method is not None:
        save_and_merge(cfg, method, model, tokenizer, folder, eval_ex, gens, device, dtype, run_dir, out)
    finish(out, device, peaks)
    return out


def finish(out: dict[str, Any], device: torch.device, peaks: list[float] | None = None) -> None:
    """Peak memory; in a distributed run `peaks` holds every process's (by rank), and peak_memory_bytes is the
    largest, what one device must hold, beside their total."""
    if device.type == "cuda":
        out["metrics"]["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["metrics"]["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
    out["metrics"]["peak_memory_bytes"] = device_peak(device)
    if peaks is not None:
        peaks = [int(device_peak(device))] + [int(p) for p in peaks[1:]]
        out["metrics"].update(peak_memory_bytes=max(peaks), peak_memory_bytes_total=sum(peaks))
        out["environment"]["distributed"]["peak_memory_bytes_per_process"] = peaks
    out["status"] = "success"


def device_peak(device: torch.device) -> int:
    return peak_rss() if device.type == "cpu" else torch.cuda.max_memory_allocated()


def whole_model(ranks: Ranks, cfg, method: Method, folder, device, dtype, model):
    """After distributed training, a model with every trained weight on the main process, for evaluation, saving and
    the merge check. DDP keeps a whole copy in every process; FSDP's shards are gathered into a freshly built one."""
    if not ranks.sharded:
        return model
    state = ranks.state_dict()  # every process takes part
    if not ranks.main:
        return model
    whole = build(cfg, method, folder, device, dtype)
    whole.load_state_dict(state)
    return whole


def steady_after(total_steps: int) -> int:
    """Steps left out of throughput: the first few, at most a quarter of the run."""
    return min(5, total_steps // 4)


def throughput(model, result, device: torch.device) -> dict[str, float]:
    """Steady-state tokens/s and model FLOP/s (bench.perf.train_flops), and FLOPs utilisation where the device's
    peak is known."""
    from bench.perf import peak_flops, train_flops

    w = result.steady
    if not w.get("seconds"):
        return {}
    flops = train_flops(model, w["real_tokens"], w["attention_pairs"])
    out = {"steady_tokens_per_second": w["real_tokens"] / w["seconds"],
           "model_tflops_per_second": flops / w["seconds"] / 1e12,
           "model_flops_per_token": flops / max(w["real_tokens"], 1)}
    peak = peak_flops(device)
    if peak:
        out["mfu"] = flops / w["seconds"] / peak
    return out


def save_and_merge(cfg, method: Method, model, tokenizer, folder, eval_ex, gens, device, dtype, run_dir: Path, out):
    """Save what the method produces (adapter or full checkpoint), then merge where it can and measure the merge."""
    m = out["metrics"]
    if method.config(**cfg["params"]) is None:
        model.save_pretrained(run_dir / "model")
        tokenizer.save_pretrained(run_dir / "model")
        m["checkpoint_bytes"] = dir_bytes(run_dir / "model")
        out["merge"] = {"status": "nothing to merge", "note": "full fine-tuning changes the weights themselves"}
        return
    model.save_pretrained(run_dir / "adapter")
    tokenizer.save_pretrained(run_dir / "adapter")
    m["adapter_bytes"] = dir_bytes(run_dir / "adapter")
    if method.merge == "none":
        out["merge"] = {"status": "not mergeable",
                        "note": f"{method.id} adds virtual tokens at inference; there are no weights to fold in"}
        return
    if gens is None:
        out["merge"] = {"status": "not checked", "note": "eval.enabled is false: the merge check needs the eval set"}
        return
    ev = cfg["eval"]
    t = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        before = E.prompt_logits(model, tokenizer, eval_ex, device)
        if method.merge == "exact":
            # float64 on CPU is slow: four prompts are enough to see the merge's own error.
            before64 = E.prompt_logits_fp64(model, tokenizer, eval_ex, device, limit=4)
            merged = model.merge_and_unload()
            after64 = E.prompt_logits_fp64(merged, tokenizer, eval_ex, device, limit=4)
            m["merge_max_abs_logit_diff_fp64"] = E.logit_diff(before64, after64)["max_abs"]
            how = "merge_and_unload into the base weights"
        else:
            with model.disable_adapter():
                base_4bit = E.prompt_logits(model, tokenizer, eval_ex, device)
            merged, base_deq = merge_dequantized(cfg, folder, run_dir / "adapter", dtype, device, tokenizer, eval_ex)
            # How far the 4-bit kernels alone are from the de-quantised weights, adapter off: the part of the
            # merge difference that is not the merge's doing.
            m["quantized_base_max_abs_logit_diff"] = E.logit_diff(base_4bit, base_deq)["max_abs"]
            how = "merge_and_unload into a de-quantised copy of the 4-bit base the adapter trained against"
        after = E.prompt_logits(merged, tokenizer, eval_ex, device)
        merged_gens = E.generate(merged, tokenizer, eval_ex, ev["batch_size"], ev["max_new_tokens"], device)
    diff = E.logit_diff(before, after)
    m["merge_max_abs_logit_diff"] = diff["max_abs"]
    m["merge_mean_abs_logit_diff"] = diff["mean_abs"]
    m["merged_generate_tokens_per_second"] = merged_gens.tokens_per_second
    same = sum(a == b for a, b in zip(gens.token_ids, merged_gens.token_ids))
    out["merge"] = {
        "status": "merged", "kind": method.merge, "how": how, "max_abs_logit_diff": diff["max_abs"],
        "max_abs_logit_diff_fp64": m.get("merge_max_abs_logit_diff_fp64"),
        "quantized_base_max_abs_logit_diff": m.get("quantized_base_max_abs_logit_diff"),
        "mean_abs_logit_diff": diff["mean_abs"], "greedy_identical": same == len(gens.token_ids),
        "greedy_identical_count": same, "compared": len(gens.token_ids), "seconds": time.perf_counter() - t,
    }


def merge_dequantized(cfg, folder, adapter_dir: Path, dtype, device, tokenizer, eval_ex):
    """QLoRA: the same NF4 base, de-quantised to `dtype`, with the adapter merged into it; also the de-quantised
    base's own logits, before the merge."""
    from peft import PeftModel

    base = M.load_model(cfg["model"], folder, dtype=dtype, load_in_4bit=True, seed=cfg["training"]["seed"],
                        device=device if device.type == "cuda" else None)
    base = base.dequantize(dtype=dtype)
    base.to(device)
    base_logits = E.prompt_logits(base, tokenizer, eval_ex, device)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload(), base_logits


def _read_progress(run_dir: Path) -> list[dict[str, float]]:
    p = run_dir / PROGRESS
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def main() -> int:
    # bitsandbytes warns on every CPU start that it cannot download an optional kernel; the fallback is used.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    cfg_path, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = json.loads(cfg_path.read_text())
    ranks = None
    try:
        ranks = Ranks(pick_device()) if is_distributed(cfg) else None
        out = run(cfg, run_dir, ranks)
    except torch.OutOfMemoryError as e:
        out = {"status": "oom", "error": str(e).splitlines()[0]}
    except (D.DataError, M.ModelSourceError) as e:
        out = {"status": "failed", "error": str(e)}
    except Exception:
        out = {"status": "failed", "error": traceback.format_exc(limit=-6)}
    if is_distributed(cfg) and int(os.environ.get("RANK", "0")) != 0:
        # Another process of a distributed run: the main one writes the result. A crash here goes to the log and
        # fails the launch; a divergence is the main process's to report (it saw the same global loss).
        code = 0
        if out is not None and out["status"] in ("failed", "oom"):
            print(out["error"], file=sys.stderr)
            code = 1
        return leave(code)
    if out["status"] != "success":
        out.setdefault("curve", _read_progress(run_dir))
        out.setdefault("last_step", len(out["curve"]))
    tmp = run_dir / (RESULT + ".tmp")
    tmp.write_text(json.dumps(out, default=float))
    tmp.replace(run_dir / RESULT)
    code = 0 if out["status"] == "success" else 1
    return leave(code) if is_distributed(cfg) else code


def leave(code: int) -> int:
    """End a distributed worker without interpreter teardown: destroying the DDP reducer's gloo process group right
    after a collective deadlocks when the group's thread still waits for the GIL the destructor holds (seen here).
    Every file the worker wrote is closed by now."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
