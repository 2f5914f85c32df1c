"""Numbers a user can trust: answers that do not match score nothing, scores carry their uncertainty over the eval
examples, a choice is weighed against the untrained baseline, one folder has one `bench run`, adapters name a base
a client can load, and prompt-learning scores are also recorded as generate() gives them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bench.choose.compare import Row
from bench.core.config import DatasetSpec
from bench.datasets.examples import DataError, Example, check_references
from bench.core.records import DataNotes, ScoreInterval
from bench.choose.recommend import explain, recommend
from bench.report.gate import _verdict
from bench.core.scoring import interval, per_example, score
from tests.conftest import ROOT
from tests.handmade import record

# ---- answers and their uncertainty --------------------------------------------------------------------------------


def test_a_prediction_without_a_match_is_wrong_even_against_a_reference_without_one():
    preds = ["The answer is #### 18", "no number here", "#### 7"]
    refs = ["#### 18", "#### 3", "#### 9"]
    assert per_example(["exact_match", "token_f1"], preds, refs, "#### (.+)") == {
        "exact_match": [1.0, 0.0, 0.0], "token_f1": [1.0, 0.0, 0.0]}
    with pytest.raises(ValueError, match="has no match for eval.extract"):
        score(["exact_match"], ["x"], ["no answer"], "#### (.+)")


def test_a_reference_without_a_match_is_a_data_problem_named_by_its_row():
    evals = [Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": r}], i, f"d.jsonl, line {i}")
             for i, r in enumerate(["#### 1", "no answer", "#### 2"], 1)]
    spec = DatasetSpec(path="d.jsonl")
    with pytest.raises(DataError, match=r"^d\.jsonl, line 2: the reference 'no answer' has no match for eval\.extract"):
        check_references(evals, "#### (.+)", spec, DataNotes(source="d.jsonl"))
    notes = DataNotes(source="d.jsonl")
    kept = check_references(evals, "#### (.+)", spec.model_copy(update={"on_bad_row": "skip"}), notes)
    assert [e.row for e in kept] == [1, 3] and notes.skipped == {"reference without an answer for eval.extract": 1}
    assert notes.eval_rows == 2


def test_wilson_interval_for_proportions_and_a_seeded_bootstrap_for_the_rest():
    # 23 right of 30: Wilson's 95% interval, as printed in tables of binomial intervals.
    low, high, how = interval([1.0] * 23 + [0.0] * 7)
    assert how == "wilson" and (low, high) == (pytest.approx(0.5907, abs=1e-4), pytest.approx(0.8821, abs=1e-4))
    f1 = [0.5, 0.75, 1.0, 0.2, 0.9, 0.6, 0.8, 0.4]
    low, high, how = interval(f1)
    assert how == "bootstrap" and low < sum(f1) / len(f1) < high
    assert interval(f1) == (low, high, how)  # seeded: the same interval every time
    assert interval([0.5, 0.5, 0.5])[:2] == (0.5, 0.5)


def test_compare_says_whether_a_score_moved_within_its_eval_interval():
    inside = Row("lora", "exact_match", 0.80, 0.70, "regression", True, "higher", "±0.02", -0.1, None, None, None,
                 (0.52, 0.85, 30))
    outside = Row("lora", "exact_match", 0.95, 0.70, "regression", True, "higher", "±0.02", -0.25, None, None, None,
                  (0.52, 0.85, 30))
    assert _verdict(inside) == "**regression**; within the 95% interval over 30 eval examples"
    assert _verdict(outside) == "**regression**; beyond the 95% interval over 30 eval examples"


def test_recommend_says_first_when_no_method_beats_the_untrained_baseline():
    records = [record("baseline", "baseline", {"exact_match": 0.0, "eval_loss": 2.0}),
               record("lora", "lora", {"exact_match": 0.0, "eval_loss": 1.0}, started=1),
               record("ia3", "ia3", {"exact_match": 0.0, "eval_loss": 1.5}, started=2)]
    text = explain(recommend(records))
    assert text.headline == ("No trained method scores above the untrained baseline on exact match (0.000). Best of "
                             "them: lora (0.000)")


def test_recommend_weighs_the_gap_to_the_baseline_against_the_eval_examples():
    wide = ScoreInterval(low=0.05, high=0.45, method="wilson", n=10)
    tight = ScoreInterval(low=0.74, high=0.91, method="wilson", n=100)
    base = record("baseline", "baseline", {"exact_match": 0.1})
    noisy = record("lora", "lora", {"exact_match": 0.2}, started=1).model_copy(
        update={"intervals": {"exact_match": wide}})
    clear = record("lora", "lora", {"exact_match": 0.84}, started=1).model_copy(
        update={"intervals": {"exact_match": tight}})
    assert "lies inside lora's 95% interval over the 10 eval examples (0.050-0.450): the gap may be noise" in \
        explain(recommend([base, noisy])).details[0]
    assert "by more than the noise of 100 eval examples" in explain(recommend([base, clear])).details[0]


# ---- one bench run per results folder -----------------------------------------------------------------------------

SLOW = """\
name: slow
version: 1
model: {{preset: tiny-llama}}
dataset: {{path: {data}, eval_size: 8}}
budget: {{max_steps: 2000}}
training: {{batch_size: 1, max_seq_len: 384}}
eval: {{max_examples: 2, max_new_tokens: 2, forgetting: false}}
output: {out}
baseline: false
runs: [{{method: lora}}]
"""


@pytest.mark.worker
def test_a_second_bench_run_on_the_same_folder_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    suite = tmp_path / "slow.yaml"
    suite.write_text(SLOW.format(data=ROOT / "data" / "smoke.jsonl", out=out))
    first = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (out / "lora" / "progress.jsonl").exists():  # the first run is training
            assert time.time() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.5)
        second = subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--force"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        holder = json.loads((out / ".bench.lock").read_text())
        assert f"is in use by another bench run (pid {holder['pid']} on {holder['host']}" in second.stderr
        assert holder["pid"] == first.pid
        assert (out / "lora" / "progress.jsonl").stat().st_size > 0  # the first run's work is untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # a kill leaves its lock file written: the kernel drops the flock
        first.wait()
    assert json.loads((out / ".bench.lock").read_text())["pid"] == first.pid
    suite.write_text(suite.read_text().replace("max_steps: 2000", "max_steps: 2"))
    third = subprocess.run([sys.executable, "-m", "bench", "run", str(suite)], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"taking over the lock left by pid {first.pid}" in third.stderr and "no longer running" in third.stderr
    assert (out / ".bench.lock").read_text() == ""  # released


# ---- what outside clients get ------------------------------------------------------------------------------------


def test_prompt_learning_records_carry_the_score_generate_gives(smoke_results):
    out, _ = smoke_results
    for run in ("prompt_tuning", "p_tuning", "prefix_tuning"):
        r = json.loads((out / f"{run}.json").read_text())
        assert {"via_generate_exact_match", "via_generate_token_f1"} <= r["metrics"].keys(), run
        assert all(p["generate_prediction"] is not None for p in r["predictions"]), run
    lora = json.loads((out / "lora.json").read_text())
    assert "via_generate_exact_match" not in lora["metrics"]  # it decodes through generate() already
    assert lora["intervals"]["exact_match"]["method"] == "wilson" and lora["intervals"]["exact_match"]["n"] == 8


def test_the_report_warns_when_generate_and_the_harness_disagree():
    from bench.report.provenance import decoding_warnings

    r = record("prompt_tuning", "prompt_tuning", {"exact_match": 0.77, "via_generate_exact_match": 0.0})
    r = r.model_copy(update={"environment": {"packages": {"transformers": "5.24.0", "peft": "0.21.2"}}})
    (line,) = decoding_warnings([r])
    assert line.startswith("prompt_tuning: exact match 0.770 with the harness's decoding but 0.000 through "
                           "transformers' generate()")
    assert "transformers 5.24.0 / peft 0.21.2" in line
    same = r.model_copy(update={"metrics": {"exact_match": 0.5, "via_generate_exact_match": 0.5}})
    assert decoding_warnings([same]) == []


@pytest.mark.worker
def test_a_saved_adapter_loads_with_autopeft_alone(tmp_path):
    """The adapter names its base by an absolute folder a client can load (here a local model folder)."""
    from bench.run.models import PRESETS, byte_tokenizer

    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in PRESETS["tiny-llama"].items()
                                                    if k != "model_type"})).save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\nversion: 1\nmodel: {{path: {base}}}\ndataset: {{path: {ROOT / 'data' / 'smoke.jsonl'}, "
                     f"eval_size: 8}}\nbudget: {{max_steps: 2}}\neval: {{max_examples: 2, max_new_tokens: 2}}\n"
                     f"output: {tmp_path / 'out'}\nbaseline: false\nruns: [{{method: lora}}]\n")
    run = subprocess.run([sys.executable, "-m", "bench", "run", str(suite)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    adapter = tmp_path / "out" / "lora" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    code = ("import sys, torch; from peft import AutoPeftModelForCausalLM\n"
            "m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1])\n"
            "print(type(m).__name__, m.peft_config['default'].peft_type.value)")
    loaded = subprocess.run([sys.executable, "-c", code, str(adapter)], cwd="/", capture_output=True, text=True,
                            timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split() == ["PeftModelForCausalLM", "LORA"]


def test_the_model_cache_is_an_absolute_folder_however_it_is_given(monkeypatch, tmp_path):
    from bench.run.models import cache_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_CACHE", "relative/cache")
    assert cache_dir() == tmp_path / "relative" / "cache"
    monkeypatch.delenv("BENCH_CACHE")
    assert cache_dir().is_absolute() and "{" not in str(cache_dir())


def test_tox_leaves_the_model_cache_where_the_readme_says():
    """tox once set BENCH_CACHE to an unexpanded '{homedir}/...' and the quickstart wrote a folder of that name."""
    proc = subprocess.run([sys.executable, "-m", "tox", "config", "-e", "quickstart,py", "-k", "set_env", "pass_env"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "BENCH_CACHE" in proc.stdout  # passed through from the caller, never set to a literal
    assert "{homedir}" not in proc.stdout and "BENCH_CACHE=" not in proc.stdout
