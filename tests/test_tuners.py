"""Every PEFT tuner as a method: one optimiser step changes every trainable parameter and no frozen one, counts equal
PEFT's and `bench plan`'s; params validated against PEFT's dataclass; refusals; loop hooks; optimisers; PEFT's
adapter_config.json and experiment folders."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from bench.datasets import batches as D
from bench.cli import main
from bench.core.config import Budget, Optimizer
from bench.run.load import build, count_params
from bench.run.models import PRESETS, byte_tokenizer
from bench.core.records import DataNotes
from bench.spec.suite import load_suite
from bench.run.train import train
from bench.run.tuners import apply
from bench.core.yamlio import SuiteError
from methods import METHODS, SHIPPED, RunFacts
from tests.conftest import CPU32, ROOT, tiny_config, training

SUITE = load_suite(ROOT / "suites" / "peft-all.yaml")
RUNS = {c.run: c for c in SUITE.resolved_runs() if c.method != "baseline"}
PLAN = RunFacts(total_steps=4, special_token_ids=tuple(sorted(byte_tokenizer().all_special_ids)))


def _batches(cfg, examples, packed):
    tokenizer = byte_tokenizer()
    feats = D.tokenize(examples, tokenizer, cfg.training.max_seq_len, cfg.dataset, DataNotes(source="t"), "t")
    return list(itertools.islice(D.batches(feats, 4, 0, tokenizer.pad_token_id, packed, epochs=10), 2))


def _peft_all(run: str, **changes):
    """The peft-all suite's run, with the smoke data's resolved paths (tiny_config's suite)."""
    cfg = RUNS[run]
    return cfg.model_copy(update={"dataset": tiny_config("lora").dataset, "training": training(cfg, **changes)})


def _steps(cfg, method, smoke_examples, n=3, lr=1e-2):
    model = build(cfg, None, CPU32, method, PLAN, byte_tokenizer())
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    batches = _batches(cfg, smoke_examples[0], method.packable)
    # Three steps over two batches: zero-initialised paths (LoRA's B, Shadow's update gate) pass gradient on later.
    return model, before, batches, lambda: train(model, iter(batches * 2), training(cfg, learning_rate=lr),
                                                 Budget(max_steps=n), n, CPU32, method=method)


def test_every_peft_type_is_a_method_named_by_it():
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    types = {str(getattr(t, "value", t)).lower() for t in PEFT_TYPE_TO_CONFIG_MAPPING}
    assert types <= set(METHODS) and len(types) >= 44
    assert set(METHODS) - types == {"full", "qlora", "head_only", "dora"}


def test_the_peft_all_suite_has_a_run_per_applicable_tuner_beside_the_smoke_suite():
    smoke = {METHODS[c.method].peft_type for c in load_suite(ROOT / "suites" / "smoke.yaml").resolved_runs()
             if c.method != "baseline"}
    here = {METHODS[c.method].peft_type for c in RUNS.values()}
    applicable = {m.peft_type for m in METHODS.values() if m.peft_type and m.refusal is None}
    assert applicable == (smoke | here) - {None}


@pytest.mark.train
@pytest.mark.parametrize("run", list(RUNS))
def test_one_step_changes_every_trainable_parameter_and_counts_equal_peft_and_plan(run, smoke_examples):
    cfg = _peft_all(run)
    method = METHODS[cfg.method]
    model, before, _, step = _steps(cfg, method, smoke_examples)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert count_params(model) == model.get_nb_trainable_parameters()
    applied = apply(PRESETS["tiny-llama"], method, cfg.params, PLAN)
    assert (applied.trainable, applied.total) == count_params(model), "bench plan must count what is built"
    step()
    last = PRESETS["tiny-llama"]["num_hidden_layers"] - 1
    for name, p in model.named_parameters():
        if run == "shadow" and f"layers.{last}.shadow_update_" in name:
            continue  # PEFT's Shadow: the last layer's update feeds no next layer, so it never gets a gradient
        changed = (p.detach() != before[name]).any()
        assert changed == (name in trainable), f"{run}: {name} trainable={name in trainable} changed={changed}"


SMOKE_RUNS = [c.run for c in load_suite(ROOT / "suites" / "smoke.yaml").resolved_runs() if c.method != "baseline"]


@pytest.mark.parametrize("run", SMOKE_RUNS)
def test_plan_counts_what_each_smoke_run_builds(run):
    """With the peft-all runs above, every tuner on the tiny preset: `bench plan` (the meta device, no weights) counts
    what the run builds; for QLoRA, its 4-bit layers at their real parameter count."""
    cfg = tiny_config(run)
    method = METHODS[cfg.method]
    model = build(cfg, None, CPU32, method, PLAN)
    applied = apply(PRESETS["tiny-llama"], method, cfg.params, PLAN)
    assert (applied.trainable, applied.total) == count_params(model)


def test_adapter_bytes_of_the_plan_equal_what_save_pretrained_writes(tmp_path):
    for run in ("lokr", "adaption_prompt", "fourierft"):
        cfg = _peft_all(run)
        model = build(cfg, None, CPU32, METHODS[cfg.method], PLAN)
        model.save_pretrained(tmp_path / run)
        written = (tmp_path / run / "adapter_model.safetensors").stat().st_size
        planned = apply(PRESETS["tiny-llama"], METHODS[cfg.method], cfg.params, PLAN).adapter_bytes
        assert planned <= written < planned + 20_000, run  # safetensors' JSON header is the rest


def test_plan_counts_lora_r32_on_llama_3_2_3b_as_peft_publishes():
    lora = METHODS["lora"]
    applied = apply(PRESETS["llama-3.2-3b"], lora, {"r": 32, "lora_alpha": 64, "target_modules": ["q_proj", "v_proj"]},
                    RunFacts(total_steps=10))
    assert applied.trainable == 9_175_040  # PEFT's method_comparison figure for lora/llama-3.2-3B-rank32
    assert applied.weights == "meta"


def test_refused_tuners_say_why_at_validate_time(tmp_path):
    text = (ROOT / "suites" / "peft-all.yaml").read_text().replace("../data/", f"{ROOT}/data/")
    text = text.split("runs:")[0] + "runs:\n  - method: poly\n  - method: xlora\n  - method: c3a\n"
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(SuiteError) as e:
        load_suite(tmp_path / "s.yaml")
    problems = "\n".join(e.value.problems)
    assert "runs[0].method: poly cannot run here: it routes every example" in problems
    assert "runs[1].method: xlora cannot run here: it mixes LoRA adapters trained beforehand" in problems
    # The tiny model's 64-wide layers cannot hold c3a's default 256-wide blocks: PEFT says so on the meta device.
    assert "runs[2]: PEFT cannot apply c3a to this model: ValueError: The block size should be a factor" in problems


def test_unknown_field_gets_did_you_mean_and_its_line_and_types_are_checked(tmp_path):
    text = (ROOT / "suites" / "peft-all.yaml").read_text().replace("../data/", f"{ROOT}/data/")
    text = text.split("runs:")[0] + ("runs:\n  - method: lokr\n    params: {rank_dropuot: 0.1}\n"
                                     "  - method: lora\n    params: {use_rslora: 'yes'}\n"
                                     "  - method: dora\n    params: {use_dora: false}\n"
                                     "  - method: lora\n    name: l2\n    params: {r: 0}\n")
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(SuiteError) as e:
        load_suite(tmp_path / "s.yaml")
    p = e.value.problems
    first = text.split("runs:")[0].count("\n") + 3  # the line of runs[0].params
    assert any(x.startswith(f"line {first}, runs[0].params.rank_dropuot: lokr takes the fields of PEFT's LoKrConfig - "
                            "not 'rank_dropuot' (did you mean 'rank_dropout'?)") for x in p), p
    assert any(x.startswith(f"line {first + 2}, runs[1].params.use_rslora: expected bool, got 'yes'") for x in p), p
    assert any("runs[2].params.use_dora: dora sets use_dora=True itself" in x for x in p), p
    assert any("runs[3]: PEFT cannot apply lora to this model: ValueError: `r` should be a positive integer" in x
               for x in p), p


def test_shipped_methods_take_every_field_of_their_peft_config_and_keep_their_hashes():
    from dataclasses import fields

    from peft import LoraConfig

    assert set(SHIPPED["lora"].parameters()) >= {"use_rslora", "init_lora_weights", "layers_to_transform",
                                                 "rank_pattern", "modules_to_save", "bias"}
    assert len(SHIPPED["lora"].parameters()) >= len(fields(LoraConfig)) - 8
    smoke = {c.run: c for c in load_suite(ROOT / "suites" / "smoke.yaml").resolved_runs()}
    # The resolved params of the smoke suite are what they were before PEFT's dataclass became the schema.
    assert smoke["lora"].params == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear",
                                    "use_dora": False}
    assert smoke["dora"].params == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}


