"""The docs' generated parts: reference pages from the code, and tables of measurements from committed result files.

Run: python scripts/gen_docs.py                       refresh the generated tables in README.md and docs/*.md
     python scripts/gen_docs.py --check               exit 1 where a generated table is out of date (a test runs it)
     python scripts/gen_docs.py --reference DIR       write the reference pages into DIR (the docs build makes them
                                                      itself, through scripts/mkdocs_hooks.py)
     python scripts/gen_docs.py --capture RESULTS NAME   store a results folder's records, trimmed, as
                                                      docs/results/NAME.json (what a table is rendered from)
     python scripts/gen_docs.py --capture-plan JSONL NAME   add `bench plan --json`'s predictions to it

Nothing here is written by hand twice: the suite reference walks the pydantic models, the method reference asks
`methods.METHODS` and PEFT's config dataclasses, the metric reference reads `bench.core.metrics`, the CLI reference walks
`bench.cli.build_parser()`. `missing_descriptions()` lists every field, method, metric, command or argument that has
no description; tests/test_docs.py fails on any.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "results"
# Where generated tables go in hand-written pages: between these two lines, refreshed by this script.
BEGIN = "<!-- generated: {name} (python scripts/gen_docs.py; do not edit by hand) -->"
END = "<!-- end generated: {name} -->"


# ---- types, defaults and descriptions of pydantic fields ---------------------------------------------------------


def constraint_text(meta: Any) -> str:
    for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if getattr(meta, attr, None) is not None and isinstance(meta, annotated_types.BaseMetadata):
            return f"{sign} {getattr(meta, attr)}"
    if isinstance(meta, annotated_types.MinLen):
        return f"at least {meta.min_length} item" + ("s" if meta.min_length != 1 else "")
    return ""


def type_text(annotation: Any, metadata: list | tuple = ()) -> str:
    """A field's type as a reader writes it in YAML: `int > 0`, `'linear' | 'cosine'`, `list[str]`, `Budget`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0], [*metadata, *annotation.__metadata__])
    if origin in (typing.Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        text = " | ".join(parts) + (" | null" if type(None) in args else "")
    elif origin is typing.Literal:
        text = " | ".join(repr(a) for a in args)
    elif origin is not None:
        text = f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_text(a) for a in args)}]"
    elif annotation is typing.Any:
        text = "any"
    elif isinstance(annotation, type):
        text = annotation.__name__
    else:
        text = str(annotation).replace("typing.", "")
    constraints = [c for c in (constraint_text(m) for m in metadata) if c]
    return " ".join([text, *constraints])


