"""Suite validation: every problem at once, each with its YAML line: the schema's errors, then each run as resolved.

The document (read once by bench.spec.suite.load_suite) gives lines; the checks read the typed `Suite` and, for method
params, each `RunConfig` that resolution makes, every sweep point included. A new check is one function returning
`Problem`s, listed in `problems`. Imports nothing heavy at its top: checks that need PEFT or torch import them when
they run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from bench.run import safety
from bench.spec.adapterfile import adapter_method
from bench.core.config import BASELINE, RunConfig, Training, TrainingOverrides
from bench.core.layout import UnsafeRunName, run_path
from bench.spec.schema import RunSpec, Suite
from bench.core.util import did_you_mean, local_path
from bench.core.yamlio import line_of, to_plain

if TYPE_CHECKING:  # methods loads PEFT and torch
    from methods import Method

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
        if e["type"] == "extra_forbidden" and loc and loc[-1] == safety.KEY:
            continue  # safety.key_problems says where the choice belongs
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


def _specs(doc: dict) -> list[tuple[int, RunSpec]]:
    """Each run entry the schema accepts on its own, typed, by its index (one the schema refuses has its problems
    from pydantic). Read per entry, so a problem elsewhere in the suite hides none of a run's own."""
    specs = []
    for i, run in _runs(doc):
        try:
            specs.append((i, RunSpec.model_validate(to_plain(run))))
        except ValidationError:
            continue
    return specs


def _sweep_problems(doc: dict, specs: list[tuple[int, RunSpec]]) -> tuple[list[Problem], set[int]]:
    """Sweep keys are training fields or the method's params, and every value is one that key accepts; with the runs
    that have problems here."""
    from methods import METHODS

    problems, bad = [], set()
    for i, spec in specs:
        if spec.sweep is None or spec.method not in METHODS:
            continue
        accepted, found = METHODS[spec.method].parameters(), []
        for key, values in spec.sweep.items():
            place, line = f"runs[{i}].sweep.{key}", line_of(doc, ("runs", i, "sweep", key))
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
                found += [] if key in Training.model_fields else _nonfinite(doc, ("runs", i, "sweep", key))
        problems += found
        bad |= {i} if found else set()
    return problems, bad


def _nonfinite(doc: dict, place: tuple) -> list[Problem]:
    """Infinite and not-a-number values (YAML's .inf, .nan) where the schema takes any value (method params,
    optimiser kwargs, a model config): typed floats refuse them themselves (allow_inf_nan=False)."""
    node = _at(doc, place)
    if isinstance(node, float) and not math.isfinite(node):
        return [(line_of(doc, place), f"{_place(place)}: expected a finite number, got {float(node)!r}")]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [p for key, _ in items for p in _nonfinite(doc, (*place, key))]


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


def _name_problems(doc: dict, specs: list[tuple[int, RunSpec]]) -> list[Problem]:
    """Run names are distinct, and none is the baseline's."""
    problems, names = [], {}
    for i, spec in specs:
        name = spec.run_name
        if name is None:
            continue  # an adapter_config's method names the run: resolution checks it
        if name in names or name == BASELINE:
            why = "is reserved for the untrained base model" if name == BASELINE else f"repeats runs[{names[name]}]"
            problems.append((line_of(doc, ("runs", i)), f"runs[{i}]: run name '{name}' {why}; give it a distinct name"))
        names.setdefault(name, i)
    return problems


def _run_method(doc: dict, i: int, spec: RunSpec, files: dict[int, dict | str]) -> tuple[str | None, dict,
                                                                                         list[Problem]]:
    """The run's method id and its own params, with the problems of the adapter_config file (`files`: each file's
    content as load_suite read it, or why it could not)."""
    from methods import METHODS

    mid, params = spec.method, spec.params
    if spec.adapter_config is None:
        return mid, params, []
    line, file = line_of(doc, ("runs", i, "adapter_config")), files.get(i)
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


def _method_problems(doc: dict, specs: list[tuple[int, RunSpec]],
                     files: dict[int, dict | str]) -> tuple[list[Problem], set[int]]:
    """Method ids and params, checked against the fields of each method's PEFT config; with the runs that have
    problems here (their resolved configs are not built)."""
    from methods import METHODS

    problems, bad = [], set()
    for i, spec in specs:
        mid, params, found = _run_method(doc, i, spec, files)
        if mid is not None and not found:
            if mid not in METHODS:
                found = [(line_of(doc, ("runs", i, "method")),
                          f"runs[{i}].method: unknown method '{mid}'{did_you_mean(mid, METHODS)}")]
            elif METHODS[mid].refusal:
                found = [(line_of(doc, ("runs", i, "method")), f"runs[{i}].method: {mid} cannot run here: it "
                          f"{METHODS[mid].refusal}")]
            else:
                found = _param_problems(doc, i, METHODS[mid], params) + _nonfinite(doc, ("runs", i, "params"))
        problems += found
        if found or mid is None:
            bad.add(i)
    return problems, bad


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


