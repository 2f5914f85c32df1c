"""Suite validation: every problem at once, each with its YAML line: the schema's errors, then each run as resolved.

The document (read once by bench.spec.suite.load_suite) gives one map from each place to its line (`Lines`); the checks
read typed values: the `Suite` (or, where the schema refuses it, each section and run entry it accepts on its own) and
each `RunConfig` that resolution makes, every sweep point included. A new check is one function returning
`Problem`s, listed in `problems`. Imports nothing heavy at its top: checks that need PEFT or torch import them when
they run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from bench.run import safety
from bench.spec.adapterfile import adapter_method
from bench.core.config import BASELINE, DatasetSpec, Eval, ModelSpec, Optimizer, RunConfig, Training, TrainingOverrides
from bench.core.layout import UnsafeRunName, run_path
from bench.spec.schema import RunSpec, Suite
from bench.core.util import did_you_mean, local_path
from bench.core.yamlio import Lines, to_plain

if TYPE_CHECKING:  # methods loads PEFT and torch
    from methods import Method

Problem = tuple[int | None, str]


def _place(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _pydantic_problems(err: ValidationError, lines: Lines) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = _doc_loc(e["loc"], lines, e["type"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden" and loc and loc[-1] == safety.KEY:
            continue  # safety.key_problems says where the choice belongs
        if e["type"] == "extra_forbidden" and loc:
            msg = f"unknown key '{loc[-1]}'{did_you_mean(loc[-1], _fields_at(loc[:-1]))}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("model_type", "dict_type") and not isinstance(e["input"], dict):
            msg = f"{msg}, got {e['input']!r}"
        problems.append((lines.of(loc), f"{_place(loc)}: {msg}"))
    return problems


def _doc_loc(loc: tuple, lines: Lines, kind: str) -> tuple:
    """The part of pydantic's error place that exists in the document.

    Pydantic adds union-branch markers ("literal['epoch']", "constrained-int") to the place; they are whatever
    does not name a key or index of the document. Matching against the document keeps user keys that happen
    to look like markers ("learning-rate"). A key that is not there stays only when it is the missing one.
    """
    out: list = []
    for i, part in enumerate(loc):
        if lines.has((*out, part)) or (i == len(loc) - 1 and kind == "missing" and lines.mapping(tuple(out))):
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


@dataclass(frozen=True)
class Typed:
    """The suite as typed as the schema allows: the whole `Suite` where it accepts it; else each section on its own,
    without the keys pydantic refused (None where the section itself is refused), and each run entry it accepts, by
    index. So a problem in one place hides no other's."""

    model: ModelSpec | None
    dataset: DatasetSpec | None
    training: Training | None
    eval: Eval | None
    runs: list[tuple[int, RunSpec]]
    suite_dir: Path

    @classmethod
    def of(cls, doc: dict, suite: Suite | None, suite_dir: Path) -> Typed:
        if suite is not None:
            return cls(suite.model, suite.dataset, suite.training, suite.eval, list(enumerate(suite.runs)), suite_dir)
        plain = to_plain(doc)
        sections = {key: _section(model, plain.get(key)) for key, model in
                    (("model", ModelSpec), ("dataset", DatasetSpec), ("training", Training), ("eval", Eval))}
        runs = plain.get("runs") if isinstance(plain.get("runs"), list) else []
        return cls(**sections, runs=[(i, spec) for i, run in enumerate(runs)
                                     if (spec := _section(RunSpec, run, drop=False)) is not None], suite_dir=suite_dir)

    def trainings(self) -> list[tuple[tuple, Training | TrainingOverrides]]:
        """The suite's training settings and each run's overrides, by their place."""
        own = [(("training",), self.training)] if self.training is not None else []
        return own + [(("runs", i, "training"), spec.training) for i, spec in self.runs]


def _section(model: type, value: Any, drop: bool = True) -> Any:
    """`value` typed as `model`; where pydantic refuses keys of it (and `drop`), typed without them, so the keys it
    accepts are still checked; None where it refuses the section as a whole."""
    if not isinstance(value, dict):
        return None
    try:
        return model.model_validate(value)
    except ValidationError as e:
        errors = e.errors()
        if not drop or not all(err["loc"] for err in errors):
            return None  # refused as a whole (a rule over several keys), or a run entry: pydantic says why
        refused = {err["loc"][0] for err in errors}
        return _section(model, {k: v for k, v in value.items() if k not in refused}, drop=False)


