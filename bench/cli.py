"""The command line: `python -m bench COMMAND` (or `bench COMMAND`); `python -m bench --help` lists the commands.

Each command imports what it needs when it runs, so `--help` and `bench list` load no model library.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bench.core.console import EXIT_OK, EXIT_USAGE, console, err


def cmd_list(args) -> int:
    from rich.table import Table

    if args.fields:
        return cmd_fields(args.fields)

    from methods import METHODS

    table = Table(title="Methods", show_lines=True)
    for col in ("id", "merge", "base", "params: PEFT config (harness defaults; fixed)", "what it does"):
        table.add_column(col, overflow="fold")
    for m in METHODS.values():
        params = ", ".join([f"{k}={v!r}" for k, v in m.defaults().items()]
                           + [f"{k}={v!r} (fixed)" for k, v in m.fixed.items()])
        schema = f"{m.config_name}: {len(m.field_names())} fields" if m.peft_type else m.config_name
        schema += "".join(f" + {name}" for name in m.extras)
        what = m.summary if m.refusal is None else f"{m.summary} Cannot run here: it {m.refusal}."
        table.add_row(m.id, m.merge, "4-bit NF4" if m.load_in_4bit else "as loaded",
                      f"{schema}" + (f" ({params})" if params else ""), what)
    console.print(table)
    console.print("A method's params are every field of its PEFT config (PEFT's docs explain them); `bench list "
                  "--fields METHOD` lists them. Every suite also evaluates the untrained base model as the "
                  "[bold]baseline[/] row.")
    return EXIT_OK


def cmd_fields(method_id: str) -> int:
    from methods import METHODS

    if method_id not in METHODS:
        from bench.core.util import did_you_mean

        err.print(f"unknown method '{method_id}'{did_you_mean(method_id, METHODS)}", markup=False)
        return EXIT_USAGE
    m = METHODS[method_id]
    for name, kind in m.parameters().items():
        default = repr(m.preset[name]) if name in m.preset else "None (the harness's param, not PEFT's)" \
            if name in m.extras else "PEFT's default"
        kind = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
        console.print(f"{name}: {kind} = {default}", markup=False, highlight=False)
    return EXIT_OK


def _load(path: str, trust_remote_code: bool = False):
    from bench.spec.suite import load_suite
    from bench.core.yamlio import SuiteError

    try:
        return load_suite(path, trust_remote_code=trust_remote_code)
    except SuiteError as e:
        err.print(e.render(), markup=False)
        return None


def _trust_flag(p) -> None:
    p.add_argument("--trust-remote-code", action="store_true", help="let the suite run code it brings: hub:OWNER/NAME "
                   "or local-script metrics (evaluate.load imports them), an lm-eval task folder with !function or "
                   "metrics lm-eval does not ship; never a suite key (README: Security)")


def _say_code(suite, trusted: bool) -> None:
    """What `validate` and `run` say of code that runs: evaluate's own metrics, and what the flag allows."""
    from bench.run.safety import notes

    lm = suite.eval.lm_eval
    include = suite.resolve(lm.include_path) if lm is not None and lm.include_path is not None else None
    for line in notes(suite.eval.metrics, include, trusted):
        console.print(f"note: {line}", markup=False, highlight=False)


def cmd_validate(args) -> int:
    code = EXIT_OK
    for path in args.suites:
        suite = _load(path, args.trust_remote_code)
        if suite is None:
            code = EXIT_USAGE
            continue
        runs = suite.resolved_runs()
        console.print(
            f"{path}: ok - {len(runs)} runs ({', '.join(r.run for r in runs)}), budget "
            f"{', '.join(f'{k}={v}' for k, v in suite.budget.model_dump().items())}, "
            f"model {suite.model.kind}, output {suite.output_dir}",
            markup=False,
        )
        _say_code(suite, args.trust_remote_code)
        if args.gpu_memory:
            from bench.choose.plan import fit_warnings

            code = max(code, fit_warnings(path, runs, args.gpu_memory))
    if code == EXIT_OK:
        console.print("checked: YAML syntax and duplicate keys, every key and type (numbers finite), run names "
                      "(plain file names), method ids and their params, every run as resolved with each sweep point "
                      "(its PEFT config built, and applied where the suite gives the architecture), model and data "
                      "paths, metrics, the extract regex (compiled, probed for backtracking), code the suite would "
                      "run (README: Security), the output folder.", style="dim")
    return code


