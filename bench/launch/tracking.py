"""Trackers: every run of a suite mirrored live into TensorBoard, MLflow or Weights & Biases (optional extras).

The runner's process drives them, not the worker: it already reads each run's progress.jsonl as training goes and
holds the finished record, so a tracker sees every run however it ends (a crash, a timeout, a kill) and a tracker
that fails or hangs cannot take a run down with it. One tracker run per harness run, grouped by suite (MLflow
experiment, W&B group, a TensorBoard folder per run); each backend is a `Backend` below, and `Session` keeps their
errors from ever reaching a run: a failing call is recorded in the record's `tracker_errors` and the suite goes on.
Each library is imported only when its tracker is on.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.core.config import TRACKERS, MlflowOptions, RunConfig, TensorBoardOptions, Tracking, WandbOptions
from bench.core.layout import run_path
from bench.core.records import RunRecord
from bench.core.util import flatten

# The per-step fields of progress.jsonl a tracker plots, under train/NAME.
STEP_FIELDS = ("loss", "lr", "tokens")


def missing_extra(name: str) -> str | None:
    """Why tracker `name` cannot run here (its library is not installed, with the pip command), or None."""
    if importlib.util.find_spec(name) is None:
        return f"{name} is not installed; install the extra: pip install 'peft-bench[{name}]'"
    return None


def tags(cfg: RunConfig) -> dict[str, str]:
    """What identifies a run in a tracker's run list: suite, run, method, seed, sweep values, config hash."""
    out = {"suite": cfg.suite, "suite_version": str(cfg.suite_version), "run": cfg.run, "method": cfg.method,
           "config_hash": cfg.config_hash, "seed": str(cfg.training.seed)}
    if cfg.group is not None:
        out["group"] = cfg.group
    out |= {f"sweep.{k}": str(v) for k, v in (cfg.sweep or {}).items()}
    return out


def final_metrics(record: RunRecord) -> dict[str, float]:
    """The record's metrics under their own names, and the merge check's numbers as merge.NAME."""
    out = {k: float(v) for k, v in record.metrics.items()}
    merge = record.merge.model_dump(exclude_none=True) if record.merge else {}
    out |= {f"merge.{k}": float(v) for k, v in merge.items() if isinstance(v, (int, float))}
    return out


def outcome_tags(record: RunRecord) -> dict[str, str]:
    merge = record.merge.model_dump(exclude_none=True) if record.merge else {}
    out = {"status": record.status} | {f"merge.{k}": str(v) for k, v in merge.items()
                                        if not isinstance(v, (int, float)) or isinstance(v, bool)}
    if record.stopped_by:
        out["stopped_by"] = record.stopped_by
    return out


def saved_model(run_dir: Path) -> Path | None:
    """The run's adapter folder (full fine-tuning: its whole model), where the worker saved one."""
    return next((p for p in (run_dir / "adapter", run_dir / "model") if p.is_dir()), None)


class Backend:
    destination = ""  # where the tracker sends run configs, metrics and predictions, as said before the first run
    """One tracker for one `bench run`. `start` returns a handle for the run that the other calls take."""

    def start(self, cfg: RunConfig) -> Any:
        raise NotImplementedError

    def steps(self, handle: Any, points: list[dict[str, float]]) -> None:
        raise NotImplementedError

    def finish(self, handle: Any, record: RunRecord, run_dir: Path, artifacts: bool) -> None:
        raise NotImplementedError

    def report(self, handles: list[Any], paths: list[Path]) -> None:
        """The suite's report, once written, where the tracker keeps files for finished runs."""


class TensorBoard(Backend):
    """Event files, one folder per run under the logdir; a rerun's old folder moves to tensorboard-history/."""

    def __init__(self, options: TensorBoardOptions, out_dir: Path):
        self.root = Path(options.logdir) if options.logdir else out_dir / "tensorboard"
        self.destination = f"TensorBoard event files in {self.root.resolve()}/"

    def start(self, cfg: RunConfig):
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        folder = run_path(self.root, cfg.run)
        if folder.exists():
            stamp = datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%S")
            history = self.root.parent / f"{self.root.name}-history"
            history.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(run_path(history, cfg.run, f".{stamp}")))
        writer = EventFileWriter(str(folder))
        config = cfg.model_dump(mode="json")
        hparams = {k: v for k, v in flatten(config).items() if isinstance(v, (str, bool, int, float))} | tags(cfg)
        self._write(writer, 0, hparams_pb(hparams, trial_id=cfg.run))
        self._write(writer, 0, text_pb("config", f"```json\n{json.dumps(config, indent=2)}\n```"))
        writer.flush()
        return writer

    @staticmethod
    def _write(writer, step: int, summary) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    @classmethod
    def _scalars(cls, writer, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        cls._write(writer, step, Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()]))

    def steps(self, writer, points):
        for p in points:
            self._scalars(writer, int(p["step"]), {f"train/{k}": p[k] for k in STEP_FIELDS if k in p})
        writer.flush()

    def finish(self, writer, record, run_dir, artifacts):
        from tensorboard.plugins.text.summary_v2 import text_pb

        self._scalars(writer, record.last_step, final_metrics(record))
        self._write(writer, record.last_step, text_pb("outcome", json.dumps(outcome_tags(record))))
        writer.close()


