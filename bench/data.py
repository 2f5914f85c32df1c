"""Instruction data: load, check row by row, split, format with the chat template, batch (packed or padded)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

IGNORE = -100


class DataError(Exception):
    """Bad data, said in one line that names the file, the row and the field."""


@dataclass
class Example:
    messages: list[dict[str, str]]  # ends with the assistant's response
    row: int  # 1-based row in its source

    @property
    def prompt(self) -> str:
        return self.messages[-2]["content"]

    @property
    def response(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class DataReport:
    """What loading did to the data, stored in the record and shown in the report."""

    source: str
    train_rows: int = 0
    eval_rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    fingerprint: str = ""

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _format_of(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".json", ".jsonl"):
        return "json"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataError(f"{path}: unknown data format '{suffix}' (use .json, .jsonl or .csv)")


def _diagnose(path: str, err: Exception) -> DataError:
    """datasets' errors name no row; find the bad byte or line ourselves."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return DataError(f"{path}, line {line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})")
    if _format_of(path) == "json" and not text.lstrip().startswith("["):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as je:
                    return DataError(f"{path}, line {n}: invalid JSON ({je.msg} at column {je.colno})")
    return DataError(f"{path}: could not be read as {_format_of(path)}: {str(err).splitlines()[0]}")


def _load_rows(path: str | None, hub: str | None, subset: str | None, split: str) -> tuple[list[dict], str]:
    import datasets

    datasets.disable_progress_bars()
    if path is not None:
        if not Path(path).is_file():
            raise DataError(f"{path}: no such file")
        try:
            ds = datasets.load_dataset(_format_of(path), data_files=path, split="train")
        except Exception as e:  # datasets raises many types for a bad file; every one is a data problem
            raise _diagnose(path, e) from None
        return ds.to_list(), path
    try:
        ds = datasets.load_dataset(hub, subset, split=split)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"dataset '{hub}' (split {split}) could not be loaded: {first}. Offline? Use a local "
                        "file (dataset.path).") from None
    return ds.to_list(), f"{hub}:{subset or ''}:{split}"


def _to_example(row: dict, n: int, spec: dict[str, Any], where: str, report: DataReport) -> Example | None:
    """One row to an Example, or None when the policy says skip; the reason is counted either way."""

    def bad(reason: str, detail: str):
        if spec.get("on_bad_row", "error") == "error":
            raise DataError(f"{where}, row {n}: {detail} (set dataset.on_bad_row: skip to skip and count such rows)")
        report.skip(reason)
        return None

    system = [{"role": "system", "content": spec["system"]}] if spec.get("system") else []
    if spec.get("messages"):
        col = spec["messages"]
        if col not in row:
            raise DataError(f"{where}: no column '{col}' (columns: {', '.join(row)})")
        msgs = row[col]
        if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
        ):
            return bad("bad messages", f"field '{col}' must be a list of {{role, content}} strings")
        if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            return bad("empty response", f"field '{col}' must end with a non-empty assistant message")
        return Example(system + [dict(role=m["role"], content=m["content"]) for m in msgs], n)
    for key in ("prompt", "response"):
        col = spec.get(key, key)
        if col not in row:
            raise DataError(f"{where}: no column '{col}' for the {key} (columns: {', '.join(row)}; "
                            f"map it with dataset.{key}: COLUMN)")
        value = row[col]
        if value is None or (isinstance(value, str) and not value.strip()):
            return bad(f"empty {key}", f"field '{col}' is empty")
        if not isinstance(value, str):
            return bad(f"wrong type", f"field '{col}' should be text, got {type(value).__name__} {value!r}")
    prompt, response = row[spec.get("prompt", "prompt")], row[spec.get("response", "response")]
    return Example(system + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], n)