def test_rslora_scales_by_the_square_root_of_r_and_pissa_starts_from_the_weights():
    lora = METHODS["lora"]
    base = tiny_config("lora")
    rs = build(base.model_copy(update={"params": base.params | {"use_rslora": True, "r": 4}}), None, CPU32, lora)
    layer = rs.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(16 / 4 ** 0.5)
    pissa = build(base.model_copy(update={"params": base.params | {"init_lora_weights": "pissa", "r": 4}}), None,
                  CPU32, lora)
    plain = build(base, None, CPU32, None)
    q, w = pissa.base_model.model.model.layers[0].self_attn.q_proj, plain.model.layers[0].self_attn.q_proj.weight
    # PiSSA moves the top singular directions into A and B: the residual base weight is no longer the original,
    # and base + B A reproduces it.
    assert not torch.allclose(q.base_layer.weight, w)
    rebuilt = q.base_layer.weight + q.scaling["default"] * q.lora_B["default"].weight @ q.lora_A["default"].weight
    assert torch.allclose(rebuilt, w, atol=1e-5)


@pytest.mark.train
def test_adalora_ranks_change_during_training(smoke_examples):
    cfg = _peft_all("adalora")
    method = METHODS["adalora"]
    cfg = cfg.model_copy(update={"params": cfg.params | {"tinit": 1, "tfinal": 1, "deltaT": 1}})
    model = build(cfg, None, CPU32, method, RunFacts(total_steps=6))
    assert model.peft_config["default"].total_step == 6  # from the run's plan, not set in the suite
    batches = _batches(cfg, smoke_examples[0], True) * 3
    train(model, iter(batches), training(cfg, learning_rate=1e-2), Budget(max_steps=6), 6, CPU32, method=method)
    ranks = model.peft_config["default"].rank_pattern
    assert ranks, "update_and_allocate must have masked ranks"
    kept = [sum(v) for v in ranks.values()]
    assert min(kept) < 8 and sum(kept) <= 4 * len(kept)


