"""One `bench run` of a suite: check the data once, plan what to run, run it over the slots with progress on the
terminal, then the summary table and the reports. `bench perf` runs its suite through the same call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.launch import lock, runner
from bench.core.config import RunConfig
from bench.core.console import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, console, err
from bench.core.layout import run_path
from bench.core.records import RunRecord, error_headline, load_records

if TYPE_CHECKING:
    from bench.launch.cluster import RayOptions
    from bench.spec.suite import Suite  # the schema imports PEFT's configs: `bench report` needs none of it
    from bench.launch.tracking import RunTracking, Session


@dataclass(frozen=True)
class Options:
    """How to run a suite, as `bench run`'s flags say."""

    output: Path | None = None  # default: the suite's output folder
    force: bool = False
    only: tuple[str, ...] = ()
    devices: str | None = None  # --devices as given; None runs one at a time
    report: bool = True
    track: tuple[str, ...] = ()  # --track: trackers on top of the suite's `tracking`
    ray: RayOptions | None = None  # --ray: every run a task on a Ray cluster
    adopt_unseeded: bool = False  # --seeds: a record from before the suite had seeds counts as the seed it ran at

    @property
    def slots(self) -> list[runner.Slot | None]:
        return runner.parse_devices(self.devices) if self.devices else [None]


def preflight(suite: Suite, configs: list[RunConfig]) -> str | None:
    """Read the inputs every run shares (bench.run.load.read_inputs: model source, tokenizer, data) once before any run
    starts: a data problem is one clear error, not a failed record per run. Prompts are measured with the model's own
    tokenizer against the smallest max_seq_len of any run."""
    from bench.run import models as M
    from bench.datasets.examples import DataError
    from bench.run.load import read_inputs, tokenize

    tightest = min(configs, key=lambda r: r.training.max_seq_len)
    max_seq_len = tightest.training.max_seq_len
    # A per-run override is the one to change; name the run that has it.
    who = "" if max_seq_len == suite.training.max_seq_len else f"run {tightest.run}: "
    try:
        inputs = read_inputs(configs[0])
    except (DataError, M.ModelSourceError) as e:
        return str(e)
    for part, examples in (("train", inputs.train + inputs.validation), ("eval", inputs.eval)):
        try:
            kept = tokenize(inputs, examples, max_seq_len, configs[0])
        except DataError as e:
            return f"{who}{e}"
        if not kept:
            return (f"{who}{inputs.notes.source}: every {part} prompt is too long for max_seq_len {max_seq_len}, so "
                    "none is left to run on (raise training.max_seq_len)")
    return None


def run_suite(suite: Suite, options: Options) -> int:
    """Run what is missing or changed; the exit code: 0 all succeeded, 1 some run did not, 2 bad input, 130
    interrupted."""
    configs = suite.resolved_runs()
    out_dir = options.output or suite.output_dir
    problem = preflight(suite, configs)
    if problem:
        err.print(f"{suite.source}: {problem}", markup=False)
        return EXIT_USAGE
    if options.ray is None:  # the fork server imports while the runner takes the lock and plans
        runner.warm_up(configs, out_dir, options.force, list(options.only))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        err.print(f"{suite.source}: output folder {str(out_dir)!r} cannot be created: {e.strerror}", markup=False)
        return EXIT_USAGE
    try:
        with lock.holding(out_dir, announce=lambda text: err.print(text, markup=False)):
            return _run_locked(suite, configs, out_dir, options)
    except lock.FolderInUse as e:
        err.print(f"{suite.source}: {e}", markup=False)
        return EXIT_USAGE


def _run_locked(suite: Suite, configs: list[RunConfig], out_dir: Path, options: Options) -> int:
    if options.adopt_unseeded and not options.force:
        from bench.launch.moreseeds import adopt_unseeded

        for line in adopt_unseeded(configs, out_dir):
            console.print(f"[dim]{line}[/]")
    plans = runner.plan(configs, out_dir, force=options.force, only=list(options.only))
    if options.only and not plans:
        err.print(f"--only {' '.join(options.only)}: no run of {suite.source} has that name or method", markup=False)
        return EXIT_USAGE
    todo = [p.config for p in plans if p.action == "run"]
    slots = [s for s in options.slots if s is not None]
    problems = runner.slot_problems(todo, slots)
    if problems:
        err.print("\n".join(f"--devices {options.devices}: {p}" for p in problems), markup=False)
        return EXIT_USAGE
    for p in plans:
        if p.action == "skip":
            console.print(f"[dim]skip {p.config.run}: {p.why} (--force reruns it)[/]")
    if options.ray is not None and todo:
        return _run_on_ray(suite, todo, out_dir, options)
    where = f" on {len(slots)} slots ({', '.join(s.name for s in slots)})" if slots else ""
    console.print(f"[bold]{suite.name}[/]: {len(todo)} run(s) to do{where}, results in {out_dir}/")
    trackers = _trackers(suite, options, out_dir, todo)
    interrupted = run_with_progress(todo, out_dir, options.slots, trackers)
    return _finish(suite, out_dir, options, interrupted, todo, trackers)


