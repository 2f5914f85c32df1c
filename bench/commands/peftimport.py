"""`python -m bench import-peft DIR... [--out SUITE.yaml]`: PEFT's own method_comparison experiments as runs of a
suite (`--base SUITE` takes every setting but the runs from that suite, e.g. suites/metamath.yaml: PEFT's own
data and model). Each DIR is laid out as PEFT's `method_comparison/MetaMathQA/experiments/<method>/<name>/`: an
adapter_config.json (absent for full fine-tuning) and an optional training_params.json whose `optimizer_type` and
`optimizer_kwargs` (lr, weight_decay, the rest) override PEFT's `default_training_params.json`, found three folders up
where the experiments sit in PEFT's tree."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from bench.core.console import EXIT_OK, EXIT_USAGE, console, err

# PEFT's benchmark names its optimisers as torch.optim classes or as these; the harness's names for PEFT's own.
OPTIMIZERS = {"lora-fa": "lora-fa", "lora+": "lora+", "loraplus": "lora+", "riemannian": "riemannian"}
DEFAULTS = "default_training_params.json"


class ImportProblem(Exception):
    """A folder that is not a PEFT experiment, said in one line."""


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ImportProblem(f"{path}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ImportProblem(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def training_of(params: dict[str, Any]) -> dict[str, Any]:
    """A suite's training overrides from PEFT's training_params: learning rate, weight decay, the optimiser, the
    schedule, clipping, seed, batch size, gradient checkpointing and the attention kernel."""
    out: dict[str, Any] = {}
    kwargs = dict(params.get("optimizer_kwargs") or {})
    if "lr" in kwargs:
        out["learning_rate"] = float(kwargs.pop("lr"))
    if "weight_decay" in kwargs:
        out["weight_decay"] = float(kwargs.pop("weight_decay"))
    kind = params.get("optimizer_type")
    if kind is not None and (kind != "AdamW" or kwargs):
        out["optimizer"] = {"name": OPTIMIZERS.get(kind.lower(), kind)} | ({"kwargs": kwargs} if kwargs else {})
    for theirs, ours in (("lr_scheduler", "scheduler"), ("grad_norm_clip", "max_grad_norm"), ("seed", "seed"),
                         ("batch_size", "batch_size"), ("use_gc", "gradient_checkpointing")):
        if theirs in params:
            out[ours] = params[theirs]
    if params.get("attn_implementation") is not None:
        out["attn_implementation"] = params["attn_implementation"]
    return out


# PEFT's training params the harness takes over: into the run's training (training_of) or its params.
TAKEN = {"optimizer_type", "optimizer_kwargs", "lr_scheduler", "grad_norm_clip", "seed", "batch_size", "use_gc",
         "attn_implementation", "init_kv_cache_prefix"}
# The rest, and why not. The suite decides the model, data, budget and evaluation for all its runs alike.
NOT_TAKEN = {
    "model_id": "the suite's model (import-peft --model) is every run's",
    "dtype": "precision is the suite's training.precision (auto: bf16 on a GPU that has it)",
    "max_seq_length": "the suite's training.max_seq_len is every run's",
    "max_steps": "the suite's budget (import-peft --max-steps) is every run's",
    "eval_steps": "the harness evaluates once, after training",
    "batch_size_eval": "the suite's eval.batch_size is every run's",
    "generation_kwargs": "the suite's eval.max_new_tokens is every run's",
    "query_template": "the suite's dataset decides the prompt format",
    "compile": "the harness does not torch.compile",
    "use_amp": "the harness's precision is the suite's training.precision",
    "autocast_adapter_dtype": "the harness always trains adapter weights in fp32 under autocast",
}


def run_of(folder: Path, relative_to: Path | None, defaults: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """One suite run from one experiment folder, and notes on what the harness does not take over from its
    training params where they differ from PEFT's defaults."""
    if not folder.is_dir():
        raise ImportProblem(f"{folder}: no such folder")
    config, params = folder / "adapter_config.json", folder / "training_params.json"
    run: dict[str, Any] = {"name": f"{folder.parent.name}--{folder.name}"}
    if config.is_file():
        peft_type = _json(config).get("peft_type")
        if not isinstance(peft_type, str):
            raise ImportProblem(f"{config}: not a PEFT adapter config (no peft_type)")
        where = config.resolve()
        run["adapter_config"] = os.path.relpath(where, relative_to) if relative_to else str(where)
    elif "full" in folder.parent.name:
        run["method"] = "full"
    else:
        raise ImportProblem(f"{folder}: no adapter_config.json (and not a full fine-tuning experiment)")
    notes = []
    if params.is_file():
        doc = _json(params)
        if doc.get("init_kv_cache_prefix"):
            # PEFT's benchmark keeps it with the training params; here it is a param of the KV-prefix methods.
            run["params"] = {"init_kv_cache_prefix": doc["init_kv_cache_prefix"]}
        training = training_of(doc)
        if training:
            run["training"] = training
        for key, value in doc.items():
            if key not in TAKEN and value != defaults.get(key):
                why = NOT_TAKEN.get(key, "the harness has no such setting")
                notes.append(f"{run['name']}: {key}={value!r} is not taken over: {why}")
    return run, notes


