"""The suite: a YAML file parsed into typed objects, validated before any model loads."""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, TypeAdapter, ValidationError
from pydantic import NonNegativeFloat, StrictInt, field_validator, model_validator

from bench.compare import Regression
from bench.yamlio import SuiteError, line_of, load_yaml, to_plain
from methods import METHODS

BASELINE = "baseline"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Strict):
    """Where the base model comes from: exactly one of hub, path, gguf, preset or config."""

    hub: str | None = None
    revision: str | None = None
    path: str | None = None
    gguf: str | None = None
    package: str | None = Field(None, description="installed Python distribution that holds the gguf file")
    preset: str | None = None
    config: dict[str, Any] | None = None
    tokenizer: str | None = Field(None, description="tokenizer folder or Hub id; presets default to a byte tokenizer")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("hub", "path", "gguf", "preset", "config") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of hub, path, gguf, preset, config (got {given or 'none'})")
        if self.revision is not None and self.hub is None:
            raise ValueError("revision only applies to a hub model")
        if self.package is not None and self.gguf is None:
            raise ValueError("package only applies to a gguf model")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("hub", "path", "gguf", "preset", "config") if getattr(self, k) is not None)


class DatasetSpec(Strict):
    """Instruction data: local JSON/JSONL/CSV or a Hub dataset, mapped to prompt/response or chat messages."""

    path: str | None = None
    hub: str | None = None
    subset: str | None = Field(None, description="Hub dataset configuration name")
    split: str = "train"
    eval_path: str | None = None
    eval_split: str | None = None
    eval_size: PositiveFloat = Field(0.1, description="held-out share (< 1) or count (>= 1) when no eval split is named")
    prompt: str = "prompt"
    response: str = "response"
    messages: str | None = None
    system: str | None = None
    max_examples: PositiveInt | None = None
    validation_size: PositiveFloat | None = Field(
        None, description="share (< 1) or count (>= 1) of the train rows held out to pick sweep values; 0.1 when a "
        "run has a sweep")
    seed: int = 0
    on_bad_row: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of path or hub")
        if self.eval_path is not None and self.eval_split is not None:
            raise ValueError("give at most one of eval_path or eval_split")
        return self


class Budget(Strict):
    """The one budget that binds every method alike."""

    max_steps: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    max_seconds: PositiveFloat | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of max_steps, max_tokens, max_seconds (got {given or 'none'})")
        return self


Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Distributed(Strict):
    """One run across several processes, started by `accelerate launch`: DDP without a config file; with one,
    whatever it sets up (FSDP, several machines)."""

    num_processes: PositiveInt = Field(description="processes in all, across machines (accelerate's num_processes)")
    config: str | None = Field(None, description="accelerate config file (`accelerate config` writes one), relative "
                               "to the suite file")


class Training(Strict):
    learning_rate: PositiveFloat = 2e-4
    batch_size: PositiveInt = 4
    grad_accum: PositiveInt = 1
    max_seq_len: PositiveInt = 512
    epochs: PositiveFloat = Field(1000.0, description="upper bound on passes over the data; the budget usually binds first")
    seed: int = 0
    scheduler: Scheduler = "linear"
    warmup_ratio: NonNegativeFloat = 0.0
    weight_decay: NonNegativeFloat = 0.0
    max_grad_norm: PositiveFloat | None = 1.0
    precision: Precision = "auto"
    packing: bool = Field(True, description="pack examples padding-free where the method allows it")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                         "memory, about a third more compute")
    save_every: Literal["epoch"] | PositiveInt | None = Field(None, description="checkpoint each epoch or every N steps")
    timeout_s: PositiveFloat = Field(3600.0, description="wall-clock limit of one run's process")
    distributed: Distributed | None = Field(None, description="train across several processes through accelerate")


class TrainingOverrides(Strict):
    """Per-run overrides: any training field, unset ones fall back to the suite's."""

    learning_rate: PositiveFloat | None = None
    batch_size: PositiveInt | None = None
    grad_accum: PositiveInt | None = None
    max_seq_len: PositiveInt | None = None
    epochs: PositiveFloat | None = None
    seed: int | None = None
    scheduler: Scheduler | None = None
    warmup_ratio: NonNegativeFloat | None = None
    weight_decay: NonNegativeFloat | None = None
    max_grad_norm: PositiveFloat | None = None
    precision: Precision | None = None
    packing: bool | None = None
    gradient_checkpointing: bool | None = None
    save_every: Literal["epoch"] | PositiveInt | None = None
    timeout_s: PositiveFloat | None = None
    distributed: Distributed | None = None


