"""`python -m bench import-peft DIR... [--out SUITE.yaml]`: PEFT's own method_comparison experiments as runs of a
suite. Each DIR is laid out as PEFT's `method_comparison/MetaMathQA/experiments/<method>/<name>/`: an
adapter_config.json (absent for full fine-tuning) and an optional training_params.json whose `optimizer_type` and
`optimizer_kwargs` (lr, weight_decay, the rest) override PEFT's `default_training_params.json`, found three folders up
where the experiments sit in PEFT's tree."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from bench.console import EXIT_OK, EXIT_USAGE, console, err

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
    """A suite's training overrides from PEFT's training_params: learning rate, weight decay, the optimiser."""
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
                         ("batch_size", "batch_size")):
        if theirs in params:
            out[ours] = params[theirs]
    return out


def run_of(folder: Path, relative_to: Path | None) -> tuple[dict[str, Any], list[str]]:
    """One suite run from one experiment folder, and notes on what the harness does not take over."""
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
            notes.append(f"{run['name']}: init_kv_cache_prefix (a prefix initialised from text) is not taken over")
        training = training_of(doc)
        if training:
            run["training"] = training
    return run, notes


def suite_of(folders: list[Path], out: Path | None, model: str, data: str) -> tuple[dict[str, Any], list[str]]:
    relative_to = out.resolve().parent if out else None
    runs, notes = [], []
    for folder in folders:
        run, found = run_of(folder, relative_to)
        runs.append(run)
        notes += found
    training: dict[str, Any] = {"max_seq_len": 512}
    defaults = folders[0].resolve().parent.parent.parent / DEFAULTS  # MetaMathQA/experiments/METHOD/NAME
    if defaults.is_file():
        training |= {k: v for k, v in training_of(_json(defaults)).items() if k != "batch_size"}
    data_path = os.path.relpath(Path(data).resolve(), relative_to) if relative_to else str(Path(data).resolve())
    suite = {"name": "peft-experiments", "version": 1,
             "description": f"PEFT method_comparison experiments imported by `bench import-peft` ({len(runs)} runs)",
             "model": {"preset": model}, "dataset": {"path": data_path}, "budget": {"max_steps": 20},
             "training": training, "runs": runs}
    return suite, notes


def cmd_import_peft(args) -> int:
    from ruamel.yaml import YAML

    out = Path(args.out) if args.out else None
    try:
        suite, notes = suite_of([Path(d) for d in args.dirs], out, args.model, args.data)
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
