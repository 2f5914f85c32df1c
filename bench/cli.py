"""The command line: `python -m bench {list,validate,run,report,compare,export,perf,recommend}` (or `bench`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Wide enough for the summary table when output goes to a file or CI log (rich assumes 80 columns there).
_width = None if sys.stdout.isatty() else 200
console = Console(highlight=False, width=_width)
err = Console(stderr=True, highlight=False, width=_width)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def cmd_list(args) -> int:
    from methods import METHODS

    table = Table(title="Methods", show_lines=True)
    for col in ("id", "merge", "base", "parameters (defaults)", "what it does"):
        table.add_column(col, overflow="fold")
    for m in METHODS.values():
        params = ", ".join(f"{k}={v!r}" for k, v in m.defaults().items()) or "-"
        table.add_row(m.id, m.merge, "4-bit NF4" if m.load_in_4bit else "as loaded", params, m.summary)
    console.print(table)
    console.print("Every suite also evaluates the untrained base model as the [bold]baseline[/] row.")
    return EXIT_OK


def _load(path: str):
    from bench.suite import load_suite
    from bench.yamlio import SuiteError

    try:
        return load_suite(path)
    except SuiteError as e:
        err.print(e.render(), markup=False)
        return None


def cmd_validate(args) -> int:
    code = EXIT_OK
    for path in args.suites:
        suite = _load(path)
        if suite is None:
            code = EXIT_USAGE
            continue
        runs = suite.resolved_runs()
        console.print(
            f"{path}: ok - {len(runs)} runs ({', '.join(r['run'] for r in runs)}), budget "
            f"{', '.join(f'{k}={v}' for k, v in suite.budget.model_dump(exclude_none=True).items())}, "
            f"model {suite.model.kind}, output {suite.output_dir}",
            markup=False,
        )
    if code == EXIT_OK:
        console.print("checked: YAML syntax and duplicate keys, every key and type, method ids and their params "
                      "(each PEFT config was built), model and data paths, metrics, the output folder.",
                      style="dim")
    return code


def _preflight_data(suite) -> str | None:
    """Load the dataset and the tokenizer once before any run starts: a data problem is one clear error, not seven
    failed runs. Prompts are measured with the model's own tokenizer against the smallest max_seq_len of any run."""
    from bench import models as M
    from bench.data import DataError, load_examples, tokenize

    runs = suite.resolved_runs()
    cfg = runs[0]
    tightest = min(runs, key=lambda r: r["training"]["max_seq_len"])
    max_seq_len = tightest["training"]["max_seq_len"]
    # A per-run override is the one to change; name the run that has it.
    who = "" if max_seq_len == suite.training.max_seq_len else f"run {tightest['run']}: "
    try:
        train, evals, report = load_examples(cfg["dataset"], max_eval=cfg["eval"]["max_examples"])
        # Resolving a GGUF converts it here, once, instead of in the first run.
        folder, _ = M.resolve(cfg["model"])
        tokenizer = M.load_tokenizer(cfg["model"], folder)
    except (DataError, M.ModelSourceError) as e:
        return str(e)
    for part, examples in (("train", train), ("eval", evals)):
        try:
            kept = tokenize(examples, tokenizer, max_seq_len, cfg["dataset"], report, report.source)
        except DataError as e:
            return f"{who}{e}"
        if not kept:
            return (f"{who}{report.source}: every {part} prompt is too long for max_seq_len {max_seq_len}, so none "
                    "is left to run on (raise training.max_seq_len)")
    return None


