"""Run records: one JSON per run, written atomically, holding the run's config, outcome, measurements and provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, SerializationInfo, ValidationError, field_serializer

from bench.core.config import BASELINE, RESOLVED, RunConfig
from bench.core.layout import run_path
from bench.core.util import atomic_write

# lost: the run's node died or Ray lost its task, on every attempt it was given (bench.launch.cluster).
Status = Literal["success", "failed", "oom", "killed", "timeout", "diverged", "interrupted", "lost"]


class _Part(BaseModel):
    """A part of a record: extra keys are kept, so a record from a newer harness still reads."""

    model_config = ConfigDict(extra="allow")


class MergeCheck(_Part):
    """What merging the adapter into the base did: whether it was tried and how far the merged model's outputs are
    from the adapter model's on the eval prompts."""

    status: str  # merged, not mergeable, nothing to merge, not checked
    note: str | None = None
    kind: str | None = None  # exact or lossy: what the method promises
    how: str | None = None
    max_abs_logit_diff: float | None = None
    mean_abs_logit_diff: float | None = None
    max_abs_logit_diff_fp64: float | None = None
    quantized_base_max_abs_logit_diff: float | None = None
    greedy_identical: bool | None = None
    greedy_identical_count: int | None = None
    compared: int | None = None
    seconds: float | None = None
    # Layer by layer in float64 (bench.run.merge.layer_errors): the merge's own error and, apart, the rounding of the
    # merged weights to the dtype they are stored in; `exact` when the merge's own error is float64 noise.
    layers_checked: int | None = None
    layers_replaced: int | None = None
    layer_rel_error_fp64: float | None = None
    storage_dtype: str | None = None
    storage_rel_error: float | None = None
    exact: bool | None = None
    logits_compared: str | None = None
    # The merged weights the model holds against W + ΔW in float64, worst element as a share of its bound
    # (bench.run.merge.weight_bound): <= 1 when every weight is the correctly rounded merge (a LoRA-shaped ΔW's fp32 noise).
    weight_error_of_bound: float | None = None


class DataNotes(_Part):
    """What loading did to the data, stored in the record and shown in the report."""

    source: str
    train_rows: int = 0
    eval_rows: int = 0
    validation_rows: int | None = None
    skipped: dict[str, int] = {}
    truncated: int = 0
    fingerprint: str = ""
    # Rows a filter the suite sets left out (dataset.max_chars): not bad rows, so not under `skipped`.
    filtered: dict[str, int] = {}
    # How examples became text: "chat template", or the plain prompt format (dataset.prompt_format); and which
    # tokens carried labels (dataset.train_on). Empty in records from before these options.
    formatting: str = ""

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


class Prediction(_Part):
    prompt: str
    reference: str
    prediction: str
    # Prompt-learning runs only: the answer transformers' generate() gives, as every outside client decodes.
    generate_prediction: str | None = None


class ScoreInterval(_Part):
    """A score's 95% interval over the eval examples: Wilson's for proportions, a bootstrap one otherwise."""

    low: float
    high: float
    method: str  # wilson or bootstrap
    n: int  # eval examples
    # The score of each eval example, in the eval set's order: what paired tests between runs read (bench.analysis.paired).
    # None in records from before it was stored; bench.analysis.paired.example_values rebuilds it from the predictions.
    values: list[float] | None = None


class LostAttempt(_Part):
    """An attempt at a run on a Ray cluster that never came back: its node died or Ray lost the task."""

    attempt: int
    node: str | None = None  # the node it ran on, where it had started; None when it was lost before starting
    error: str


class Placement(_Part):
    """Where the run ran: the machine, its devices and, on a Ray cluster, the node and which attempt finished."""

    node: str  # host name of the machine that ran the run's process
    device_ids: list[str] = []  # CUDA device ids the run's process had; none on the CPU
    device_name: str | None = None  # as the worker named the device (environment.device)
    ray_node: str | None = None  # Ray's node id, with --ray
    ray_node_ip: str | None = None
    attempt: int = 1  # which attempt gave this record; earlier ones are in `lost`
    lost: list[LostAttempt] = []
    artifacts: str | None = None  # where the run folder is when not beside the record (--ray-shared-dir)

    @property
    def machine(self) -> str:
        return f"{self.node} ({self.ray_node_ip})" if self.ray_node_ip else self.node


