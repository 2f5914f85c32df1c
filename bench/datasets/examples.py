"""Instruction data in: load, map columns (or templates over them, or conversations), check row by row, dedupe,
split, fingerprint: rows become Examples."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.config import DatasetSpec, Source
from bench.core.records import DataNotes
from bench.core.util import did_you_mean


class DataError(Exception):
    """Bad data, said in one line that names the file, the row and the field."""


@dataclass
class Example:
    messages: list[dict[str, str]]  # ends with the assistant's response
    row: int  # 1-based row in its source
    place: str = ""  # where errors point: "data.jsonl, line 7"

    @property
    def prompt(self) -> str:
        return self.messages[-2]["content"]

    @property
    def response(self) -> str:
        return self.messages[-1]["content"]


def _format_of(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".json", ".jsonl"):
        return "json"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataError(f"{path}: unknown data format '{suffix}' (use .json, .jsonl, .csv or .tsv)")


@dataclass
class Unreadable:
    """A line that could not be read; the bad-row policy decides whether that stops the run."""

    reason: str
    detail: str


@dataclass
class Rows:
    """A file's rows, each with the number a person finds it by: the line in JSON Lines, the record otherwise."""

    items: list[tuple[int, Any]]
    where: str
    unit: str  # "line" or "row"
    columns: list[str]

    def at(self, n: int) -> str:
        return f"{self.where}, {self.unit} {n}"


def _read_local(path: str) -> Rows:
    """Local files are parsed here, not by `datasets`: its CSV reader turns "42" into a number, its JSON reader
    rejects a column whose type changes between rows without naming the row, and neither says where a bad byte is."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    fmt = _format_of(path)
    raw = Path(path).read_bytes()
    if fmt == "csv" or raw.lstrip()[:1] == b"[":
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise DataError(f"{path}, line {line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
        if fmt == "csv":
            delimiter = "\t" if path.lower().endswith(".tsv") else ","
            reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
            try:
                items = list(enumerate(reader, 1))
            except csv.Error as e:
                raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
            return Rows(items, path, "row", [c for c in reader.fieldnames or [] if c is not None])
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        return Rows(list(enumerate(data, 1)), path, "row", _columns(data))
    items: list[tuple[int, Any]] = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            detail = f"not UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})"
            items.append((n, Unreadable("not UTF-8", detail)))
            continue
        try:
            items.append((n, json.loads(text)))
        except json.JSONDecodeError as e:
            if n == 1 and raw.lstrip()[:1] == b"{" and _is_object(raw):
                raise DataError(f"{path}: one JSON object; expected a JSON array of rows or one row per line "
                                "(JSON Lines)") from None
            items.append((n, Unreadable("invalid JSON", f"invalid JSON ({e.msg} at column {e.colno})")))
    return Rows(items, path, "line", _columns([r for _, r in items]))


def _is_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def _columns(rows: list[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        if isinstance(r, dict):
            seen.update(dict.fromkeys(r))
    return list(seen)


def _load_rows(path: str | None, hub: str | None, subset: str | None, split: str) -> Rows:
    if path is not None:
        return _read_local(path)
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(hub, subset, split=split)
    except Exception as e:  # datasets raises many types; any of them means this dataset cannot be used
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"dataset '{hub}' (split {split}) could not be loaded: {first}. Offline? Use a local "
                        "file (dataset.path).") from None
    return Rows(list(enumerate(ds.to_list(), 1)), f"{hub}:{subset or ''}:{split}", "row", list(ds.column_names))


def fields(template: str) -> list[str]:
    """The columns a prompt/response template names ('{instruction}\\n\\n{input}'); [] for a plain column name."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError:
        return []


def _columns_of(spec: DatasetSpec) -> list[tuple[str, str]]:
    if spec.messages:
        return [("messages", spec.message_map.column)]
    return [(key, col) for key in ("prompt", "response") for col in (fields(getattr(spec, key)) or
                                                                     [getattr(spec, key)])]