class MLflow(Backend):
    """MlflowClient calls on the suite's experiment; by default a SQLite store and artifact folder under the results."""

    def __init__(self, options: MlflowOptions, out_dir: Path, suite: str):
        from mlflow import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables" per store
        # MLflow retries an unreachable server 7 times with growing waits (minutes); a tracker must cost a run seconds.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri = options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.artifact_root = None
        if self.uri is None:
            self.uri = f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
            self.artifact_root = (out_dir / "mlartifacts").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment = options.experiment or suite
        self._experiment_id: str | None = None
        self.destination = f"MLflow at {self.uri} (experiment {self.experiment})"

    def _experiment_id_or_create(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found else self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_root)
        return self._experiment_id

    def start(self, cfg):
        from mlflow.entities import Param

        run = self.client.create_run(self._experiment_id_or_create(), run_name=cfg.run, tags=tags(cfg))
        params = [Param(k, str(v)[:6000]) for k, v in flatten(cfg.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(run.info.run_id, params=params[i:i + 100])
        return run.info.run_id

    def _metrics(self, run_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for step, values in rows for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def steps(self, run_id, points):
        self._metrics(run_id, [(int(p["step"]), {f"train/{k}": p[k] for k in STEP_FIELDS if k in p}) for p in points])

    def finish(self, run_id, record, run_dir, artifacts):
        from mlflow.entities import RunTag

        self._metrics(run_id, [(record.last_step, final_metrics(record))])
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in outcome_tags(record).items()])
        self.client.log_text(run_id, record.model_dump_json(indent=2), "record.json")
        model = saved_model(run_dir)
        if artifacts and model is not None:
            self.client.log_artifacts(run_id, str(model), model.name)
        status = {"success": "FINISHED", "interrupted": "KILLED"}.get(record.status, "FAILED")
        self.client.set_terminated(run_id, status)

    def report(self, handles, paths):
        for run_id in handles:
            for path in paths:
                self.client.log_artifact(run_id, str(path), "report")


class Wandb(Backend):
    """One W&B run per harness run in the suite's group; offline (files under RESULTS/wandb) unless logged in."""

    def __init__(self, options: WandbOptions, out_dir: Path, suite: str):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")  # its lines would break the runner's progress bars
        self.options, self.out_dir, self.suite = options, out_dir, suite
        self.mode = options.mode or os.environ.get("WANDB_MODE") or (
            "online" if wandb.login(prompt=False) else "offline")
        self.settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, save_code=False)
        where = f"{options.entity or 'your default entity'}/{options.project}"
        self.destination = (f"W&B {where} (online: the W&B server)" if self.mode == "online" else
                            f"W&B {where} (offline: files under {(out_dir / 'wandb').resolve()}/, sent only by `wandb "
                            "sync`)")

    def start(self, cfg):
        import wandb

        self.out_dir.mkdir(parents=True, exist_ok=True)
        return wandb.init(project=self.options.project, entity=self.options.entity, group=self.suite,
                          job_type=(cfg.group or cfg.method)[:64], name=cfg.run, config=cfg.model_dump(mode="json"),
                          tags=[f"{k}={v}"[:64] for k, v in tags(cfg).items() if k != "config_hash"],
                          dir=str(self.out_dir), mode=self.mode, reinit="create_new", settings=self.settings)

    def steps(self, run, points):
        for p in points:
            run.log({f"train/{k}": p[k] for k in STEP_FIELDS if k in p}, step=int(p["step"]))

    def finish(self, run, record, run_dir, artifacts):
        import wandb

        run.summary.update(final_metrics(record) | outcome_tags(record))
        (Path(run.dir) / "record.json").write_text(record.model_dump_json(indent=2))
        model = saved_model(run_dir)
        if artifacts and model is not None:
            artifact = wandb.Artifact(f"{self.suite}-{record.run}".replace("@", "-").replace("=", "-"), type="model")
            artifact.add_dir(str(model))
            run.log_artifact(artifact)
        run.finish(exit_code=0 if record.ok else 1)

    def report(self, handles, paths):
        """A finished W&B run takes no more files, so the report is a `report` artifact of a run of its own in the
        suite's group (job_type report)."""
        import wandb

        run = wandb.init(project=self.options.project, entity=self.options.entity, group=self.suite,
                         job_type="report", name=f"{self.suite} report", dir=str(self.out_dir), mode=self.mode,
                         reinit="create_new", settings=self.settings)
        artifact = wandb.Artifact(f"{self.suite}-report", type="report")
        for path in paths:
            artifact.add_file(str(path))
        run.log_artifact(artifact)
        run.finish()