@pytest.mark.train
def test_adalora_orthogonal_regulariser_is_in_the_loss(smoke_examples):
    losses = []
    for weight in (0.0, 10.0):
        cfg = _peft_all("adalora")
        cfg = cfg.model_copy(update={"params": cfg.params | {"orth_reg_weight": weight}})
        model = build(cfg, None, CPU32, METHODS["adalora"], PLAN)
        result = train(model, iter(_batches(cfg, smoke_examples[0], True)), cfg.training, Budget(max_steps=1), 1,
                       CPU32, method=METHODS["adalora"])
        losses.append(result.curve[0]["loss"])
    assert losses[1] > losses[0]


@pytest.mark.parametrize("name,kwargs", [("lora+", {"loraplus_lr_ratio": 16.0}), ("lora-fa", {}),
                                         ("riemannian", {"reg": 1e-2}), ("Adam", {"betas": [0.9, 0.99]})])
@pytest.mark.train
def test_optimizers_train_and_lora_fa_freezes_a(name, kwargs, smoke_examples):
    cfg = tiny_config("lora")
    cfg = cfg.model_copy(update={"training": training(cfg, optimizer=Optimizer(name=name, kwargs=kwargs))})
    model = build(cfg, None, CPU32, METHODS["lora"])
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    train(model, iter(_batches(cfg, smoke_examples[0], True)), training(cfg, learning_rate=1e-2), Budget(max_steps=2),
          2, CPU32)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trainable)
    assert any("lora_A" in n for n in trainable) == (name != "lora-fa")
    for n, p in model.named_parameters():
        assert (p.detach() != before[n]).any() == (n in trainable), (name, n)
    planned = apply(PRESETS["tiny-llama"], METHODS["lora"], cfg.params, RunFacts(total_steps=2), name, kwargs)
    assert planned.trainable == count_params(model)[0]


