"""One run in its own process: `python -m bench.run.worker RUN_DIR/config.json RUN_DIR`, started by the runner.

It reads the run's `RunConfig`, goes through the stages (load, build, train, evaluate, save, merge check) and leaves
its `RunRecord` in RUN_DIR/.result.json; the runner adds what only the parent knows (exit, wall time, slot).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from bench.datasets import examples as D
from bench.run import models as M
from bench.core.config import RunConfig
from bench.run.device import Place, pick_device
from bench.run.distributed import DistributedError, DistributedRanks, Ranks
from bench.run.env import environment
from bench.run.flops import peak_flops
from bench.run.evaluation import evaluate, general_loss, general_texts
from bench.core.layout import RESULT, read_progress
from bench.run.load import Loaded, build, count_params, load, method_of, weight_dtypes
from bench.run.loss import describe as describe_loss
from bench.run.memory import Meter, Peak
from bench.run.merge import check_merge, save
from bench.run.optim import describe
from bench.run.quantization import environment as quantization_environment
from bench.run.quantization import of_run
from bench.core.records import RunRecord, write_record
from bench.run.safety import code_that_ran
from bench.run.train import Diverged, facts_of, train_metrics, train_stage


def run_environment(cfg: RunConfig, place: Place, memory: str) -> dict:
    """The record's environment as the run starts: versions and device, the dtype, how memory is measured, the
    device's peak for the dtype that runs, and the base's quantisation and master weights where the run sets them."""
    return environment(place.device) | {"dtype": str(place.dtype).removeprefix("torch."), "memory": memory,
                                        "peak_flops": peak_flops(place.device, place.dtype)[1]} | \
        quantization_environment(of_run(cfg, method_of(cfg)), place.dtype, cfg.training.master_weights)


def run(cfg: RunConfig, run_dir: Path, record: RunRecord, ranks: Ranks | None = None) -> RunRecord | None:
    """Fill `record` stage by stage; it keeps what was measured if a stage raises. `ranks`: this process's place
    among the run's (this one alone unless given). None on every process of a distributed run but the main one."""
    place = Place.create(cfg.training.precision, ranks)
    phases = Phases(record, place)
    record.environment = run_environment(cfg, place, phases.meter.method) | place.ranks.environment()
    torch.manual_seed(cfg.training.seed)
    method = method_of(cfg)
    texts = general_texts(cfg)

    with phases("load"):
        loaded = load(cfg)
        record.model_info, record.data = loaded.model_info, loaded.notes
        model = build(cfg, loaded.folder, place, method, method and facts_of(cfg, loaded), loaded.tokenizer)
        record.metrics |= params_metrics(model) | {"load_memory_bytes": phases.meter.now()}
        record.environment |= model_environment(cfg, model)
    measuring = method.measuring if method is not None else lambda _: contextlib.nullcontext()
    if texts is not None:
        with measuring(model):
            record.metrics["general_loss_before"] = general_loss(cfg, model, loaded, texts, place, base=True)
    if method is not None:
        try:
            with phases("train", timed=False):
                model = train(cfg, model, loaded, place, run_dir, record)
        except Diverged as e:
            return record.model_copy(update={"status": "diverged", "error": str(e)})
        record.metrics |= gather_peaks(record, place, phases)
    if not place.main:
        return None
    evaluated = None
    if cfg.eval.enabled:
        with phases("eval"), measuring(model):
            evaluated = evaluate(cfg, method, model, loaded, place)
            record.metrics |= evaluated.metrics
            record.intervals, record.predictions = evaluated.intervals, evaluated.predictions
            record.environment["generation"] = evaluated.decoding
            if texts is not None:
                record.metrics |= forgetting(cfg, model, loaded, texts, place, record.metrics["general_loss_before"])
            if cfg.eval.lm_eval is not None:
                from bench.run.lmeval import run_lm_eval

                with place.autocast():
                    scores, record.lm_eval = run_lm_eval(cfg, method, model, loaded.tokenizer, place.device)
                record.metrics |= scores
    if method is not None and cfg.training.save_weights:
        saved = save(cfg, method, model, loaded.tokenizer, run_dir)
        with phases("merge", timed=False):
            merged = check_merge(cfg, method, model, loaded, evaluated and evaluated.generations, place, saved,
                                 phases.peaks.get("train"))
        if merged.check.status != "merged":
            phases.peaks.pop("merge")  # nothing was merged: no merge peak to speak of
        record.metrics |= saved.metrics | merged.metrics
        record.merge = merged.check
    record.metrics |= phases.metrics()
    record.status = "success"
    return record


