"""Can it be served: each stack's rule on the adapters the harness's methods save, the summary's column, and that
every stack names the release and file its rule was read from."""

from __future__ import annotations

import pytest

from bench.analysis.serving import STACKS, Adapter, cell, verdict, verdicts


@pytest.mark.parametrize("method, params, expected", [
    ("full", {}, {"vllm": "as-is", "llama.cpp": "as-is", "tgi": "as-is"}),
    ("lora", {"r": 8, "bias": "none"}, {"vllm": "as-is", "llama.cpp": "as-is", "tgi": "as-is"}),
    ("qlora", {"r": 8}, {"vllm": "as-is", "llama.cpp": "as-is", "tgi": "as-is"}),
    ("dora", {}, {"vllm": "merge first", "llama.cpp": "merge first", "tgi": "merge first"}),  # use_dora is fixed
    ("head_only", {}, {"vllm": "merge first", "llama.cpp": "merge first", "tgi": "merge first"}),  # modules_to_save
    ("lora", {"bias": "lora_only"}, {"vllm": "merge first", "llama.cpp": "merge first", "tgi": "merge first"}),
    ("lora", {"use_rslora": True}, {"vllm": "as-is", "llama.cpp": "merge first", "tgi": "merge first"}),
    ("ia3", {}, {"vllm": "merge first", "llama.cpp": "merge first", "tgi": "merge first"}),
    ("loha", {}, {"vllm": "merge first", "llama.cpp": "merge first", "tgi": "merge first"}),
    ("prompt_tuning", {}, {"vllm": "needs PEFT", "llama.cpp": "needs PEFT", "tgi": "needs PEFT"}),
    ("p_tuning", {}, {"vllm": "needs PEFT", "llama.cpp": "needs PEFT", "tgi": "needs PEFT"}),
    ("prefix_tuning", {}, {"vllm": "needs PEFT", "llama.cpp": "needs PEFT", "tgi": "needs PEFT"}),
])
def test_each_stack_on_each_method(method, params, expected):
    assert {v.stack: v.how for v in verdicts(method, params)} == expected


def test_the_reason_is_the_stack_s_own_words():
    dora = {v.stack: v.why for v in verdicts("dora", {})}
    assert dora["vllm"] == "vLLM does not yet support DoRA"
    assert dora["llama.cpp"] == "a DoRA magnitude vector is not a lora_A or lora_B tensor"
    head = {v.stack: v.why for v in verdicts("head_only", {})}
    assert head["vllm"] == "vLLM only supports modules_to_save being None"
    assert {v.why for v in verdicts("ia3", {})} == {"loads LoRA adapters only, not IA3"}
    assert verdict(STACKS["vllm"], Adapter("PROMPT_TUNING", {}, False, True)).why == \
        "prompt learning (virtual tokens) has no weights to load into the model"


def test_the_summary_cell():
    assert cell(verdicts("lora", {})) == "vLLM, llama.cpp, TGI"
    assert cell(verdicts("lora", {"use_rslora": True})) == "vLLM; others merge first"
    assert cell(verdicts("ia3", {})) == "merge first"
    assert cell(verdicts("p_tuning", {})) == "PEFT only"
    assert cell(verdicts("baseline", {})) == "-" and cell(verdicts("no-such-method", {})) == "-"


def test_every_stack_cites_its_release_and_source():
    assert set(STACKS) == {"vllm", "llama.cpp", "tgi"}
    for s in STACKS.values():
        assert s.version and s.source.split()[0].endswith((".py", ".md")), s