def _sweep_problems(lines: Lines, specs: list[tuple[int, RunSpec]]) -> tuple[list[Problem], set[int]]:
    """Sweep keys are training fields or the method's params, and every value is one that key accepts; with the runs
    that have problems here."""
    from methods import METHODS

    problems, bad = [], set()
    for i, spec in specs:
        if spec.sweep is None or spec.method not in METHODS:
            continue
        accepted, found = METHODS[spec.method].parameters(), []
        for key, values in spec.sweep.items():
            place, line = f"runs[{i}].sweep.{key}", lines.of(("runs", i, "sweep", key))
            if key not in Training.model_fields and key not in accepted:
                choices = list(Training.model_fields) + list(accepted)
                found.append((line, f"{place}: not a training field or a {spec.method} param"
                              f"{did_you_mean(key, choices)}"))
            elif values == "default" and key != "learning_rate":
                found.append((line, f"{place}: 'default' is a grid for learning_rate only; list the values"))
            elif isinstance(values, list) and not values:
                found.append((line, f"{place}: no values to try; list at least one (or remove the key)"))
            elif isinstance(values, list):
                found += [(line, f"{place}: {p}") for p in _value_problems(key, values, METHODS[spec.method])]
                found += [] if key in Training.model_fields else _nonfinite(values, ("runs", i, "sweep", key), lines)
        problems += found
        bad |= {i} if found else set()
    return problems, bad


def _nonfinite(value: Any, place: tuple, lines: Lines) -> list[Problem]:
    """Infinite and not-a-number values (YAML's .inf, .nan) in `value`, which sits at `place`, where the schema takes
    any value (method params, optimiser kwargs, a model config): typed floats refuse them (allow_inf_nan=False)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(lines.of(place), f"{_place(place)}: expected a finite number, got {float(value)!r}")]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [p for key, v in items for p in _nonfinite(v, (*place, key), lines)]


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


def _name_problems(lines: Lines, specs: list[tuple[int, RunSpec]]) -> list[Problem]:
    """Run names are distinct, and none is the baseline's."""
    problems, names = [], {}
    for i, spec in specs:
        name = spec.run_name
        if name is None:
            continue  # an adapter_config's method names the run: resolution checks it
        if name in names or name == BASELINE:
            why = "is reserved for the untrained base model" if name == BASELINE else f"repeats runs[{names[name]}]"
            problems.append((lines.of(("runs", i)), f"runs[{i}]: run name '{name}' {why}; give it a distinct name"))
        names.setdefault(name, i)
    return problems


def _run_method(lines: Lines, i: int, spec: RunSpec, files: dict[int, dict | str]) -> tuple[str | None, dict,
                                                                                         list[Problem]]:
    """The run's method id and its own params, with the problems of the adapter_config file (`files`: each file's
    content as load_suite read it, or why it could not)."""
    from methods import METHODS

    mid, params = spec.method, spec.params
    if spec.adapter_config is None:
        return mid, params, []
    line, file = lines.of(("runs", i, "adapter_config")), files.get(i)
    if not isinstance(file, dict):  # unread where the suite did not type; a problem where it could not be read
        return None, params, [(line, f"runs[{i}].adapter_config: {file}")] if isinstance(file, str) else []
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
    return mid, params, problems  # the file's fields merge in resolution, and PEFT builds the result


def _method_problems(lines: Lines, specs: list[tuple[int, RunSpec]],
                     files: dict[int, dict | str]) -> tuple[list[Problem], set[int]]:
    """Method ids and params, checked against the fields of each method's PEFT config; with the runs that have
    problems here (their resolved configs are not built)."""
    from methods import METHODS

    problems, bad = [], set()
    for i, spec in specs:
        mid, params, found = _run_method(lines, i, spec, files)
        if mid is not None and not found:
            if mid not in METHODS:
                found = [(lines.of(("runs", i, "method")),
                          f"runs[{i}].method: unknown method '{mid}'{did_you_mean(mid, METHODS)}")]
            elif METHODS[mid].refusal:
                found = [(lines.of(("runs", i, "method")), f"runs[{i}].method: {mid} cannot run here: it "
                          f"{METHODS[mid].refusal}")]
            else:
                found = _param_problems(lines, i, METHODS[mid], params) + _nonfinite(params, ("runs", i, "params"),
                                                                                      lines)
        problems += found
        if found or mid is None:
            bad.add(i)
    return problems, bad


