"""Per method: training changes every trainable parameter and no frozen one; counts match PEFT; merges as declared."""

from __future__ import annotations

import itertools

import pytest
import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from bench.datasets import batches as D
from bench.core.config import Budget, ModelSpec
from bench.run.evaluation import generate, logit_diff, prompt_logits
from bench.run.load import build, count_params
from bench.run.models import PRESETS, byte_tokenizer
from bench.core.records import DataNotes
from bench.run.train import train
from methods import HOOKED, METHODS, SHIPPED, RunFacts
from tests.conftest import CPU32, ROOT, tiny_config, training

pytestmark = pytest.mark.train  # every test here trains or generates with a tiny model (tests/conftest.py: the tiers)

CPU = torch.device("cpu")


def _batches(cfg, examples, tokenizer, packed):
    notes = DataNotes(source="test")
    feats = D.tokenize(examples, tokenizer, cfg.training.max_seq_len, cfg.dataset, notes, "test")
    return D.batches(feats, 4, 0, tokenizer.pad_token_id, packed, epochs=10)


def _snapshot(model):
    # Params4bit hold packed bytes; cloning .data compares them exactly either way.
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("method_id", list(SHIPPED))
def test_training_changes_every_trainable_parameter_and_no_frozen_one(method_id, smoke_examples):
    method = METHODS[method_id]
    cfg = tiny_config(method_id)
    tokenizer = byte_tokenizer()
    model = build(cfg, None, CPU32, method)
    before = _snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "a method must train something"
    train_ex, _ = smoke_examples
    batches = list(itertools.islice(_batches(cfg, train_ex, tokenizer, packed=method.packable), 2))
    # Two steps: LoRA's B starts at zero, so A only receives gradient from the second step on.
    train(model, iter(batches), training(cfg, learning_rate=1e-2), Budget(max_steps=2), 2, CPU32)
    for name, p in model.named_parameters():
        changed = p.detach() != before[name]
        if name in trainable:
            # Per tensor, as TRL's tests check: single elements can legitimately keep a zero gradient (embedding
            # rows of tokens absent from the batches, dead ReLU units in P-tuning's encoder).
            assert changed.any(), f"{method_id}: trainable {name} did not change"
        else:
            assert not changed.any(), f"{method_id}: frozen {name} changed"


@pytest.mark.parametrize("method_id", [m for m in SHIPPED if m != "full"])
def test_trainable_counts_equal_peft_count(method_id):
    cfg = tiny_config(method_id)
    model = build(cfg, None, CPU32, METHODS[method_id])
    assert count_params(model) == model.get_nb_trainable_parameters()
    trainable, total = count_params(model)
    assert 0 < trainable < total


def test_qlora_counts_four_bit_weights_at_their_real_size():
    base = build(tiny_config("baseline"), None, CPU32, None)
    q = build(tiny_config("qlora"), None, CPU32, METHODS["qlora"])
    lora = build(tiny_config("lora"), None, CPU32, METHODS["lora"])
    assert count_params(q) == count_params(lora)
    assert count_params(q)[1] - count_params(q)[0] == count_params(base)[1]


@pytest.mark.parametrize("method_id", [m for m, meth in SHIPPED.items() if meth.merge == "exact"])
def test_exact_merge_matches_adapter_model(method_id, smoke_examples):
    cfg = tiny_config(method_id)
    tokenizer = byte_tokenizer()
    model = build(cfg, None, CPU32, METHODS[method_id])
    train_ex, eval_ex = smoke_examples
    train(model, _batches(cfg, train_ex, tokenizer, True), training(cfg, learning_rate=1e-2),
          Budget(max_steps=3), 3, CPU32)
    before = prompt_logits(model, tokenizer, eval_ex, CPU)
    merged = model.merge_and_unload()
    after = prompt_logits(merged, tokenizer, eval_ex, CPU)
    assert logit_diff(before, after)["max_abs"] < 1e-5
    leftovers = [n for n, m in merged.named_modules() if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper))]
    assert not leftovers, f"{method_id}: merge_and_unload left adapter modules {leftovers}"