def train(cfg: RunConfig, model, loaded: Loaded, place: Place, run_dir: Path, record: RunRecord):
    """The train stage, its measurements in the record; the model to evaluate (after FSDP, a gathered copy)."""
    try:
        result = train_stage(cfg, method_of(cfg), model, loaded, place, run_dir)
    except Diverged:
        record.curve = read_progress(run_dir)
        record.last_step = len(record.curve)
        raise
    record.curve, record.last_step = result.curve, result.steps
    # Counted again after training: an optimiser may freeze weights (LoRA-FA freezes every lora_A).
    record.metrics |= train_metrics(result, model, place) | params_metrics(model)
    spec = cfg.training.optimizer
    record.environment["optimizer"] = describe(spec and spec.name, spec.kwargs if spec else {})
    record.stopped_by = result.stopped_by
    return whole_model(cfg, place, loaded, model)


def forgetting(cfg: RunConfig, model, loaded: Loaded, texts: list[str], place: Place, before: float) -> dict:
    """General-text loss after training and its rise; the baseline trained nothing, so its loss is the one before."""
    if not cfg.trains:
        return {"general_loss": before}
    after = general_loss(cfg, model, loaded, texts, place)
    return {"general_loss": after, "forgetting": after - before}


# Where each phase's peak goes in the record: training's is peak_memory_bytes, what tables, plots, compare,
# recommend and the gate use.
PEAK_METRICS = {"load": ("load_peak_memory_bytes", "load_peak_reserved_bytes"),
                "train": ("peak_memory_bytes", "cuda_max_reserved_bytes"),
                "eval": ("eval_peak_memory_bytes", "eval_peak_reserved_bytes"),
                "merge": ("merge_peak_memory_bytes", "merge_peak_reserved_bytes")}


class Phases:
    """The stages of a run as phases: each timed into `{name}_seconds` and its memory peak measured on its own."""

    def __init__(self, record: RunRecord, place: Place):
        self.record = record
        self.meter = Meter(place.device)
        self.cuda = place.cuda
        self.peaks: dict[str, Peak | None] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, timed: bool = True):
        start = time.perf_counter()
        with self.meter.phase(self.peaks, name):
            yield
        if timed:
            self.record.metrics[f"{name}_seconds"] = time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        m: dict[str, float] = {}
        for name, peak in self.peaks.items():
            used, reserved = PEAK_METRICS[name]
            if peak is not None and used not in self.record.metrics:  # a distributed run's training peak is set
                m[used] = peak.used
            if peak is not None and reserved and peak.reserved is not None:
                m[reserved] = peak.reserved
        if self.cuda and "peak_memory_bytes" in m:
            m["cuda_max_allocated_bytes"] = m["peak_memory_bytes"]
        return m


def model_environment(cfg: RunConfig, model) -> dict[str, str]:
    """What the built model computes with: its weights' dtypes, attention kernel and how its losses are taken."""
    return {"weights": weight_dtypes(model), "attention": model.config._attn_implementation,
            "loss": describe_loss(model, cfg.training.loss_chunk_bytes, cfg.distributed)}


def params_metrics(model) -> dict[str, float]:
    trainable, total = count_params(model)
    return {"trainable_params": trainable, "total_params": total, "trainable_pct": 100 * trainable / total}