def default_text(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "the suite's" if type(value).__name__.endswith("Overrides") else "its fields' defaults"
    if isinstance(value, dict) and value and isinstance(next(iter(value.values())), BaseModel):
        return ", ".join(f"{k}: {json.dumps(v.model_dump(exclude_none=True))}" for k, v in value.items())
    return "null" if value is None else json.dumps(value)


def models_of(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's type holds (in unions, lists and dicts too)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in models_of(a)]


def model_tree(root: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """Every model reachable from `root`, each once, with the path a suite writes it at (`dataset.eval_data`)."""
    seen: dict[type[BaseModel], str] = {root: ""}
    todo = [root]
    while todo:
        model = todo.pop(0)
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            for sub in models_of(field.annotation):
                if sub not in seen and not sub.__name__.endswith("Overrides"):  # a run's training: as training
                    seen[sub] = f"{seen[model]}.{name}".lstrip(".") + ("[]" if "list" in str(field.annotation) else "")
                    todo.append(sub)
    return [(path, model) for model, path in seen.items()]


def model_fields(model: type[BaseModel]) -> list[tuple[str, Any]]:
    return [(name, f) for name, f in model.model_fields.items() if not f.exclude]


def suite_page() -> str:
    from bench.spec.suite import Suite

    out = ["# Suite fields", "",
           "Generated from the pydantic models in `bench/core/config.py`, `bench/spec/suite.py` and `bench/core/regression.py` "
           "(`python scripts/gen_docs.py --reference DIR` writes this page). A suite is one YAML file; unknown keys "
           "are an error. A run's `training:` takes any field of `training` and overrides the suite's, key by key. "
           "How to write one: [Writing a suite](../guides/suites.md).", ""]
    tree = model_tree(Suite)
    anchors = {model.__name__: _anchor(path) for path, model in tree} | {"TrainingOverrides": _anchor("training")}
    for path, model in tree:
        title = f"`{path}`" if path else "The suite (top level)"
        out += [f"## {title} {{#{_anchor(path)}}}", "", " ".join((model.__doc__ or "").split()), "",
                "| field | type | default | description |", "|---|---|---|---|"]
        for name, f in model_fields(model):
            kind = re.sub(r"\b(" + "|".join(anchors) + r")\b", lambda m: f"[{m[1]}](#{anchors[m[1]]})",
                          type_text(f.annotation, f.metadata))
            cells = [f"`{name}`", kind, default_text(f), f.description or ""]
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def _anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "suite"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ---- methods ---------------------------------------------------------------------------------------------------


def peft_help(peft_type: str) -> dict[str, str]:
    """PEFT's own help text for each field of the method's config dataclass (`metadata={"help": ...}`)."""
    from methods.base import config_class

    return {f.name: " ".join(str(f.metadata.get("help", "")).split()) for f in dataclasses.fields(config_class(
        peft_type))}


def _first_sentences(text: str, limit: int = 300) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = cut.rfind(". ")
    return (cut[: end + 1] if end > 80 else cut.rstrip() + "...")


def method_section(m) -> list[str]:
    from methods.base import field_defaults

    out = [f"## `{m.id}`", "", m.summary, ""]
    if m.refusal:
        out += [f"Cannot run here: it {m.refusal}.", ""]
    if m.peft_type is None:
        return out + ["No PEFT config: every weight of the model trains; `params` takes nothing.", ""]
    base = "4-bit NF4" if m.load_in_4bit else "as loaded"
    grid = ", ".join(f"{v:g}" for v in m.lr_grid)
    facts = [f"PEFT config `{m.config_name}`", f"merge: {m.merge}", f"base: {base}", f"learning-rate grid: {grid}",
             f"version {m.version}"]
    out += ["; ".join(facts) + ".", ""]
    if m.fixed:
        out += ["Fixed by the method (a suite cannot change them): " + ", ".join(f"`{k}={v!r}`" for k, v in
                                                                                  m.fixed.items()) + ".", ""]
    helps, defaults = peft_help(m.peft_type), field_defaults(m.peft_type)
    out += ["| param | type | default | description |", "|---|---|---|---|"]
    for name, kind in m.parameters().items():
        if name in m.extras:
            default, text = "null", f"the harness's param, not PEFT's: see `methods/{m.id}.py`"
        else:
            default = (f"{m.preset[name]!r} (harness)" if name in m.preset else repr(defaults.get(name, "required")))
            text = _first_sentences(helps.get(name, ""))
        out.append("| " + " | ".join(_cell(c) for c in (f"`{name}`", type_text(kind), default, text)) + " |")
    return out + [""]


def methods_page() -> str:
    from methods import METHODS

    out = ["# Methods", "",
           "Generated from `methods.METHODS` and PEFT's config dataclasses (`python -m bench list` prints the same "
           "list; `python -m bench list --fields METHOD` one method's params). A method's `params` are the fields of "
           "its PEFT config; the descriptions are PEFT's own help texts, shortened. \"(harness)\" marks a default the "
           "harness sets instead of PEFT's. Choosing among them: [Choosing a method](../guides/choosing.md).", "",
           "| method | merge | PEFT config | what it does |", "|---|---|---|---|"]
    for m in METHODS.values():
        out.append("| " + " | ".join(_cell(c) for c in (f"[`{m.id}`](#{m.id})", m.merge,
                                                          m.config_name, m.summary)) + " |")
    out.append("")
    for m in METHODS.values():
        out += method_section(m)
    return "\n".join(out)


# ---- metrics and the command line --------------------------------------------------------------------------------


def metrics_page() -> str:
    from bench.core.metrics import DESCRIPTIONS, METRICS, VIA_GENERATE

    out = ["# Record metrics", "",
           "Generated from `bench/core/metrics.py`: every number a record's `metrics` may hold, with its unit, which way "
           "is better (what `compare`, `recommend` and the reports' best-marking use) and its kind (scores are "
           "chosen by, costs are traded against them). How each is measured: "
           "[How runs are measured](../guides/measurement.md).", "",
           "| metric | label | unit | better | kind | description |", "|---|---|---|---|---|---|"]
    for name, m in METRICS.items():
        cells = (f"`{name}`", m.label, m.unit or "-", m.better, m.kind, DESCRIPTIONS.get(name, ""))
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    out += ["", f"Also: `{VIA_GENERATE}SCORE` (a prompt-learning run's score through transformers' `generate()`), "
            "`lm_eval.TASK.METRIC` (lm-evaluation-harness, higher is better unless lm-eval says otherwise), and "
            "`hub:NAME` scores (`evaluate.load`, higher is better).", ""]
    return "\n".join(out)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    first = {id(p): name for name, p in reversed(action.choices.items())}  # an alias shares its command's parser
    return {name: (p, helps.get(name) or "") for name, p in action.choices.items() if first[id(p)] == name}


def _arguments(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if not isinstance(a, argparse._HelpAction)]


def cli_page() -> str:
    from bench.cli import build_parser

    parser = build_parser()
    out = ["# Command line", "", "Generated from `bench.cli.build_parser()`. Every command is "
           "`python -m bench COMMAND` (or `bench COMMAND` once installed); `--help` after any command prints the "
           "same.", ""]
    for name, (p, help_text) in _subcommands(parser).items():
        usage = " ".join(p.format_usage().split()).removeprefix("usage: ")
        out += [f"## `{name}`", "", help_text + ".", "", "```", usage, "```", "",
                "| argument | default | description |", "|---|---|---|"]
        for a in _arguments(p):
            flag = ", ".join(a.option_strings) or a.dest
            default = "-" if a.default in (None, False, argparse.SUPPRESS) or not a.option_strings else repr(a.default)
            out.append("| " + " | ".join(_cell(c) for c in (f"`{flag}`", default, a.help or "")) + " |")
        out.append("")
    return "\n".join(out)


REFERENCE = {"reference/suite.md": suite_page, "reference/methods.md": methods_page,
             "reference/metrics.md": metrics_page, "reference/cli.md": cli_page}


def reference_pages() -> dict[str, str]:
    return {path: make() for path, make in REFERENCE.items()}


def undocumented_fields(root: type[BaseModel]) -> list[str]:
    """Every field reachable from `root` without a description, by the path a suite writes it at."""
    return [f"{path}.{name}".lstrip(".") for path, model in model_tree(root) for name, f in model_fields(model)
            if not (f.description or "").strip()]


def missing_descriptions() -> list[str]:
    """Every suite field, method, metric, CLI command and argument without a description."""
    from bench.cli import build_parser
    from bench.core.metrics import DESCRIPTIONS, METRICS
    from bench.spec.suite import Suite
    from methods import METHODS

    out = [f"suite field {name}" for name in undocumented_fields(Suite)]
    out += [f"method {m.id}" for m in METHODS.values() if not m.summary.strip()]
    out += [f"metric {name}" for name in METRICS if not DESCRIPTIONS.get(name, "").strip()]
    out += [f"metric description of {name}, which is not a metric" for name in DESCRIPTIONS if name not in METRICS]
    for name, (p, help_text) in _subcommands(build_parser()).items():
        out += [f"command {name}"] if not help_text.strip() else []
        out += [f"argument {name} {', '.join(a.option_strings) or a.dest}" for a in _arguments(p) if not a.help]
    return out


# ---- tables of measurements, from committed result files ---------------------------------------------------------


def load_results(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def provenance(about: dict[str, Any]) -> str:
    """The line every generated table carries: where, when, at which commit and with what the numbers were made."""
    parts = [f"{k}: {about[k]}" for k in ("command", "machine", "commit", "date", "versions") if about.get(k)]
    note = f" {about['note']}" if about.get("note") else ""
    return f"*From `docs/results/{about['file']}`: {'; '.join(parts)}.{note}*"


def capture_records(folder: Path, name: str, command: str, note: str) -> Path:
    """Store a results folder's records as docs/results/NAME.json, without predictions and loss curves (the
    tables do not show them), and with where and how they were made."""
    from bench.core.records import load_records

    records = load_records(folder)
    env = records[0].environment
    packages = env.get("packages") or {}
    commits = {}  # each run records the checkout it ran from: name them all
    for r in sorted(records, key=lambda r: r.started_at):
        git = r.environment.get("git") or {}
        commits[f"{(git.get('commit') or '?')[:7]}{' (dirty)' if git.get('dirty') else ''}"] = None
    about = {"file": f"{name}.json", "command": command, "note": note,
             "machine": f"{env.get('cpu')}, {env.get('threads')} threads" + (
                 f", {env.get('device')}" if env.get("device_type") != "cpu" else ", no GPU"),
             "commit": ", ".join(commits),
             "date": min(r.started_at for r in records)[:10],
             "versions": ", ".join(f"{k} {packages[k]}" for k in ("torch", "transformers", "peft") if k in packages)}
    trimmed = [r.model_copy(update={"predictions": [], "curve": []}).model_dump(mode="json") for r in records]
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"about": about, "records": trimmed}, indent=1) + "\n")
    return path


def _records(name: str):
    from bench.core.records import parse_record

    data = load_results(name)
    return data["about"], [parse_record(r, f"docs/results/{name}.json") for r in data["records"]]


QUICKSTART_COLUMNS = [("trainable_pct", "trainable %"), ("peak_memory_bytes", "train peak"),
                      ("load_memory_bytes", "load"), ("eval_peak_memory_bytes", "eval peak"),
                      ("merge_peak_memory_bytes", "merge peak"), ("steady_train_seconds", "train s")]


def quickstart_table(name: str = "quickstart") -> str:
    """The quickstart's summary: costs by phase, exact match with its 95% interval over the eval examples, the
    score through generate(), token F1 and the merge check."""
    from bench.core import headline
    from bench.core.metrics import format_value
    from bench.analysis.rows import merge_cell, ordered, row_cell, summary_rows

    about, records = _records(name)
    head = ["run", *(label for _, label in QUICKSTART_COLUMNS), "exact match (95% interval)", "via generate()",
            "token F1", "merge"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = summary_rows(records)  # the time column as every summary shows it: steady, or the whole run's marked
    for r, row in zip(ordered(records), rows):
        em, iv = r.metrics.get("exact_match"), r.intervals.get("exact_match")
        score = format_value("exact_match", em) + (f" ({iv.low:.3f}-{iv.high:.3f})" if iv else "")
        cells = [r.run, *(row_cell(k, row) if k in headline.WHOLE_RUN else format_value(k, r.metrics.get(k))
                          for k, _ in QUICKSTART_COLUMNS), score,
                 format_value("exact_match", r.metrics.get("via_generate_exact_match")),
                 format_value("token_f1", r.metrics.get("token_f1")), merge_cell(r)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    marked = [headline.WHOLE_RUN_NOTE] if any(row["whole_run"] for row in rows) else []
    return "\n".join([*lines, "", *marked, *([""] if marked else []), provenance(about)])


def run_output(name: str = "quickstart") -> str:
    """What `bench run` prints at the end of the quickstart, rendered by the terminal table's own code
    (bench.report.terminal) from the stored records."""
    import io

    from rich.console import Console

    from bench.analysis.sweeps import selected
    from bench.report.terminal import rich_table

    about, records = _records(name)
    suite, version = records[0].suite, records[0].config.suite_version
    console = Console(record=True, width=240, file=io.StringIO(), color_system=None)
    console.print(rich_table(selected(records), title=f"{suite} (suite version {version})"))
    table = "\n".join(line.rstrip() for line in console.export_text().splitlines())
    progress = []
    # rich's progress line as each run ends: its bar full, status, first score, time taken
    for r in sorted(records, key=lambda r: r.started_at):
        score = next((f"{k} {r.metrics[k]:.3f}" for k in r.config.eval.metrics if k in r.metrics), "")
        seconds = round(r.wall_seconds or 0)
        progress.append(f"{r.run:<16} {'━' * 40} {r.status} {score} {seconds // 3600}:{seconds // 60 % 60:02d}:"
                        f"{seconds % 60:02d}")
    return "\n".join(["```", f"{suite}: {len(records)} run(s) to do, results in results/{suite}/", *progress, table,
                      f"wrote results/{suite}/report.md", f"wrote results/{suite}/report.html", "```", "",
                      f"*From `docs/results/{about['file']}`: {about['machine']}, {about['date']}; more under the "
                      "quickstart's table.*"])


def overhead_table(name: str = "overhead") -> str:
    """scripts/overhead.py's ratios, one row per run of it."""
    data = load_results(name)
    head = ["run", "harness / hand-written loop (CPU time)", "harness / hand-written loop (wall)",
            "TRL SFTTrainer / harness", "measured"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, run in enumerate(data["runs"], 1):
        cells = [str(i), *(f"{run[k]:.3f}" if run.get(k) is not None else "-" for k in
                           ("harness_over_hand_cpu", "harness_over_hand_wall", "trl_over_harness")),
                 run.get("measured", "see below")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", provenance(data["about"])])


def capture_peft(peft_results: Path, commit: str) -> Path:
    """PEFT's own published MetaMathQA results (method_comparison/MetaMathQA/results/*.json), the columns the
    docs quote, as docs/results/peft-metamathqa.json."""
    rows, dates = [], []
    for path in sorted(peft_results.glob("*.json")):
        d = json.loads(path.read_text())
        dates.append(d["run_info"]["created_at"][:10])
        train, last = d["train_info"], (d["train_info"].get("metrics") or [{}])[-1]
        early = [m["valid accuracy"] for m in train.get("metrics") or [] if m.get("step") == 250 and
                 "valid accuracy" in m]
        rows.append({"experiment": d["run_info"]["experiment_name"], "status": train["status"],
                     "trainable_params": train["num_trainable_params"],
                     "accelerator_memory_max": train["accelerator_memory_max"], "train_time": train["train_time"],
                     "file_size": train["file_size"], "test_accuracy": last.get("test accuracy"),
                     "forgetting": last.get("forgetting"), "valid_accuracy_step_250": early[0] if early else None})
    first = json.loads(next(iter(sorted(peft_results.glob("*.json")))).read_text())["meta_info"]
    about = {"file": "peft-metamathqa.json", "command": "PEFT's method_comparison/MetaMathQA/run.py, 5000 steps",
             "machine": first["system_info"]["accelerator"], "commit": f"PEFT {commit[:7]}",
             "date": f"{min(dates)} to {max(dates)}", "note": "Read from PEFT's result files by "
             "`python scripts/gen_docs.py --capture-peft DIR COMMIT`; PEFT measured them, not this harness."}
    path = RESULTS / "peft-metamathqa.json"
    path.write_text(json.dumps({"about": about, "runs": rows}, indent=1) + "\n")
    return path


def peft_table(name: str = "peft-metamathqa") -> str:
    from bench.core.metrics import human_bytes

    data = load_results(name)
    head = ["experiment", "trainable params", "memory max", "train time", "adapter file", "test accuracy",
            "forgetting"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in sorted(data["runs"], key=lambda r: -(r["test_accuracy"] or 0)):
        cells = [row["experiment"], f"{row['trainable_params']:,}", human_bytes(row["accelerator_memory_max"]),
                 f"{row['train_time'] / 60:.0f} min", human_bytes(row["file_size"]),
                 "-" if row["test_accuracy"] is None else f"{row['test_accuracy']:.3f}",
                 "-" if row["forgetting"] is None else f"{row['forgetting']:+.4f}"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    pairs = [(r["valid_accuracy_step_250"], r["test_accuracy"]) for r in data["runs"]
             if r.get("valid_accuracy_step_250") is not None and r["test_accuracy"] is not None]
    from scipy.stats import spearmanr

    rho = spearmanr(*zip(*pairs)).statistic
    early = (f"Validation accuracy after 250 of the 5,000 steps ranks these {len(pairs)} runs with Spearman "
             f"{rho:.2f} against their final test accuracy.")
    return "\n".join([*lines, "", early, "", provenance(data["about"])])


def capture_plan(lines: Path, name: str, command: str) -> Path:
    """Add `bench plan --json`'s predictions (one JSON object a line) to docs/results/NAME.json, under "plan": the
    GPU training peak and its parts per run, beside the records they predict."""
    path = RESULTS / f"{name}.json"
    data = json.loads(path.read_text())
    runs = [json.loads(line) for line in lines.read_text().splitlines() if line.strip()]
    data["plan"] = {"command": command, "runs": {r["run"]: {k: r[k] for k in ("memory", "base_bytes", "precision")}
                                                 for r in runs if r.get("memory")}}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def _setting(r) -> str:
    """What a quantisation-suite run changes against plain LoRA: the base's quantisation, the optimiser, bf16."""
    env = r.environment
    parts = [env["quantization"]["name"]] if env.get("quantization") else []
    if env.get("optimizer", "torch.optim.AdamW") != "torch.optim.AdamW":
        parts.append(env["optimizer"])
    if r.config.training.precision == "bf16":
        parts.append("pure bf16" if r.config.training.master_weights is False else "bf16 autocast, fp32 masters")
    return ", ".join(parts) or "fp32"


def quantization_table(name: str = "quantization") -> str:
    """The quantisation suite: per run what it changes, quality, the CPU's measured memory and time, the merge,
    and `bench plan`'s GPU training peak for the same run (its weights and optimiser state beside it)."""
    from bench.core.metrics import format_value, human_bytes
    from bench.analysis.rows import merge_cell, ordered

    about, records = _records(name)
    plan = load_results(name).get("plan", {"runs": {}})
    head = ["run", "setting", "exact match", "token F1", "eval loss", "after load (CPU)", "training peak (CPU)",
            "train s (CPU)", "merge", "GPU plan: training peak (weights, optimiser state)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ordered(records):
        if not r.trained:
            continue
        m, p = r.metrics, (plan["runs"].get(r.run) or {}).get("memory")
        gpu = "-" if not p else (f"{human_bytes(p['need'])} ({human_bytes(p['base'] + p['trainable'])}, "
                                 f"{human_bytes(p['optimizer'])})")
        cells = [r.run, _setting(r), *(format_value(k, m.get(k)) for k in ("exact_match", "token_f1", "eval_loss",
                 "load_memory_bytes", "peak_memory_bytes", "train_seconds")), merge_cell(r), gpu]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    note = f"GPU plan: `{plan['command']}`." if plan.get("command") else ""
    return "\n".join([*lines, "", provenance(about) + (f" {note}" if note else "")])


PLAN_PARTS = {"frozen base": ("base",), "trained weights + gradients": ("trainable", "gradients"),
              "optimiser state": ("optimizer",), "activations": ("activations",), "GPU peak": ("need",)}


def _change(value: int, reference: int) -> str:
    """A predicted figure and its difference from the reference run's: "156.0 MB (-100.6 MB, -39%)"."""
    from bench.core.metrics import human_bytes

    if value == reference:
        return f"{human_bytes(value)} (same)"
    sign = "-" if value < reference else "+"
    return f"{human_bytes(value)} ({sign}{human_bytes(abs(value - reference))}, {100 * (value / reference - 1):+.0f}%)"


def quantization_plan_table(name: str = "quantization") -> str:
    """What `bench plan` predicts each setting of the quantisation suite saves on a GPU against the same LoRA with
    nothing changed (the run whose setting is plain fp32), part by part: the frozen base, the weights that train
    with their gradients, the optimiser's state, the activations and the peak."""
    from bench.analysis.rows import ordered
    from bench.core.metrics import human_bytes

    _, records = _records(name)
    plan = load_results(name)["plan"]
    settings = {r.run: _setting(r) for r in ordered(records) if r.trained and r.run in plan["runs"]}
    reference = next(run for run, setting in settings.items() if setting == "fp32")
    parts = {run: {label: sum(plan["runs"][run]["memory"][k] for k in keys) for label, keys in PLAN_PARTS.items()}
             for run in settings}
    head = ["run", "setting", *PLAN_PARTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, setting in settings.items():
        cells = [run, setting, *(_change(parts[run][k], parts[reference][k]) if run != reference
                                  else human_bytes(parts[run][k]) for k in PLAN_PARTS)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join([*lines, "", f"*Against {reference} (the first row). From `docs/results/{name}.json`: "
                       f"`{plan['command']}`.*"])


def _errors(s: dict[str, float]) -> str:
    return (f"median \\|error\\| {100 * s['median_abs']:.1f}%, {100 * s['within_20']:.0f}% within +-20% "
            f"({100 * s['within_10']:.0f}% within +-10%), max {100 * s['max_abs']:.1f}%")


def plan_vs_peft_table(name: str = "plan-vs-peft") -> str:
    """scripts/plan_vs_peft.py's check: the summary, the worst five with their reasons, every run."""
    data = load_results(name)
    s = data["summary"]
    loo = s.get("leave_one_out")
    left = s["runs"] - s["sized"] - len(data["failed"])
    lines = [f"{left} of the {s['runs']} runs were not reached (see the note below the table).", ""] if left else []
    lines += ["| length of the longest batch | runs sized | median, spread | Spearman |", "|---|---|---|---|",
             f"| {s['length']} tokens, fitted on these runs (in-sample) | {s['sized']} of {s['runs']} | "
             f"{_errors(s['in_sample'])} | {s['spearman']:.3f} |"]
    if loo:
        lines.append(f"| fitted on the other runs, per run (leave-one-out: {min(loo['lengths'])}-"
                     f"{max(loo['lengths'])}) | {s['sized']} | {_errors(loo)} | - |")
    lines += [f"| 768 (max_seq_len: no fit, no data) | {s['sized']} | {_errors(s['at_768'])} | "
              f"{s['spearman_at_768']:.3f} |",
              f"| a constant at the published median (no prediction) | {s['sized']} | "
              f"{_errors(s['constant_at_median'])} | - |", "", "Worst five (at the fitted length):", ""]
    reasons = data.get("reasons", {})
    lines += [f"- {n}: {100 * e:+.1f}%. {reasons.get(n, 'Not analysed.')}" for n, e in s["worst"]]
    lines += ["", "| experiment | published | predicted | error | leave-one-out | at 768 | counted |",
              "|---|---|---|---|---|---|---|"]
    for r in sorted(data["rows"], key=lambda r: r["error"]):
        lines.append(f"| {r['experiment']} | {r['published'] / 2**30:.2f} GiB | {r['predicted'] / 2**30:.2f} GiB | "
                     f"{100 * r['error']:+.1f}% | {100 * r.get('loo_error', float('nan')):+.1f}% | "
                     f"{100 * r['error_at_768']:+.1f}% | {r['how']} |")
    lines += [f"| {n} | not sized: {_cell(why)} | | | | | |" for n, why in data["failed"].items()]
    return "\n".join([*lines, "", provenance(data["about"])])


TABLES = {"quickstart": quickstart_table, "run-output": run_output, "overhead": overhead_table,
          "peft-metamathqa": peft_table, "quantization": quantization_table,
          "quantization-plan": quantization_plan_table,
          "plan-vs-peft": plan_vs_peft_table}
# The pages that hold generated tables (README.md quotes the docs' quickstart table, rendered from the same file).
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]


def fill(text: str) -> str:
    """The page with every generated block rendered afresh from its result file."""
    def block(match: re.Match) -> str:
        name = match.group(1)
        return f"{BEGIN.format(name=name)}\n{TABLES[name]()}\n{END.format(name=name)}"

    pattern = re.escape(BEGIN).replace(re.escape("{name}"), r"([\w-]+)") + r"\n.*?" + \
        re.escape(END).replace(re.escape("{name}"), r"\1")
    return re.sub(pattern, block, text, flags=re.S)


def stale_pages() -> list[str]:
    return [page for page in PAGES if fill((ROOT / page).read_text()) != (ROOT / page).read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 where a generated table is out of date")
    parser.add_argument("--reference", metavar="DIR", help="write the reference pages into DIR")
    parser.add_argument("--capture", nargs=2, metavar=("RESULTS", "NAME"), help="store a results folder's records")
    parser.add_argument("--command", default="", help="with --capture: the command that made the records")
    parser.add_argument("--note", default="", help="with --capture: what else a reader must know (load, machine)")
    parser.add_argument("--capture-peft", nargs=2, metavar=("DIR", "COMMIT"), help="store PEFT's result files")
    parser.add_argument("--capture-plan", nargs=2, metavar=("JSONL", "NAME"),
                        help="add `bench plan --json`'s output to docs/results/NAME.json (--command: how it was made)")
    args = parser.parse_args(argv)
    if args.capture:
        print(capture_records(Path(args.capture[0]), args.capture[1], args.command, args.note))
    if args.capture_plan:
        print(capture_plan(Path(args.capture_plan[0]), args.capture_plan[1], args.command))
    if args.capture_peft:
        print(capture_peft(Path(args.capture_peft[0]), args.capture_peft[1]))
    if args.reference:
        for path, text in reference_pages().items():
            (Path(args.reference) / path).parent.mkdir(parents=True, exist_ok=True)
            (Path(args.reference) / path).write_text(text)
        return 0
    if args.check:
        stale = stale_pages()
        print("\n".join(f"{p}: a generated table is out of date; run python scripts/gen_docs.py" for p in stale))
        return 1 if stale else 0
    for page in PAGES:
        (ROOT / page).write_text(fill((ROOT / page).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
