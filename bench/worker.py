"""One run in its own process: `python -m bench.worker RUN_DIR/config.json RUN_DIR`, started by the runner.

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

import psutil
import torch

from bench import data as D
from bench import models as M
from bench.config import RunConfig
from bench.device import Place, pick_device
from bench.distributed import Ranks
from bench.env import environment
from bench.evaluation import evaluate, general_loss, general_texts
from bench.layout import RESULT, read_progress
from bench.load import Loaded, build, count_params, load, method_of
from bench.merge import check_merge, save
from bench.records import RunRecord, write_record
from bench.train import Diverged, train_metrics, train_stage


def run(cfg: RunConfig, run_dir: Path, record: RunRecord, ranks: Ranks | None = None) -> RunRecord | None:
    """Fill `record` stage by stage; it keeps what was measured if a stage raises. With `ranks` (a distributed
    run), None on every process but the main one."""
    place = Place.create(cfg.training.precision, ranks)
    record.environment = environment(place.device) | {"dtype": str(place.dtype).removeprefix("torch.")}
    if ranks:
        record.environment["distributed"] = ranks.describe()
    torch.manual_seed(cfg.training.seed)
    method = method_of(cfg)
    texts = general_texts(cfg)

    with phase(record, "load"):
        loaded = load(cfg)
        record.model_info, record.data = loaded.model_info, loaded.notes
        model = build(cfg, loaded.folder, place, method)
        record.metrics |= params_metrics(model) | {"load_memory_bytes": memory_now(place)}
    if place.cuda:
        torch.cuda.reset_peak_memory_stats(place.device)
    if texts is not None:
        record.metrics["general_loss_before"] = general_loss(cfg, model, loaded, texts, place, base=True)
    if method is not None:
        try:
            model = train(cfg, model, loaded, place, run_dir, record)
        except Diverged as e:
            return record.model_copy(update={"status": "diverged", "error": str(e)})
    peaks = gather_peaks(record, place)
    if not place.main:
        return None
    evaluated = None
    if cfg.eval.enabled:
        with phase(record, "eval"):
            evaluated = evaluate(cfg, method, model, loaded, place)
            record.metrics |= evaluated.metrics
            record.predictions = evaluated.predictions
            record.environment["generation"] = evaluated.decoding
            if texts is not None:
                record.metrics |= forgetting(cfg, model, loaded, texts, place, record.metrics["general_loss_before"])
    if method is not None:
        saved = save(cfg, method, model, loaded.tokenizer, run_dir)
        merged = check_merge(cfg, method, model, loaded, evaluated and evaluated.generations, place, saved)
        record.metrics |= saved.metrics | merged.metrics
        record.merge = merged.check
    record.metrics |= peak_metrics(place, peaks, record)
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
    record.metrics |= train_metrics(result, model, place)
    record.stopped_by = result.stopped_by
    return whole_model(cfg, place, loaded, model) if place.ranks else model


def forgetting(cfg: RunConfig, model, loaded: Loaded, texts: list[str], place: Place, before: float) -> dict:
    """General-text loss after training and its rise; the baseline trained nothing, so its loss is the one before."""
    if not cfg.trains:
        return {"general_loss": before}
    after = general_loss(cfg, model, loaded, texts, place)
    return {"general_loss": after, "forgetting": after - before}


@contextlib.contextmanager
def phase(record: RunRecord, name: str):
    """A stage of the run, timed into `{name}_seconds`."""
    start = time.perf_counter()
    yield
    record.metrics[f"{name}_seconds"] = time.perf_counter() - start


def params_metrics(model) -> dict[str, float]:
    trainable, total = count_params(model)
    return {"trainable_params": trainable, "total_params": total, "trainable_pct": 100 * trainable / total}


def memory_now(place: Place) -> int:
    if place.cuda:
        place.synchronize()
        return torch.cuda.memory_allocated(place.device)
    return psutil.Process().memory_info().rss


def device_peak(place: Place) -> int:
    if place.cuda:
        return torch.cuda.max_memory_allocated(place.device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def gather_peaks(record: RunRecord, place: Place) -> list[int] | None:
    """In a distributed run, every process's peak so far (by rank), and the per-process throughput metrics."""
    if place.ranks is None:
        return None
    peaks = [int(row[0]) for row in place.ranks.gather([device_peak(place)])]
    m = record.metrics
    m["world_size"] = place.ranks.world
    for name in ("train_tokens_per_second", "steady_tokens_per_second"):
        if name in m:
            m[f"{name}_per_process"] = m[name] / place.ranks.world
    return peaks


def peak_metrics(place: Place, peaks: list[int] | None, record: RunRecord) -> dict[str, float]:
    """Peak memory; in a distributed run `peaks` holds every process's (by rank) and peak_memory_bytes is the
    largest, what one device must hold, beside their total. The main process's own is its final peak."""
    m: dict[str, float] = {}
    if place.cuda:
        m["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(place.device)
        m["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved(place.device)
    m["peak_memory_bytes"] = device_peak(place)
    if peaks is not None:
        peaks = [int(m["peak_memory_bytes"])] + peaks[1:]
        m.update(peak_memory_bytes=max(peaks), peak_memory_bytes_total=sum(peaks))
        record.environment["distributed"]["peak_memory_bytes_per_process"] = peaks
    return m


def whole_model(cfg: RunConfig, place: Place, loaded: Loaded, model):
    """After distributed training, a model with every trained weight on the main process, for evaluation, saving and
    the merge check. DDP keeps a whole copy in every process; FSDP's shards are gathered into a freshly built one."""
    ranks = place.ranks
    if not ranks.sharded:
        return model
    state = ranks.state_dict()  # every process takes part
    if not ranks.main:
        return model
    whole = build(cfg, loaded.folder, place, method_of(cfg))
    whole.load_state_dict(state)
    return whole


def failed(record: RunRecord, e: BaseException) -> RunRecord:
    """The record of a run a stage raised in: what was measured stays, the status and error say what happened."""
    if isinstance(e, torch.OutOfMemoryError):
        status, error = "oom", str(e).splitlines()[0]
    elif isinstance(e, (D.DataError, M.ModelSourceError)):
        status, error = "failed", str(e)
    else:
        status, error = "failed", traceback.format_exc(limit=-6)
    return record.model_copy(update={"status": status, "error": error})


def main() -> int:
    # bitsandbytes warns on every CPU start that it cannot download an optional kernel; the fallback is used.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    cfg_path, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = RunConfig.model_validate_json(cfg_path.read_text())
    record = RunRecord.start(cfg)
    try:
        ranks = Ranks(pick_device()) if cfg.distributed else None
        out = run(cfg, run_dir, record, ranks)
    except Exception as e:
        out = failed(record, e)
    if cfg.distributed and int(os.environ.get("RANK", "0")) != 0:
        # Another process of a distributed run: the main one writes the record. A crash here goes to the log and
        # fails the launch; a divergence is the main process's to report (it saw the same global loss).
        if out is not None and out.status in ("failed", "oom"):
            print(out.error, file=sys.stderr)
            return leave(1)
        return leave(0)
    if out.status != "success" and not out.curve:
        out = out.model_copy(update={"curve": read_progress(run_dir), "last_step": len(read_progress(run_dir))})
    write_record(run_dir / RESULT, out)
    code = 0 if out.status == "success" else 1
    return leave(code) if cfg.distributed else code


def leave(code: int) -> int:
    """End a distributed worker without interpreter teardown: destroying the DDP reducer's gloo process group right
    after a collective deadlocks when the group's thread still waits for the GIL the destructor holds (seen here).
    Every file the worker wrote is closed by now."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