def _plan_for_validation(suite: Suite):
    """Stand-ins for what a run knows only once it runs: its step count (the step budget where there is one)."""
    from methods import RunFacts

    return RunFacts(total_steps=suite.budget.max_steps or 1000, special_token_ids=(0,))


def _resolved_problems(suite: Suite, doc: dict, bad: set[int]) -> list[Problem]:
    """Each entry resolved on its own, every sweep point and seed with it (one bad run hides nothing of another's):
    its name is a file name inside the output folder, PEFT builds the config of that exact point and applies it."""
    from methods import METHODS

    problems: list[Problem] = []
    for i, spec in enumerate(suite.runs):
        if i in bad:
            continue
        try:
            configs = suite.resolve_run(spec)
        except OSError:
            continue  # an accelerate config that is not there: _distributed_problems says so
        built: set[str] = set()
        for cfg in configs:
            found = _name_problem(suite, doc, i, cfg)
            key = json.dumps(cfg.params, sort_keys=True, default=str) + str(cfg.training.max_seq_len)
            if key not in built:
                built.add(key)
                found += _built_problems(suite, doc, i, METHODS[spec.method], cfg)
            problems += [p for p in found if p not in problems]
    return problems


def _name_problem(suite: Suite, doc: dict, i: int, cfg: RunConfig) -> list[Problem]:
    """A sweep value becomes part of a run's name, and so of its file names."""
    try:
        run_path(suite.output_dir, cfg.run, ".json")
    except UnsafeRunName as e:
        line, place = _point_place(doc, i, cfg)
        return [(line, f"{place}: {e}; choose values without path separators")]
    return []


def _point_place(doc: dict, i: int, cfg: RunConfig, key: str | None = None) -> tuple[int | None, str]:
    """Where a resolved config's method params come from: the sweep key that set them for this point, else the
    run's params."""
    swept = [k for k in (cfg.sweep or {}) if k not in Training.model_fields and (key is None or k == key)]
    if swept:
        point = ", ".join(f"{k}={cfg.sweep[k]!r}" for k in swept)
        return line_of(doc, ("runs", i, "sweep", swept[0])), f"runs[{i}].sweep.{swept[0]}: the point {point} (run " \
            f"{cfg.run})"
    at = ("runs", i, "params", key) if key else ("runs", i, "params")
    return line_of(doc, at) or line_of(doc, ("runs", i)), f"runs[{i}].params" + (f".{key}" if key else "")