class Eval(Strict):
    enabled: bool = Field(True, description="false: train and measure cost only (no scores, no merge check)")
    forgetting: bool | str = Field(True, description="loss on general text before and after training: true uses "
                                   "the bundled corpus, a path a text file of paragraphs, false skips it")
    max_examples: PositiveInt = 50
    batch_size: PositiveInt = 16
    max_new_tokens: PositiveInt = 32
    metrics: list[str] = ["exact_match", "token_f1", "rouge_l"]
    extract: str | None = Field(None, description="regex whose first group is the answer to score")
    keep_predictions: PositiveInt = Field(50, description="how many (prompt, reference, prediction) to store")


class RunSpec(Strict):
    method: str
    name: str | None = None
    params: dict[str, Any] = {}
    training: TrainingOverrides = TrainingOverrides()
    sweep: dict[str, list[Any] | Literal["default"]] | None = Field(
        None, description="values to try per training field or method param; each combination is a run, the one "
        "with the lowest validation loss is the method's result ('default': the method's learning-rate grid)")

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

    def resolve(self, path: str) -> str:
        """Absolute and normalised, so the config (and its hash) is the same however the suite path was spelt."""
        p = Path(path).expanduser()
        return str((p if p.is_absolute() else self.base_dir / p).resolve())

    def resolved_runs(self) -> list[dict[str, Any]]:
        """The fully resolved config of every run (baseline first), as stored in each record; with `seeds`, one run
        per entry and seed, named NAME@seedS and grouped under NAME."""
        runs = []
        if self.baseline:
            # Greedy answers of an untrained pretrained model are the same under any seed: one baseline run does.
            # A preset or config model has random weights, and the seed picks them.
            random_weights = self.model.kind in ("preset", "config")
            runs += self._per_seed(BASELINE, BASELINE, {}, self.training, 0, seeded=random_weights)
        for run in self.runs:
            method = METHODS[run.method]
            params = deep_merge(method.defaults(), run.params)
            training = Training(**deep_merge(self.training.model_dump(), run.training.model_dump(exclude_none=True)))
            for point in sweep_points(run, method):
                name = run.run_name + "".join(f"@{_SHORT.get(k, k)}={_text(v)}" for k, v in point.items())
                t = training.model_copy(update={k: v for k, v in point.items() if k in Training.model_fields})
                p = params | {k: v for k, v in point.items() if k not in Training.model_fields}
                runs += self._per_seed(name, run.method, p, t, method.version, group=run.run_name if point else None,
                                       sweep=point or None)
        return runs

    @property
    def has_sweeps(self) -> bool:
        return any(run.sweep for run in self.runs)

    def _per_seed(self, name, method, params, training, method_version, seeded=True, group=None,
                  sweep=None) -> list[dict[str, Any]]:
        # Without `seeds` nothing is added to the config, so its hash (and every stored record) stays valid.
        if self.seeds is None or not seeded:
            return [self._resolved(name, method, params, training, method_version, group=group, sweep=sweep)]
        return [self._resolved(f"{name}@seed{s}", method, params, training.model_copy(update={"seed": s}),
                               method_version, group=group or name, seed=s, sweep=sweep) for s in self.seeds]

    def _resolved(self, name, method, params, training, method_version=0, group=None, seed=None,
                  sweep=None) -> dict[str, Any]:
        model = self.model.model_dump(exclude_none=True)
        for key in ("path", "tokenizer"):
            if key in model and Path(self.resolve(model[key])).exists():
                model[key] = self.resolve(model[key])
        if "gguf" in model and "package" not in model:
            model["gguf"] = self.resolve(model["gguf"])
        dataset = self.dataset.model_dump(exclude_none=True)
        for key in ("path", "eval_path"):
            if key in dataset:
                dataset[key] = self.resolve(dataset[key])
        if self.has_sweeps:
            # Every run trains on the same rows, swept or not; the held-out ones pick sweep values, never eval.
            dataset.setdefault("validation_size", 0.1)
        config = {
            "suite": self.name,
            "suite_version": self.version,
            "run": name,
            **({"group": group} if group is not None else {}),
            **({"seed": seed} if seed is not None else {}),
            **({"sweep": sweep} if sweep else {}),
            "method": method,
            "method_version": method_version,
            "params": params,
            "model": model,
            "dataset": dataset,
            "budget": self.budget.model_dump(exclude_none=True),
            "training": self._training(training),
            "eval": self._eval(),
            "regression": self.regression.model_dump(),
        }
        config["config_hash"] = config_hash(config)
        return config


    def _eval(self) -> dict[str, Any]:
        ev = self.eval.model_dump()
        if isinstance(ev["forgetting"], str):
            ev["forgetting"] = self.resolve(ev["forgetting"])
        return ev


    def _training(self, training: Training) -> dict[str, Any]:
        # Without `distributed` nothing is added to the config, so its hash (and every stored record) stays valid.
        out = training.model_dump()
        dist = out.pop("distributed")
        if dist is not None:
            out["distributed"] = dist
            if dist["config"] is not None:
                # The file's content is part of the config: an edited accelerate config reruns the run.
                dist["config"] = self.resolve(dist["config"])
                dist["config_sha256"] = hashlib.sha256(Path(dist["config"]).read_bytes()).hexdigest()[:16]
        return out