def load_examples(spec: dict[str, Any], max_eval: int | None = None) -> tuple[list[Example], list[Example], DataReport]:
    """Train and eval examples per the dataset spec; bad rows raise or are skipped and counted."""
    rows, where = _load_rows(spec.get("path"), spec.get("hub"), spec.get("subset"), spec.get("split", "train"))
    report = DataReport(source=where)
    if not rows:
        raise DataError(f"{where}: the dataset is empty")
    examples = [e for n, r in enumerate(rows, 1) if (e := _to_example(r, n, spec, where, report))]
    examples = _dedupe(examples, where, spec, report)
    if spec.get("eval_path") or spec.get("eval_split"):
        eval_rows, eval_where = _load_rows(spec.get("eval_path"), spec.get("hub"), spec.get("subset"),
                                           spec.get("eval_split") or "")
        if not eval_rows:
            raise DataError(f"{eval_where}: the eval split is empty")
        evals = [e for n, r in enumerate(eval_rows, 1) if (e := _to_example(r, n, spec, eval_where, report))]
        rng = random.Random(spec.get("seed", 0))
        rng.shuffle(examples)
        train = examples
    else:
        rng = random.Random(spec.get("seed", 0))
        rng.shuffle(examples)
        size = spec.get("eval_size", 0.1)
        n_eval = int(size) if size >= 1 else max(1, round(len(examples) * size))
        if n_eval >= len(examples):
            raise DataError(f"{where}: eval_size {size} leaves no training rows ({len(examples)} rows in all)")
        evals, train = examples[:n_eval], examples[n_eval:]
    if spec.get("max_examples"):
        train = train[: spec["max_examples"]]
    if max_eval:
        evals = evals[:max_eval]
    train_keys = {_key(e) for e in train}
    overlap = [e for e in evals if _key(e) in train_keys]
    if overlap:
        if spec.get("on_bad_row", "error") == "error":
            raise DataError(f"{where}: {len(overlap)} eval example(s) also appear in the train split (first: eval row "
                            f"{overlap[0].row}); scores would be inflated. Remove them or set dataset.on_bad_row: skip")
        report.skipped["eval overlaps train"] = len(overlap)
        evals = [e for e in evals if _key(e) not in train_keys]
    if not train:
        raise DataError(f"{where}: the train split is empty")
    if not evals:
        raise DataError(f"{where}: the eval split is empty")
    report.train_rows, report.eval_rows = len(train), len(evals)
    report.fingerprint = fingerprint(train, evals)
    return train, evals, report


def _key(e: Example) -> str:
    return json.dumps(e.messages, sort_keys=True)


def _dedupe(examples: list[Example], where: str, spec: dict[str, Any], report: DataReport) -> list[Example]:
    seen: dict[str, int] = {}
    out = []
    for e in examples:
        k = _key(e)
        if k in seen:
            if spec.get("on_bad_row", "error") == "error":
                raise DataError(f"{where}, row {e.row}: duplicate of row {seen[k]} (set dataset.on_bad_row: skip "
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


def tokenize(examples: list[Example], tokenizer, max_seq_len: int, spec: dict[str, Any], report: DataReport,
             where: str) -> list[Features]:
    """Chat-template each example; labels mask the prompt so the loss is on the response only."""
    out = []
    for e in examples:
        prompt = tokenizer(prompt_text(tokenizer, e.messages[:-1]), add_special_tokens=False).input_ids
        full = tokenizer(tokenizer.apply_chat_template(e.messages, tokenize=False), add_special_tokens=False).input_ids
        if full[: len(prompt)] != prompt:
            # Some templates render the last turn differently once a response follows; fall back to concatenation.
            full = prompt + tokenizer(full_response_text(tokenizer, e), add_special_tokens=False).input_ids
        if len(prompt) >= max_seq_len:
            if spec.get("on_bad_row", "error") == "error":
                raise DataError(f"{where}, row {e.row}: the prompt alone is {len(prompt)} tokens, over max_seq_len "
                                f"{max_seq_len} (raise training.max_seq_len, or set dataset.on_bad_row: skip)")
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
            epochs: float) -> Iterator[tuple[float, dict[str, torch.Tensor]]]:
    """Micro-batches with the epoch they belong to, for at most `epochs` passes (a new order each pass)."""
    epoch = 0
    while epoch < epochs:
        order = batch_order(features, batch_size, seed + epoch)
        for i, b in enumerate(order):
            progress = epoch + (i + 1) / len(order)
            if progress > epochs + 1e-9:
                return
            yield progress, collate([features[j] for j in b], pad_id, packed)
        epoch += 1