def _param_problems(lines: Lines, i: int, method: Method, params: dict) -> list[Problem]:
    problems = []
    accepted = method.parameters()
    for key, value in params.items():
        place, line = f"runs[{i}].params.{key}", lines.of(("runs", i, "params", key))
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


def _plan_for_validation(suite: Suite):
    """Stand-ins for what a run knows only once it runs: its step count (the step budget where there is one)."""
    from methods import RunFacts

    return RunFacts(total_steps=suite.budget.max_steps or 1000, special_token_ids=(0,))


def _resolved_problems(suite: Suite, lines: Lines, bad: set[int]) -> list[Problem]:
    """Each entry resolved on its own, every sweep point and seed with it (one bad run hides nothing of another's):
    its name is a file name inside the output folder, PEFT builds the config of that exact point and applies it."""
    from methods import METHODS

    problems: list[Problem] = []
    for i, spec in enumerate(suite.runs):
        if i in bad:
            continue
        try:
            configs = suite.resolve_run(spec)
        except (OSError, ValueError) as e:
            if isinstance(e, ValidationError):
                raise
            continue  # an accelerate config that is not there, a NUL byte in a path: the path checks say so
        built: set[str] = set()
        for cfg in configs:
            found = _name_problem(suite, lines, i, cfg)
            key = json.dumps(cfg.params, sort_keys=True, default=str) + str(cfg.training.max_seq_len)
            if key not in built:
                built.add(key)
                found += _built_problems(suite, lines, i, METHODS[spec.method], cfg)
            problems += [p for p in found if p not in problems]
    return problems


def _name_problem(suite: Suite, lines: Lines, i: int, cfg: RunConfig) -> list[Problem]:
    """A sweep value becomes part of a run's name, and so of its file names."""
    try:
        run_path(suite.output_dir, cfg.run, ".json")
    except UnsafeRunName as e:
        line, place = _point_place(lines, i, cfg)
        return [(line, f"{place}: {e}; choose values without path separators")]
    return []


def _point_place(lines: Lines, i: int, cfg: RunConfig, key: str | None = None) -> tuple[int | None, str]:
    """Where a resolved config's method params come from: the sweep key that set them for this point, else the
    run's params."""
    swept = [k for k in (cfg.sweep or {}) if k not in Training.model_fields and (key is None or k == key)]
    if swept:
        point = ", ".join(f"{k}={cfg.sweep[k]!r}" for k in swept)
        return lines.of(("runs", i, "sweep", swept[0])), f"runs[{i}].sweep.{swept[0]}: the point {point} (run " \
            f"{cfg.run})"
    at = ("runs", i, "params", key) if key else ("runs", i, "params")
    return lines.of(at), f"runs[{i}].params" + (f".{key}" if key else "")


def _built_problems(suite: Suite, lines: Lines, i: int, method: Method, cfg: RunConfig) -> list[Problem]:
    """What PEFT itself says of a resolved config's params once it builds the config and applies it, and what the
    config implies for the run's own max_seq_len."""
    plan = _plan_for_validation(suite)
    try:
        config = method.config(plan, **cfg.params)
    except Exception as e:  # PEFT's own checks: any error it raises is a problem in this run's params
        line, place = _point_place(lines, i, cfg)
        return [(line, f"{place}: PEFT rejected {'it' if cfg.sweep else 'them'}: {e}")]
    problems = []
    virtual, max_seq_len = getattr(config, "num_virtual_tokens", None), cfg.training.max_seq_len
    if virtual and virtual >= max_seq_len:
        line, place = _point_place(lines, i, cfg, "num_virtual_tokens")
        own = " (the run's training.max_seq_len)" if max_seq_len != suite.training.max_seq_len else ""
        problems.append((line, f"{place}: {virtual} virtual tokens leave no room in max_seq_len {max_seq_len}{own}"))
    if method.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        problems.append((lines.of(("runs", i, "method")), f"runs[{i}].method: {method.id} needs bitsandbytes, "
                         "which is not installed (pip install bitsandbytes)"))
    why = _apply_problem(suite, method, cfg.params, plan)
    if why and not problems:
        line, place = _point_place(lines, i, cfg)
        at = f"runs[{i}]" if not cfg.sweep else place
        problems.append((lines.of(("runs", i, "method")) if not cfg.sweep else line,
                         f"{at}: PEFT cannot apply {method.id} to this model: {why}"))
    return problems