@pytest.mark.train
def test_lora_plus_moves_b_faster_than_a(smoke_examples):
    """LoRA+ gives B a learning rate loraplus_lr_ratio times A's: after the same steps B has moved further."""
    moved = {}
    for ratio in (1.0, 16.0):
        cfg = tiny_config("lora")
        cfg = cfg.model_copy(update={"training": training(cfg, optimizer=Optimizer(
            name="lora+", kwargs={"loraplus_lr_ratio": ratio}))})
        model = build(cfg, None, CPU32, METHODS["lora"])
        train(model, iter(_batches(cfg, smoke_examples[0], True)), training(cfg, learning_rate=1e-3),
              Budget(max_steps=2), 2, CPU32)
        moved[ratio] = sum(float(p.abs().sum()) for n, p in model.named_parameters() if "lora_B" in n)
    assert moved[16.0] > 4 * moved[1.0]


def test_unknown_optimizer_and_kwargs_are_refused_with_their_place(tmp_path):
    text = (ROOT / "suites" / "smoke.yaml").read_text().replace("../data/", f"{ROOT}/data/")
    text = text.replace("  seed: 0\n", "  seed: 0\n  optimizer: {name: AdamWW}\n", 1)
    text = text.replace("  - method: dora\n", "  - method: dora\n    training: {optimizer: {name: lora-fa, "
                        "kwargs: {lr: 0.1}}}\n")
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(SuiteError) as e:
        load_suite(tmp_path / "s.yaml")
    p = "\n".join(e.value.problems)
    assert "training.optimizer.name: unknown optimiser 'AdamWW' (did you mean 'AdamW'?)" in p
    assert "runs[8].training.optimizer.kwargs.lr: set training.learning_rate instead" in p


def _peft_layout(root: Path) -> list[Path]:
    """Two experiments as PEFT's method_comparison stores them (config by save_pretrained's writer)."""
    from peft import LoKrConfig, LoraConfig

    exp = root / "MetaMathQA" / "experiments"
    (root / "MetaMathQA" / "default_training_params.json").parent.mkdir(parents=True)
    (root / "MetaMathQA" / "default_training_params.json").write_text(json.dumps(
        {"optimizer_type": "AdamW", "optimizer_kwargs": {"lr": 1e-4, "weight_decay": 0.1}, "lr_scheduler": "cosine"}))
    a, b = exp / "lora" / "tiny-rank4-lorafa", exp / "lokr" / "tiny-rank4"
    LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]).save_pretrained(a)
    (a / "training_params.json").write_text(json.dumps(
        {"optimizer_type": "lora-fa", "optimizer_kwargs": {"r": 4, "lora_alpha": 8, "lr": 1e-3}}))
    LoKrConfig(r=4, target_modules=["q_proj", "v_proj"]).save_pretrained(b)
    return [a, b]