# 2: peak_memory_bytes is the training phase's peak (1: the whole process's, evaluation and merge check included).
SCHEMA_VERSION = 2


class RunRecord(BaseModel):
    """One run's record. `schema_version` says which version wrote it: `parse_record` brings an older one's shape to
    today's (MIGRATIONS), and the number stays, since what a metric measured then is what it says (compare reads it)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    suite: str
    run: str
    method: str
    status: Status
    error: str | None = None
    last_step: int = 0
    stopped_by: str | None = None  # the budget that ended training: max_steps, max_tokens, max_seconds or epochs
    config: RunConfig
    config_hash: str
    metrics: dict[str, int | float] = {}
    curve: list[dict[str, float]] = []
    merge: MergeCheck | None = None
    data: DataNotes | None = None
    predictions: list[Prediction] = []
    intervals: dict[str, ScoreInterval] = {}  # per score, over the eval examples
    # eval.lm_eval: lm-eval's version, per task its scores (with standard errors), sample count and version, and
    # the tasks not scored with why (bench.run.lmeval); the scores are in `metrics` too, as lm_eval.TASK.METRIC.
    lm_eval: dict[str, Any] | None = None
    environment: dict[str, Any] = {}
    model_info: dict[str, Any] = {}
    started_at: str = ""
    finished_at: str = ""
    wall_seconds: float | None = None  # the run's process, start to end, as the runner timed it
    # Per tracker (bench.launch.tracking) that failed on this run: what went wrong. The run and this record are unaffected.
    tracker_errors: dict[str, str] = {}
    placement: Placement | None = None  # None in records from before it was recorded

    @field_serializer("config")
    def _resolved(self, config: RunConfig, info: SerializationInfo) -> dict[str, Any]:
        """The fully resolved config, every default written out (its hash is over the form without them)."""
        return config.model_dump(mode=info.mode, context={RESOLVED: True})

    @property
    def trained(self) -> bool:
        return self.method != BASELINE

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def stored_config(self) -> dict[str, Any]:
        """The config as it was set: the fields a suite or resolution gave, defaults left out (a record written
        before a field existed and one written after differ in nothing then)."""
        return self.config.model_dump(mode="json", exclude_unset=True)

    @classmethod
    def start(cls, config: RunConfig, status: Status = "failed", **fields: Any) -> RunRecord:
        """A record of `config` that has measured nothing yet."""
        return cls(suite=config.suite, run=config.run, method=config.method, status=status, config=config,
                   config_hash=config.config_hash, **fields)


def record_path(out_dir: Path, run: str) -> Path:
    return run_path(out_dir, run, ".json")


def write_record(path: Path, record: RunRecord) -> None:
    atomic_write(path, record.model_dump_json(indent=2))


def error_headline(error: str | None) -> str:
    """The line of an error that says what went wrong: a traceback's last line, not its first."""
    own = (error or "").split("--- log tail ---")[0]
    lines = [line.strip() for line in own.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class RecordError(Exception):
    pass


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 said "not measured" of the merge check and the data notes with an empty mapping; now with None.
    (Its peak_memory_bytes was the whole process's peak: a measurement no step can redo, so the record keeps saying
    version 1 and compare does not gate memory across versions.)"""
    return data | {k: None for k in ("merge", "data") if data.get(k) == {}}


# One step per schema version: MIGRATIONS[n] takes a record's JSON data of version n to the shape of version n + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def migrate(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A record's JSON data in today's shape: the steps from the version it says up to SCHEMA_VERSION, in order."""
    version = data.get("schema_version")
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise RecordError(f"{where}: schema_version {version!r} is not one this harness reads (1 to "
                          f"{SCHEMA_VERSION}; a newer harness wrote it?)")
    for step in range(version, SCHEMA_VERSION):
        data = MIGRATIONS[step](data)
    return data


def parse_record(data: Any, where: str) -> RunRecord:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: not a valid run record (a JSON object expected, got {type(data).__name__})")
    try:
        return RunRecord.model_validate(migrate(data, where))
    except ValidationError as e:
        raise RecordError(f"{where}: not a valid run record ({str(e).splitlines()[0]})") from None


def read_record(path: Path) -> RunRecord:
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from None
    return parse_record(data, str(path))


def is_record(data: Any) -> bool:
    return isinstance(data, dict) and {"schema_version", "config_hash", "status"} <= data.keys()


def load_records(folder: Path) -> list[RunRecord]:
    """Every record in a results folder (one level down too, so merged folders of several suites work)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RecordError(f"{folder}: no such results folder")
    paths = sorted(folder.glob("*.json")) + sorted(folder.glob("*/*.json"))
    records = []
    for p in paths:
        # Run folders hold config.json beside the artefacts; history/ holds records that were replaced.
        if p.name.startswith(".") or p.name == "config.json" or p.parent.name == "history":
            continue
        try:
            data = json.loads(p.read_text())
        except ValueError:
            raise RecordError(f"{p}: not valid JSON") from None
        if is_record(data):
            records.append(parse_record(data, str(p)))
    return records


# What makes costs and scores of two records comparable: the same device, precision, Python and library versions.
# The harness's own commit is not among them: a change to the code is what the gate exists to judge.
ENVIRONMENT_KEYS = ("device", "dtype", "python")


def environment_signature(record: RunRecord) -> dict[str, str]:
    """The environment fields that decide comparability, as text; a record that never got as far as loading has
    none. Where one record lists a package another lacks, callers read the missing one as 'absent'."""
    env = record.environment
    out = {k: str(env[k]) for k in ENVIRONMENT_KEYS if env.get(k) is not None}
    out |= {f"packages.{p}": str(v) for p, v in (env.get("packages") or {}).items() if v is not None}
    return out


# What a run measured of its task, as against what it cost: the figures two ways of running the same run must agree
# on to the digit (the fork server against spawned processes; a rerun with the same seeds and data order).
RESULT_METRICS = ("eval_loss", "exact_match", "token_f1", "rouge_l", "train_tokens", "trainable_params",
                  "general_loss", "forgetting")


def result_differences(a: RunRecord, b: RunRecord) -> list[str]:
    """Where two records of one run differ in what it learned: config hash, status, the loss curve, the scores in
    RESULT_METRICS (and any other score both hold), each eval answer and the merge's logit difference. Empty when
    they agree exactly; costs (time, memory) are left out, since they differ from one run to the next."""
    out = []
    if a.config_hash != b.config_hash:
        out.append(f"config_hash {a.config_hash} != {b.config_hash}")
    if a.status != b.status:
        out.append(f"status {a.status} != {b.status}")
    la, lb = [p.get("loss") for p in a.curve], [p.get("loss") for p in b.curve]
    if la != lb:
        first = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
        out.append(f"loss curve differs from step {first + 1} ({len(la)} and {len(lb)} points)")
    from bench.core.metrics import metric

    names = set(RESULT_METRICS) | {k for k in a.metrics.keys() & b.metrics.keys() if metric(k).kind == "score"}
    out += [f"{k} {a.metrics.get(k)!r} != {b.metrics.get(k)!r}" for k in sorted(names)
            if a.metrics.get(k) != b.metrics.get(k)]
    pa, pb = [p.prediction for p in a.predictions], [p.prediction for p in b.predictions]
    if pa != pb:
        out.append(f"{sum(x != y for x, y in zip(pa, pb)) + abs(len(pa) - len(pb))} of {max(len(pa), len(pb))} "
                   "eval answers differ")
    ma, mb = a.merge and a.merge.max_abs_logit_diff, b.merge and b.merge.max_abs_logit_diff
    if ma != mb:
        out.append(f"merge max_abs_logit_diff {ma!r} != {mb!r}")
    return out