def _apply_problem(suite: Suite, method: Method, params: dict, plan) -> str | None:
    """Apply the method to the suite's model built on the meta device, where its architecture is given in the suite
    (a preset or a config); None when it applies, or when the architecture is not known without a download."""
    from bench.run.presets import PRESETS
    from bench.run.tuners import NeedsWeights, apply

    config = PRESETS.get(suite.model.preset) if suite.model.preset is not None else suite.model.config
    if config is None or method.peft_type is None:
        return None
    try:
        applied = apply(config, method, params, plan)
    except NeedsWeights:
        return None
    except Exception as e:  # whatever PEFT raises on this architecture is the reason
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    from methods.base import NOTHING_TRAINS

    return NOTHING_TRAINS if applied.trainable == 0 else None



def _optimizer_problems(typed: Typed, lines: Lines) -> list[Problem]:
    """training.optimizer, suite-wide and per run: a known optimiser and kwargs it takes."""
    from bench.run.optim import optimizer_problems

    problems = []
    for place, training in typed.trainings():
        opt: Optimizer | None = training.optimizer
        if opt is None:
            continue
        place = (*place, "optimizer")
        for where, msg in optimizer_problems(opt.name, opt.kwargs):
            at = (*place, *where.split("."))
            problems.append((lines.of(at), f"{_place(at)}: {msg}"))
        problems += _nonfinite(opt.kwargs, (*place, "kwargs"), lines)
    return problems


def _data_problems(typed: Typed, lines: Lines) -> list[Problem]:
    """The local data files the dataset and eval sections name exist and have a format the loader reads."""
    ds, problems = typed.dataset, []
    paths = [] if ds is None else [(("path",), ds.path), (("eval_path",), ds.eval_path)] + [
        ((key, "path"), src.path) for key in ("eval_data", "validation_data") if (src := getattr(ds, key)) is not None]
    for place, value in paths:
        if value is None:
            continue
        p, line, key = local_path(value, typed.suite_dir), lines.of(("dataset", *place)), ".".join(place)
        if not p.is_file():
            problems.append((line, f"dataset.{key}: no such file {str(p)!r} (paths are relative to the suite file)"))
        elif p.suffix.lower() not in (".json", ".jsonl", ".csv", ".tsv"):
            problems.append((line, f"dataset.{key}: unknown data format '{p.suffix}' in {str(p)!r} (use .json, "
                             ".jsonl, .csv or .tsv)"))
    if typed.eval is not None and isinstance(typed.eval.forgetting, str):
        p = local_path(typed.eval.forgetting, typed.suite_dir)
        if not p.is_file():
            problems.append((lines.of(("eval", "forgetting")), f"eval.forgetting: no such file {str(p)!r} (a "
                             "text file of paragraphs separated by blank lines; paths are relative to the suite file)"))
    return problems


def _model_problems(typed: Typed, lines: Lines) -> list[Problem]:
    model = typed.model
    if model is None:
        return []
    checks = {"path": _model_path_problem, "preset": _preset_problem, "gguf": _gguf_problem, "hub": _hub_problem}
    problems = []
    for key, check in checks.items():
        if getattr(model, key) is not None:
            problem = check(model, typed.suite_dir)
            if problem:
                problems.append((lines.of(("model", key)), f"model.{key}: {problem}"))
    return problems + _nonfinite(model.config, ("model", "config"), lines)