def test_import_peft_turns_experiment_folders_into_a_suite_that_validates(tmp_path, capsys):
    folders = _peft_layout(tmp_path)
    out = tmp_path / "suite.yaml"
    assert main(["import-peft", *map(str, folders), "--out", str(out), "--data", str(ROOT / "data/smoke.jsonl")]) == 0
    suite = load_suite(out)
    runs = {c.run: c for c in suite.resolved_runs()}
    lora, lokr = runs["lora--tiny-rank4-lorafa"], runs["lokr--tiny-rank4"]
    assert lora.method == "lora" and lora.params["r"] == 4 and lora.params["target_modules"] == ["q_proj", "v_proj"]
    assert lora.training.optimizer.name == "lora-fa" and lora.training.learning_rate == 1e-3
    assert lora.training.weight_decay == 0.1 and lora.training.scheduler == "cosine"  # PEFT's defaults
    assert lokr.method == "lokr" and lokr.params["r"] == 4 and lokr.training.learning_rate == 1e-4
    assert lokr.model.preset == "llama-3.2-3b-mini"  # the shape PEFT's experiment configs apply to
    model = build(lokr, None, CPU32, METHODS["lokr"])
    assert count_params(model)[0] == apply(PRESETS["llama-3.2-3b-mini"], METHODS["lokr"], lokr.params,
                                           PLAN).trainable


def test_adapter_config_runs_take_the_method_from_peft_type_and_params_override(tmp_path):
    folders = _peft_layout(tmp_path)
    text = (ROOT / "suites" / "peft-all.yaml").read_text().replace("../data/", f"{ROOT}/data/")
    text = text.split("runs:")[0] + (f"runs:\n  - adapter_config: {folders[1]}/adapter_config.json\n"
                                     "    params: {r: 2}\n")
    (tmp_path / "s.yaml").write_text(text)
    cfg = next(c for c in load_suite(tmp_path / "s.yaml").resolved_runs() if c.method != "baseline")
    assert (cfg.run, cfg.method, cfg.params["r"], cfg.params["target_modules"]) == \
        ("lokr", "lokr", 2, ["q_proj", "v_proj"])
    (tmp_path / "bad.json").write_text(json.dumps({"peft_type": "LOKR", "r": 2, "rnak": 3}))
    (tmp_path / "s.yaml").write_text(text.split("runs:")[0] + f"runs:\n  - adapter_config: {tmp_path}/bad.json\n")
    with pytest.raises(SuiteError) as e:
        load_suite(tmp_path / "s.yaml")
    import peft

    assert f"runs[0].adapter_config: field 'rnak' (set to 3) is not a LoKrConfig field in PEFT {peft.__version__}" \
        in e.value.problems[0]


def test_adapter_config_from_another_peft_version_loses_only_fields_that_hold_nothing(tmp_path):
    """PEFT drops the fields its config class lacks from a file another PEFT version wrote; the harness drops them
    where they hold nothing, and refuses where dropping would change the run. PEFT's sub-configs (LoRA's use_bdlora)
    and fields whose PEFT default is outside their annotation (AdaptionPrompt's target_modules: str = None) are
    taken as the file stores them."""
    head = (ROOT / "suites" / "peft-all.yaml").read_text().replace("../data/", f"{ROOT}/data/").split("runs:")[0]
    files = {"empty.json": {"peft_type": "LORA", "r": 2, "alpha_pattern": {}, "newer_flag": False, "newer": None},
             "lost.json": {"peft_type": "LORA", "r": 2, "newer_rank": 4},
             "bd.json": {"peft_type": "LORA", "r": 2, "target_modules": ["q_proj", "o_proj"],
                         "use_bdlora": {"target_modules_bd_a": ["o_proj"], "target_modules_bd_b": ["q_proj"],
                                        "nblocks": 2}},
             "ap.json": {"peft_type": "ADAPTION_PROMPT", "adapter_len": 4, "adapter_layers": 1, "target_modules": None}}
    for name, doc in files.items():
        (tmp_path / name).write_text(json.dumps(doc))
    runs = "".join(f"  - name: {n[:-5]}\n    adapter_config: {tmp_path / n}\n" for n in files if n != "lost.json")
    (tmp_path / "s.yaml").write_text(head + "runs:\n" + runs)
    cfgs = {c.run: c for c in load_suite(tmp_path / "s.yaml").resolved_runs()}
    assert "newer" not in cfgs["empty"].params and cfgs["empty"].params["r"] == 2
    assert cfgs["bd"].params["use_bdlora"]["nblocks"] == 2
    model = build(cfgs["bd"], None, CPU32, METHODS["lora"])
    assert type(model.peft_config["default"].use_bdlora).__name__ == "BdLoraConfig"
    assert cfgs["ap"].method == "adaption_prompt"
    (tmp_path / "s.yaml").write_text(head + f"runs:\n  - adapter_config: {tmp_path / 'lost.json'}\n")
    with pytest.raises(SuiteError) as e:
        load_suite(tmp_path / "s.yaml")
    assert "field 'newer_rank' (set to 4) is not a LoraConfig field" in e.value.problems[0]


