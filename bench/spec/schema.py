"""The suite schema and its resolution: `Suite` and `RunSpec` as a suite file is written, and the one place where the
suite's defaults, adapter files, method presets, per-run overrides and sweep points merge into one `RunConfig` per
run. Light: methods (PEFT, torch) are imported when a run is resolved."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, PrivateAttr, StrictInt, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from bench.spec.adapterfile import adapter_params
from bench.core.config import (
    BASELINE,
    TRACKERS,
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
from bench.core.layout import name_problem
from bench.core.regression import Regression
from bench.core.util import local_path

if TYPE_CHECKING:  # methods loads PEFT and torch: resolution imports it when it runs, the schema never
    from methods import Method


class RunSpec(Strict):
    method: str | None = Field(None, description="a method id from `bench list` (every PEFT tuner by its type in "
                               "lower case, plus full, qlora, dora, head_only)")
    adapter_config: str | None = Field(None, description="a PEFT adapter_config.json (as save_pretrained and PEFT's "
                                       "method_comparison experiments write it): the method is its peft_type, and "
                                       "`params` override its fields")
    name: str | None = Field(None, description="the run's name, a plain file name (letters, digits and - _ . @ = +); "
                             "default: the method (two runs of one method need names)")
    params: dict[str, Any] = Field({}, description="the method's PEFT config fields (PEFT's own names), over the "
                                   "method's defaults")
    training: TrainingOverrides = Field(TrainingOverrides(), description="this run's overrides of the suite's "
                                        "training fields, merged key by key")
    sweep: dict[str, list[Any] | Literal["default"]] | None = Field(
        None, description="values to try per training field or method param; each combination is a run, the one "
        "with the lowest validation loss is the method's result ('default': the method's learning-rate grid)")

    # The adapter_config file's content, read once by load_suite; resolution takes the run's params from it.
    _adapter: dict[str, Any] | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _file_name(cls, name: str | None) -> str | None:
        why = None if name is None else name_problem(name)
        if why:
            raise ValueError(why)
        return name

    @model_validator(mode="after")
    def _method_or_file(self):
        if self.method is None and self.adapter_config is None:
            raise ValueError("give a method, or an adapter_config whose peft_type names it")
        return self

    @property
    def run_name(self) -> str:
        return self.name or self.method


class Suite(Strict):
    name: str = Field(description="the suite's name: the default results folder results/NAME and the group name in "
                      "trackers")
    version: int | str = Field(description="bump when results stop being comparable: `compare` refuses records of "
                               "another version")
    description: str = Field("", description="free text, shown in reports")
    model: ModelSpec = Field(description="the base model every run starts from")
    dataset: DatasetSpec = Field(description="the training data and where eval rows come from")
    budget: Budget = Field(description="the one budget that binds every run alike")
    training: Training = Field(Training(), description="training settings shared by every run (a run's `training:` "
                               "overrides them)")
    eval: Eval = Field(Eval(), description="what is measured after training")
    output: str | None = Field(None, description="results folder, relative to the working directory")
    baseline: bool = Field(True, description="evaluate the untrained base model as a 'baseline' row")
    seeds: Annotated[list[StrictInt], Field(min_length=1)] | None = Field(
        None, description="run every entry once per seed (each replaces training.seed); reports give means and 95% "
        "intervals")
    runs: list[RunSpec] = Field(min_length=1, description="the runs, one entry per method (or per named variant); the "
                                "baseline is added unless baseline: false")
    regression: Regression = Field(Regression(), description="tolerances and gating rules for `bench compare`")
    tracking: Tracking = Field(Tracking(), description="trackers that mirror every run live: tensorboard, mlflow, "
                               "wandb (each an optional extra)")

    # Set by load_suite: where the file lives, so relative data paths resolve against it.
    source: SkipJsonSchema[str] = Field("", exclude=True)

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
        p = local_path(path, self.base_dir)
        try:
            return str(p.resolve())
        except ValueError:  # a NUL byte: no file has such a name, and the path checks say so
            return str(p.absolute())

    def resolved_runs(self) -> list[RunConfig]:
        """The fully resolved config of every run (baseline first), as stored in each record; with `seeds`, one run
        per entry and seed, named NAME@seedS and grouped under NAME."""
        runs = []
        if self.baseline:
            # Greedy answers of an untrained pretrained model are the same under any seed: one baseline run does.
            # A preset or config model has random weights, and the seed picks them.
            base = RunConfig(run=BASELINE, method=BASELINE, training=self._training(self.training), **self._shared())
            runs += self._per_seed(base, seeded=self.model.kind in ("preset", "config"))
        for spec in self.runs:
            runs += self.resolve_run(spec)
        return runs

    def resolve_run(self, spec: RunSpec) -> list[RunConfig]:
        """One suite entry resolved on its own: the method's defaults, its adapter_config file's fields and its params
        merged (in that order), its training over the suite's, then one config per sweep point and seed."""
        from methods import METHODS

        method = METHODS[spec.method]
        from_file = adapter_params(spec._adapter, method) if spec._adapter is not None else {}
        # A PEFT field is replaced whole: `rank_pattern: {}` over a file's patterns means no patterns.
        params = method.defaults() | from_file | spec.params
        merged = deep_merge(self.training.model_dump(), spec.training.model_dump(exclude_unset=True))
        if spec.training.quantization is not None:  # replaced whole: 8-bit over a suite's NF4 keeps no 4-bit setting
            merged["quantization"] = spec.training.quantization.model_dump()
        training = Training(**merged)
        shared, runs = self._shared(), []
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


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a suite file, from the models above (`bench schema`); editors with a YAML language server
    check and complete a suite whose first line is `# yaml-language-server: $schema=PATH`."""
    schema = Suite.model_json_schema()
    # `tracking` also takes a list of tracker names, which the model's before-validator turns into the mapping.
    tracking = schema["properties"]["tracking"]
    schema["properties"]["tracking"] = {"description": tracking.pop("description", ""), "anyOf": [
        tracking, {"type": "array", "items": {"enum": list(TRACKERS)}}]}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "peft-bench suite"}


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