def cmd_schema(args) -> int:
    from bench.spec.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_run(args) -> int:
    from bench.launch.runner import DevicesError, parse_devices
    from bench.commands.session import Options, run_suite

    suite = _load(args.suite, args.trust_remote_code)
    if suite is None:
        return EXIT_USAGE
    _say_code(suite, args.trust_remote_code)
    try:
        if args.devices:
            parse_devices(args.devices)
    except DevicesError as e:
        err.print(str(e), markup=False)
        return EXIT_USAGE
    if args.track:
        from bench.launch.tracking import missing_extra

        missing = [f"--track {name}: {why}" for name in args.track if (why := missing_extra(name))]
        if missing:
            err.print("\n".join(missing), markup=False)
            return EXIT_USAGE
    problem = ray_problem(args)
    if problem:
        err.print(problem, markup=False)
        return EXIT_USAGE
    if args.seeds is not None:
        from bench.launch.moreseeds import seeds_for

        try:
            suite = suite.model_copy(update={"seeds": seeds_for(suite.seeds, suite.training.seed, args.seeds)})
        except ValueError as e:
            err.print(f"{args.suite}: {e}", markup=False)
            return EXIT_USAGE
    options = Options(output=Path(args.output) if args.output else None, force=args.force,
                      only=tuple(args.only or ()), devices=args.devices, report=not args.no_report,
                      track=tuple(args.track or ()), ray=ray_options(args), adopt_unseeded=args.seeds is not None)
    return run_suite(suite, options)


def ray_problem(args) -> str | None:
    """What is wrong with the --ray flags as given, before anything starts."""
    import importlib.util

    given = [f for f in ("ray_shared_dir", "ray_retries", "ray_cpus") if getattr(args, f) is not None]
    if args.ray is None:
        return f"--{given[0].replace('_', '-')} only applies with --ray" if given else None
    if args.devices:
        return "--ray and --devices: choose one (on a Ray cluster, each run asks Ray for its devices)"
    if importlib.util.find_spec("ray") is None:
        return "--ray needs Ray, which is not installed: pip install 'peft-bench[ray]'"
    if args.ray_shared_dir is not None and not Path(args.ray_shared_dir).is_dir():
        return f"--ray-shared-dir {args.ray_shared_dir}: no such folder (it must exist, at this path on every node)"
    return None


def ray_options(args):
    """bench.launch.cluster.RayOptions from the flags; None without --ray (bench.launch.cluster then stays unimported)."""
    if args.ray is None:
        return None
    from bench.launch.cluster import RayOptions

    defaults = RayOptions()
    return RayOptions(address=args.ray or None,
                      shared_dir=Path(args.ray_shared_dir) if args.ray_shared_dir else None,
                      retries=defaults.retries if args.ray_retries is None else args.ray_retries,
                      cpus_per_process=args.ray_cpus or defaults.cpus_per_process)


def cmd_report(args) -> int:
    from bench.core.records import RecordError, load_records
    from bench.commands.session import summarise

    try:
        records = load_records(Path(args.results))
    except RecordError as e:
        err.print(str(e), markup=False)
        return EXIT_USAGE
    if not records:
        err.print(f"{args.results}: no run records found", markup=False)
        return EXIT_USAGE
    summarise(records, Path(args.results))
    if args.csv:
        from bench.report.write import write_csv

        console.print(f"wrote {write_csv(Path(args.results), records)}")
    return EXIT_OK


