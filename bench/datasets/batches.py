"""Examples out as batches: format (chat template or a plain prompt format), tokenise, label what trains, order,
collate (packed or padded) and shard."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Iterator

import torch

from bench.core.config import DatasetSpec
from bench.core.records import DataNotes
from bench.datasets.examples import DataError, Example

IGNORE = -100


@dataclass
class Features:
    input_ids: list[int]
    labels: list[int]


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _literal(text: str) -> str:
    """A Jinja string literal of `text`: Jinja reads a quoted string's backslash escapes as Python's
    unicode-escape does, which JSON's escapes (without ensure_ascii) are."""
    return json.dumps(text, ensure_ascii=False)


def plain_template(prompt_format: str, bos: bool) -> str:
    """A chat template that writes no chat markup: each user turn through `prompt_format` ('{prompt}' stands for
    it), each assistant turn followed by the end-of-sequence token, a system text before the rest; the
    beginning-of-sequence token first where the tokenizer adds one to plain text. Installed as the tokenizer's
    template, every consumer of it - training, generation, the merge check, a saved tokenizer - formats alike."""
    before, _, after = prompt_format.partition("{prompt}")
    return (("{{ bos_token }}" if bos else "") + "{% for message in messages %}"
            "{% if message['role'] == 'user' %}{{ " + _literal(before) + " }}{{ message['content'] }}{{ "
            + _literal(after) + " }}"
            "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
            "{% else %}{{ message['content'] }}{{ '\\n\\n' }}{% endif %}{% endfor %}")


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def use_formatting(tokenizer, spec: DatasetSpec, where: str = "dataset") -> str:
    """Format with the tokenizer's chat template, or plain text with dataset.prompt_format (the default when the
    tokenizer has no template, or when a prompt_format is given); the plain format is installed as the tokenizer's
    template. Returns what the record says of it."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    plain = spec.chat_template is False or (spec.chat_template is None and
                                            (spec.prompt_format is not None or not has_template))
    labels = {"last": "labels on the last assistant turn", "assistant": "labels on every assistant turn",
              "all": "labels on the whole text"}[spec.train_on]
    if not plain:
        if not has_template:
            raise DataError(f"{where}: dataset.chat_template is true but the tokenizer has no chat template; set "
                            "dataset.chat_template: false and a dataset.prompt_format such as \"Question: {prompt}"
                            "\\nAnswer:\"")
        return f"chat template; {labels}"
    if spec.prompt_format is None:
        raise DataError(f"{where}: the tokenizer has no chat template and dataset.prompt_format is not set, so "
                        "examples cannot be formatted; give a plain format such as prompt_format: \"Question: "
                        "{prompt}\\nAnswer:\" (a base model), or a tokenizer with a template (model.tokenizer)")
    tokenizer.chat_template = plain_template(spec.prompt_format, _adds_bos(tokenizer))
    return f"plain: {spec.prompt_format!r} + response + {tokenizer.eos_token}; {labels}"


def _end_after(ids: list[int], start: int, end: int | None) -> int:
    """Where the labelled part of a turn that starts at `start` ends: just after its last end-of-sequence token
    (templates write a newline after the end of turn; the model should learn to stop, not to go on)."""
    tail = ids[start:]
    return len(ids) if end not in tail else len(ids) - tail[::-1].index(end)


def _last_turn(tokenizer, e: Example, train_on: str) -> tuple[list[int], list[int]]:
    prompt = tokenizer(prompt_text(tokenizer, e.messages[:-1]), add_special_tokens=False).input_ids
    full = tokenizer(tokenizer.apply_chat_template(e.messages, tokenize=False), add_special_tokens=False).input_ids
    if full[: len(prompt)] != prompt:
        # Some templates render the last turn differently once a response follows; fall back to concatenation.
        full = prompt + tokenizer(full_response_text(tokenizer, e), add_special_tokens=False).input_ids
    full = full[: _end_after(full, len(prompt), tokenizer.eos_token_id)]
    masked = 0 if train_on == "all" else len(prompt)
    return full, [IGNORE] * masked + full[masked:]


def _every_turn(tokenizer, e: Example) -> tuple[list[int], list[int]]:
    """Every assistant turn labelled: the conversation rendered turn by turn, each piece tokenised on its own."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, m in enumerate(e.messages):
        if m["role"] != "assistant":
            continue
        before = prompt_text(tokenizer, e.messages[:i])
        after = tokenizer.apply_chat_template(e.messages[: i + 1], tokenize=False)
        if not (before.startswith(done) and after.startswith(before)):
            raise DataError(f"{e.place}: the chat template renders earlier turns differently once later ones "
                            "follow, so each assistant turn cannot be labelled; use dataset.train_on: last or all")
        context = tokenizer(before[len(done):], add_special_tokens=False).input_ids
        turn = tokenizer(after[len(before):], add_special_tokens=False).input_ids
        cut = _end_after(turn, 0, tokenizer.eos_token_id)
        ids += context + turn
        labels += [IGNORE] * len(context) + turn[:cut] + [IGNORE] * (len(turn) - cut)
        done = after
    keep = len(labels) - next(i for i, t in enumerate(reversed(labels)) if t != IGNORE)
    return ids[:keep], labels[:keep]


def tokenize(examples: list[Example], tokenizer, max_seq_len: int, spec: DatasetSpec, notes: DataNotes,
             where: str) -> list[Features]:
    """Format each example (use_formatting) and label what trains (dataset.train_on): by default the last
    assistant turn, the prompt masked."""
    out = []
    for e in examples:
        if spec.train_on == "assistant":
            full, labels = _every_turn(tokenizer, e)
        else:
            full, labels = _last_turn(tokenizer, e, spec.train_on)
        first = next(i for i, t in enumerate(labels) if t != IGNORE)
        if spec.train_on != "all" and first >= max_seq_len:
            if spec.on_bad_row == "error":
                raise DataError(f"{e.place or f'{where}, row {e.row}'}: the prompt alone is {first} tokens, "
                                f"leaving no room for the response in max_seq_len {max_seq_len} (raise "
                                "training.max_seq_len, or set dataset.on_bad_row: skip)")
            notes.skip("prompt longer than max_seq_len")
            continue
        if len(full) > max_seq_len:
            notes.truncated += 1
            full, labels = full[:max_seq_len], labels[:max_seq_len]
        out.append(Features(full, labels))
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