def _check_columns(rows: Rows, spec: DatasetSpec) -> None:
    """A column no row has is a mapping mistake, not a bad row: say which columns there are."""
    for key, col in _columns_of(spec):
        if rows.columns and col not in rows.columns:
            raise DataError(f"{rows.where}: no column '{col}' for the {key}{did_you_mean(col, rows.columns)} "
                            f"(columns: {', '.join(rows.columns)}; map it with dataset.{key}: COLUMN)")


class BadRow(Exception):
    """One row that cannot be used: `reason` is what is counted when skipped, `detail` what is said otherwise."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


_BLANK_RUNS = re.compile(r"\n\s*\n(\s*\n)+")


def render(template: str, row: dict, key: str) -> str:
    """A prompt or response from its column, or from a template over columns. A line that holds only columns and
    all of them empty is dropped, and blank lines do not pile up, so an empty `input` leaves no stray gap."""
    names = fields(template)
    if not names:
        names, template = [template], "{" + template + "}"
    for name in names:
        if name not in row:
            raise BadRow("missing field", f"no field '{name}' for the {key}")
        value = row[name]
        if value is not None and not isinstance(value, str):
            raise BadRow("wrong type", f"field '{name}' should be text, got {type(value).__name__} {value!r:.60}")
    values = {n: (row[n] or "").strip() if len(names) > 1 else row[n] or "" for n in names}
    lines = []
    for line in template.split("\n"):
        named = fields(line)
        if named and not line.format_map({n: values[n] or "" for n in named}).strip():
            continue
        lines.append(line.format_map(values))
    text = _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip() if len(names) > 1 else "\n".join(lines)
    if not text.strip():
        raise BadRow(f"empty {key}", f"field '{names[0]}' is empty" if len(names) == 1 else
                     f"fields {', '.join(repr(n) for n in names)} are all empty")
    return text


def _messages(row: dict, spec: DatasetSpec) -> list[dict[str, str]]:
    m = spec.message_map
    if m.column not in row:
        raise BadRow("missing field", f"no field '{m.column}'")
    msgs, shape = row[m.column], f"{{{m.role}, {m.content}}}"
    if not isinstance(msgs, list) or not msgs or not all(
        isinstance(x, dict) and isinstance(x.get(m.role), str) and isinstance(x.get(m.content), str) for x in msgs
    ):
        raise BadRow("bad messages", f"field '{m.column}' must be a list of {shape} strings")
    roles = m.roles or {r: r for r in ("user", "assistant", "system")}
    out = []
    for i, x in enumerate(msgs):
        if x[m.role] not in roles:
            raise BadRow("unknown role", f"field '{m.column}', message {i + 1}: role '{x[m.role]}' is not one of "
                         f"{', '.join(roles)} (map it in dataset.messages.roles)")
        out.append({"role": roles[x[m.role]], "content": x[m.content]})
    if out[-1]["role"] != "assistant" or not out[-1]["content"].strip():
        raise BadRow("empty response", f"field '{m.column}' must end with a non-empty assistant message")
    if not any(x["role"] == "user" for x in out[:-1]):
        raise BadRow("empty prompt", f"field '{m.column}' has no user message before the assistant's answer")
    return out


def _to_example(row: Any, n: int, spec: DatasetSpec, rows: Rows, notes: DataNotes) -> Example | None:
    """One row to an Example, or None when the policy says skip; the reason is counted either way."""
    try:
        if isinstance(row, Unreadable):
            raise BadRow(row.reason, row.detail)
        if not isinstance(row, dict):
            raise BadRow("not an object", f"expected an object with named fields, got {type(row).__name__} "
                         f"{row!r:.60}")
        if spec.messages:
            msgs = _messages(row, spec)
        else:
            prompt, response = render(spec.prompt, row, "prompt"), render(spec.response, row, "response")
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    except BadRow as e:
        if spec.on_bad_row == "error":
            raise DataError(f"{rows.at(n)}: {e.detail} (set dataset.on_bad_row: skip to skip and count such "
                            "rows)") from None
        notes.skip(e.reason)
        return None
    system = [{"role": "system", "content": spec.system}] if spec.system else []
    return Example(system + msgs, n, rows.at(n))


def chars(e: Example) -> int:
    """What dataset.max_chars counts: the row's own texts joined by a space (PEFT: len(f"{query} {response}"))."""
    return len(" ".join(m["content"] for m in e.messages if m["role"] != "system"))


