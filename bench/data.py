"""Instruction data: load, check row by row, split, format with the chat template, batch (packed or padded)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from bench.config import DatasetSpec
from bench.records import DataNotes
from bench.util import did_you_mean

IGNORE = -100


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


def _check_columns(rows: Rows, spec: DatasetSpec) -> None:
    """A column no row has is a mapping mistake, not a bad row: say which columns there are."""
    wanted = [("messages", spec.messages)] if spec.messages else [("prompt", spec.prompt), ("response", spec.response)]
    for key, col in wanted:
        if rows.columns and col not in rows.columns:
            raise DataError(f"{rows.where}: no column '{col}' for the {key}{did_you_mean(col, rows.columns)} "
                            f"(columns: {', '.join(rows.columns)}; map it with dataset.{key}: COLUMN)")


def _to_example(row: Any, n: int, spec: DatasetSpec, rows: Rows, report: DataNotes) -> Example | None:
    """One row to an Example, or None when the policy says skip; the reason is counted either way."""

    def bad(reason: str, detail: str):
        if spec.on_bad_row == "error":
            raise DataError(f"{rows.at(n)}: {detail} (set dataset.on_bad_row: skip to skip and count such rows)")
        report.skip(reason)
        return None

    if isinstance(row, Unreadable):
        return bad(row.reason, row.detail)
    if not isinstance(row, dict):
        return bad("not an object", f"expected an object with named fields, got {type(row).__name__} {row!r:.60}")
    system = [{"role": "system", "content": spec.system}] if spec.system else []
    if spec.messages:
        col = spec.messages
        if col not in row:
            return bad("missing field", f"no field '{col}'")
        msgs = row[col]
        if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
        ):
            return bad("bad messages", f"field '{col}' must be a list of {{role, content}} strings")
        if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            return bad("empty response", f"field '{col}' must end with a non-empty assistant message")
        if not any(m["role"] != "assistant" for m in msgs[:-1]):
            return bad("empty prompt", f"field '{col}' has no user message before the assistant's answer")
        return Example(system + [dict(role=m["role"], content=m["content"]) for m in msgs], n, rows.at(n))
    for key, col in (("prompt", spec.prompt), ("response", spec.response)):
        if col not in row:
            return bad("missing field", f"no field '{col}' for the {key}")
        value = row[col]
        if value is None or (isinstance(value, str) and not value.strip()):
            return bad(f"empty {key}", f"field '{col}' is empty")
        if not isinstance(value, str):
            return bad("wrong type", f"field '{col}' should be text, got {type(value).__name__} {value!r:.60}")
    prompt, response = row[spec.prompt], row[spec.response]
    return Example(system + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], n,
                   rows.at(n))


def _examples(rows: Rows, spec: DatasetSpec, report: DataNotes, what: str) -> list[Example]:
    if not rows.items:
        raise DataError(f"{rows.where}: the {what} is empty (no rows)")
    _check_columns(rows, spec)
    examples = [e for n, r in rows.items if (e := _to_example(r, n, spec, rows, report))]
    examples = _dedupe(examples, rows, spec, report)
    if not examples:
        raise DataError(f"{rows.where}: no usable rows in the {what} (skipped: "
                        f"{', '.join(f'{k} {v}' for k, v in report.skipped.items())})")
    return examples


def load_examples(spec: DatasetSpec, max_eval: int | None = None) -> tuple[list[Example], list[Example], DataNotes]:
    """Train and eval examples per the dataset spec; bad rows raise or are skipped and counted."""
    rows = _load_rows(spec.path, spec.hub, spec.subset, spec.split)
    report = DataNotes(source=rows.where)
    examples = _examples(rows, spec, report, "dataset")
    rng = random.Random(spec.seed)
    rng.shuffle(examples)
    eval_where = rows.where
    if spec.eval_path or spec.eval_split:
        eval_rows = _load_rows(spec.eval_path, spec.hub, spec.subset, spec.eval_split or "")
        evals = _examples(eval_rows, spec, report, "eval split")
        eval_where = eval_rows.where
        train = examples
    else:
        size = spec.eval_size
        n_eval = int(size) if size >= 1 else max(1, round(len(examples) * size))
        if n_eval >= len(examples):
            raise DataError(f"{rows.where}: eval_size {size:g} leaves no training rows ({len(examples)} usable rows in "
                            "all)")
        evals, train = examples[:n_eval], examples[n_eval:]
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
        report.skipped["eval overlaps train"] = len(overlap)
        evals = [e for e in evals if _key(e) not in train_keys]
        if not evals:
            raise DataError(f"{eval_where}: every eval example also appears in the train split")
    report.train_rows, report.eval_rows = len(train), len(evals)
    report.fingerprint = fingerprint(train, evals)
    return train, evals, report


def check_references(evals: list[Example], pattern: str | None, spec: DatasetSpec,
                     report: DataNotes) -> list[Example]:
    """With eval.extract, every eval reference must hold an answer to extract: one without is a data problem (an
    unmatched reference would otherwise score against an unmatched prediction as if both were right)."""
    from bench.scoring import extract

    if pattern is None:
        return evals
    kept = []
    for e in evals:
        if extract(e.response, pattern) is not None:
            kept.append(e)
        elif spec.on_bad_row == "error":
            raise DataError(f"{e.place}: the reference {e.response!r:.80} has no match for eval.extract {pattern!r}, "
                            "so no answer can be scored against it (fix the row or the regex, or set "
                            "dataset.on_bad_row: skip)")
        else:
            report.skip("reference without an answer for eval.extract")
    if not kept:
        raise DataError(f"{report.source}: no eval reference has a match for eval.extract {pattern!r}")
    report.eval_rows = len(kept)
    return kept


def split_validation(train: list[Example], spec: DatasetSpec) -> tuple[list[Example], list[Example]]:
    """Hold out `validation_size` of the (already shuffled) train rows for picking sweep values; eval stays unseen."""
    size = spec.validation_size
    if not size:
        return train, []
    n = int(size) if size >= 1 else max(1, round(len(train) * size))
    if n >= len(train):
        raise DataError(f"dataset.validation_size {size:g} leaves no training rows ({len(train)} train rows)")
    return train[n:], train[:n]


def _key(e: Example) -> str:
    return json.dumps(e.messages, sort_keys=True)


def _dedupe(examples: list[Example], rows: Rows, spec: DatasetSpec, report: DataNotes) -> list[Example]:
    seen: dict[str, int] = {}
    out = []
    for e in examples:
        k = _key(e)
        if k in seen:
            if spec.on_bad_row == "error":
                raise DataError(f"{e.place}: duplicate of {rows.unit} {seen[k]} (set dataset.on_bad_row: skip "
                                "to drop duplicates and count them)")
            report.skip("duplicate")
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


@dataclass
class Features:
    input_ids: list[int]
    labels: list[int]


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize(examples: list[Example], tokenizer, max_seq_len: int, spec: DatasetSpec, report: DataNotes,
             where: str) -> list[Features]:
    """Chat-template each example; labels mask the prompt so the loss is on the response only."""
    out = []
    for e in examples:
        prompt = tokenizer(prompt_text(tokenizer, e.messages[:-1]), add_special_tokens=False).input_ids
        full = tokenizer(tokenizer.apply_chat_template(e.messages, tokenize=False), add_special_tokens=False).input_ids
        if full[: len(prompt)] != prompt:
            # Some templates render the last turn differently once a response follows; fall back to concatenation.
            full = prompt + tokenizer(full_response_text(tokenizer, e), add_special_tokens=False).input_ids
        end = tokenizer.eos_token_id
        if end in full[len(prompt):]:
            # Templates write a newline after the end of turn; the model should learn to stop, not to go on.
            full = full[: len(full) - full[::-1].index(end)]
        if len(prompt) >= max_seq_len:
            if spec.on_bad_row == "error":
                raise DataError(f"{e.place or f'{where}, row {e.row}'}: the prompt alone is {len(prompt)} tokens, "
                                f"leaving no room for the response in max_seq_len {max_seq_len} (raise "
                                "training.max_seq_len, or set dataset.on_bad_row: skip)")
            report.skip("prompt longer than max_seq_len")
            continue
        if len(full) > max_seq_len:
            report.truncated += 1
            full = full[:max_seq_len]
        out.append(Features(full, [IGNORE] * len(prompt) + full[len(prompt):]))
    return out


def full_response_text(tokenizer, e: Example) -> str:
    return e.response + (tokenizer.eos_token or "")


def batch_order(features: list[Features], batch_size: int, seed: int) -> list[list[int]]:
    """One epoch of batches: seeded shuffle, then similar lengths grouped so padded batches waste little.

    The order depends only on the data and the seed, so every method sees the same batches.
    """
    rng = random.Random(seed)
    idx = list(range(len(features)))
    rng.shuffle(idx)
    chunk = batch_size * 32
    batches = []
    for start in range(0, len(idx), chunk):
        group = sorted(idx[start:start + chunk], key=lambda i: len(features[i].input_ids))
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(items: list[Features], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """Packed: one row, position ids restarting per example and no attention mask, so transformers builds a
    block-diagonal causal mask and examples never attend to each other. Padded: right-padded rows with a mask."""
    if packed:
        ids = [t for f in items for t in f.input_ids]
        labels = []
        for f in items:
            # The first token of each example must not be predicted from the previous example's last token.
            labels += [IGNORE] + f.labels[1:]
        pos = [p for f in items for p in range(len(f.input_ids))]
        return {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([pos]),
        }
    width = max(len(f.input_ids) for f in items)
    ids = torch.full((len(items), width), pad_id)
    labels = torch.full((len(items), width), IGNORE)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, f in enumerate(items):
        n = len(f.input_ids)
        ids[i, :n] = torch.tensor(f.input_ids)
        labels[i, :n] = torch.tensor(f.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def batches(features: list[Features], batch_size: int, seed: int, pad_id: int, packed: bool,
            epochs: float, rank: int = 0, world: int = 1) -> Iterator[tuple[float, dict[str, torch.Tensor]]]:
    """Micro-batches with the epoch they belong to, for at most `epochs` passes (a new order each pass). With
    `world` processes, each gets its share of every micro-batch (`share`): together they are the one-process batch.
    A filler share (no example left for this process) carries the key "filler", for the loop to remove."""
    epoch = 0
    while epoch < epochs:
        order = batch_order(features, batch_size, seed + epoch)
        for i, b in enumerate(order):
            progress = epoch + (i + 1) / len(order)
            if progress > epochs + 1e-9:
                return
            items = [features[j] for j in b]
            if world == 1:
                yield progress, collate(items, pad_id, packed)
                continue
            mine = share(items, rank, world)
            batch = collate(mine or [filler(items[0])], pad_id, packed)
            yield progress, batch | ({} if mine else {"filler": torch.tensor(True)})
        epoch += 1


def share(items: list[Features], rank: int, world: int) -> list[Features]:
    """Process `rank`'s contiguous share of a micro-batch, sizes differing by at most one; empty when the batch has
    fewer examples than there are processes."""
    base, extra = divmod(len(items), world)
    start = rank * base + min(rank, extra)
    return items[start:start + base + (rank < extra)]


def filler(example: Features) -> Features:
    """What a process without a share trains on: an example with every label masked. It still takes part in the
    gradient all-reduce, and adds nothing to the loss, the gradients or the target count."""
    return Features(example.input_ids, [IGNORE] * len(example.labels))