def _built_problems(suite: Suite, doc: dict, i: int, method: Method, cfg: RunConfig) -> list[Problem]:
    """What PEFT itself says of a resolved config's params once it builds the config and applies it, and what the
    config implies for the run's own max_seq_len."""
    plan = _plan_for_validation(suite)
    try:
        config = method.config(plan, **cfg.params)
    except Exception as e:  # PEFT's own checks: any error it raises is a problem in this run's params
        line, place = _point_place(doc, i, cfg)
        return [(line, f"{place}: PEFT rejected {'it' if cfg.sweep else 'them'}: {e}")]
    problems = []
    virtual, max_seq_len = getattr(config, "num_virtual_tokens", None), cfg.training.max_seq_len
    if virtual and virtual >= max_seq_len:
        line, place = _point_place(doc, i, cfg, "num_virtual_tokens")
        own = " (the run's training.max_seq_len)" if max_seq_len != suite.training.max_seq_len else ""
        problems.append((line, f"{place}: {virtual} virtual tokens leave no room in max_seq_len {max_seq_len}{own}"))
    if method.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        problems.append((line_of(doc, ("runs", i, "method")), f"runs[{i}].method: {method.id} needs bitsandbytes, "
                         "which is not installed (pip install bitsandbytes)"))
    why = _apply_problem(suite, method, cfg.params, plan)
    if why and not problems:
        line, place = _point_place(doc, i, cfg)
        at = f"runs[{i}]" if not cfg.sweep else place
        problems.append((line_of(doc, ("runs", i, "method")) if not cfg.sweep else line,
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



def _optimizer_problems(doc: dict) -> list[Problem]:
    """training.optimizer, suite-wide and per run: a known optimiser and kwargs it takes."""
    from bench.run.optim import optimizer_problems

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
        problems += _nonfinite(doc, (*place, "kwargs"))
    return problems


def _data_problems(doc: dict, suite_dir: Path) -> list[Problem]:
    problems = []
    dataset = doc.get("dataset") if isinstance(doc.get("dataset"), dict) else {}
    places = [("path",), ("eval_path",), ("eval_data", "path"), ("validation_data", "path")]
    for place in places:
        value = _at(dataset, place)
        if not isinstance(value, str):
            continue
        p, line, key = local_path(value, suite_dir), line_of(doc, ("dataset", *place)), ".".join(place)
        if not p.is_file():
            problems.append((line, f"dataset.{key}: no such file {str(p)!r} (paths are relative to the suite file)"))
        elif p.suffix.lower() not in (".json", ".jsonl", ".csv", ".tsv"):
            problems.append((line, f"dataset.{key}: unknown data format '{p.suffix}' in {str(p)!r} (use .json, "
                             ".jsonl, .csv or .tsv)"))
    ev = doc.get("eval")
    if isinstance(ev, dict) and isinstance(ev.get("forgetting"), str):
        p = local_path(ev["forgetting"], suite_dir)
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
    p = local_path(model["path"], suite_dir)
    if not p.is_dir():
        return f"no such folder {str(p)!r}"
    if not (p / "config.json").is_file():
        return f"{str(p)!r} is not a model folder (no config.json)"
    from bench.spec.quantcheck import prequantized_problem

    return prequantized_problem(p / "config.json")


def _preset_problem(model: dict, suite_dir: Path) -> str | None:
    from bench.run.models import PRESETS

    name = model["preset"]
    return None if name in PRESETS else \
        f"unknown preset '{name}'{did_you_mean(name, PRESETS)}; known: {', '.join(PRESETS)}"


def _gguf_problem(model: dict, suite_dir: Path) -> str | None:
    from bench.run.models import gguf_file

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
        path = local_path(node, suite_dir)
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
    from bench.core.scoring import SCORERS, pattern_problem

    problems = []
    out_problem = _output_problem(suite.output_dir)
    if out_problem:
        problems.append((line_of(doc, ("output",)), out_problem))
    if suite.seeds is not None:
        problems += [(line_of(doc, ("runs", i, "training", "seed")), f"runs[{i}].training.seed: the suite's seeds "
                      "set every run's seed; remove one of the two")
                     for i, run in enumerate(suite.runs) if run.training.seed is not None]
    if suite.eval.extract is not None and (why := pattern_problem(suite.eval.extract)) is not None:
        problems.append((line_of(doc, ("eval", "extract")), f"eval.extract: {why}"))
    for i, name in enumerate(suite.eval.metrics):
        if name not in SCORERS and not name.startswith("hub:"):
            problems.append((line_of(doc, ("eval", "metrics", i)), f"eval.metrics[{i}]: unknown metric "
                             f"'{name}'{did_you_mean(name, SCORERS)}; known: {', '.join(SCORERS)}, or hub:NAME"))
    return problems


def _format_problems(suite: Suite, doc: dict) -> list[Problem]:
    """A tokenizer known here to lack a chat template, where the suite formats with one; lm-eval's task folder."""
    from bench.run.models import ModelSourceError, has_chat_template

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
    from bench.launch.tracking import missing_extra

    problems = []
    for name in suite.tracking.names:
        why = missing_extra(name)
        if why:
            problems.append((line_of(doc, ("tracking", name)), f"tracking.{name}: {why}"))
    return problems


def _trust_problems(suite: Suite, doc: dict, trusted: bool) -> list[Problem]:
    lm = suite.eval.lm_eval
    include = suite.resolve(lm.include_path) if lm is not None and lm.include_path is not None else None
    return safety.problems(doc, suite.eval.metrics, include, trusted)


def _quantization_problems(suite: Suite, doc: dict) -> list[Problem]:
    from bench.spec.quantcheck import quantization_problems  # tries each quantised base: loads torch and PEFT

    return quantization_problems(suite, doc)


def problems(doc: dict, path: Path, suite: Suite | None, error: ValidationError | None,
             files: dict[int, dict | str], trust_remote_code: bool = False) -> list[str]:
    """Every problem of the suite file, sorted by line, each as 'line N, place: what'. `suite` is the typed suite
    (None where the schema refused it, `error` saying why); `files` each run's adapter_config as load_suite read it;
    code the suite would run is a problem unless `trust_remote_code` (the command line's flag)."""
    found = _pydantic_problems(error, doc) if error is not None else []
    specs = _specs(doc)
    method_found, bad = _method_problems(doc, specs, files)
    sweep_found, bad_sweeps = _sweep_problems(doc, specs)
    found += _name_problems(doc, specs) + method_found + sweep_found + _optimizer_problems(doc)
    found += _data_problems(doc, path.parent) + _distributed_problems(doc, path.parent)
    found += _model_problems(doc, path.parent) + _nonfinite(doc, ("model", "config")) + safety.key_problems(doc)
    if suite is not None:
        found += (_suite_problems(suite, doc) + _device_problems(suite, doc) + _format_problems(suite, doc)
                  + _tracking_problems(suite, doc) + _resolved_problems(suite, doc, bad | bad_sweeps)
                  + _trust_problems(suite, doc, trust_remote_code) + _quantization_problems(suite, doc))
    found.sort(key=lambda p: (p[0] or 0))
    return [f"line {line}, {msg}" if line else msg for line, msg in found]