def _examples(rows: Rows, spec: DatasetSpec, notes: DataNotes, what: str) -> list[Example]:
    if not rows.items:
        raise DataError(f"{rows.where}: the {what} is empty (no rows)")
    _check_columns(rows, spec)
    examples = [e for n, r in rows.items if (e := _to_example(r, n, spec, rows, notes))]
    examples = _dedupe(examples, rows, spec, notes)
    if not examples:
        raise DataError(f"{rows.where}: no usable rows in the {what} (skipped: "
                        f"{', '.join(f'{k} {v}' for k, v in notes.skipped.items())})")
    return examples


def _source_spec(spec: DatasetSpec, source: Source) -> DatasetSpec:
    """The dataset's settings with another source's column mapping where it names one."""
    return spec.model_copy(update={k: v for k in ("prompt", "response", "messages")
                                   if (v := getattr(source, k)) is not None})


def _within_max_chars(examples: list[Example], spec: DatasetSpec, notes: DataNotes) -> list[Example]:
    if not spec.max_chars:
        return examples
    kept = [e for e in examples if chars(e) <= spec.max_chars]
    if len(kept) < len(examples):
        notes.filtered[f"longer than max_chars {spec.max_chars}"] = len(examples) - len(kept)
    return kept


def _held_out(spec: DatasetSpec, examples: list[Example], rows: Rows,
              notes: DataNotes) -> tuple[list[Example], list[Example], str]:
    """Train and eval examples: eval from its own file, split or source, else a held-out share of the rows."""
    if spec.eval_data:
        src = spec.eval_data
        eval_rows = _load_rows(src.path, src.hub, src.subset, src.split)
        return examples, _examples(eval_rows, _source_spec(spec, src), notes, "eval split"), eval_rows.where
    if spec.eval_path or spec.eval_split:
        eval_rows = _load_rows(spec.eval_path, spec.hub, spec.subset, spec.eval_split or "")
        return examples, _examples(eval_rows, spec, notes, "eval split"), eval_rows.where
    size = spec.eval_size
    n_eval = int(size) if size >= 1 else max(1, round(len(examples) * size))
    if n_eval >= len(examples):
        raise DataError(f"{rows.where}: eval_size {size:g} leaves no training rows ({len(examples)} usable rows in "
                        "all)")
    return examples[n_eval:], examples[:n_eval], rows.where


def load_examples(spec: DatasetSpec, max_eval: int | None = None) -> tuple[list[Example], list[Example], DataNotes]:
    """Train and eval examples per the dataset spec; bad rows raise or are skipped and counted. dataset.max_chars
    filters the train rows (and a held-out share split from them), not an eval set of its own."""
    rows = _load_rows(spec.path, spec.hub, spec.subset, spec.split)
    notes = DataNotes(source=rows.where)
    examples = _within_max_chars(_examples(rows, spec, notes, "dataset"), spec, notes)
    rng = random.Random(spec.seed)
    rng.shuffle(examples)
    train, evals, eval_where = _held_out(spec, examples, rows, notes)
    if spec.max_examples:
        train = train[: spec.max_examples]
    if max_eval:
        evals = evals[:max_eval]
    train_keys = {_key(e) for e in train}
    overlap = [e for e in evals if _key(e) in train_keys]
    if overlap:
        if spec.on_bad_row == "error":
            raise DataError(f"{overlap[0].place}: {len(overlap)} eval example(s) also appear in the train "
                            f"split (this is the first); scores would be inflated. Remove them or set "
                            "dataset.on_bad_row: skip")
        notes.skipped["eval overlaps train"] = len(overlap)
        evals = [e for e in evals if _key(e) not in train_keys]
        if not evals:
            raise DataError(f"{eval_where}: every eval example also appears in the train split")
    notes.train_rows, notes.eval_rows = len(train), len(evals)
    notes.fingerprint = fingerprint(train, evals)
    return train, evals, notes