@pytest.mark.train
def test_plan_json_prints_one_object_per_run(capsys):
    assert main(["plan", str(ROOT / "suites" / "smoke.yaml"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["run"] for r in rows] == [c.run for c in load_suite(ROOT / "suites" / "smoke.yaml").resolved_runs()]
    by = {r["run"]: r for r in rows}
    assert by["lora"]["trainable_params"] == count_params(build(tiny_config("lora"), None, CPU32,
                                                                METHODS["lora"]))[0]
    assert all({"run", "method", "trainable_params", "total_params", "adapter_bytes"} <= set(r) for r in rows)


def test_list_shows_every_tuner_with_its_merge_kind(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for mid in ("lokr", "boft", "adalora", "fourierft", "poly"):
        assert mid in out
    assert main(["list", "--fields", "lora"]) == 0
    fields = capsys.readouterr().out
    assert "use_rslora: bool = PEFT's default" in fields and "r: int = 8" in fields


TEXT = "You are a careful assistant. Answer every question with a single word, and nothing more."


@pytest.mark.train
def test_a_prefix_from_text_is_the_base_models_cache_of_that_text():
    """init_kv_cache_prefix: the prefix reads as the first num_virtual_tokens tokens of the text (a system turn)
    would: the prefix-tuned model's logits on an input are the base model's on those tokens followed by the input.
    Without it the prefix is random, and the two differ."""
    from bench.run.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_config("prefix_tuning").model, None)
    ids = torch.tensor([list(range(40, 52))])
    for method in ("prefix_tuning", "cartridge"):
        cfg = tiny_config("prefix_tuning", {"num_virtual_tokens": 6, "init_kv_cache_prefix": TEXT})
        cfg = cfg.model_copy(update={"method": method, "params": {k: v for k, v in cfg.params.items()
                                                                  if k in METHODS[method].parameters()}})
        model = build(cfg, None, CPU32, METHODS[method], PLAN, tokenizer).eval()
        text_ids = tokenizer.apply_chat_template([{"role": "system", "content": TEXT}], tokenize=True,
                                                 return_dict=False, return_tensors="pt")[:, :6]
        with torch.no_grad():
            expected = model.get_base_model()(input_ids=torch.cat([text_ids, ids], dim=1)).logits[:, 6:]
            got = model(input_ids=ids).logits
            random = build(cfg.model_copy(update={"params": cfg.params | {"init_kv_cache_prefix": None}}), None,
                           CPU32, METHODS[method], PLAN, tokenizer).eval()(input_ids=ids).logits
        assert torch.allclose(got, expected, atol=1e-5), method
        assert not torch.allclose(random, expected, atol=1e-2), method


def test_a_prefix_from_text_is_refused_with_a_projection_and_from_too_short_a_text(tmp_path):
    text = (ROOT / "suites" / "peft-all.yaml").read_text().replace("../data/", f"{ROOT}/data/")
    text = text.split("runs:")[0] + ("runs:\n  - method: prefix_tuning\n    params: {prefix_projection: true, "
                                     "init_kv_cache_prefix: Hello there}\n")
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(SuiteError) as e:
        load_suite(tmp_path / "s.yaml")
    assert "runs[0].params: PEFT rejected them: init_kv_cache_prefix sets the prefix's keys and values themselves, " \
           "which prefix_projection=True computes with an MLP instead" in e.value.problems[0]
    from bench.run.models import load_tokenizer

    cfg = tiny_config("prefix_tuning", {"num_virtual_tokens": 200, "init_kv_cache_prefix": "Hi"})
    with pytest.raises(ValueError, match=r"params.init_kv_cache_prefix: Need at least 200 cached tokens, got \d+\. "
                                         r"\(num_virtual_tokens is 200; use a longer text or fewer\)"):
        build(cfg, None, CPU32, METHODS["prefix_tuning"], PLAN, load_tokenizer(cfg.model, None))


def test_import_peft_takes_a_prefix_from_text_and_notes_what_it_does_not_take(tmp_path, capsys):
    from peft import PrefixTuningConfig

    folders = _peft_layout(tmp_path)
    prefix = folders[0].parent.parent / "prefixtuning" / "tiny-init_prefix"
    PrefixTuningConfig(num_virtual_tokens=6).save_pretrained(prefix)
    (prefix / "training_params.json").write_text(json.dumps(
        {"init_kv_cache_prefix": TEXT, "optimizer_kwargs": {"lr": 5e-3}, "autocast_adapter_dtype": False}))
    out = tmp_path / "suite.yaml"
    assert main(["import-peft", str(prefix), "--out", str(out), "--data", str(ROOT / "data/smoke.jsonl"),
                 "--model", "tiny-llama", "--max-steps", "2"]) == 0
    assert "prefixtuning--tiny-init_prefix: autocast_adapter_dtype=False is not taken over: the harness always " \
           "trains adapter weights in fp32" in capsys.readouterr().err
    cfg = next(c for c in load_suite(out).resolved_runs() if c.method != "baseline")
    assert (cfg.method, cfg.params["init_kv_cache_prefix"], cfg.training.learning_rate) == \
        ("prefix_tuning", TEXT, 5e-3)
    assert cfg.budget.max_steps == 2


def test_adapter_config_from_another_model_takes_this_models_dimensions_and_refuses_its_token_ids(tmp_path):
    """PEFT saves a prompt-learning config with the dimensions of the model it was applied to (PEFT's experiments:
    Llama-3.2-3B's token_dim 3072): a run takes them from its own model. Token ids of another tokenizer (PEFT's
    trainable_tokens experiment trains Llama-3's 128000 and 128001) are refused at validate time, not in training."""
    head = (ROOT / "suites" / "peft-all.yaml").read_text().replace("../data/", f"{ROOT}/data/").split("runs:")[0]
    (tmp_path / "pt.json").write_text(json.dumps(
        {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "token_dim": 3072, "num_layers": 28,
         "num_attention_heads": 24, "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM"}))
    (tmp_path / "tt.json").write_text(json.dumps({"peft_type": "TRAINABLE_TOKENS", "token_indices": [128000, 5]}))
    (tmp_path / "s.yaml").write_text(head + f"runs:\n  - adapter_config: {tmp_path / 'pt.json'}\n")
    cfg = next(c for c in load_suite(tmp_path / "s.yaml").resolved_runs() if c.method != "baseline")
    assert "token_dim" not in cfg.params and cfg.params["num_virtual_tokens"] == 4
    model = build(cfg, None, CPU32, METHODS["prompt_tuning"], PLAN)
    assert model.peft_config["default"].token_dim == PRESETS["tiny-llama"]["hidden_size"]
    assert model(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3 + 4, PRESETS["tiny-llama"]["vocab_size"])
    (tmp_path / "s.yaml").write_text(head + f"runs:\n  - adapter_config: {tmp_path / 'tt.json'}\n")
    with pytest.raises(SuiteError) as e:
        load_suite(tmp_path / "s.yaml")
    assert "PEFT cannot apply trainable_tokens to this model: ValueError: token_indices [128000] are beyond this " \
           "model's vocabulary of 320 tokens" in e.value.problems[0]


def test_import_peft_on_a_base_suites_settings(tmp_path, capsys):
    """--base: the experiments as runs of a suite that takes every other setting from the base (PEFT's data, model
    and budget in suites/metamath.yaml), written beside it."""
    folders = _peft_layout(tmp_path / "peft")
    base = tmp_path / "metamath.yaml"
    base.write_text((ROOT / "suites" / "metamath.yaml").read_text())
    assert main(["import-peft", *map(str, folders), "--base", str(base), "--out", str(tmp_path / "s.yaml")]) == 0
    suite = load_suite(tmp_path / "s.yaml")
    reference = load_suite(ROOT / "suites" / "metamath.yaml")
    runs = [c for c in suite.resolved_runs() if c.method != "baseline"]
    assert [c.run for c in runs] == ["lora--tiny-rank4-lorafa", "lokr--tiny-rank4"]
    assert (suite.model, suite.dataset, suite.budget) == (reference.model, reference.dataset, reference.budget)
    assert runs[0].training.optimizer.name == "lora-fa" and runs[1].training.learning_rate == 1e-4
    assert main(["import-peft", *map(str, folders), "--base", str(base), "--out", str(tmp_path / "x" / "s.yaml")]) \
        == 2
    assert "write the suite beside it" in capsys.readouterr().err


def test_a_config_that_trains_nothing_is_refused_and_params_replace_a_files_fields_whole(tmp_path):
    """PEFT applies OSF's rank_pattern for Llama-3.2-3B (keep 2944 of 3072 ranks) to 64-wide layers without a word,
    and nothing trains: validate refuses it. A run's params replace the file's fields whole, so `rank_pattern: {}`
    clears the file's patterns (and the run trains, and validate checked what runs)."""
    head = (ROOT / "suites" / "peft-all.yaml").read_text().replace("../data/", f"{ROOT}/data/").split("runs:")[0]
    (tmp_path / "osf.json").write_text(json.dumps({"peft_type": "OSF", "target_modules": ["q_proj", "v_proj"],
                                                   "rank_pattern": {"q_proj": 2944, "v_proj": 896}}))
    (tmp_path / "s.yaml").write_text(head + f"runs:\n  - adapter_config: {tmp_path / 'osf.json'}\n")
    with pytest.raises(SuiteError) as e:
        load_suite(tmp_path / "s.yaml")
    assert "runs[0]: PEFT cannot apply osf to this model: its params leave nothing to train on this model " \
           "(0 trainable parameters" in e.value.problems[0]
    (tmp_path / "s.yaml").write_text(head + f"runs:\n  - adapter_config: {tmp_path / 'osf.json'}\n"
                                            "    params: {rank_pattern: {}}\n")
    cfg = next(c for c in load_suite(tmp_path / "s.yaml").resolved_runs() if c.method != "baseline")
    assert cfg.params["rank_pattern"] == {}
    assert count_params(build(cfg, None, CPU32, METHODS["osf"], PLAN))[0] > 0


@pytest.mark.train
def test_plan_counts_trainable_tokens_on_the_runs_own_special_tokens(capsys):
    assert main(["plan", str(ROOT / "suites" / "peft-all.yaml"), "--json"]) == 0
    row = next(r for r in map(json.loads, capsys.readouterr().out.splitlines()) if r["run"] == "trainable_tokens")
    cfg = _peft_all("trainable_tokens")
    assert len(PLAN.special_token_ids) > 1  # the byte tokenizer's, as the run's plan has them
    assert row["trainable_params"] == count_params(build(cfg, None, CPU32, METHODS["trainable_tokens"], PLAN))[0]
