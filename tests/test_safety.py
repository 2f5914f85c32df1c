"""A suite is data: code it brings (a hub: metric, an lm-eval task folder's !function) runs only with
--trust-remote-code on the command line, and the record then names it; the loaders the harness calls otherwise run
no code from their inputs; a suite's regex cannot hang scoring; trackers say where runs go."""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch

from bench.run import safety
from bench.cli import main
from bench.spec.suite import load_suite
from bench.core.yamlio import SuiteError
from tests.conftest import ROOT

TASKS = ROOT / "data" / "lm_eval"
CONFIG = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, vocab_size=260, tie_word_embeddings=False)

# Each writes a marker file when imported: the file's existence is the proof the code ran.
TASK_CODE = "from pathlib import Path\nPath({marker!r}).write_text('task code ran')\n\ndef keep(docs):\n    return docs\n"
METRIC_CODE = '''import datasets
import evaluate
from pathlib import Path

Path({marker!r}).write_text("metric code ran")


class Planted(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="", citation="", inputs_description="", features=datasets.Features(
            {{"predictions": datasets.Value("string"), "references": datasets.Value("string")}}))

    def _compute(self, predictions, references):
        return {{"same": sum(p == r for p, r in zip(predictions, references)) / len(predictions)}}
'''

SUITE = """\
name: planted
version: 1
model:
  config: {config}
dataset:
  path: {data}
  eval_size: 4
budget: {{max_steps: 1}}
training: {{batch_size: 2, max_seq_len: 256}}
eval:
  max_examples: 2
  max_new_tokens: 2
  forgetting: false
  metrics: [exact_match, "hub:{metric}"]
  lm_eval: {{tasks: [planted_city], include_path: tasks, limit: 2}}
output: {out}
baseline: false
runs: [{{method: lora}}]
"""


def planted(folder: Path) -> tuple[Path, Path, Path]:
    """A suite whose lm-eval task folder imports Python through !function and whose metric is a local evaluate
    script; (suite, the task code's marker, the metric code's marker)."""
    tasks = folder / "tasks"
    tasks.mkdir()
    shutil.copy(TASKS / "trips_city.jsonl", tasks)
    task = (TASKS / "trips_city.yaml").read_text().replace("task: trips_city", "task: planted_city")
    (tasks / "planted.yaml").write_text(task + "process_docs: !function helpers.keep\n")
    (tasks / "helpers.py").write_text(TASK_CODE.format(marker=str(folder / "task.marker")))
    (folder / "planted").mkdir()
    (folder / "planted" / "planted.py").write_text(METRIC_CODE.format(marker=str(folder / "metric.marker")))
    suite = folder / "suite.yaml"
    suite.write_text(SUITE.format(config=json.dumps(CONFIG), data=ROOT / "data" / "smoke.jsonl",
                                  metric=folder / "planted" / "planted.py", out=folder / "out"))
    return suite, folder / "task.marker", folder / "metric.marker"


def test_planted_code_never_runs_without_the_flag_and_runs_named_in_the_record_with_it(tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))  # where evaluate copies a script it imports
    suite, task_marker, metric_marker = planted(tmp_path)
    assert main(["validate", str(suite)]) == 2
    errors = " ".join(capsys.readouterr().err.split())
    assert (f"line 14, eval.metrics[1]: 'hub:{tmp_path}/planted/planted.py' makes evaluate.load import and run the "
            f"Python script of the local script {tmp_path}/planted/planted.py; a suite cannot allow that itself: run "
            "with --trust-remote-code if you trust whoever wrote it") in errors
    assert (f"line 15, eval.lm_eval.include_path: {tmp_path}/tasks/planted.yaml, line 20: !function helpers.keep makes "
            f"lm-eval import {tmp_path}/tasks/helpers.py and run its keep; a suite cannot allow that itself") in errors
    assert main(["run", str(suite)]) == 2
    assert main(["plan", str(suite)]) == 2
    assert not task_marker.exists() and not metric_marker.exists()  # the code never ran
    assert not (tmp_path / "out").exists()

    assert main(["run", str(suite), "--trust-remote-code"]) == 0
    assert task_marker.read_text() == "task code ran" and metric_marker.read_text() == "metric code ran"
    record = json.loads((tmp_path / "out" / "lora.json").read_text())
    assert record["status"] == "success"
    assert any(k.startswith("lm_eval.planted_city.") for k in record["metrics"])
    ran = record["environment"]["remote_code"]
    helpers = safety._sha(tmp_path / "tasks" / "helpers.py")
    assert f"lm-eval task code {tmp_path}/tasks/helpers.py (sha256 {helpers})" in ran
    assert f"lm-eval task folder {tmp_path}/tasks (sha256 of its files " \
           f"{safety.folder_digest(tmp_path / 'tasks')[:16]})" in ran
    (metric,) = [line for line in ran if line.startswith("evaluate module planted: ")]
    assert metric.endswith(f"(sha256 {safety._sha(tmp_path / 'planted' / 'planted.py')})")  # the copy evaluate ran
    report = " ".join((tmp_path / "out" / "report.md").read_text().split())
    assert f"lora ran code from outside the harness: {ran[0]}" in report


