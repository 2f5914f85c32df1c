"""The suite: a YAML file parsed into typed objects, validated before any model loads, resolved into one
`RunConfig` per run."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, TypeAdapter, ValidationError, field_validator, model_validator

from bench.config import (
    BASELINE,
    Budget,
    DatasetSpec,
    Eval,
    ModelSpec,
    ResolvedDistributed,
    ResolvedTraining,
    RunConfig,
    Strict,
    Training,
    Tracking,
    TrainingOverrides,
)
from bench.regression import Regression
from bench.util import did_you_mean
from bench.yamlio import SuiteError, line_of, load_yaml, to_plain
from methods import METHODS, Method


class RunSpec(Strict):
    method: str | None = None
    adapter_config: str | None = Field(None, description="a PEFT adapter_config.json (as save_pretrained and PEFT's "
                                       "method_comparison experiments write it): the method is its peft_type, and "
                                       "`params` override its fields")
    name: str | None = None
    params: dict[str, Any] = {}
    training: TrainingOverrides = TrainingOverrides()
    sweep: dict[str, list[Any] | Literal["default"]] | None = Field(
        None, description="values to try per training field or method param; each combination is a run, the one "
        "with the lowest validation loss is the method's result ('default': the method's learning-rate grid)")

    @model_validator(mode="after")
    def _method_or_file(self):
        if self.method is None and self.adapter_config is None:
            raise ValueError("give a method, or an adapter_config whose peft_type names it")
        return self

    @property
    def run_name(self) -> str:
        return self.name or self.method


class Suite(Strict):
    name: str
    version: int | str
    description: str = ""
    model: ModelSpec
    dataset: DatasetSpec
    budget: Budget
    training: Training = Training()
    eval: Eval = Eval()
    output: str | None = Field(None, description="results folder, relative to the working directory")
    baseline: bool = Field(True, description="evaluate the untrained base model as a 'baseline' row")
    seeds: Annotated[list[StrictInt], Field(min_length=1)] | None = Field(
        None, description="run every entry once per seed (each replaces training.seed); reports give means and 95% "
        "intervals")
    runs: list[RunSpec] = Field(min_length=1)
    regression: Regression = Regression()
    tracking: Tracking = Field(Tracking(), description="trackers that mirror every run live: tensorboard, mlflow, "
                               "wandb (each an optional extra)")

    # Set by load_suite: where the file lives, so relative data paths resolve against it.
    source: str = Field("", exclude=True)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int] | None) -> list[int] | None:
        repeated = sorted({s for s in seeds or [] if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"repeats {', '.join(map(str, repeated))}; give each seed once")
        return seeds

    @property
    def output_dir(self) -> Path:
        return Path(self.output or f"results/{self.name}")

    @property
    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path(".")

    @property
    def has_sweeps(self) -> bool:
        return any(run.sweep for run in self.runs)

    def resolve(self, path: str) -> str:
        """Absolute and normalised, so the config (and its hash) is the same however the suite path was spelt."""
        p = Path(path).expanduser()
        return str((p if p.is_absolute() else self.base_dir / p).resolve())

    def resolved_runs(self) -> list[RunConfig]:
        """The fully resolved config of every run (baseline first), as stored in each record; with `seeds`, one run
        per entry and seed, named NAME@seedS and grouped under NAME."""
        shared = self._shared()
        runs = []
        if self.baseline:
            # Greedy answers of an untrained pretrained model are the same under any seed: one baseline run does.
            # A preset or config model has random weights, and the seed picks them.
            base = RunConfig(run=BASELINE, method=BASELINE, training=self._training(self.training), **shared)
            runs += self._per_seed(base, seeded=self.model.kind in ("preset", "config"))
        for spec in self.runs:
            method = METHODS[spec.method]
            from_file = adapter_params(read_adapter_config(spec.adapter_config), method) if spec.adapter_config else {}
            # A PEFT field is replaced whole: `rank_pattern: {}` over a file's patterns means no patterns.
            params = method.defaults() | from_file | spec.params
            merged = deep_merge(self.training.model_dump(), spec.training.model_dump(exclude_unset=True))
            if spec.training.quantization is not None:  # replaced whole: 8-bit over a suite's NF4 keeps no 4-bit setting
                merged["quantization"] = spec.training.quantization.model_dump()
            training = Training(**merged)
            for point in sweep_points(spec, method):
                name = spec.run_name + "".join(f"@{_SHORT.get(k, k)}={_text(v)}" for k, v in point.items())
                t = training.model_copy(update={k: v for k, v in point.items() if k in Training.model_fields})
                p = params | {k: v for k, v in point.items() if k not in Training.model_fields}
                cfg = RunConfig(run=name, method=spec.method, method_version=method.version, params=p,
                                training=self._training(t), group=spec.run_name if point else None,
                                sweep=point or None, **shared)
                runs += self._per_seed(cfg)
        return runs

    def _per_seed(self, cfg: RunConfig, seeded: bool = True) -> list[RunConfig]:
        if self.seeds is None or not seeded:
            return [cfg.hashed()]
        return [cfg.model_copy(update={"run": f"{cfg.run}@seed{s}", "group": cfg.group or cfg.run, "seed": s,
                                       "training": cfg.training.model_copy(update={"seed": s})}).hashed()
                for s in self.seeds]

    def _shared(self) -> dict[str, Any]:
        """What every run of the suite has in common, with paths made absolute."""
        model = self.model.model_copy(update={
            k: self.resolve(v) for k in ("path", "tokenizer")
            if (v := getattr(self.model, k)) is not None and Path(self.resolve(v)).exists()})
        if model.gguf is not None and model.package is None:
            model = model.model_copy(update={"gguf": self.resolve(model.gguf)})
        dataset = self.dataset.model_copy(update={k: self.resolve(v) for k in ("path", "eval_path")
                                                  if (v := getattr(self.dataset, k)) is not None})
        dataset = dataset.model_copy(update={k: src.model_copy(update={"path": self.resolve(src.path)})
                                             for k in ("eval_data", "validation_data")
                                             if (src := getattr(dataset, k)) is not None and src.path is not None})
        if self.has_sweeps and dataset.validation_size is None:
            # Every run trains on the same rows, swept or not; the held-out ones pick sweep values, never eval.
            dataset = dataset.model_copy(update={"validation_size": 0.1})
        ev = self.eval
        if isinstance(ev.forgetting, str):
            ev = ev.model_copy(update={"forgetting": self.resolve(ev.forgetting)})
        if ev.lm_eval is not None and ev.lm_eval.include_path is not None:
            ev = ev.model_copy(update={"lm_eval": ev.lm_eval.model_copy(
                update={"include_path": self.resolve(ev.lm_eval.include_path)})})
        return dict(suite=self.name, suite_version=self.version, model=model, dataset=dataset, budget=self.budget,
                    eval=ev, regression=self.regression)

    def _training(self, training: Training) -> ResolvedTraining:
        fields, dist = dict(training), training.distributed
        if dist is not None and dist.config is not None:
            path = self.resolve(dist.config)
            dist = ResolvedDistributed(num_processes=dist.num_processes, config=path,
                                       config_sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16])
        elif dist is not None:
            dist = ResolvedDistributed(num_processes=dist.num_processes)
        return ResolvedTraining(**fields | {"distributed": dist})


_SHORT = {"learning_rate": "lr"}


def _text(value: Any) -> str:
    if isinstance(value, dict):  # a sweep over a section (quantization: [{bits: 8}, {bits: 4}]): its values
        return "-".join(_text(v) for v in value.values())
    return format(value, "g") if isinstance(value, float) else str(value)


def sweep_points(run: RunSpec, method: Method) -> list[dict[str, Any]]:
    """Every combination of the run's sweep values, in order ([{}] without a sweep)."""
    if not run.sweep:
        return [{}]
    grid = {k: list(method.lr_grid) if v == "default" else v for k, v in run.sweep.items()}
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Override wins key by key, all the way down (a one-level merge silently drops nested defaults)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ---- validation: every problem at once, each with its line --------------------------------------------------------

