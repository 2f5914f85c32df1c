"""Dataset sources (JSON, JSONL, CSV), column mapping, the seeded split, prompt masking and packed batches."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from bench.datasets import batches as B
from bench.datasets import examples as D
from bench.core.config import DatasetSpec, ModelSpec
from bench.run.models import build_config, byte_tokenizer
from bench.core.records import DataNotes

SPEC = DatasetSpec(path="t.jsonl")  # what tokenize reads of a dataset spec: the bad-row policy

ROWS = [
    {"prompt": f"What is {i} plus {i}?", "response": str(2 * i)} for i in range(1, 11)
] + [{"prompt": "Quote me, \"verbatim\", please:\nline two", "response": "\"verbatim\", line two"}]


def write(path, rows, fmt=None):
    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "json":
        path.write_text(json.dumps(rows, indent=1))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return str(path)


def texts(examples):
    return [(e.prompt, e.response) for e in examples]


def test_json_array_jsonl_and_csv_load_the_same_examples(tmp_path):
    loaded = {}
    for fmt in ("json", "jsonl", "csv"):
        spec = DatasetSpec(path=write(tmp_path / f"d.{fmt}", ROWS), eval_size=3, seed=1)
        train, evals, notes = D.load_examples(spec)
        loaded[fmt] = (texts(train), texts(evals))
        assert (notes.train_rows, notes.eval_rows, notes.skipped) == (8, 3, {})
    assert loaded["json"] == loaded["jsonl"] == loaded["csv"]
    # CSV cells stay text: "10" is an answer, not the number 10, and quoted commas/newlines survive.
    train, evals = loaded["csv"]
    assert ("What is 5 plus 5?", "10") in train + evals
    assert ("Quote me, \"verbatim\", please:\nline two", "\"verbatim\", line two") in train + evals


def test_csv_cells_stay_text_even_when_every_answer_is_a_number(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("prompt,response\n" + "".join(f"Pad {i} to three digits,{i:03d}\n" for i in range(6)))
    train, evals, _ = D.load_examples(DatasetSpec(**{"path": str(p), "eval_size": 1}))
    assert sorted(e.response for e in train + evals) == [f"{i:03d}" for i in range(6)]


def test_tsv_is_tab_separated(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("prompt\tresponse\n" + "".join(f"q{i}, with a comma\ta{i}\n" for i in range(5)))
    train, evals, _ = D.load_examples(DatasetSpec(**{"path": str(p), "eval_size": 1}))
    assert sorted(texts(train + evals)) == [(f"q{i}, with a comma", f"a{i}") for i in range(5)]


def test_columns_are_mapped_by_name_and_a_system_message_is_prepended(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}", "id": i} for i in range(6)]
    spec = {"path": write(tmp_path / "d.jsonl", rows), "prompt": "question", "response": "answer", "eval_size": 2,
            "system": "Answer briefly."}
    train, evals, _ = D.load_examples(DatasetSpec(**spec))
    assert sorted(texts(train + evals)) == [(f"q{i}", f"a{i}") for i in range(6)]
    assert all(e.messages[0] == {"role": "system", "content": "Answer briefly."} for e in train + evals)
    assert all([m["role"] for m in e.messages] == ["system", "user", "assistant"] for e in train + evals)


def test_a_chat_messages_column_keeps_every_turn(tmp_path):
    rows = [{"conv": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"},
                      {"role": "user", "content": f"name {i}?"}, {"role": "assistant", "content": f"bot {i}"}]}
            for i in range(5)]
    train, evals, _ = D.load_examples(DatasetSpec(**{"path": write(tmp_path / "d.json", rows), "messages": "conv", "eval_size": 1}))
    by_response = {e.response: e for e in train + evals}
    assert set(by_response) == {f"bot {i}" for i in range(5)}
    e = by_response["bot 3"]
    assert e.prompt == "name 3?"
    assert [m["content"] for m in e.messages] == ["hi 3", "hello", "name 3?", "bot 3"]


def test_the_split_is_fixed_by_the_seed(tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(40)]
    path = write(tmp_path / "d.jsonl", rows)

    def split(seed):
        train, evals, notes = D.load_examples(DatasetSpec(**{"path": path, "eval_size": 0.25, "seed": seed}))
        return texts(train), texts(evals), notes.fingerprint

    a, b, c = split(7), split(7), split(8)
    assert a == b
    assert set(a[1]) != set(c[1]) and a[2] != c[2]
    train, evals, _ = a
    assert len(evals) == 10 and len(train) == 30
    assert not set(train) & set(evals)
    assert sorted(train + evals) == sorted((r["prompt"], r["response"]) for r in rows)


def test_eval_path_keeps_the_train_file_whole_and_max_examples_cuts_train_only(tmp_path):
    train_rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(12)]
    eval_rows = [{"prompt": f"e{i}", "response": f"s{i}"} for i in range(4)]
    spec = DatasetSpec(path=write(tmp_path / "t.jsonl", train_rows), eval_path=write(tmp_path / "e.csv", eval_rows))
    train, evals, notes = D.load_examples(spec)
    assert sorted(texts(evals)) == sorted((r["prompt"], r["response"]) for r in eval_rows)
    assert len(train) == 12
    cut, cut_evals, cut_report = D.load_examples(spec.model_copy(update={"max_examples": 5}))
    assert texts(cut) == texts(train)[:5]
    assert texts(cut_evals) == texts(evals)
    assert (cut_report.train_rows, cut_report.eval_rows) == (5, 4)
    _, few, _ = D.load_examples(spec, max_eval=2)
    assert texts(few) == texts(evals)[:2]


def test_rows_report_where_they_are_line_for_jsonl_row_for_json(tmp_path):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": ""}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n" + "\n".join(json.dumps(r) for r in rows) + "\n")  # the blank first line counts
    with pytest.raises(D.DataError, match=r"d\.jsonl, line 3: field 'response' is empty"):
        D.load_examples(DatasetSpec(**{"path": str(jsonl)}))
    with pytest.raises(D.DataError, match=r"d\.json, row 2: field 'response' is empty"):
        D.load_examples(DatasetSpec(**{"path": write(tmp_path / "d.json", rows)}))


def _example(prompt, response):
    return D.Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], 1)


def test_tokenize_masks_the_prompt_and_ends_with_the_end_of_turn():
    tok = byte_tokenizer()
    e = _example("Name a colour.", "Blue")
    notes = DataNotes(source="t")
    (f,) = B.tokenize([e], tok, 512, SPEC, notes, "t")
    prompt_ids = tok(B.prompt_text(tok, e.messages[:-1]), add_special_tokens=False).input_ids
    n = len(prompt_ids)
    assert f.input_ids[:n] == prompt_ids
    assert f.labels[:n] == [B.IGNORE] * n
    assert f.labels[n:] == f.input_ids[n:]
    assert tok.decode(f.labels[n:]) == "Blue<|im_end|>"
    assert f.input_ids[-1] == tok.eos_token_id
    assert notes.truncated == 0


def test_tokenize_truncates_long_responses_and_counts_them():
    tok = byte_tokenizer()
    e = _example("Q", "x" * 100)
    notes = DataNotes(source="t")
    (f,) = B.tokenize([e], tok, 40, SPEC, notes, "t")
    assert len(f.input_ids) == len(f.labels) == 40
    assert notes.truncated == 1


def test_a_too_long_prompt_is_an_error_or_a_counted_skip():
    tok = byte_tokenizer()
    examples = [_example("short", "ok"), D.Example(_example("y" * 80, "ok").messages, 2, "d.jsonl, line 2")]
    with pytest.raises(D.DataError, match=r"^d\.jsonl, line 2: the prompt alone is \d+ tokens, leaving no room for "
                                          r"the response in max_seq_len 50"):
        B.tokenize(examples, tok, 50, SPEC, DataNotes(source="t"), "t")
    notes = DataNotes(source="t")
    kept = B.tokenize(examples, tok, 50, SPEC.model_copy(update={"on_bad_row": "skip"}), notes, "t")
    assert len(kept) == 1 and notes.skipped == {"prompt longer than max_seq_len": 1}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(build_config(ModelSpec(preset="tiny-llama"))).eval()


def _loss(model, batch):
    with torch.no_grad():
        # use_cache=False as in training: transformers only detects packed sequences without a KV cache.
        return model(**batch, use_cache=False).loss.item()


def test_packed_loss_equals_the_token_weighted_mean_of_single_example_losses(tiny_model):
    tok = byte_tokenizer()
    examples = [_example("Say hi.", "hi"), _example("Count to five, please.", "1 2 3 4 5"),
                _example("What colour is the sky on a clear day?", "Blue, mostly.")]
    feats = B.tokenize(examples, tok, 256, SPEC, DataNotes(source="t"), "t")
    pad = tok.pad_token_id
    singles = [_loss(tiny_model, B.collate([f], pad, packed=False)) for f in feats]
    # Hugging Face shifts labels by one: an example with n labelled tokens has n predictions in its loss.
    counts = [sum(label != B.IGNORE for label in f.labels[1:]) for f in feats]
    weighted = sum(loss * n for loss, n in zip(singles, counts)) / sum(counts)
    packed = B.collate(feats, pad, packed=True)
    assert packed["input_ids"].shape == (1, sum(len(f.input_ids) for f in feats))
    assert "attention_mask" not in packed
    assert _loss(tiny_model, packed) == pytest.approx(weighted, abs=1e-5)
    assert _loss(tiny_model, B.collate(feats, pad, packed=False)) == pytest.approx(weighted, abs=1e-5)
    # The check has teeth: one continuous sequence (examples attending to each other) gives another loss.
    leaky = {k: v for k, v in packed.items() if k != "position_ids"}
    assert abs(_loss(tiny_model, leaky) - weighted) > 1e-3