def write_suite(folder: Path, eval_part: str, extra: str = "") -> Path:
    (folder / "d.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"#### {i}"}) + "\n"
                                            for i in range(4)))
    suite = folder / "s.yaml"
    suite.write_text(f"name: s\nversion: 1\nmodel: {{preset: tiny-llama}}\ndataset: {{path: d.jsonl, eval_size: 2}}\n"
                     f"budget: {{max_steps: 1}}\neval:\n{eval_part}output: {folder / 'out'}\n{extra}"
                     "runs: [{method: lora}]\n")
    return suite


def problems(suite: Path, trusted: bool = False) -> list[str]:
    with pytest.raises(SuiteError) as e:
        load_suite(suite, trust_remote_code=trusted)
    return e.value.problems


def test_a_metric_from_someones_space_is_an_error_and_evaluates_own_are_said_to_download(tmp_path, capsys,
                                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = write_suite(tmp_path, '  metrics: [exact_match, "hub:someone/x", "hub:bleu"]\n')
    assert problems(suite) == [
        "line 7, eval.metrics[1]: 'hub:someone/x' makes evaluate.load import and run the Python script of the Hugging "
        "Face Hub Space someone/x (tag v0.4.6, else main); a suite cannot allow that itself: run with "
        "--trust-remote-code if you trust whoever wrote it"]
    assert main(["validate", str(suite), "--trust-remote-code"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("note: eval.metrics[2] hub:bleu: evaluate.load imports the metric's Python script from the Hub Space "
            "evaluate-metric/bleu (tag v0.4.6, else main; offline, the copy in the Hugging Face modules cache)") in out
    assert "note: allowed by --trust-remote-code: 'hub:someone/x' makes evaluate.load" in out


def test_a_bare_metric_name_that_a_local_script_shadows_is_local_code(tmp_path, monkeypatch):
    """evaluate.load('bleu') imports ./bleu/bleu.py when the working directory has one, before asking the Hub."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bleu").mkdir()
    (tmp_path / "bleu" / "bleu.py").write_text("raise SystemExit('planted')\n")
    suite = write_suite(tmp_path, '  metrics: ["hub:bleu"]\n')
    (problem,) = problems(suite)
    assert problem.startswith(f"line 7, eval.metrics[0]: 'hub:bleu' makes evaluate.load import and run the Python "
                              f"script of the local script {tmp_path}/bleu/bleu.py;")


def test_trust_remote_code_is_never_a_suite_key(tmp_path):
    suite = write_suite(tmp_path, "  max_examples: 2\n", extra="trust_remote_code: true\n")
    suite.write_text(suite.read_text().replace("{preset: tiny-llama}", "{preset: tiny-llama, trust_remote_code: true}"))
    assert problems(suite, trusted=True) == [
        f"line 3, model.trust_remote_code: {safety.NOT_A_KEY}", f"line 9, trust_remote_code: {safety.NOT_A_KEY}"]
    assert "--trust-remote-code on the command line" in safety.NOT_A_KEY


def test_a_task_folder_is_read_without_running_it_and_every_way_to_code_is_found(tmp_path):
    tasks = tmp_path / "tasks"
    (tasks / "sub").mkdir(parents=True)
    (tasks / "base.yaml").write_text("dataset_kwargs:\n  trust_remote_code: true\nclass: !function os.getcwd\n")
    (tasks / "sub" / "t.yaml").write_text(
        "task: t\ninclude: ../base.yaml\nprocess_docs: !!python/name:os.system\nmetric_list:\n  - metric: acc\n"
        "  - metric: someone/fancy\n    hf_evaluate: true\n")
    found = [(p.name, line, what) for p, line, what in safety.task_folder_code(tasks)]
    assert found == [
        ("base.yaml", 2, "trust_remote_code: true asks the datasets library to run a dataset's own loading script"),
        ("base.yaml", 3, "!function os.getcwd makes lm-eval import the module 'os' and call its getcwd"),
        ("t.yaml", 3, "the YAML tag tag:yaml.org,2002:python/name:os.system asks lm-eval's loader to build a Python "
                      "object"),
        ("t.yaml", 6, "metric 'someone/fancy' is not one lm-eval ships, so lm-eval hands it to evaluate.load, which "
                      "imports the Python script of the Hugging Face Hub Space someone/fancy (tag v0.4.6, else main)"),
        ("t.yaml", 7, "hf_evaluate makes lm-eval load the metric with evaluate.load, which imports its script")]
    assert safety.task_folder_code(TASKS) == []  # the shipped tasks: plain data


def test_lm_eval_renders_task_templates_in_the_sandbox(tmp_path):
    """lm-eval 0.4 renders doc_to_text in a plain jinja2 Environment, where a template reaches os.system."""
    import lm_eval.utils
    from jinja2.exceptions import SecurityError

    marker = tmp_path / "jinja.marker"
    attack = ("{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}")
    safety.sandbox_lm_eval_templates()
    with pytest.raises(SecurityError):
        lm_eval.utils.apply_template(attack, {})
    assert not marker.exists()
    assert lm_eval.utils.apply_template("{{ sentence | regex_replace('a', 'o') }}!", {"sentence": "cat"}) == "cot!"


# ---- the loaders the harness calls run no code from their inputs --------------------------------------------------


def test_a_python_tag_in_a_suite_builds_nothing(tmp_path):
    marker = tmp_path / "tag.marker"
    suite = write_suite(tmp_path, "  max_examples: 2\n")
    suite.write_text(suite.read_text().replace("name: s", f'name: !!python/object/apply:os.system ["touch {marker}"]'))
    assert problems(suite) == [f"line 1, name: Input should be a valid string, got ['touch {marker}']"]
    assert not marker.exists()


def test_a_model_or_tokenizer_folder_that_asks_for_its_own_code_is_refused(tmp_path):
    """transformers imports a folder's modelling or tokenizer code only with trust_remote_code, which the harness
    never passes."""
    from bench.run import models as M
    from bench.core.config import ModelSpec

    marker = tmp_path / "auto_map.marker"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                                    "from transformers import LlamaConfig as EvilConfig\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {
        "AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilConfig"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilConfig",
                                                                                             None]}}))
    with pytest.raises((ValueError, OSError, M.ModelSourceError)):
        M.load_model(ModelSpec(path=str(folder)), str(folder), dtype=torch.float32, load_in_4bit=False, seed=0)
    with pytest.raises((ValueError, OSError, M.ModelSourceError)):
        M.load_tokenizer(ModelSpec(path=str(folder)), str(folder))
    assert not marker.exists()


class _Planted:
    def __reduce__(self):
        return (Path.write_text, (Path(MARKER_PATH[0]), "pickle ran"))


MARKER_PATH: list[str] = []


def test_pickled_weights_are_read_as_weights_only(tmp_path):
    """A pytorch_model.bin is a pickle; transformers reads it with torch.load(weights_only=True), which refuses
    anything but tensors."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bench.run import models as M
    from bench.core.config import ModelSpec

    MARKER_PATH[:] = [str(tmp_path / "pickle.marker")]
    folder = tmp_path / "model"
    config = LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "model_type"})
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Planted()}))
    with pytest.raises(Exception):
        M.load_model(ModelSpec(path=str(folder)), str(folder), dtype=torch.float32, load_in_4bit=False, seed=0)
    assert not Path(MARKER_PATH[0]).exists()