_SHORT = {"learning_rate": "lr"}


def _text(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def sweep_points(run: RunSpec, method) -> list[dict[str, Any]]:
    """Every combination of the run's sweep values, in order ([{}] without a sweep)."""
    import itertools

    if not run.sweep:
        return [{}]
    grid = {k: list(method.lr_grid) if v == "default" else v for k, v in run.sweep.items()}
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


# Not part of what a run computes: changing a regression tolerance must not rerun anything.
_NOT_HASHED = ("config_hash", "regression")


def config_hash(config: dict[str, Any]) -> str:
    body = {k: v for k, v in config.items() if k not in _NOT_HASHED}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Override wins key by key, all the way down (a one-level merge silently drops nested defaults)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _place(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _pydantic_problems(err: ValidationError, doc: Any) -> list[tuple[int | None, str]]:
    problems = []
    plain = to_plain(doc)
    for e in err.errors():
        loc = _doc_loc(e["loc"], plain, e["type"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden" and loc:
            parent = _fields_at(loc[:-1])
            msg = f"unknown key '{loc[-1]}'{did_you_mean(loc[-1], parent)}"
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


def _sweep_problems(doc: dict) -> list[tuple[int | None, str]]:
    """Sweep keys are training fields or the method's params, and every value is one that key accepts."""
    problems = []
    runs = doc.get("runs") if isinstance(doc.get("runs"), list) else []
    for i, run in enumerate(runs):
        if not (isinstance(run, dict) and isinstance(run.get("sweep"), dict) and run.get("method") in METHODS):
            continue
        accepted = METHODS[run["method"]].parameters()
        for key, values in run["sweep"].items():
            place, line = f"runs[{i}].sweep.{key}", line_of(doc, ("runs", i, "sweep", key))
            if key not in Training.model_fields and key not in accepted:
                choices = list(Training.model_fields) + list(accepted)
                problems.append((line, f"{place}: not a training field or a {run['method']} param"
                                 f"{did_you_mean(key, choices)}"))
                continue
            if values == "default":
                if key != "learning_rate":
                    problems.append((line, f"{place}: 'default' is a grid for learning_rate only; list the values"))
                continue
            if not isinstance(values, list) or not values:
                continue  # pydantic reports the type
            for value in to_plain(values):
                try:
                    if key in Training.model_fields:
                        TrainingOverrides(**{key: value})
                    else:
                        TypeAdapter(accepted[key].annotation).validate_python(value, strict=True)
                except (ValidationError, TypeError) as e:
                    msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
                    problems.append((line, f"{place}: {value!r} is not a valid {key} ({msg})"))
    return problems


def _method_problems(doc: dict, suite_dir: Path) -> list[tuple[int | None, str]]:
    """Method ids and params, checked against each method's signature; then PEFT builds the config."""
    problems = []
    runs = doc.get("runs")
    if not isinstance(runs, list):
        return problems
    names: dict[str, int] = {}
    training = doc.get("training") if isinstance(doc.get("training"), dict) else {}
    max_seq_len = training.get("max_seq_len", Training().max_seq_len)
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("method"), str):
            continue
        mid = run["method"]
        name = run.get("name") or mid
        if not isinstance(name, str):
            name = mid  # pydantic reports the name's type; the method is still worth checking
        elif name in names or name == BASELINE:
            why = "is reserved for the untrained base model" if name == BASELINE else f"repeats runs[{names[name]}]"
            problems.append((line_of(doc, ("runs", i)), f"runs[{i}]: run name '{name}' {why}; give it a distinct name"))
        names.setdefault(name, i)
        if mid not in METHODS:
            problems.append((line_of(doc, ("runs", i, "method")),
                             f"runs[{i}].method: unknown method '{mid}'{did_you_mean(mid, METHODS)}"))
            continue
        method = METHODS[mid]
        params = run.get("params") or {}
        if not isinstance(params, dict):
            continue
        accepted = method.parameters()
        ok = True
        for key, value in params.items():
            place = f"runs[{i}].params.{key}"
            line = line_of(doc, ("runs", i, "params", key))
            if key not in accepted:
                takes = ", ".join(accepted) or "no parameters"
                problems.append((line, f"{place}: {mid} takes {takes} - not '{key}'{did_you_mean(key, accepted)}"))
                ok = False
                continue
            try:
                TypeAdapter(accepted[key].annotation).validate_python(to_plain(value), strict=True)
            except ValidationError as e:
                want = getattr(accepted[key].annotation, "__name__", str(accepted[key].annotation))
                problems.append((line, f"{place}: expected {want}, got {value!r} ({e.errors()[0]['msg']})"))
                ok = False
        if not ok:
            continue
        try:
            config = method.config(**to_plain(params))
        except Exception as e:  # PEFT's own checks: any error it raises is a problem in this run's params
            problems.append((line_of(doc, ("runs", i, "params")), f"runs[{i}].params: PEFT rejected them: {e}"))
            continue
        virtual = getattr(config, "num_virtual_tokens", None)
        if virtual and isinstance(max_seq_len, int) and virtual >= max_seq_len:
            problems.append((line_of(doc, ("runs", i, "params", "num_virtual_tokens")),
                             f"runs[{i}].params.num_virtual_tokens: {virtual} virtual tokens leave no room in "
                             f"max_seq_len {max_seq_len}"))
        if method.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
            problems.append((line_of(doc, ("runs", i, "method")),
                             f"runs[{i}].method: {mid} needs bitsandbytes, which is not installed "
                             "(pip install bitsandbytes)"))
    return problems


def _local(value: str, suite_dir: Path) -> Path:
    # os.path.expanduser leaves an unknown "~user" as it is where Path.expanduser raises.
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else suite_dir / p


def _file_problems(doc: dict, suite_dir: Path) -> list[tuple[int | None, str]]:
    problems = []
    dataset = doc.get("dataset")
    if isinstance(dataset, dict):
        for key in ("path", "eval_path"):
            value = dataset.get(key)
            if isinstance(value, str):
                p = _local(value, suite_dir)
                if not p.is_file():
                    problems.append((line_of(doc, ("dataset", key)),
                                     f"dataset.{key}: no such file {str(p)!r} (paths are relative to the suite file)"))
                elif p.suffix.lower() not in (".json", ".jsonl", ".csv", ".tsv"):
                    problems.append((line_of(doc, ("dataset", key)), f"dataset.{key}: unknown data format "
                                     f"'{p.suffix}' in {str(p)!r} (use .json, .jsonl, .csv or .tsv)"))
    ev = doc.get("eval")
    if isinstance(ev, dict) and isinstance(ev.get("forgetting"), str):
        p = _local(ev["forgetting"], suite_dir)
        if not p.is_file():
            problems.append((line_of(doc, ("eval", "forgetting")), f"eval.forgetting: no such file {str(p)!r} (a "
                             "text file of paragraphs separated by blank lines; paths are relative to the suite file)"))
    problems += _distributed_problems(doc, suite_dir)
    model = doc.get("model")
    if isinstance(model, dict):
        if isinstance(model.get("path"), str):
            p = _local(model["path"], suite_dir)
            if not p.is_dir():
                problems.append((line_of(doc, ("model", "path")), f"model.path: no such folder {str(p)!r}"))
            elif not (p / "config.json").is_file():
                problems.append((line_of(doc, ("model", "path")),
                                 f"model.path: {str(p)!r} is not a model folder (no config.json)"))
        if isinstance(model.get("preset"), str):
            from bench.models import PRESETS

            if model["preset"] not in PRESETS:
                problems.append((line_of(doc, ("model", "preset")), f"model.preset: unknown preset "
                                 f"'{model['preset']}'{did_you_mean(model['preset'], PRESETS)}; "
                                 f"known: {', '.join(PRESETS)}"))
        if isinstance(model.get("gguf"), str) and isinstance(model.get("package"), (str, type(None))):
            from bench.models import gguf_file

            try:
                f = gguf_file(model["gguf"], model.get("package"), suite_dir)
            except FileNotFoundError as e:
                problems.append((line_of(doc, ("model", "gguf")), f"model.gguf: {e}"))
            else:
                with f.open("rb") as fh:
                    magic = fh.read(4)
                if magic != b"GGUF":
                    problems.append((line_of(doc, ("model", "gguf")),
                                     f"model.gguf: {str(f)!r} is not a GGUF file (it does not start with 'GGUF')"))
        if isinstance(model.get("hub"), str):
            # Only the id's spelling: whether the Hub or its cache has it is for `run` to find out, so that a suite
            # meant for a machine with Hub access still validates offline.
            from huggingface_hub.errors import HFValidationError
            from huggingface_hub.utils import validate_repo_id

            try:
                validate_repo_id(model["hub"])
            except HFValidationError:
                problems.append((line_of(doc, ("model", "hub")), f"model.hub: '{model['hub']}' is not a Hub id "
                                 "(owner/name: letters, digits, '-', '_' and '.')"))
    return problems


def _distributed_problems(doc: dict, suite_dir: Path) -> list[tuple[int | None, str]]:
    """The accelerate config files that training.distributed names, suite-wide or per run, exist."""
    places = [("training", "distributed", "config")]
    if isinstance(doc.get("runs"), list):
        places += [("runs", i, "training", "distributed", "config") for i in range(len(doc["runs"]))]
    problems = []
    for place in places:
        node = doc
        for key in place:
            node = node[key] if isinstance(node, (dict, list)) and (isinstance(node, list) or key in node) else None
        if isinstance(node, str) and not _local(node, suite_dir).is_file():
            problems.append((line_of(doc, place), f"{_place(place)}: no such file {str(_local(node, suite_dir))!r} "
                             "(an accelerate config file, relative to the suite file; `accelerate config` writes one)"))
    return problems


def _output_problem(output: Path) -> str | None:
    probe = output
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"output: {str(probe)!r} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"output: cannot write to {str(probe)!r} (permission denied); choose another output folder"
    return None


def load_suite(path: str | Path) -> Suite:
    """Parse and validate a suite file; raise SuiteError listing every problem with its line."""
    path = Path(path)
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise SuiteError(path, [f"expected a mapping of suite keys at the top level, got {type(doc).__name__}"])
    problems: list[tuple[int | None, str]] = []
    suite = None
    try:
        suite = Suite(**to_plain(doc), source=str(path))
    except ValidationError as e:
        problems += _pydantic_problems(e, doc)
    problems += _method_problems(doc, path.parent)
    problems += _sweep_problems(doc)
    problems += _file_problems(doc, path.parent)
    if suite is not None:
        out_problem = _output_problem(suite.output_dir)
        if out_problem:
            problems.append((line_of(doc, ("output",)), out_problem))
        if suite.seeds is not None:
            for i, run in enumerate(suite.runs):
                if run.training.seed is not None:
                    problems.append((line_of(doc, ("runs", i, "training", "seed")), f"runs[{i}].training.seed: "
                                     "the suite's seeds set every run's seed; remove one of the two"))
        if suite.eval.extract is not None:
            import re

            try:
                if re.compile(suite.eval.extract).groups < 1:
                    problems.append((line_of(doc, ("eval", "extract")), "eval.extract: the regex needs one group "
                                     "(the answer), e.g. '#### (.+)'"))
            except re.error as e:
                problems.append((line_of(doc, ("eval", "extract")), f"eval.extract: not a valid regex: {e}"))
        from bench.metrics import SCORERS

        for i, name in enumerate(suite.eval.metrics):
            if name not in SCORERS and not name.startswith("hub:"):
                problems.append((line_of(doc, ("eval", "metrics", i)), f"eval.metrics[{i}]: unknown metric "
                                 f"'{name}'{did_you_mean(name, SCORERS)}; known: {', '.join(SCORERS)}, or hub:NAME"))
    if problems:
        problems.sort(key=lambda p: (p[0] or 0))
        raise SuiteError(path, [f"line {line}, {msg}" if line else msg for line, msg in problems])
    return suite