def gather_peaks(record: RunRecord, place: Place, phases: Phases) -> dict[str, float]:
    """In a distributed run, every process's training peak (by rank): peak_memory_bytes is the largest, what one
    device must hold, beside their total; and the per-process throughput metrics."""
    world = place.ranks.world
    if world == 1:
        return {}
    m = {"world_size": world} | {f"{name}_per_process": record.metrics[name] / world for name in (
        "train_tokens_per_second", "steady_tokens_per_second") if name in record.metrics}
    train = phases.peaks.get("train")
    peaks = [int(row[0]) for row in place.ranks.gather([train.used if train else 0])]
    if train is not None:
        record.environment["distributed"]["peak_memory_bytes_per_process"] = peaks
        m |= {"peak_memory_bytes": max(peaks), "peak_memory_bytes_total": sum(peaks)}
    return m


def whole_model(cfg: RunConfig, place: Place, loaded: Loaded, model):
    """After distributed training, a model with every trained weight on the main process, for evaluation, saving and
    the merge check. One process and DDP keep a whole copy in every process; FSDP's shards are gathered into a freshly
    built one."""
    ranks = place.ranks
    if not ranks.sharded:
        ranks.release()
        return model
    state = ranks.state_dict()  # every process takes part
    ranks.release()
    if not ranks.main:
        return model
    whole = build(cfg, loaded.folder, place, method_of(cfg), tokenizer=loaded.tokenizer)
    whole.load_state_dict(state)
    return whole


def failed(record: RunRecord, e: BaseException) -> RunRecord:
    """The record of a run a stage raised in: what was measured stays, the status and error say what happened."""
    if isinstance(e, torch.OutOfMemoryError):
        status, error = "oom", str(e).splitlines()[0]
    elif isinstance(e, (D.DataError, M.ModelSourceError, DistributedError)):
        status, error = "failed", str(e)
    else:
        status, error = "failed", traceback.format_exc(limit=-6)
    return record.model_copy(update={"status": status, "error": error})


def main(argv: list[str] | None = None) -> int:
    """`argv`: CONFIG RUN_DIR (default: the command line's; a run forked by bench.launch.forkserver passes them)."""
    # bitsandbytes warns on every CPU start that it cannot download an optional kernel; the fallback is used.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    cfg_path, run_dir = map(Path, (argv or sys.argv[1:])[:2])
    cfg = RunConfig.model_validate_json(cfg_path.read_text())
    record = RunRecord.start(cfg)
    refused = False
    try:
        ranks = DistributedRanks(pick_device(), requested_type(cfg)) if cfg.distributed else Ranks(pick_device())
        out = run(cfg, run_dir, record, ranks)
    except DistributedError as e:
        out, refused = failed(record, e), True
    except Exception as e:
        out = failed(record, e)
    if cfg.distributed and int(os.environ.get("RANK", "0")) != 0:
        # Another process of a distributed run: the main one writes the record. A crash here goes to the log and
        # fails the launch; a divergence is the main process's to report (it saw the same global loss), and so is a
        # refused set-up (every process refuses it alike): exiting 1 first would have the launcher end the main
        # process before it wrote why.
        if out is not None and out.status in ("failed", "oom") and not refused:
            print(out.error, file=sys.stderr)
            return leave(1)
        return leave(0)
    if out.status != "success" and not out.curve:
        out = out.model_copy(update={"curve": read_progress(run_dir), "last_step": len(read_progress(run_dir))})
    ran = code_that_ran(cfg.eval.lm_eval.include_path if cfg.eval.lm_eval is not None else None)
    if ran:  # code the suite brought ran (bench.run.safety): the record names it, file and hash
        out.environment["remote_code"] = ran
    write_record(run_dir / RESULT, out)
    code = 0 if out.status == "success" else 1
    return leave(code) if cfg.distributed else code


def requested_type(cfg: RunConfig) -> str | None:
    """The distributed_type the run's accelerate config file names (None without a file: plain DDP)."""
    path = cfg.training.distributed.config
    if path is None:
        return None
    from ruamel.yaml import YAML

    doc = YAML(typ="safe").load(Path(path).read_text())
    return doc.get("distributed_type") if isinstance(doc, dict) else None


def leave(code: int) -> int:
    """End a distributed worker without interpreter teardown: destroying the DDP reducer's gloo process group right
    after a collective deadlocks when the group's thread still waits for the GIL the destructor holds (seen here).
    Every file the worker wrote is closed by now."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