def test_a_dataset_loading_script_is_not_run(tmp_path):
    """datasets 4+ runs no loading script, asked or not (dataset.hub may name a local folder)."""
    from bench.core.config import DatasetSpec
    from bench.datasets.examples import DataError, load_examples

    marker = tmp_path / "script.marker"
    folder = tmp_path / "planted"
    folder.mkdir()
    (folder / "planted.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    with pytest.raises(DataError):
        load_examples(DatasetSpec(hub=str(folder), eval_size=1))
    assert not marker.exists()


def test_a_chat_template_renders_in_the_sandbox(tmp_path):
    """Tokenizer chat templates (a model folder's, a GGUF's) render in jinja2's ImmutableSandboxedEnvironment."""
    from jinja2.exceptions import SecurityError

    from bench.run.models import byte_tokenizer

    marker = tmp_path / "template.marker"
    tok = byte_tokenizer()
    tok.chat_template = "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
    with pytest.raises(SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert not marker.exists()


def test_an_adapter_config_names_no_module_that_gets_imported(tmp_path, monkeypatch):
    """PEFT imports `auto_mapping.parent_library` (AutoPeftModel) and `megatron_core` (LoRA) only from its allow-list;
    an adapter_config's auto_mapping is bookkeeping the harness drops."""
    from bench.spec.suite import read_adapter_config

    marker = tmp_path / "module.marker"
    (tmp_path / "plantedmod.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "megatron_config": {"x": 1},
        "megatron_core": "plantedmod", "auto_mapping": {"base_model_class": "X", "parent_library": "plantedmod"}}))
    suite = write_suite(tmp_path, "  max_examples: 2\n")
    suite.write_text(suite.read_text().replace("runs: [{method: lora}]", "runs: [{adapter_config: adapter_config.json}]"))
    (problem,) = problems(suite)
    assert "megatron_core='plantedmod' does not start with a valid prefix" in problem
    assert read_adapter_config(tmp_path / "adapter_config.json")["auto_mapping"]["parent_library"] == "plantedmod"
    assert not marker.exists()