def _run_on_ray(suite: Suite, todo: list[RunConfig], out_dir: Path, options: Options) -> int:
    """The runs to do as tasks on a Ray cluster (bench.launch.cluster), then the same summary and reports."""
    import ray

    from bench.launch import cluster

    try:
        described = cluster.connect(options.ray.address)
    except ConnectionError as e:
        # Ray 2.60's `ray start --head` turns token authentication on where ~/.ray/auth_token exists, and a client
        # that is not told so fails to connect with this same message.
        err.print(f"--ray {options.ray.address or ''}: no Ray cluster to join ({e}); if the cluster uses token "
                  "authentication, set RAY_AUTH_MODE=token here", markup=False)
        return EXIT_USAGE
    try:
        problems = cluster.problems(todo, options.ray)
        if problems:
            err.print("\n".join(f"--ray: {p}" for p in problems), markup=False)
            return EXIT_USAGE
        console.print(f"[bold]{suite.name}[/]: {len(todo)} run(s) to do on the {described}, results in {out_dir}/")
        trackers = _trackers(suite, options, out_dir, todo)
        interrupted = run_with_progress(todo, out_dir, [None], trackers, options.ray)
    finally:
        ray.shutdown()
    return _finish(suite, out_dir, options, interrupted, todo, trackers)


def _finish(suite: Suite, out_dir: Path, options: Options, interrupted: bool, todo: list[RunConfig],
            trackers: Session | None) -> int:
    """The summary and the reports; the trackers' warnings; the exit code."""
    records = [r for r in load_records(out_dir) if r.suite == suite.name]
    reports = summarise(records, out_dir, f"{suite.name} (suite version {suite.version})", options.report)
    if trackers is not None:
        warn_trackers(trackers, [r for r in records if r.run in {c.run for c in todo}], reports)
    if interrupted:
        console.print("[yellow]Interrupted.[/] Rerun the same command to resume; finished runs are kept.")
        return EXIT_INTERRUPTED
    return EXIT_OK if all(r.ok for r in records) else EXIT_FAIL


def _trackers(suite: Suite, options: Options, out_dir: Path, todo: list[RunConfig]) -> Session | None:
    """The session's trackers (bench.launch.tracking), or None when none is on or nothing is to run: runs that are up to
    date were tracked when they ran."""
    tracking = suite.tracking.adding(options.track)
    if not tracking.names or not todo:
        return None
    from bench.launch.tracking import Session

    console.print(f"tracking: {', '.join(tracking.names)}")
    session = Session(tracking, out_dir, suite.name)
    for where in session.destinations:
        console.print(f"sending run configs, metrics and predictions to {where}", markup=False, highlight=False)
    return session


def warn_trackers(trackers: Session, records: list[RunRecord], reports: list[Path]) -> None:
    """Attach the report; then, per tracker that failed on some run of this session, one warning line."""
    for name, why in trackers.report(reports).items():
        err.print(f"warning: tracker {name} could not take the report ({why}); the records are not affected",
                  markup=False)
    failures: dict[str, list[tuple[str, str]]] = {}
    for r in records:
        for name, why in r.tracker_errors.items():
            failures.setdefault(name, []).append((r.run, why))
    for name, failed in failures.items():
        run, why = failed[0]
        err.print(f"warning: tracker {name} failed on {len(failed)} of {len(records)} run(s) (first, {run}: {why}); "
                  "the runs and their records are not affected (tracker_errors in each record)", markup=False)


def run_with_progress(todo: list[RunConfig], out_dir: Path, slots: list[runner.Slot | None],
                      trackers: Session | None = None, on_ray: RayOptions | None = None) -> bool:
    """runner.run_all (on_ray: bench.launch.cluster.run_all) with a progress bar per run, each run mirrored to the
    trackers if any; True when interrupted."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, int] = {}
    tracked: dict[str, RunTracking] = {}
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        # Called from one thread per slot: rich's Progress takes a lock on every update.
        def start(cfg: RunConfig, slot: runner.Slot | None) -> None:
            name = f"{cfg.run} on {slot.name}" if slot else cfg.run
            steps = cfg.budget.max_steps if cfg.trains else 1
            tasks[cfg.run] = progress.add_task(name, total=steps, info="starting")
            if trackers is not None:
                tracked[cfg.run] = trackers.run(cfg)

        def poll(cfg: RunConfig, points: list[dict]) -> None:
            if cfg.run in tracked:
                tracked[cfg.run].poll(points)
            if points:
                last = points[-1]
                progress.update(tasks[cfg.run], completed=last["step"] if cfg.budget.max_steps else None,
                                info=f"step {last['step']} loss {last['loss']:.3f}")

        def done(cfg: RunConfig, record: RunRecord | None) -> None:
            if record is None:
                progress.update(tasks[cfg.run], info="[yellow]interrupted[/]")
                return
            steps = cfg.budget.max_steps or 1
            colour = "green" if record.ok else "red"
            score = next((f"{k} {record.metrics[k]:.3f}" for k in cfg.eval.metrics if k in record.metrics), "")
            progress.update(tasks[cfg.run], completed=steps, total=steps, info=f"[{colour}]{record.status}[/] {score}")

        def record(cfg: RunConfig, record: RunRecord) -> RunRecord:
            return tracked.pop(cfg.run).finish(record, run_path(out_dir, cfg.run)) if cfg.run in tracked else record

        if on_ray is not None:
            from bench.launch import cluster

            return cluster.run_all(todo, out_dir, on_ray, start, poll, done, record)
        return runner.run_all(todo, out_dir, slots, start, poll, done, record)


def summarise(records: list[RunRecord], out_dir: Path, title: str | None = None, report: bool = True) -> list[Path]:
    """The summary table (a sweep as its chosen point), every failure in a line, and the reports (their paths)."""
    from bench.analysis.sweeps import selected
    from bench.report.terminal import rich_table

    console.print(rich_table(selected(records), title=title))
    for r in records:
        if not r.ok:
            console.print(f"[red]{r.run}: {r.status}[/] - {error_headline(r.error)}", markup=True)
    if not report:
        return []
    from bench.report.write import write_reports

    paths = write_reports(out_dir)
    for path in paths:
        console.print(f"wrote {path}")
    return list(paths)
