"""The seed workflow on a finished run: load the adapter on a fresh base, merge, save, reload, generate, push.

Run: python -m bench export results/quickstart/lora --out merged/lora [--prompt "..."] [--push-to-hub USER/REPO]
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch
from rich.console import Console

from bench.run import models as M
from bench.core.config import ModelSpec
from bench.core.metrics import format_value
from bench.run.quantization import in_place_merge, of_run
from bench.core.records import RecordError, RunRecord, read_record
from methods import METHODS

console = Console(highlight=False, soft_wrap=True)  # one line per message, at any terminal width


class ExportError(Exception):
    pass


def locate(run: str) -> tuple[RunRecord, Path]:
    """A run given as its folder (results/x/lora) or its record (results/x/lora.json)."""
    path = Path(run)
    record_file = path if path.suffix == ".json" else path.with_suffix(".json")
    if not record_file.is_file():
        raise ExportError(f"{run}: no run record at {record_file} (give a run folder such as results/quickstart/lora)")
    try:
        record = read_record(record_file)
    except RecordError as e:
        raise ExportError(str(e)) from None
    if record.status != "success":
        raise ExportError(f"{record_file}: the run did not succeed ({record.status}); nothing to export")
    return record, record_file.with_suffix("")


def merge_to_folder(record: RunRecord, run_dir: Path, out: Path) -> str:
    """Write a standalone model (merged weights + tokenizer) to `out`; return how it was made."""
    cfg = record.config
    method = METHODS.get(record.method)
    if method is None:
        raise ExportError(f"{run_dir}: the baseline has no trained weights to export")
    folder, _ = M.resolve(cfg.model)
    dtype = torch.float32 if record.environment.get("dtype", "float32") == "float32" else torch.bfloat16
    if (run_dir / "model").is_dir():
        model = M.load_model(ModelSpec(path=str(run_dir / "model")), str(run_dir / "model"), dtype=dtype,
                             load_in_4bit=False, seed=0)
        how = "full fine-tuning: the trained weights themselves"
    elif method.merge == "none":
        raise ExportError(
            f"{run_dir}: {method.id} is not mergeable (it adds virtual tokens at inference). Use the adapter as it "
            f"is: PeftModel.from_pretrained(base, '{run_dir / 'adapter'}')"
        )
    else:
        from peft import PeftModel

        # Random-weight (preset/config) bases are rebuilt from the seed on the device the run used.
        on_cuda = record.environment.get("device_type") == "cuda"
        if folder is None and on_cuda and not torch.cuda.is_available():
            raise ExportError(f"{run_dir}: the run trained on a random-weight base built on CUDA; rebuilding it needs "
                              "a CUDA device (the same seed gives other weights on the CPU)")
        quant = of_run(cfg, method)
        base = M.load_model(cfg.model, folder, dtype=dtype, load_in_4bit=False, quantization=quant,
                            seed=cfg.training.seed, device=torch.device("cuda") if on_cuda else None)
        if quant is not None and not in_place_merge(quant):
            # Merging into quantised weights re-quantises them; merge into the de-quantised base instead.
            base = base.dequantize(dtype=dtype)
            # transformers leaves the load-time flags set on the de-quantised model, and PEFT's IA3 will not merge while
            # they say 8-bit or 4-bit.
            base.is_loaded_in_8bit = base.is_loaded_in_4bit = False
        model = PeftModel.from_pretrained(base, run_dir / "adapter").merge_and_unload()
        kind = method.merge if quant is None or method.merge == "none" else "lossy"
        how = f"PeftModel.from_pretrained(fresh base, adapter).merge_and_unload() ({kind} merge)"
    saved = run_dir / ("model" if (run_dir / "model").is_dir() else "adapter")
    tokenizer = M.load_tokenizer(ModelSpec(path=str(saved)), str(saved))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(model_card(record, how))
    return how


def model_card(record: RunRecord, how: str) -> str:
    cfg = record.config
    rows = "\n".join(f"| {k} | {format_value(k, v)} |" for k, v in sorted(record.metrics.items()))
    return f"""---
library_name: transformers
tags: [peft-bench, {record.method}]
---
# {cfg.suite} / {record.run}

Fine-tuned with **{record.method}** by peft-bench (suite `{cfg.suite}` version {cfg.suite_version}), then
exported as a standalone model: {how}.

Base model: `{cfg.model.model_dump_json()}`. Data fingerprint: `{record.data.fingerprint if record.data else '?'}`.

## Metrics (measured by the harness on its eval split)
| metric | value |
|---|---|
{rows}

## Resolved configuration
```json
{json.dumps(cfg.model_dump(mode="json", include={'method', 'params', 'training', 'budget', 'dataset'}), indent=2)}
```
"""


def generate_from_folder(folder: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Reload the saved model from disk and answer each prompt greedily with its chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.datasets.examples import Example
    from bench.run.evaluation import generate

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    examples = [Example([{"role": "user", "content": p}, {"role": "assistant", "content": ""}], i)
                for i, p in enumerate(prompts)]
    return generate(model, tokenizer, examples, len(examples), max_new_tokens, torch.device("cpu")).predictions


def push(folder: Path, repo: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo).commit_url


def cmd_export(args) -> int:
    try:
        record, run_dir = locate(args.run)
        out = Path(args.out)
        how = merge_to_folder(record, run_dir, out)
    except (ExportError, M.ModelSourceError) as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    console.print(f"saved {out}/ ({how})")
    gc.collect()  # the merged model goes out of scope: free it before reloading, as the seed workflow does
    prompts = args.prompt or [p.prompt for p in record.predictions[:2]]
    answers = generate_from_folder(out, prompts, args.max_new_tokens)
    for prompt, answer in zip(prompts, answers):
        console.print(f"[bold]prompt:[/] {prompt}\n[bold]answer:[/] {answer}\n", markup=True)
    if args.push_to_hub:
        try:
            url = push(out, args.push_to_hub)
        except Exception as e:  # network, auth and Hub errors all mean the same here: not pushed
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            console.print(f"[red]push to {args.push_to_hub} failed:[/] {first} - the model is still in {out}/")
            return 1
        console.print(f"pushed: {url}")
    return 0