def test_import_peft_reads_experiment_folders_as_data(tmp_path, monkeypatch, capsys):
    """An experiment folder's adapter_config and training_params are JSON; the module and optimiser names in them
    are looked up among PEFT's and torch.optim's, never imported."""
    marker = tmp_path / "import.marker"
    (tmp_path / "plantedmod.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                                            "class Evil:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "experiments" / "lora" / "planted"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "target_modules": ["q_proj"],
        "auto_mapping": {"base_model_class": "Evil", "parent_library": "plantedmod"}}))
    (folder / "training_params.json").write_text(json.dumps({"optimizer_type": "plantedmod.Evil",
                                                             "optimizer_kwargs": {"lr": 1e-3}}))
    suite = tmp_path / "imported.yaml"
    assert main(["import-peft", str(folder), "--out", str(suite), "--model", "tiny-llama", "--data",
                 str(ROOT / "data" / "smoke.jsonl"), "--max-steps", "1"]) == 0
    assert main(["validate", str(suite), "--trust-remote-code"]) == 2
    assert "unknown optimiser 'plantedmod.Evil'; a torch.optim class" in " ".join(capsys.readouterr().err.split())
    assert not marker.exists()


# ---- patterns and destinations ------------------------------------------------------------------------------------


def test_a_catastrophic_extract_pattern_is_refused_at_validate_and_bounded_when_scored(tmp_path):
    from bench.core.scoring import PatternTimeout, extract

    for pattern in ("(a+)+$", "(a|aa)+$"):
        suite = write_suite(tmp_path, f'  extract: "{pattern}"\n')
        (problem,) = problems(suite)
        assert problem.startswith("line 7, eval.extract: it backtracks catastrophically: on 'aaaaaaaa'... (513 "
                                  "characters) it did not finish within 0.1 s")
    # Scoring bounds what validate's probes miss: with stdlib re this search would not end in a lifetime.
    started = time.perf_counter()
    with pytest.raises(PatternTimeout, match=r"eval\.extract: the regex '\(a\+\)\+\$' did not finish within 2\.0 s "
                       "on a text of 5001 characters"):
        extract("a" * 5000 + "!", "(a+)+$")
    assert time.perf_counter() - started < 20.0  # the regex package checks its timeout every so many steps
    assert extract("The answer is #### 18", "#### (.+)") == "18"


def test_trackers_say_where_they_send_the_runs(tmp_path):
    pytest.importorskip("mlflow")
    from bench.core.config import Tracking
    from bench.launch.tracking import Session

    tracking = Tracking.model_validate({"mlflow": {"tracking_uri": "http://mlflow.example:5000", "experiment": "e"},
                                        "tensorboard": {}})
    session = Session(tracking, tmp_path, "s")
    assert session.destinations == [f"TensorBoard event files in {tmp_path}/tensorboard/",
                                    "MLflow at http://mlflow.example:5000 (experiment e)"]