def backend(name: str, tracking: Tracking, out_dir: Path, suite: str) -> Backend:
    options = getattr(tracking, name)
    if name == "tensorboard":
        return TensorBoard(options, out_dir)
    return {"mlflow": MLflow, "wandb": Wandb}[name](options, out_dir, suite)


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


class Session:
    """The trackers of one `bench run`: a tracker that cannot start (its server down, a bad URI) is left off for the
    rest of the suite, so a dead address costs one wait, not one per run. Calls are serialised: the MLflow SQLite
    store and W&B's service are shared by the runs of every slot."""

    def __init__(self, tracking: Tracking, out_dir: Path, suite: str):
        self.tracking, self.out_dir, self.suite = tracking, out_dir, suite
        self.lock = threading.Lock()
        self.backends: dict[str, Backend] = {}
        self.broken: dict[str, str] = {}  # tracker -> why it is off for the rest of the suite
        self.handles: dict[str, list[Any]] = {name: [] for name in tracking.names}  # the runs each one finished
        for name in tracking.names:
            try:
                self.backends[name] = backend(name, tracking, out_dir, suite)
            except Exception as e:
                self.broken[name] = f"could not start: {_reason(e)}"

    @property
    def on(self) -> bool:
        return bool(self.tracking.names)

    @property
    def destinations(self) -> list[str]:
        """Where each started tracker sends the runs: a shared suite chooses where the user's eval data goes."""
        return [b.destination for b in self.backends.values()]

    def run(self, cfg: RunConfig) -> RunTracking:
        return RunTracking(self, cfg)

    def call(self, name: str, what: str, fn, *args) -> tuple[bool, Any]:
        """fn(*args) under the lock; (False, why) when it raised."""
        with self.lock:
            try:
                return True, fn(*args)
            except Exception as e:
                return False, f"{what}: {_reason(e)}"

    def report(self, paths: list[Path]) -> dict[str, str]:
        """Attach the suite's report to this session's tracker runs; per tracker that failed, why."""
        errors = {}
        if not self.tracking.artifacts or not paths:
            return errors
        for name, b in self.backends.items():
            ok, why = self.call(name, "report", b.report, self.handles[name], paths)
            if not ok:
                errors[name] = why
        return errors


class RunTracking:
    """One harness run in every tracker of the session: started with the run, fed its steps as the runner polls
    progress.jsonl, finished with its record. Whatever a tracker raises stops that tracker for this run only and
    ends up in the record's tracker_errors."""

    def __init__(self, session: Session, cfg: RunConfig):
        self.session, self.cfg = session, cfg
        self.errors: dict[str, str] = {}
        self.handles: dict[str, Any] = {}
        self.logged = 0  # the steps every tracker has had
        for name in session.tracking.names:
            if name in session.broken:
                self.errors[name] = f"not tracked: {session.broken[name]}"
                continue
            ok, out = session.call(name, "start", session.backends[name].start, cfg)
            if ok:
                self.handles[name] = out
            else:
                self.errors[name] = out
                session.broken[name] = f"failed on run {cfg.run} ({out})"

    def _each(self, what: str, method: str, *args) -> None:
        for name, handle in list(self.handles.items()):
            b = self.session.backends[name]
            ok, why = self.session.call(name, what, getattr(b, method), handle, *args)
            if not ok:
                self.errors[name] = why
                del self.handles[name]

    def poll(self, points: list[dict[str, float]]) -> None:
        """New steps since the last poll go to every tracker."""
        new = [p for p in points if p.get("step", 0) > self.logged]
        if new:
            self._each("steps", "steps", new)
            self.logged = int(new[-1]["step"])

    def finish(self, record: RunRecord, run_dir: Path) -> RunRecord:
        """The steps not yet logged, the final metrics, the outcome and the artefacts; the record with any tracker's
        error added."""
        self.poll(record.curve)
        self._each("finish", "finish", record, run_dir, self.session.tracking.artifacts)
        for name, handle in self.handles.items():
            self.session.handles[name].append(handle)
        if not self.errors:
            return record
        return record.model_copy(update={"tracker_errors": record.tracker_errors | self.errors})