def cmd_compare(args) -> int:
    from bench.choose.compare import compare, settings_from
    from bench.core.records import RecordError
    from bench.choose.reference import load_side
    from bench.report.gate import render_markdown, render_refusal

    try:
        reference, current = load_side(args.reference), load_side(args.current)
    except RecordError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    comparison = compare(reference, current, settings_from(current))
    if comparison.refusals and not args.force:
        for line in comparison.refusals:
            print(f"not comparable: {line}", file=sys.stderr)
        print("Store new reference records for the changed suite (bench save-reference), or compare anyway with "
              "--force.", file=sys.stderr)
        if args.markdown:
            Path(args.markdown).write_text(render_refusal(comparison.refusals))
        return EXIT_USAGE
    for line in comparison.warnings:
        print(f"warning: environment differs: {line}", file=sys.stderr)
    text = render_markdown(comparison, forced=args.force)
    sys.stdout.write(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 1 if comparison.failed else EXIT_OK


def cmd_save_reference(args) -> int:
    from bench.core.records import RecordError
    from bench.choose.reference import load_side, save_reference

    try:
        records = load_side(args.results)
    except RecordError as e:
        print(e, file=sys.stderr)
        return EXIT_USAGE
    failed = [r.run for r in records if not r.ok]
    if failed:
        # Reference records with failed runs would let those runs fail forever unnoticed.
        print(f"{args.results}: not every run succeeded ({', '.join(failed)}); rerun before storing reference records",
              file=sys.stderr)
        return 1
    save_reference(records, Path(args.file))
    print(f"wrote {args.file} ({len(records)} records)")
    return EXIT_OK


def _lazy(module: str, name: str):
    """A command implemented in its own module, imported only when that command runs."""

    def call(args) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    return call


def _run_parsers(sub) -> None:
    from bench.core.config import TRACKERS

    p = sub.add_parser("list", help="methods (every PEFT tuner), their merge kind, parameters and defaults")
    p.add_argument("--fields", metavar="METHOD", help="every param of one method, with its type and default")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("plan", help="per run, without training or weights: trainable and total parameters, adapter "
                       "size, base weights at the run's precision and at 4-bit")
    p.add_argument("suite", help="suite YAML file")
    p.add_argument("--json", action="store_true", help="one JSON object per line, one per run")
    p.add_argument("--gpu-memory", metavar="SIZE|CARD", help="a card's memory (24GB, 80GiB) or a card (L4, L40S, "
                   "A100, H100, H200): whether each run fits, the largest batch that does, and a time estimate")
    _trust_flag(p)
    p.set_defaults(func=_lazy("bench.choose.plan", "cmd_plan"))
    p = sub.add_parser("import-peft", help="runs of a suite from folders laid out as PEFT's method_comparison "
                       "experiments (adapter_config.json, optional training_params.json)")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="experiment folders (each with adapter_config.json)")
    p.add_argument("--out", metavar="SUITE.yaml", help="write the suite here (default: print it)")
    p.add_argument("--model", default="llama-3.2-3b-mini", help="the suite's model preset (default llama-3.2-3b-mini, "
                   "the shape PEFT's experiment configs apply to)")
    p.add_argument("--data", default="data/smoke.jsonl", help="the suite's dataset path")
    p.add_argument("--max-steps", type=int, default=20, help="the suite's step budget (default 20; PEFT's "
                   "published runs take 5000)")
    p.add_argument("--base", metavar="SUITE.yaml", help="take every setting but the runs from this suite instead of "
                   "--model, --data and --max-steps (suites/metamath.yaml: PEFT's data, model and 5000 steps)")
    p.set_defaults(func=_lazy("bench.commands.peftimport", "cmd_import_peft"))
    p = sub.add_parser("validate", help="check suite files without loading any model")
    p.add_argument("suites", nargs="+", help="suite YAML files")
    p.add_argument("--gpu-memory", metavar="SIZE|CARD", help="also warn of each run whose predicted GPU training peak "
                   "(bench plan) does not fit this card (24GB, 80GiB, L4, L40S, A100, H100, H200)")
    _trust_flag(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("schema", help="the JSON Schema of suite files (bench schema > suite.schema.json), for editors "
                       "that check and complete suites as they are typed")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("run", help="run a suite (resumes: finished runs with the same config are skipped)")
    p.add_argument("suite", help="suite YAML file")
    p.add_argument("--force", action="store_true", help="rerun every run, even up-to-date ones")
    p.add_argument("--only", nargs="+", metavar="RUN", help="run only these runs or methods")
    p.add_argument("--seeds", type=_count(1), metavar="N", help="run every entry over N seeds: the suite's own, then "
                   "the next ones; a finished run from before counts as its seed, so only the missing seeds run")
    p.add_argument("--output", help="results folder (default: the suite's output)")
    p.add_argument("--no-report", action="store_true", help="skip writing report.md / report.html")
    p.add_argument("--devices", metavar="SLOTS", help="run in parallel, one run per slot at a time: GPU indices "
                   "(0,1,2,3), GPU groups for distributed runs (0+1,2+3) or cpu slots (cpu,cpu) sharing the cores")
    p.add_argument("--track", nargs="+", metavar="TRACKER", choices=TRACKERS, help="mirror every run live to these "
                   "trackers too, with their defaults (tensorboard, mlflow, wandb; the suite's `tracking:` sets "
                   "options); each is an extra: pip install 'peft-bench[mlflow]'")
    _ray_flags(p)
    _trust_flag(p)
    p.set_defaults(func=cmd_run)
    _gpu_parsers(sub)


def _gpu_parsers(sub) -> None:
    p = sub.add_parser("perf", help="GPU throughput and memory check: every method on TinyLlama-1.1B's shape, random "
                       "weights, seq 2048, bf16 (--dry-run: the same on the CPU, tiny model)")
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU: checks everything but the device")
    p.add_argument("--steps", type=int, help="optimiser steps per run (default 20; 3 with --dry-run)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default 8; 1 with --dry-run)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence (every sequence exactly this long)")
    p.add_argument("--only", nargs="+", metavar="RUN", help="run only these runs or methods")
    p.add_argument("--output", default="results/perf", help="folder for the suite, data, records and perf.md")
    p.set_defaults(func=_lazy("bench.commands.perf", "cmd_perf"))
    p = sub.add_parser("gpu-check", help="what a CPU cannot show: fp32 master weights, QLoRA vs LoRA memory, the "
                       "merged weights, packed attention, chunked eval memory (one line per check; --dry-run: CPU)")
    p.add_argument("--dry-run", action="store_true", help="the same checks on the CPU with tiny shapes")
    p.add_argument("--only", nargs="+", metavar="CHECK", help="run only these checks")
    p.add_argument("--plant", nargs="+", metavar="CHECK", choices=("fp32-masters", "qlora-memory", "merge",
                   "eval-memory", "quant-bnb-8bit", "quant-bnb-nf4", "quant-bnb-fp4", "quant-torchao-int8",
                   "quant-hqq-4bit"), help="plant the fault each of these checks looks for: it must FAIL")
    p.set_defaults(func=_lazy("bench.commands.gpucheck", "cmd_gpu_check"))


def _count(minimum: int):
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return int(text)

    return parse


def _ray_flags(p) -> None:
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="run every run as a task on a Ray cluster "
                   "(pip install 'peft-bench[ray]'): ADDRESS of its head (host:port, from a machine of the cluster); "
                   "without one, the cluster `ray start` made on this machine, else a new local one")
    p.add_argument("--ray-shared-dir", metavar="DIR", help="with --ray: a folder at this same path on every node; "
                   "nodes write run folders (adapters, checkpoints) there instead of sending them back")
    p.add_argument("--ray-retries", type=_count(0), metavar="N", help="with --ray: further attempts for a run whose "
                   "node died or whose task Ray lost (default 2)")
    p.add_argument("--ray-cpus", type=_count(1), metavar="N", help="with --ray: CPUs each run's task asks for, per "
                   "process of the run; its threads (default 1)")