def suite_of(folders: list[Path], out: Path | None, model: str, data: str, max_steps: int = 20,
             base: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The suite: the experiments as runs, on `model` and `data` with PEFT's default training params; or, with
    `base` (a suite already read), on everything `base` sets but its runs."""
    relative_to = out.resolve().parent if out else None
    defaults_file = folders[0].resolve().parent.parent.parent / DEFAULTS  # MetaMathQA/experiments/METHOD/NAME
    defaults = _json(defaults_file) if defaults_file.is_file() else {}
    runs, notes = [], []
    for folder in folders:
        run, found = run_of(folder, relative_to, defaults)
        runs.append(run)
        notes += found
    description = f"PEFT method_comparison experiments imported by `bench import-peft` ({len(runs)} runs)"
    if base is not None:
        return {**base, "name": "peft-experiments", "description": f"{description} on {base.get('name')}'s settings",
                "output": "results/peft-experiments", "runs": runs}, notes
    training: dict[str, Any] = {"max_seq_len": 512}
    training |= {k: v for k, v in training_of(defaults).items() if k != "batch_size"}
    data_path = os.path.relpath(Path(data).resolve(), relative_to) if relative_to else str(Path(data).resolve())
    suite = {"name": "peft-experiments", "version": 1, "description": description,
             "model": {"preset": model}, "dataset": {"path": data_path}, "budget": {"max_steps": max_steps},
             "training": training, "runs": runs}
    return suite, notes


def base_suite(path: Path, out: Path | None) -> dict[str, Any]:
    """A suite file to take every setting from but its runs (suites/metamath.yaml: PEFT's data, model and budget).
    Its relative paths hold only beside it, so the imported suite is written to its folder."""
    from ruamel.yaml import YAML

    if not path.is_file():
        raise ImportProblem(f"--base {path}: no such file")
    if out is None or out.resolve().parent != path.resolve().parent:
        raise ImportProblem(f"--base {path}: write the suite beside it (--out {path.parent}/NAME.yaml), where its "
                            "relative paths hold")
    doc = YAML(typ="safe").load(path.read_text())
    if not isinstance(doc, dict):
        raise ImportProblem(f"--base {path}: not a suite (expected a mapping)")
    return {k: v for k, v in doc.items() if k not in ("runs", "seeds")}


def cmd_import_peft(args) -> int:
    from ruamel.yaml import YAML

    out = Path(args.out) if args.out else None
    try:
        base = base_suite(Path(args.base), out) if args.base else None
        suite, notes = suite_of([Path(d) for d in args.dirs], out, args.model, args.data, args.max_steps, base)
    except ImportProblem as e:
        err.print(str(e), markup=False)
        return EXIT_USAGE
    yaml = YAML()
    yaml.default_flow_style = False
    text = io.StringIO()
    text.write("# PEFT's method_comparison experiments as a suite. Run: python -m bench run THIS_FILE\n")
    yaml.dump(suite, text)
    for note in notes:
        err.print(f"note: {note}", markup=False)
    if out is None:
        print(text.getvalue(), end="")
        return EXIT_OK
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.getvalue())
    console.print(f"wrote {out} ({len(suite['runs'])} runs)", markup=False)
    return EXIT_OK