def _model_path_problem(model: ModelSpec, suite_dir: Path) -> str | None:
    p = local_path(model.path, suite_dir)
    if not p.is_dir():
        return f"no such folder {str(p)!r}"
    if not (p / "config.json").is_file():
        return f"{str(p)!r} is not a model folder (no config.json)"
    from bench.spec.quantcheck import prequantized_problem

    return prequantized_problem(p / "config.json")


def _preset_problem(model: ModelSpec, suite_dir: Path) -> str | None:
    from bench.run.models import PRESETS

    name = model.preset
    return None if name in PRESETS else \
        f"unknown preset '{name}'{did_you_mean(name, PRESETS)}; known: {', '.join(PRESETS)}"


def _gguf_problem(model: ModelSpec, suite_dir: Path) -> str | None:
    from bench.run.models import gguf_file

    try:
        f = gguf_file(model.gguf, model.package, suite_dir)
    except FileNotFoundError as e:
        return str(e)
    with f.open("rb") as fh:
        magic = fh.read(4)
    return None if magic == b"GGUF" else f"{str(f)!r} is not a GGUF file (it does not start with 'GGUF')"


def _hub_problem(model: ModelSpec, suite_dir: Path) -> str | None:
    # Only the id's spelling: whether the Hub or its cache has it is for `run` to find out, so that a suite meant
    # for a machine with Hub access still validates offline.
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model.hub)
    except HFValidationError:
        return f"'{model.hub}' is not a Hub id (owner/name: letters, digits, '-', '_' and '.')"
    return None


def _distributed_problems(typed: Typed, lines: Lines) -> list[Problem]:
    """The accelerate config files that training.distributed names, suite-wide or per run, exist."""
    problems = []
    for place, training in typed.trainings():
        if training.distributed is None or training.distributed.config is None:
            continue
        place = (*place, "distributed", "config")
        path, line = local_path(training.distributed.config, typed.suite_dir), lines.of(place)
        if not path.is_file():
            problems.append((line, f"{_place(place)}: no such file {str(path)!r} (an accelerate config file, relative "
                             "to the suite file; `accelerate config` writes one)"))
        elif (why := _accelerate_config_problem(path)) is not None:
            problems.append((line, f"{_place(place)}: {str(path)!r} {why}"))
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


def _output_problem(output: Path) -> str | None:
    probe = output
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"output: {str(probe)!r} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"output: cannot write to {str(probe)!r} (permission denied); choose another output folder"
    return None


def _device_problems(suite: Suite, lines: Lines) -> list[Problem]:
    """Settings this machine cannot run: fp16 without CUDA (its loss scaling is CUDA's), flash attention without
    the flash-attn package."""
    import torch

    places = [(("training",), suite.training)] + [(("runs", i, "training"), run.training)
                                                   for i, run in enumerate(suite.runs)]
    problems = []
    for place, training in places:
        if training.precision == "fp16" and not torch.cuda.is_available():
            problems.append((lines.of((*place, "precision")), f"{_place(place)}.precision: fp16 needs a CUDA "
                             "device and this machine has none; use bf16 or fp32 (or validate where the runs will "
                             "run)"))
        if training.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            problems.append((lines.of((*place, "attn_implementation")), f"{_place(place)}.attn_implementation: "
                             "flash_attention_2 needs the flash-attn package (pip install flash-attn, on a CUDA "
                             "machine); sdpa and eager need nothing"))
    return problems


def _suite_problems(suite: Suite, lines: Lines) -> list[Problem]:
    """What only the whole, typed suite shows: the output folder, seeds against run seeds, the regex, metrics."""
    from bench.core.scoring import SCORERS, pattern_problem

    problems = []
    out_problem = _output_problem(suite.output_dir)
    if out_problem:
        problems.append((lines.of(("output",)), out_problem))
    if suite.seeds is not None:
        problems += [(lines.of(("runs", i, "training", "seed")), f"runs[{i}].training.seed: the suite's seeds "
                      "set every run's seed; remove one of the two")
                     for i, run in enumerate(suite.runs) if run.training.seed is not None]
    if suite.eval.extract is not None and (why := pattern_problem(suite.eval.extract)) is not None:
        problems.append((lines.of(("eval", "extract")), f"eval.extract: {why}"))
    for i, name in enumerate(suite.eval.metrics):
        if name not in SCORERS and not name.startswith("hub:"):
            problems.append((lines.of(("eval", "metrics", i)), f"eval.metrics[{i}]: unknown metric "
                             f"'{name}'{did_you_mean(name, SCORERS)}; known: {', '.join(SCORERS)}, or hub:NAME"))
    return problems