def numeric(ev) -> bool:
    """Whether the suite scores answers as numbers (eval.metrics has numeric_match)."""
    return "numeric_match" in ev.metrics


def check_references(evals: list[Example], pattern: str | None, spec: DatasetSpec, notes: DataNotes,
                     numeric: bool = False) -> list[Example]:
    """With eval.extract, every eval reference must hold an answer to extract: one without is a data problem (an
    unmatched reference would otherwise score against an unmatched prediction as if both were right). With
    numeric_match, that answer must be a number."""
    from bench.core.scoring import EXTRACTORS, PatternTimeout, extract, number

    if pattern is None and not numeric:
        return evals
    kept = []
    for e in evals:
        try:
            answer = extract(e.response, pattern)
        except PatternTimeout as err:
            raise DataError(f"{e.place}: {err}") from None
        if answer is None:
            problem, reason = f"has no match for eval.extract {pattern!r}", "reference without an answer for " \
                "eval.extract"
        elif numeric and number(answer) is None:
            problem, reason = f"gives {answer!r}, not a number for numeric_match", "reference answer not a number"
        else:
            kept.append(e)
            continue
        if spec.on_bad_row == "error":
            fix = "the regex" if answer is None and pattern not in EXTRACTORS else "eval.extract"
            raise DataError(f"{e.place}: the reference {e.response!r:.80} {problem}, so no answer can be scored "
                            f"against it (fix the row or {fix}, or set dataset.on_bad_row: skip)")
        notes.skip(reason)
    if not kept:
        what = "a number for numeric_match" if numeric else f"a match for eval.extract {pattern!r}"
        raise DataError(f"{notes.source}: no eval reference has {what}")
    notes.eval_rows = len(kept)
    return kept


def split_validation(train: list[Example], spec: DatasetSpec,
                     notes: DataNotes | None = None) -> tuple[list[Example], list[Example]]:
    """Hold out `validation_size` of the (already shuffled) train rows for picking sweep values; eval stays unseen.
    With dataset.validation_data, the validation rows come from there instead: `validation_size` of them (all when
    unset), at the positions numpy's RandomState(seed) permutation puts first, the way PEFT's benchmark picks its
    50 GSM8K train rows."""
    size = spec.validation_size
    if spec.validation_data is not None:
        import numpy as np

        src = spec.validation_data
        rows = _load_rows(src.path, src.hub, src.subset, src.split)
        examples = _examples(rows, _source_spec(spec, src), notes or DataNotes(source=rows.where), "validation set")
        n = len(examples) if not size else int(size) if size >= 1 else max(1, round(len(examples) * size))
        return train, [examples[i] for i in np.random.RandomState(spec.seed).permutation(len(examples))[:n]]
    if not size:
        return train, []
    n = int(size) if size >= 1 else max(1, round(len(train) * size))
    if n >= len(train):
        raise DataError(f"dataset.validation_size {size:g} leaves no training rows ({len(train)} train rows)")
    return train[n:], train[:n]


def _key(e: Example) -> str:
    return json.dumps(e.messages, sort_keys=True)


def _dedupe(examples: list[Example], rows: Rows, spec: DatasetSpec, notes: DataNotes) -> list[Example]:
    seen: dict[str, int] = {}
    out = []
    for e in examples:
        k = _key(e)
        if k in seen:
            if spec.on_bad_row == "error":
                raise DataError(f"{e.place}: duplicate of {rows.unit} {seen[k]} (set dataset.on_bad_row: skip "
                                "to drop duplicates and count them)")
            notes.skip("duplicate")
            continue
        seen[k] = e.row
        out.append(e)
    return out


def fingerprint(train: list[Example], evals: list[Example]) -> str:
    h = hashlib.sha256()
    for part in (train, evals):
        h.update(json.dumps([e.messages for e in part]).encode())
        h.update(b"|")
    return h.hexdigest()[:16]
