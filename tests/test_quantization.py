"""Quantised bases, bitsandbytes optimisers and pure bf16 on the CPU: each backend trains, its settings reach the
record, its memory is measured, its merge is checked, and what PEFT or the backend refuses is a validate error on its
line; stored records keep their config hashes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench.core.config import Quantization, RunConfig, config_hash
from bench.spec.suite import load_suite
from bench.core.yamlio import SuiteError
from tests.conftest import ROOT

pytest.importorskip("bitsandbytes")

TINY = ROOT / "suites" / "quantization-tiny.yaml"


# What main (a79844d, before these settings existed) computes for each fixture record's stored config; older than
# some other settings, these records' own stored hashes differ from it on main too.
FIXTURE_HASHES = {"baseline": "38f95f6073a4b77d", "full": "c664b043e936ee43", "lora-typo": "647fc8cb44299c59",
                  "lora": "102c572fb350c1b1", "prompt_tuning": "4aa168985c68b3a7", "qlora": "3d5d903d9e70ea43"}


def test_stored_records_keep_their_config_hashes():
    smoke = json.loads((ROOT / "baselines" / "smoke.json").read_text())["records"]
    assert len(smoke) == 13
    for r in smoke:
        assert config_hash(RunConfig.model_validate(r["config"])) == r["config_hash"], r["run"]
    for path in sorted((ROOT / "tests" / "fixtures" / "records").glob("*.json")):
        r = json.loads(path.read_text())
        config = RunConfig.model_validate(r["config"])
        assert config_hash(config) == FIXTURE_HASHES[r["run"]], r["run"]
        assert not {"quantization", "master_weights"} & set(config.model_dump(mode="json")["training"])


def test_a_quantization_is_written_out_with_the_backends_defaults_and_hashed():
    assert Quantization(bits=4).model_dump() == {
        "backend": "bitsandbytes", "bits": 4, "quant_type": "nf4", "double_quant": False, "compute_dtype": "auto",
        "quant_storage": "uint8", "skip_modules": []}
    assert Quantization(bits=8).model_dump() == {"backend": "bitsandbytes", "bits": 8, "skip_modules": []}
    assert Quantization(backend="hqq", bits=3).model_dump() == {
        "backend": "hqq", "bits": 3, "compute_dtype": "auto", "group_size": 64, "skip_modules": []}
    with pytest.raises(ValueError, match="bitsandbytes 8-bit takes skip_modules - not quant_type"):
        Quantization(bits=8, quant_type="nf4")
    with pytest.raises(ValueError, match="torchao quantises to 4 or 8 bits, not 2"):
        Quantization(backend="torchao", bits=2)


def write(tmp_path: Path, runs: str, training: str = "") -> Path:
    text = TINY.read_text().replace("../data/", f"{ROOT}/data/")
    text = text[:text.index("runs:")] + "runs:\n" + runs
    if training:
        text = text.replace("  warmup_ratio: 0.1\n", f"  warmup_ratio: 0.1\n{training}", 1)
    path = tmp_path / "q.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    return e.value.problems


@pytest.mark.train
def test_the_shipped_suites_resolve_every_setting_and_hash_what_differs():
    runs = {r.run: r for r in load_suite(TINY).resolved_runs()}
    assert runs["lora-fp4"].training.quantization.quant_type == "fp4"
    assert runs["lora-hqq-4bit"].training.quantization.group_size == 64
    assert runs["lora-pure-bf16"].training.master_weights is False
    assert "quantization" not in runs["lora-fp32"].model_dump(mode="json")["training"]
    assert len({r.config_hash for r in runs.values()}) == len(runs)
    assert len(load_suite(ROOT / "suites" / "quantization.yaml").resolved_runs()) == 11  # and the baseline


def test_a_run_overrides_the_suites_quantization_whole_and_a_sweep_names_its_points(tmp_path):
    path = write(tmp_path, "  - method: lora\n    training: {quantization: {bits: 8}}\n"
                           "  - name: swept\n    method: lora\n    sweep: {quantization: [{bits: 8}, {bits: 4, quant_type: fp4}]}\n",
                 "  quantization: {bits: 4, quant_type: fp4, double_quant: true}\n")
    runs = {r.run: r for r in load_suite(path).resolved_runs()}
    assert runs["lora"].training.quantization == Quantization(bits=8)  # none of the suite's 4-bit settings
    assert runs["swept@quantization=8"].training.quantization.bits == 8
    assert runs["swept@quantization=4-fp4"].training.quantization.quant_type == "fp4"


def test_what_peft_or_the_backend_refuses_is_a_validate_error_on_its_line(tmp_path):
    path = write(tmp_path, "  - method: lora\n    training:\n      quantization: {backend: hqq, bits: 4}\n"
                           "  - method: qlora\n    training:\n      quantization: {bits: 8}\n"
                           "  - name: fp32\n    method: lora\n    training:\n      master_weights: false\n"
                           "  - method: dora\n    training:\n      quantization: {bits: 8}\n")
    found = problems(path)
    # HQQ's layers are not nn.Linear: PEFT's all-linear (LoRA's preset) finds nothing to adapt.
    assert found[0].startswith("line 41, runs[0].training.quantization: lora over hqq 4-bit: NoMatchingPeftModuleError: "
                               "No `target_modules` passed")
    assert found[1] == ("line 44, runs[1].training.quantization: qlora is LoRA over bitsandbytes NF4 with double "
                        "quantisation, its base fixed; to choose the base's quantisation use lora (or any method) with "
                        "training.quantization")
    assert found[2] == ("line 48, runs[2].training.master_weights: false (pure bf16) keeps the weights that train in "
                        "bf16, so it needs training.precision: bf16, not auto")
    assert found[3].startswith("line 51, runs[3].training.quantization: dora over bitsandbytes 8-bit: AttributeError: "
                               "'NoneType' object has no attribute") and found[3].endswith("(forward and backward pass 2)")
    assert len(found) == 4


def test_a_bad_setting_and_an_optimiser_that_does_not_step_are_errors_on_their_lines(tmp_path):
    path = write(tmp_path, "  - method: lora\n    training:\n      quantization: {bits: 8, quant_type: nf4}\n"
                           "  - name: o\n    method: lora\n    training:\n      optimizer: {name: AdEMAMix32bit}\n"
                           "  - name: p\n    method: lora\n    training:\n      optimizer: {name: PagedAdamW8bt}\n")
    found = problems(path)
    assert found[0] == ("line 41, runs[0].training.quantization: bitsandbytes 8-bit takes skip_modules - not "
                        "quant_type")
    assert found[1].startswith("line 45, runs[1].training.optimizer.name: bitsandbytes' AdEMAMix32bit does not step on "
                               "this machine's cpu: RuntimeError")
    assert found[2].startswith("line 49, runs[2].training.optimizer.name: unknown optimiser 'PagedAdamW8bt' (did you "
                               "mean 'PagedAdamW8bit'?)")


def test_optimiser_state_bytes_per_trainable_parameter_are_measured():
    from bench.run.optim import state_bytes_per_param

    assert state_bytes_per_param("AdamW") == 8.0
    assert state_bytes_per_param("AdamW", "{}", "bfloat16") == 4.0  # torch keeps states in the weight's dtype
    assert state_bytes_per_param("SGD", '{"momentum": 0.9}') == 4.0
    # Two uint8 states and one fp32 scale per 256-element block of each.
    assert state_bytes_per_param("AdamW8bit") == state_bytes_per_param("PagedAdamW8bit") == 2 + 2 * 4 / 256
    assert state_bytes_per_param("PagedAdamW") == 8.0
    assert state_bytes_per_param("Lion8bit") == 1 + 4 / 256
    assert state_bytes_per_param("lora+", '{"loraplus_lr_ratio": 16}') == 8.0


def test_a_quantised_base_holds_fewer_bytes_than_the_float_one():
    from bench.core.config import ModelSpec
    from bench.run.models import load_model

    spec = ModelSpec(preset="tiny-llama")
    sizes = {}
    for name, q in (("fp32", None), ("8bit", Quantization(bits=8)), ("nf4", Quantization(bits=4)),
                    ("nf4-dq", Quantization(bits=4, double_quant=True)),
                    ("torchao-int8", Quantization(backend="torchao", bits=8))):
        model = load_model(spec, None, dtype=torch.float32, load_in_4bit=False, seed=0, quantization=q)
        linear = [m for n, m in model.named_modules() if n.endswith("_proj")]
        sizes[name] = sum(t.numel() * t.element_size() for m in linear for t in [*m.parameters(), *m.buffers()]
                          if type(t) is torch.Tensor or t.__class__.__name__ in ("Params4bit", "Int8Params", "Parameter"))
    assert sizes["8bit"] < sizes["fp32"] / 3.5
    assert sizes["nf4"] < sizes["8bit"] / 1.8
    assert sizes["nf4-dq"] <= sizes["nf4"]


RUNS = ["lora-8bit", "lora-nf4", "lora-fp4", "lora-torchao-int8", "lora-hqq-4bit", "lora-paged-adamw8bit",
        "lora-pure-bf16", "ia3-8bit", "dora-nf4", "loha-8bit"]


@pytest.fixture(scope="module")
def tiny_runs():
    return {r.run: r for r in load_suite(TINY).resolved_runs()}


@pytest.mark.train
@pytest.mark.parametrize("name", RUNS)
def test_each_backend_optimiser_and_precision_trains_records_its_settings_and_checks_its_merge(name, tiny_runs,
                                                                                             tmp_path):
    from bench.core.records import RunRecord
    from bench.run.worker import run

    cfg = tiny_runs[name]
    record = run(cfg, tmp_path, RunRecord.start(cfg))
    assert record.status == "success", record.error
    losses = [p["loss"] for p in record.curve]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert record.metrics["peak_memory_bytes"] > 0 and record.metrics["load_memory_bytes"] > 0
    env, q = record.environment, cfg.training.quantization
    if q is not None:
        assert {k: env["quantization"][k] for k in q.model_dump()} == q.model_dump()
        assert env["quantization"]["package"].startswith(q.backend + "==")
        assert env["quantization"].get("computes_in", "float32") == "float32"
        frozen = {"bitsandbytes": {8: "int8", 4: q.quant_type}, "torchao": {8: "int8tensor"},
                  "hqq": {4: "uint8"}}[q.backend][q.bits]
        assert frozen in env["weights"]["frozen"].split("+")
    if name == "lora-paged-adamw8bit":
        assert env["optimizer"] == "bitsandbytes.optim.PagedAdamW8bit"
    if name == "lora-pure-bf16":
        assert env["master_weights"] == "none (pure bf16)" and env["weights"]["trainable"] == "bfloat16"
    merge = record.merge
    if q is None:
        assert merge.status == "merged" and merge.kind == "exact"
        return
    assert merge.status == "merged", merge.note
    assert merge.kind == "lossy" and math.isfinite(merge.max_abs_logit_diff) and merge.compared == 8
    if q.backend == "bitsandbytes":  # into a de-quantised copy: the layer check runs, and the merge itself is exact
        assert "de-quantised copy" in merge.how and merge.layers_checked > 0 and merge.exact
        assert merge.quantized_base_max_abs_logit_diff is not None
    else:  # into the quantised layers: re-quantising is lossy, measured end to end
        assert "base itself" in merge.how and merge.exact is None


def test_bytes_per_weight_of_each_quantised_base_are_measured():
    from bench.run.quantsize import base_bytes_per_param

    assert base_bytes_per_param(None) == 4.0 and base_bytes_per_param(None, "bfloat16") == 2.0
    assert base_bytes_per_param(Quantization(bits=8)) == 1 + 4 / 1024  # int8 and a float32 scale per row
    nf4 = base_bytes_per_param(Quantization(bits=4))
    assert nf4 == base_bytes_per_param(Quantization(bits=4, quant_type="fp4")) == 0.5 + 4 / 64
    # Double quantisation: the per-64 scales in 8 bits, with a float32 scale per 256 of them.
    assert base_bytes_per_param(Quantization(bits=4, double_quant=True)) == 0.5 + 1 / 64 + 4 / (64 * 256)
    assert base_bytes_per_param(Quantization(backend="torchao", bits=8)) == pytest.approx(1 + 4 / 1024, abs=2 / 1024)
    hqq = base_bytes_per_param(Quantization(backend="hqq", bits=4, group_size=64))
    assert hqq == 0.5 + 2 * 4 / 64  # a scale and a zero per 64, in the fp32 compute dtype


def test_lora_over_torchao_int4_is_refused_with_pefts_own_reason_and_gptq_awq_folders_say_what_to_install(tmp_path):
    """PEFT 0.21's TorchaoLoraLinear raises on int4 weights (asked of PEFT on a real Int4Tensor: quantising to int4
    needs torchao's mslk kernels on a CPU); a GPTQ or AWQ checkpoint loads through gptqmodel, not installed here."""
    pytest.importorskip("torchao")
    import importlib.util

    path = write(tmp_path, "  - method: lora\n    training:\n      quantization: {backend: torchao, bits: 4}\n"
                           "  - method: dora\n    training:\n      quantization: {backend: torchao, bits: 4}\n")
    found = problems(path)
    assert found == [f"line {n}, runs[{i}].training.quantization: {m} over torchao int4 weight-only: PEFT refuses it: "
                     "TypeError: TorchaoLoraLinear only supports int8 weights for now." for i, (n, m) in
                     enumerate(((41, "lora"), (44, "dora")))]
    if importlib.util.find_spec("gptqmodel") is not None:
        pytest.skip("gptqmodel is installed: a GPTQ folder would load")
    for method in ("gptq", "awq"):
        model = tmp_path / method
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
            "quant_method": method, "bits": 4}}))
        text = path.read_text().replace("  preset: tiny-llama\n", f"  path: {model}\n")
        assert text != path.read_text()
        (tmp_path / f"{method}.yaml").write_text(text.split("runs:")[0] + "runs:\n  - method: lora\n")
        found = [p for p in problems(tmp_path / f"{method}.yaml") if "model.path" in p]  # (and: no tokenizer)
        assert len(found) == 1 and found[0].startswith(f"line 12, model.path: a {method.upper()} checkpoint "
                                                       f"(quantization_config.quant_method: {method} in "), found
        assert "through gptqmodel" in found[0] and "pip install gptqmodel" in found[0], found