def _format_problems(suite: Suite, lines: Lines) -> list[Problem]:
    """A tokenizer known here to lack a chat template, where the suite formats with one; lm-eval's task folder."""
    from bench.run.models import ModelSourceError, has_chat_template

    ds, problems = suite.dataset, []
    if ds.chat_template is not False and ds.prompt_format is None:
        try:
            has = has_chat_template(suite.model, suite.base_dir)
        except (OSError, ValueError, ModelSourceError):
            has = None  # an unreadable model source is reported by _model_problems
        if has is False:
            problems.append((lines.of(("dataset",)), "dataset: the model's tokenizer has no chat template, so "
                             "examples cannot be formatted; set dataset.chat_template: false and a plain "
                             "dataset.prompt_format, e.g. \"Question: {prompt}\\nAnswer:\""))
    lm = suite.eval.lm_eval
    if lm is not None and lm.include_path is not None and not Path(suite.resolve(lm.include_path)).is_dir():
        problems.append((lines.of(("eval", "lm_eval", "include_path")), "eval.lm_eval.include_path: no such "
                         f"folder {suite.resolve(lm.include_path)!r} (a folder of lm-eval task YAMLs, relative to the "
                         "suite file)"))
    if lm is not None and importlib.util.find_spec("lm_eval") is None:
        problems.append((lines.of(("eval", "lm_eval")), "eval.lm_eval: lm-evaluation-harness is not installed "
                         "(pip install 'peft-bench[lm-eval]')"))
    return problems


def _tracking_problems(suite: Suite, lines: Lines) -> list[Problem]:
    """Every tracker the suite turns on is installed: each is an optional extra."""
    from bench.launch.tracking import missing_extra

    problems = []
    for name in suite.tracking.names:
        why = missing_extra(name)
        if why:
            problems.append((lines.of(("tracking", name)), f"tracking.{name}: {why}"))
    return problems


def _trust_problems(suite: Suite, lines: Lines, trusted: bool) -> list[Problem]:
    lm = suite.eval.lm_eval
    include = suite.resolve(lm.include_path) if lm is not None and lm.include_path is not None else None
    return safety.problems(lines, suite.eval.metrics, include, trusted)


def _quantization_problems(suite: Suite, lines: Lines) -> list[Problem]:
    from bench.spec.quantcheck import quantization_problems  # tries each quantised base: loads torch and PEFT

    return quantization_problems(suite, lines)


def problems(doc: dict, path: Path, suite: Suite | None, error: ValidationError | None,
             files: dict[int, dict | str], trust_remote_code: bool = False) -> list[str]:
    """Every problem of the suite file, sorted by line, each as 'line N, place: what'. `suite` is the typed suite
    (None where the schema refused it, `error` saying why); `files` each run's adapter_config as load_suite read it;
    code the suite would run is a problem unless `trust_remote_code` (the command line's flag)."""
    lines, typed = Lines(doc), Typed.of(doc, suite, path.parent)
    found = _pydantic_problems(error, lines) if error is not None else []
    method_found, bad = _method_problems(lines, typed.runs, files)
    sweep_found, bad_sweeps = _sweep_problems(lines, typed.runs)
    found += _name_problems(lines, typed.runs) + method_found + sweep_found + _optimizer_problems(typed, lines)
    found += _data_problems(typed, lines) + _distributed_problems(typed, lines) + _model_problems(typed, lines)
    found += safety.key_problems(doc)  # keys no schema has (trust_remote_code): only the document shows them
    if suite is not None:
        found += (_suite_problems(suite, lines) + _device_problems(suite, lines) + _format_problems(suite, lines)
                  + _tracking_problems(suite, lines) + _resolved_problems(suite, lines, bad | bad_sweeps)
                  + _trust_problems(suite, lines, trust_remote_code) + _quantization_problems(suite, lines))
    found.sort(key=lambda p: (p[0] or 0))
    return [f"line {line}, {msg}" if line else msg for line, msg in found]