Problem = tuple[int | None, str]


def _place(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _pydantic_problems(err: ValidationError, doc: Any) -> list[Problem]:
    problems = []
    plain = to_plain(doc)
    for e in err.errors():
        loc = _doc_loc(e["loc"], plain, e["type"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden" and loc:
            msg = f"unknown key '{loc[-1]}'{did_you_mean(loc[-1], _fields_at(loc[:-1]))}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("model_type", "dict_type") and not isinstance(e["input"], dict):
            msg = f"{msg}, got {e['input']!r}"
        problems.append((line_of(doc, loc), f"{_place(loc)}: {msg}"))
    return problems


def _doc_loc(loc: tuple, doc: Any, kind: str) -> tuple:
    """The part of pydantic's error place that exists in the document.

    Pydantic adds union-branch markers ("literal['epoch']", "constrained-int") to the place; they are whatever
    does not name a key or index of the document. Matching against the document keeps user keys that happen
    to look like markers ("learning-rate"). A key that is not there stays only when it is the missing one.
    """
    out, node = [], doc
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and i == len(loc) - 1 and kind == "missing":
            pass
        else:
            continue
        out.append(part)
    return tuple(out)


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the schema object at `loc`, for did-you-mean on unknown keys."""
    model: Any = Suite
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", ()) if hasattr(a, "model_fields")), ann)
    return list(getattr(model, "model_fields", {}))


def _runs(doc: dict) -> list[tuple[int, dict]]:
    runs = doc.get("runs")
    return [(i, r) for i, r in enumerate(runs) if isinstance(r, dict)] if isinstance(runs, list) else []


def _sweep_problems(doc: dict) -> list[Problem]:
    """Sweep keys are training fields or the method's params, and every value is one that key accepts."""
    problems = []
    for i, run in _runs(doc):
        if not (isinstance(run.get("sweep"), dict) and run.get("method") in METHODS):
            continue
        accepted = METHODS[run["method"]].parameters()
        for key, values in run["sweep"].items():
            place, line = f"runs[{i}].sweep.{key}", line_of(doc, ("runs", i, "sweep", key))
            if key not in Training.model_fields and key not in accepted:
                choices = list(Training.model_fields) + list(accepted)
                problems.append((line, f"{place}: not a training field or a {run['method']} param"
                                 f"{did_you_mean(key, choices)}"))
            elif values == "default" and key != "learning_rate":
                problems.append((line, f"{place}: 'default' is a grid for learning_rate only; list the values"))
            elif isinstance(values, list) and not values:
                problems.append((line, f"{place}: no values to try; list at least one (or remove the key)"))
            elif isinstance(values, list):
                problems += [(line, f"{place}: {p}") for p in _value_problems(key, to_plain(values),
                                                                               METHODS[run["method"]])]
    return problems


def _value_problems(key: str, values: list[Any], method: Method) -> list[str]:
    problems = []
    for value in values:
        try:
            if key in Training.model_fields:
                TrainingOverrides(**{key: value})
            else:
                why = _type_problem(method, key, value)
                if why:
                    problems.append(f"{value!r} is not a valid {key} ({why})")
        except (ValidationError, TypeError) as e:
            msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
            problems.append(f"{value!r} is not a valid {key} ({msg})")
    return problems


def _name_problems(doc: dict) -> list[Problem]:
    """Run names are distinct, and none is the baseline's."""
    problems, names = [], {}
    for i, run in _runs(doc):
        name = run.get("name") or run.get("method")
        if not isinstance(name, str):
            continue  # pydantic reports the type
        if name in names or name == BASELINE:
            why = "is reserved for the untrained base model" if name == BASELINE else f"repeats runs[{names[name]}]"
            problems.append((line_of(doc, ("runs", i)), f"runs[{i}]: run name '{name}' {why}; give it a distinct name"))
        names.setdefault(name, i)
    return problems


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """A PEFT adapter_config.json as a dict; raises ValueError saying what is wrong with it."""
    import json

    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"no such file {str(path)!r} (paths are relative to the suite file)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("peft_type"), str):
        raise ValueError(f"{str(path)!r} is not a PEFT adapter config (no peft_type)")
    return doc


def adapter_method(doc: dict[str, Any]) -> str:
    return doc["peft_type"].lower()


def adapter_params(doc: dict[str, Any], method: Method) -> dict[str, Any]:
    """The fields of an adapter config a run sets: every field of the method's PEFT config but PEFT's bookkeeping,
    the fields the method fixes, and the dimensions of the model the file was saved from (an unknown field is a
    problem `_run_method` reports)."""
    accepted = method.parameters()
    return {k: sorted(v) if k in SET_FIELDS and isinstance(v, list) else v for k, v in doc.items()
            if k in accepted and not (method.prompt_learning and k in MODEL_DIMENSIONS)}


# Prompt-learning fields PEFT fills from the model it applies the config to (where they are None) and then saves in
# adapter_config.json: a file saved from Llama-3.2-3B says token_dim 3072, which on any other model gives embeddings
# of the wrong width. A run takes them from its own model.
MODEL_DIMENSIONS = ("token_dim", "num_layers", "num_attention_heads", "num_transformer_submodules")


# Fields PEFT holds as sets and saves as lists in no fixed order: sorted, so the same adapter config always resolves
# to the same run config (and config hash).
SET_FIELDS = ("target_modules", "exclude_modules", "modules_to_save")


def _run_method(doc: dict, i: int, run: dict, suite_dir: Path) -> tuple[str | None, dict, list[Problem]]:
    """The run's method id and its params (an adapter_config's fields under the run's own), with the problems of
    the adapter_config file."""
    mid, params = run.get("method"), run.get("params") or {}
    path = run.get("adapter_config")
    if not isinstance(path, str):
        return mid, params, []
    line = line_of(doc, ("runs", i, "adapter_config"))
    try:
        file = read_adapter_config(_local(path, suite_dir))
    except ValueError as e:
        return None, params, [(line, f"runs[{i}].adapter_config: {e}")]
    kind = adapter_method(file)
    if mid is not None and mid in METHODS and METHODS[mid].peft_type != file["peft_type"]:
        return None, params, [(line, f"runs[{i}].adapter_config: its peft_type {file['peft_type']} is not "
                               f"{mid}'s ({METHODS[mid].peft_type}); drop `method` or use another file")]
    mid = mid or kind
    if mid not in METHODS:
        return None, params, [(line, f"runs[{i}].adapter_config: peft_type {file['peft_type']} is not a PEFT type "
                               f"this PEFT version knows{did_you_mean(kind, METHODS)}")]
    from methods.base import BOOKKEEPING

    method = METHODS[mid]
    # PEFT itself loads a file written by another PEFT version by dropping the fields its config class lacks; so does
    # the harness where such a field holds nothing (None, false, empty), and refuses where dropping would change it.
    unknown = [k for k in file if k not in method.parameters() and k not in BOOKKEEPING and k not in method.fixed
               and not (file[k] is None or file[k] is False or file[k] in ("", [], {}))]
    from peft import __version__ as peft_version

    problems = [(line, f"runs[{i}].adapter_config: field '{k}' (set to {file[k]!r}) is not a {method.config_name} "
                 f"field in PEFT {peft_version}{did_you_mean(k, method.parameters())}") for k in unknown]
    return mid, adapter_params(file, method) | (params if isinstance(params, dict) else {}), problems


def _method_problems(doc: dict, suite_dir: Path) -> list[Problem]:
    """Method ids and params, checked against the fields of each method's PEFT config; then PEFT builds the config
    and applies it to the model where the model's architecture is known without downloading anything."""
    problems = []
    training = doc.get("training") if isinstance(doc.get("training"), dict) else {}
    max_seq_len = training.get("max_seq_len", Training().max_seq_len)
    for i, run in _runs(doc):
        mid, params, found = _run_method(doc, i, run, suite_dir)
        problems += found
        if not isinstance(mid, str) or found:
            continue
        if mid not in METHODS:
            problems.append((line_of(doc, ("runs", i, "method")),
                             f"runs[{i}].method: unknown method '{mid}'{did_you_mean(mid, METHODS)}"))
            continue
        method = METHODS[mid]
        if method.refusal:
            problems.append((line_of(doc, ("runs", i, "method")), f"runs[{i}].method: {mid} cannot run here: it "
                             f"{method.refusal}"))
            continue
        if not isinstance(params, dict):
            continue
        found = _param_problems(doc, i, method, params)
        problems += found or _built_problems(doc, i, method, params, max_seq_len)
    return problems


def _param_problems(doc: dict, i: int, method: Method, params: dict) -> list[Problem]:
    problems = []
    accepted = method.parameters()
    for key, value in params.items():
        place, line = f"runs[{i}].params.{key}", line_of(doc, ("runs", i, "params", key))
        if key in method.fixed:
            problems.append((line, f"{place}: {method.id} sets {key}={method.fixed[key]!r} itself; use "
                             f"{'lora' if method.peft_type == 'LORA' else method.peft_type.lower()} to choose it"))
        elif key not in accepted:
            takes = f"the fields of PEFT's {method.config_name}" if accepted else "no parameters"
            problems.append((line, f"{place}: {method.id} takes {takes} - not '{key}'{did_you_mean(key, accepted)}"))
        elif (why := _type_problem(method, key, value)) is not None:
            problems.append((line, f"{place}: {why}"))
    return problems


def _type_problem(method: Method, key: str, value: Any) -> str | None:
    """Why `value` is not of the param's annotated type; None when it is, when it is PEFT's own default (PEFT
    annotates some fields `str` with a None default), or when the type is not one pydantic can check."""
    from methods.base import field_defaults

    annotation, value = method.parameters()[key], to_plain(value)
    if key not in method.extras and key in field_defaults(method.peft_type) and \
            value == field_defaults(method.peft_type)[key]:
        return None
    try:
        adapter = TypeAdapter(annotation)
    except Exception:  # pydantic cannot make a schema of some PEFT annotations (torch types, forward references)
        return None
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError as e:
        try:
            # A field typed as one of PEFT's sub-config dataclasses (LoRA's use_bdlora, kasa_config) takes its fields
            # as a mapping, as adapter_config.json stores it; PEFT builds the dataclass from it.
            if isinstance(value, dict):
                adapter.validate_python(value)
                return None
        except ValidationError:
            pass
        want = getattr(annotation, "__name__", str(annotation).replace("typing.", ""))
        return f"expected {want}, got {value!r} ({e.errors()[0]['msg']})"
    return None


def _plan_for_validation(doc: dict):
    """Stand-ins for what a run knows only once it runs: its step count (the step budget where there is one)."""
    from methods import Plan

    budget = doc.get("budget") if isinstance(doc.get("budget"), dict) else {}
    steps = budget.get("max_steps")
    return Plan(total_steps=steps if isinstance(steps, int) and steps > 0 else 1000, special_token_ids=(0,))


def _built_problems(doc: dict, i: int, method: Method, params: dict, max_seq_len: Any) -> list[Problem]:
    """What PEFT itself says of the params once it builds the config and applies it, and what the config implies."""
    plan = _plan_for_validation(doc)
    try:
        config = method.config(plan, **to_plain(params))
    except Exception as e:  # PEFT's own checks: any error it raises is a problem in this run's params
        return [(line_of(doc, ("runs", i, "params")), f"runs[{i}].params: PEFT rejected them: {e}")]
    problems = []
    virtual = getattr(config, "num_virtual_tokens", None)
    if virtual and isinstance(max_seq_len, int) and virtual >= max_seq_len:
        problems.append((line_of(doc, ("runs", i, "params", "num_virtual_tokens")),
                         f"runs[{i}].params.num_virtual_tokens: {virtual} virtual tokens leave no room in "
                         f"max_seq_len {max_seq_len}"))
    if method.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        problems.append((line_of(doc, ("runs", i, "method")), f"runs[{i}].method: {method.id} needs bitsandbytes, "
                         "which is not installed (pip install bitsandbytes)"))
    why = _apply_problem(doc, method, to_plain(params), plan)
    if why and not problems:
        problems.append((line_of(doc, ("runs", i, "method")), f"runs[{i}]: PEFT cannot apply {method.id} to this "
                         f"model: {why}"))
    return problems


def _apply_problem(doc: dict, method: Method, params: dict, plan) -> str | None:
    """Apply the method to the suite's model built on the meta device, where its architecture is given in the suite
    (a preset or a config); None when it applies, or when the architecture is not known without a download."""
    from bench.models import PRESETS
    from bench.tuners import NeedsWeights, apply

    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    config = PRESETS.get(model.get("preset")) if isinstance(model.get("preset"), str) else model.get("config")
    if not isinstance(config, dict) or method.peft_type is None:
        return None
    try:
        applied = apply(to_plain(config), method, params, plan)
    except NeedsWeights:
        return None
    except Exception as e:  # whatever PEFT raises on this architecture is the reason
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    from methods.base import NOTHING_TRAINS

    return NOTHING_TRAINS if applied.trainable == 0 else None



def _optimizer_problems(doc: dict) -> list[Problem]:
    """training.optimizer, suite-wide and per run: a known optimiser and kwargs it takes."""
    from bench.optim import optimizer_problems

    places = [("training", "optimizer")] + [("runs", i, "training", "optimizer") for i, _ in _runs(doc)]
    problems = []
    for place in places:
        node = _at(doc, place)
        if not isinstance(node, dict) or not isinstance(node.get("name"), str):
            continue  # pydantic reports the shape
        kwargs = node.get("kwargs") if isinstance(node.get("kwargs"), dict) else {}
        for where, msg in optimizer_problems(node["name"], to_plain(kwargs)):
            at = (*place, *where.split("."))
            problems.append((line_of(doc, at) or line_of(doc, place), f"{_place(at)}: {msg}"))
    return problems


def _local(value: str, suite_dir: Path) -> Path:
    # os.path.expanduser leaves an unknown "~user" as it is where Path.expanduser raises.
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else suite_dir / p


def _data_problems(doc: dict, suite_dir: Path) -> list[Problem]:
    problems = []
    dataset = doc.get("dataset") if isinstance(doc.get("dataset"), dict) else {}
    places = [("path",), ("eval_path",), ("eval_data", "path"), ("validation_data", "path")]
    for place in places:
        value = _at(dataset, place)
        if not isinstance(value, str):
            continue
        p, line, key = _local(value, suite_dir), line_of(doc, ("dataset", *place)), ".".join(place)
        if not p.is_file():
            problems.append((line, f"dataset.{key}: no such file {str(p)!r} (paths are relative to the suite file)"))
        elif p.suffix.lower() not in (".json", ".jsonl", ".csv", ".tsv"):
            problems.append((line, f"dataset.{key}: unknown data format '{p.suffix}' in {str(p)!r} (use .json, "
                             ".jsonl, .csv or .tsv)"))
    ev = doc.get("eval")
    if isinstance(ev, dict) and isinstance(ev.get("forgetting"), str):
        p = _local(ev["forgetting"], suite_dir)
        if not p.is_file():
            problems.append((line_of(doc, ("eval", "forgetting")), f"eval.forgetting: no such file {str(p)!r} (a "
                             "text file of paragraphs separated by blank lines; paths are relative to the suite file)"))
    return problems


def _model_problems(doc: dict, suite_dir: Path) -> list[Problem]:
    model = doc.get("model")
    if not isinstance(model, dict):
        return []
    checks = {"path": _model_path_problem, "preset": _preset_problem, "gguf": _gguf_problem, "hub": _hub_problem}
    problems = []
    for key, check in checks.items():
        if isinstance(model.get(key), str):
            problem = check(model, suite_dir)
            if problem:
                problems.append((line_of(doc, ("model", key)), f"model.{key}: {problem}"))
    return problems


def _model_path_problem(model: dict, suite_dir: Path) -> str | None:
    p = _local(model["path"], suite_dir)
    if not p.is_dir():
        return f"no such folder {str(p)!r}"
    return None if (p / "config.json").is_file() else f"{str(p)!r} is not a model folder (no config.json)"


def _preset_problem(model: dict, suite_dir: Path) -> str | None:
    from bench.models import PRESETS

    name = model["preset"]
    return None if name in PRESETS else \
        f"unknown preset '{name}'{did_you_mean(name, PRESETS)}; known: {', '.join(PRESETS)}"


def _gguf_problem(model: dict, suite_dir: Path) -> str | None:
    from bench.models import gguf_file

    if not isinstance(model.get("package"), (str, type(None))):
        return None  # pydantic reports the type
    try:
        f = gguf_file(model["gguf"], model.get("package"), suite_dir)
    except FileNotFoundError as e:
        return str(e)
    with f.open("rb") as fh:
        magic = fh.read(4)
    return None if magic == b"GGUF" else f"{str(f)!r} is not a GGUF file (it does not start with 'GGUF')"


def _hub_problem(model: dict, suite_dir: Path) -> str | None:
    # Only the id's spelling: whether the Hub or its cache has it is for `run` to find out, so that a suite meant
    # for a machine with Hub access still validates offline.
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model["hub"])
    except HFValidationError:
        return f"'{model['hub']}' is not a Hub id (owner/name: letters, digits, '-', '_' and '.')"
    return None


def _distributed_problems(doc: dict, suite_dir: Path) -> list[Problem]:
    """The accelerate config files that training.distributed names, suite-wide or per run, exist."""
    places = [("training", "distributed", "config")]
    places += [("runs", i, "training", "distributed", "config") for i, _ in _runs(doc)]
    problems = []
    for place in places:
        node = _at(doc, place)
        if not isinstance(node, str):
            continue
        path = _local(node, suite_dir)
        if not path.is_file():
            problems.append((line_of(doc, place), f"{_place(place)}: no such file {str(path)!r} (an accelerate "
                             "config file, relative to the suite file; `accelerate config` writes one)"))
        elif (why := _accelerate_config_problem(path)) is not None:
            problems.append((line_of(doc, place), f"{_place(place)}: {str(path)!r} {why}"))
    return problems


def _accelerate_config_problem(path: Path) -> str | None:
    """FSDP must be FSDP2: FSDP1 flattens the frozen base (bf16) and the weights that train (fp32) of one unit into
    one tensor and fails ("Must flatten tensors with uniform dtype")."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="safe").load(path.read_text())
    except (YAMLError, UnicodeDecodeError) as e:
        return f"is not a YAML accelerate config ({str(e).splitlines()[0]})"
    if not isinstance(doc, dict) or doc.get("distributed_type") != "FSDP":
        return None
    version = (doc.get("fsdp_config") or {}).get("fsdp_version", 1)
    if version != 2:
        return (f"sets up FSDP version {version}, which flattens the frozen base and the fp32 weights that train "
                "into one tensor and fails on their mixed dtypes; set fsdp_config.fsdp_version: 2")
    return None


def _at(doc: Any, place: tuple) -> Any:
    """The node at `place` in the document, or None where the document has no such place."""
    node = doc
    for key in place:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        else:
            return None
    return node


def _output_problem(output: Path) -> str | None:
    probe = output
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"output: {str(probe)!r} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"output: cannot write to {str(probe)!r} (permission denied); choose another output folder"
    return None


def _device_problems(suite: Suite, doc: dict) -> list[Problem]:
    """Settings this machine cannot run: fp16 without CUDA (its loss scaling is CUDA's), flash attention without
    the flash-attn package."""
    import torch

    places = [(("training",), suite.training)] + [(("runs", i, "training"), run.training)
                                                   for i, run in enumerate(suite.runs)]
    problems = []
    for place, training in places:
        if training.precision == "fp16" and not torch.cuda.is_available():
            problems.append((line_of(doc, (*place, "precision")), f"{_place(place)}.precision: fp16 needs a CUDA "
                             "device and this machine has none; use bf16 or fp32 (or validate where the runs will "
                             "run)"))
        if training.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            problems.append((line_of(doc, (*place, "attn_implementation")), f"{_place(place)}.attn_implementation: "
                             "flash_attention_2 needs the flash-attn package (pip install flash-attn, on a CUDA "
                             "machine); sdpa and eager need nothing"))
    return problems


def _suite_problems(suite: Suite, doc: dict) -> list[Problem]:
    """What only the whole, typed suite shows: the output folder, seeds against run seeds, the regex, metrics."""
    from bench.scoring import EXTRACTORS, SCORERS

    problems = []
    out_problem = _output_problem(suite.output_dir)
    if out_problem:
        problems.append((line_of(doc, ("output",)), out_problem))
    if suite.seeds is not None:
        problems += [(line_of(doc, ("runs", i, "training", "seed")), f"runs[{i}].training.seed: the suite's seeds "
                      "set every run's seed; remove one of the two")
                     for i, run in enumerate(suite.runs) if run.training.seed is not None]
    if suite.eval.extract is not None and suite.eval.extract not in EXTRACTORS:
        try:
            if re.compile(suite.eval.extract).groups < 1:
                problems.append((line_of(doc, ("eval", "extract")), "eval.extract: the regex needs one group "
                                 f"(the answer), e.g. '#### (.+)'; or a preset: {', '.join(EXTRACTORS)}"))
        except re.error as e:
            problems.append((line_of(doc, ("eval", "extract")), f"eval.extract: not a valid regex: {e}"))
    for i, name in enumerate(suite.eval.metrics):
        if name not in SCORERS and not name.startswith("hub:"):
            problems.append((line_of(doc, ("eval", "metrics", i)), f"eval.metrics[{i}]: unknown metric "
                             f"'{name}'{did_you_mean(name, SCORERS)}; known: {', '.join(SCORERS)}, or hub:NAME"))
    return problems


def _format_problems(suite: Suite, doc: dict) -> list[Problem]:
    """A tokenizer known here to lack a chat template, where the suite formats with one; lm-eval's task folder."""
    from bench.models import ModelSourceError, has_chat_template

    ds, problems = suite.dataset, []
    if ds.chat_template is not False and ds.prompt_format is None:
        try:
            has = has_chat_template(suite.model, suite.base_dir)
        except (OSError, ValueError, ModelSourceError):
            has = None  # an unreadable model source is reported by _model_problems
        if has is False:
            problems.append((line_of(doc, ("dataset",)), "dataset: the model's tokenizer has no chat template, so "
                             "examples cannot be formatted; set dataset.chat_template: false and a plain "
                             "dataset.prompt_format, e.g. \"Question: {prompt}\\nAnswer:\""))
    lm = suite.eval.lm_eval
    if lm is not None and lm.include_path is not None and not Path(suite.resolve(lm.include_path)).is_dir():
        problems.append((line_of(doc, ("eval", "lm_eval", "include_path")), "eval.lm_eval.include_path: no such "
                         f"folder {suite.resolve(lm.include_path)!r} (a folder of lm-eval task YAMLs, relative to the "
                         "suite file)"))
    if lm is not None and importlib.util.find_spec("lm_eval") is None:
        problems.append((line_of(doc, ("eval", "lm_eval")), "eval.lm_eval: lm-evaluation-harness is not installed "
                         "(pip install 'peft-bench[lm-eval]')"))
    return problems


def _tracking_problems(suite: Suite, doc: dict) -> list[Problem]:
    """Every tracker the suite turns on is installed: each is an optional extra."""
    from bench.tracking import missing_extra

    problems = []
    for name in suite.tracking.names:
        why = missing_extra(name)
        if why:
            problems.append((line_of(doc, ("tracking", name)), f"tracking.{name}: {why}"))
    return problems


def load_suite(path: str | Path) -> Suite:
    """Parse and validate a suite file; raise SuiteError listing every problem with its line."""
    path = Path(path)
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise SuiteError(path, [f"expected a mapping of suite keys at the top level, got {type(doc).__name__}"])
    from bench.quantcheck import quantization_problems

    problems: list[Problem] = []
    suite = None
    try:
        suite = Suite(**to_plain(doc), source=str(path))
    except ValidationError as e:
        problems += _pydantic_problems(e, doc)
    problems += _name_problems(doc) + _method_problems(doc, path.parent) + _sweep_problems(doc)
    problems += _optimizer_problems(doc)
    problems += _data_problems(doc, path.parent) + _distributed_problems(doc, path.parent)
    problems += _model_problems(doc, path.parent)
    if suite is not None:
        problems += (_suite_problems(suite, doc) + _device_problems(suite, doc) + _format_problems(suite, doc)
                     + _tracking_problems(suite, doc) + quantization_problems(suite, doc))
    if problems:
        problems.sort(key=lambda p: (p[0] or 0))
        raise SuiteError(path, [f"line {line}, {msg}" if line else msg for line, msg in problems])
    return _with_adapter_methods(suite)


def _with_adapter_methods(suite: Suite) -> Suite:
    """adapter_config paths made absolute, and each such run's method taken from its file where the run names none."""
    runs = []
    for run in suite.runs:
        if run.adapter_config is not None:
            path = suite.resolve(run.adapter_config)
            run = run.model_copy(update={"adapter_config": path,
                                         "method": run.method or adapter_method(read_adapter_config(path))})
        runs.append(run)
    return suite.model_copy(update={"runs": runs})