@pytest.mark.parametrize("method_id", list(SHIPPED))
def test_batched_generation_equals_one_at_a_time(method_id, smoke_examples):
    """Left padding must not change any answer, virtual tokens and prefixes included."""
    cfg = tiny_config(method_id)
    tokenizer = byte_tokenizer()
    model = build(cfg, None, CPU32, METHODS[method_id])
    train_ex, eval_ex = smoke_examples
    # Train a little so the adapter is not the identity (LoRA B = 0 and IA3 = 1 at initialisation).
    train(model, _batches(cfg, train_ex, tokenizer, METHODS[method_id].packable),
          training(cfg, learning_rate=1e-2), Budget(max_steps=2), 2, CPU32)
    # Prompts of different lengths, so the batch really pads.
    examples = sorted(eval_ex, key=lambda e: len(e.prompt))[:: max(1, len(eval_ex) // 4)][:4]
    assert len({len(e.prompt) for e in examples}) > 1
    pad_free = not METHODS[method_id].left_pad_safe
    batched = generate(model, tokenizer, examples, batch_size=4, max_new_tokens=6, device=CPU, pad_free=pad_free)
    single = [generate(model, tokenizer, [e], 1, 6, CPU).token_ids[0] for e in examples]
    assert batched.token_ids == single


def test_packed_and_padded_training_give_the_same_losses(smoke_examples):
    train_ex, _ = smoke_examples
    tokenizer = byte_tokenizer()
    curves = []
    for packed in (True, False):
        cfg = tiny_config("lora")
        model = build(cfg, None, CPU32, METHODS["lora"])
        result = train(model, _batches(cfg, train_ex, tokenizer, packed), cfg.training, Budget(max_steps=3), 3, CPU32)
        curves.append([p["loss"] for p in result.curve])
    assert curves[0] == pytest.approx(curves[1], abs=1e-5)


def test_every_method_file_is_registered():
    files = {p.stem for p in (ROOT / "methods").glob("*.py")} - {"__init__", "base", "catalog"}  # catalog: PEFT's facts
    assert files == set(SHIPPED) | set(HOOKED)
    for mid, m in METHODS.items():
        assert m.id == mid


def test_method_defaults_build_valid_peft_configs():
    for m in SHIPPED.values():
        cfg = m.config(RunFacts(total_steps=10), **m.defaults())
        assert (cfg is None) == (m.id == "full")
        if cfg is not None:
            assert cfg.task_type == "CAUSAL_LM"


def test_dora_adds_one_trainable_magnitude_per_output_feature():
    """DoRA is LoRA plus a magnitude vector per targeted layer: use_dora must really reach PEFT."""
    dora_cfg = tiny_config("dora")
    dora = build(dora_cfg, None, CPU32, METHODS["dora"])
    lora = build(tiny_config("lora", dora_cfg.params), None, CPU32, METHODS["lora"])
    targeted = [m for m in lora.modules() if isinstance(m, LoraLayer)]
    assert len(targeted) == 2 * 7  # all-linear on two Llama layers: q, k, v, o, gate, up, down
    extra = count_params(dora)[0] - count_params(lora)[0]
    assert extra == sum(m.out_features for m in targeted)


HEAD = "base_model.model.lm_head.modules_to_save.default.weight"


def test_head_only_trains_and_saves_only_the_head(tmp_path):
    model = build(tiny_config("head_only"), None, CPU32, METHODS["head_only"])
    shape = PRESETS["tiny-llama"]
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {HEAD: shape["vocab_size"] * shape["hidden_size"]}
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        assert list(f.keys()) == ["base_model.model.lm_head.weight"]


@pytest.mark.parametrize("ensure_weight_tying", [False, True])
def test_head_only_on_tied_embeddings(ensure_weight_tying, smoke_examples, tmp_path):
    """SmolLM2 ties lm_head to the input embeddings. By default head_only trains an untied copy of the head and
    leaves the input embeddings as they were; ensure_weight_tying=True trains both as one tensor. Either way the
    merged model, saved and reloaded with plain transformers, gives the adapter model's logits."""
    cfg = tiny_config("head_only", {"ensure_weight_tying": ensure_weight_tying})
    cfg = cfg.model_copy(update={"model": ModelSpec(config=PRESETS["tiny-llama"] | {"tie_word_embeddings": True})})
    base = build(cfg, None, CPU32, None)
    assert base.lm_head.weight is base.model.embed_tokens.weight  # the precondition: this model really ties them
    model = build(cfg, None, CPU32, METHODS["head_only"])
    tokenizer = byte_tokenizer()
    train_ex, eval_ex = smoke_examples
    train(model, _batches(cfg, train_ex, tokenizer, True), training(cfg, learning_rate=1e-2),
          Budget(max_steps=3), 3, CPU32)

    inner = model.get_base_model()
    ids, eye = torch.arange(PRESETS["tiny-llama"]["vocab_size"]), torch.eye(PRESETS["tiny-llama"]["hidden_size"])
    with torch.no_grad():
        embeddings, head = inner.model.embed_tokens(ids), inner.lm_head(eye).T  # what the adapter model computes
        base_embeddings, base_head = base.model.embed_tokens(ids), base.lm_head(eye).T
    assert not torch.equal(head, base_head), "the head must train"
    assert torch.equal(embeddings, base_embeddings) != ensure_weight_tying
    assert torch.equal(embeddings, head) == ensure_weight_tying

    before = prompt_logits(model, tokenizer, eval_ex, CPU)
    merged = model.merge_and_unload()
    assert merged.config.tie_word_embeddings == ensure_weight_tying
    assert (merged.lm_head.weight is merged.model.embed_tokens.weight) == ensure_weight_tying
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert logit_diff(before, prompt_logits(reloaded, tokenizer, eval_ex, CPU))["max_abs"] < 1e-5