def _result_parsers(sub) -> None:
    p = sub.add_parser("report", help="render reports from the records in a results folder")
    p.add_argument("results", help="results folder")
    p.add_argument("--csv", action="store_true", help="also write summary.csv")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("compare", help="regression gate: compare records against reference records (a stored file "
                       "such as baselines/smoke.json, or a results folder; exit 1 on regression)")
    p.add_argument("reference", help="stored reference file (bench save-reference) or results folder to compare with")
    p.add_argument("current", help="current results folder")
    p.add_argument("--force", action="store_true", help="compare even when suite version, model or data differ")
    p.add_argument("--markdown", metavar="FILE", help="also write the Markdown table to FILE (for a PR comment)")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("save-reference", aliases=["save-baseline"], help="store the records of a results folder as "
                       "one reference file the gate compares with (also: save-baseline)")
    p.add_argument("results", help="results folder")
    p.add_argument("file", help="reference file to write (JSON), e.g. baselines/smoke.json")
    p.set_defaults(func=cmd_save_reference)
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
    p.add_argument("--prefer", default="memory", metavar="COST", help="of the methods not significantly worse than "
                   "the best score, take the cheapest in memory (default), time, size or params; score: the best score")
    p.add_argument("--servable", metavar="STACK", help="only methods whose adapter this serving stack loads as it "
                   "is: vllm, llama.cpp or tgi")
    p.set_defaults(func=_lazy("bench.choose.recommend", "cmd_recommend"))
    p = sub.add_parser("export", help="the seed workflow: merge a run's adapter into a fresh base, save, reload, "
                       "generate, optionally push to the Hub")
    p.add_argument("run", help="a run folder, e.g. results/quickstart/lora")
    p.add_argument("--out", required=True, help="folder for the merged model and tokenizer")
    p.add_argument("--prompt", action="append", help="prompt to answer with the reloaded model (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt at most")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the folder with a generated model card")
    p.set_defaults(func=_lazy("bench.run.export", "cmd_export"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Train every PEFT method on the same data under the "
                                     "same budget, measure cost and quality, and compare.")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parsers(sub)
    _result_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # bitsandbytes warns on every CPU start that it cannot download an optional kernel; the fallback is used.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