def cmd_run(args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from bench import runner
    from bench.records import error_headline, load_records

    suite = _load(args.suite)
    if suite is None:
        return EXIT_USAGE
    try:
        slots = runner.parse_devices(args.devices) if args.devices else [None]
    except runner.DevicesError as e:
        err.print(str(e), markup=False)
        return EXIT_USAGE
    out_dir = Path(args.output) if args.output else suite.output_dir
    problem = _preflight_data(suite)
    if problem:
        err.print(f"{args.suite}: {problem}", markup=False)
        return EXIT_USAGE
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        err.print(f"{args.suite}: output folder {str(out_dir)!r} cannot be created: {e.strerror}", markup=False)
        return EXIT_USAGE
    # With seeds, a run's name (lora-r16) names all its seeds (lora-r16@seed0, ...); the runner matches run names.
    only = args.only and [*args.only, *(c["run"] for c in suite.resolved_runs() if c.get("group") in args.only)]
    plans = runner.plan(suite, out_dir, force=args.force, only=only)
    if args.only and not plans:
        err.print(f"--only {' '.join(args.only)}: no run of {args.suite} has that name or method", markup=False)
        return EXIT_USAGE
    todo = [p for p in plans if p.action == "run"]
    problems = runner.slot_problems([p.config for p in todo], [s for s in slots if s])
    if problems:
        err.print("\n".join(f"--devices {args.devices}: {p}" for p in problems), markup=False)
        return EXIT_USAGE
    for p in plans:
        if p.action == "skip":
            console.print(f"[dim]skip {p.config['run']}: {p.why} (--force reruns it)[/]")
    where = f" on {len(slots)} slots ({', '.join(s.name for s in slots)})" if args.devices else ""
    console.print(f"[bold]{suite.name}[/]: {len(todo)} run(s) to do{where}, results in {out_dir}/")
    tasks: dict[str, int] = {}
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        # Called from one thread per slot: rich's Progress takes a lock on every update.
        def start(cfg, slot):
            name = f"{cfg['run']} on {slot.name}" if slot else cfg["run"]
            steps = cfg["budget"].get("max_steps") if cfg["method"] != "baseline" else 1
            tasks[cfg["run"]] = progress.add_task(name, total=steps, info="starting")

        def poll(cfg, points):
            if points:
                last = points[-1]
                progress.update(tasks[cfg["run"]], completed=last["step"] if cfg["budget"].get("max_steps") else None,
                                info=f"step {last['step']} loss {last['loss']:.3f}")

        def done(cfg, record):
            if record is None:
                progress.update(tasks[cfg["run"]], info="[yellow]interrupted[/]")
                return
            steps = cfg["budget"].get("max_steps") or 1
            colour = "green" if record.status == "success" else "red"
            score = next((f"{k} {record.metrics[k]:.3f}" for k in cfg["eval"]["metrics"] if k in record.metrics), "")
            progress.update(tasks[cfg["run"]], completed=steps, total=steps,
                            info=f"[{colour}]{record.status}[/] {score}")

        interrupted = runner.run_all([p.config for p in todo], out_dir, slots, start, poll, done)
    records = [r for r in load_records(out_dir) if r.suite == suite.name]
    from bench.terminal import summary_table

    from bench.sweeps import selected

    console.print(summary_table(selected(records), title=f"{suite.name} (suite version {suite.version})"))
    for r in records:
        if r.status != "success":
            console.print(f"[red]{r.run}: {r.status}[/] - {error_headline(r.error)}", markup=True)
    if not args.no_report:
        _write_reports(out_dir)
    if interrupted:
        console.print("[yellow]Interrupted.[/] Rerun the same command to resume; finished runs are kept.")
        return 130
    return EXIT_OK if all(r.status == "success" for r in records) else EXIT_FAIL


def _write_reports(out_dir: Path) -> None:
    try:
        from bench.report import write_reports
    except ImportError:  # reports land in a later change
        return
    for path in write_reports(out_dir):
        console.print(f"wrote {path}")


def cmd_report(args) -> int:
    from bench.records import RecordError, load_records
    from bench.terminal import summary_table

    try:
        records = load_records(Path(args.results))
    except RecordError as e:
        err.print(str(e), markup=False)
        return EXIT_USAGE
    if not records:
        err.print(f"{args.results}: no run records found", markup=False)
        return EXIT_USAGE
    from bench.sweeps import selected

    console.print(summary_table(selected(records)))
    _write_reports(Path(args.results))
    if args.csv:
        from bench.report import write_csv

        console.print(f"wrote {write_csv(Path(args.results), records)}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Train every PEFT method on the same data under the "
                                     "same budget, measure cost and quality, and compare.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="methods, their parameters and defaults").set_defaults(func=cmd_list)
    p = sub.add_parser("validate", help="check suite files without loading any model")
    p.add_argument("suites", nargs="+")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("run", help="run a suite (resumes: finished runs with the same config are skipped)")
    p.add_argument("suite")
    p.add_argument("--force", action="store_true", help="rerun every run, even up-to-date ones")
    p.add_argument("--only", nargs="+", metavar="RUN", help="run only these runs or methods")
    p.add_argument("--output", help="results folder (default: the suite's output)")
    p.add_argument("--no-report", action="store_true", help="skip writing report.md / report.html")
    p.add_argument("--devices", metavar="SLOTS", help="run in parallel, one run per slot at a time: GPU indices "
                   "(0,1,2,3), GPU groups for distributed runs (0+1,2+3) or cpu slots (cpu,cpu) sharing the cores")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="render reports from the records in a results folder")
    p.add_argument("results")
    p.add_argument("--csv", action="store_true", help="also write summary.csv")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("compare", help="regression gate: compare records against a baseline (exit 1 on regression)")
    p.add_argument("baseline", help="baseline results folder or stored baseline file")
    p.add_argument("current", help="current results folder")
    p.add_argument("--force", action="store_true", help="compare even when suite version, model or data differ")
    p.add_argument("--markdown", metavar="FILE", help="also write the Markdown table to FILE (for a PR comment)")
    p.set_defaults(func=_lazy("bench.compare", "cmd_compare"))
    p = sub.add_parser("export", help="the seed workflow: merge a run's adapter into a fresh base, save, reload, "
                       "generate, optionally push to the Hub")
    p.add_argument("run", help="a run folder, e.g. results/quickstart/lora")
    p.add_argument("--out", required=True, help="folder for the merged model and tokenizer")
    p.add_argument("--prompt", action="append", help="prompt to answer with the reloaded model (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the folder with a generated model card")
    p.set_defaults(func=_lazy("bench.export", "cmd_export"))
    p = sub.add_parser("perf", help="GPU throughput and memory check: every method on TinyLlama-1.1B's shape, random "
                       "weights, seq 2048, bf16 (--dry-run: the same on the CPU, tiny model)")
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU: checks everything but the device")
    p.add_argument("--steps", type=int, help="optimiser steps per run (default 30; 3 with --dry-run)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default 8; 1 with --dry-run)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--only", nargs="+", metavar="RUN", help="run only these runs or methods")
    p.add_argument("--output", default="results/perf", help="folder for the suite, data, records and perf.md")
    p.set_defaults(func=_lazy("bench.perf", "cmd_perf"))
    p = sub.add_parser("recommend", help="the best method under limits on memory, time and size, its Pareto front, "
                       "and why (exit 1 when no method meets the limits)")
    p.add_argument("results", help="results folder")
    p.add_argument("--max-memory", metavar="SIZE", help="peak memory, e.g. 8GB (K/M/G are powers of 1024)")
    p.add_argument("--max-train-time", metavar="DURATION", help="training time, e.g. 1h, 90m, 45s")
    p.add_argument("--max-adapter-size", metavar="SIZE", help="adapter on disk, e.g. 50MB (full fine-tuning: its "
                   "whole checkpoint)")
    p.add_argument("--min-score", metavar="METRIC=VALUE", action="append",
                   help="a score at least this good, e.g. exact_match=0.9 (repeatable; eval_loss: at most)")
    p.add_argument("--metric", help="the score to choose by (default: the suite's first eval metric)")
    p.set_defaults(func=_lazy("bench.recommend", "cmd_recommend"))
    return parser


def _lazy(module: str, name: str):
    """A command implemented in its own module, imported only when that command runs."""

    def call(args) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return call


def main(argv: list[str] | None = None) -> int:
    # bitsandbytes warns on every CPU start that it cannot download an optional kernel; the fallback is used.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