def test_a_large_architecture_is_tried_on_one_layer_and_the_refusal_still_found(tmp_path, monkeypatch):
    """Validate tries each combination by building the base for real: an 8B preset is tried on one decoder layer of
    its width with a small vocabulary (in fp32 whole it would take 32 GB), without params that pick layers by index;
    a small one whole. The one-layer trial still finds what PEFT or the backend refuses (DoRA over 8-bit)."""
    from bench.run.presets import PRESETS
    from bench.spec import quantcheck

    arch, params = quantcheck.trial_architecture(dict(PRESETS["llama-3-8b"], bos_token_id=128000),
                                                 {"r": 8, "layers_to_transform": [20]})
    assert (arch["num_hidden_layers"], arch["hidden_size"], arch["intermediate_size"], arch["vocab_size"]) == \
        (1, 4096, 14336, quantcheck.TRIAL_VOCAB)
    assert "bos_token_id" not in arch and params == {"r": 8}
    tiny = PRESETS["tiny-llama"]
    assert quantcheck.trial_architecture(tiny, {"layers_to_transform": [1]}) == (tiny, {"layers_to_transform": [1]})
    quantcheck._trial.cache_clear()
    monkeypatch.setattr(quantcheck, "TRIAL_PARAMS", 0)  # the tiny preset tried as a large one is
    path = write(tmp_path, "  - method: dora\n    training:\n      quantization: {bits: 8}\n"
                           "  - method: lora\n    params: {target_modules: [q_proj, v_proj], layers_to_transform: [1]}\n"
                           "    training:\n      quantization: {bits: 8}\n")
    found = problems(path)
    quantcheck._trial.cache_clear()
    assert len(found) == 1 and found[0].startswith("line 41, runs[0].training.quantization: dora over bitsandbytes "
                                                   "8-bit: AttributeError:"), found
