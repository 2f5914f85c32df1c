"""bench.choose.memplan: each term of the predicted training peak against a case where it is known exactly, and the depth
scaling against a direct count."""

from __future__ import annotations

import pytest
import torch

from bench.choose.memplan import (ALLOCATOR_SHARE, CUDA_CONTEXT, SavedBytes, Setting, card_bytes, frozen_bytes, measure,
                           nf4_bytes, predict)
from bench.run.models import PRESETS
from methods import METHODS, RunFacts

TINY = PRESETS["tiny-llama"]
PLAN = RunFacts(total_steps=10, special_token_ids=(0,))
FP32 = Setting(batch_size=2, seq_len=16, dtype="fp32", device="cuda")
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def tiny_model(arch=TINY):
    from transformers import AutoModelForCausalLM

    from bench.run.tuners import model_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(model_config(arch))


def test_full_fine_tuning_trains_every_parameter_with_two_fp32_adamw_states_each():
    pred = predict(TINY, METHODS["full"], {}, FP32, PLAN)
    n = sum(p.numel() for p in tiny_model().parameters())
    assert pred.base == 0
    assert pred.trainable == pred.gradients == 4 * n
    assert pred.optimizer == 2 * 4 * n


def test_sgd_keeps_a_momentum_buffer_only_with_momentum():
    n = sum(p.numel() for p in tiny_model().parameters())
    plain = Setting(batch_size=2, seq_len=16, dtype="fp32", optimizer="SGD")
    momentum = Setting(batch_size=2, seq_len=16, dtype="fp32", optimizer="SGD", optimizer_kwargs='{"momentum": 0.9}')
    assert predict(TINY, METHODS["full"], {}, plain, PLAN).optimizer == 0
    assert predict(TINY, METHODS["full"], {}, momentum, PLAN).optimizer == 4 * n


def test_adafactor_keeps_a_row_and_a_column_per_matrix():
    setting = Setting(batch_size=2, seq_len=16, dtype="fp32", optimizer="Adafactor")
    expected = sum(4 * (sum(p.shape) if p.dim() == 2 else p.numel()) for p in tiny_model().parameters())
    assert predict(TINY, METHODS["full"], {}, setting, PLAN).optimizer == expected


def test_lora_keeps_the_base_in_bf16_and_trains_fp32_adapters():
    setting = Setting(batch_size=2, seq_len=16, dtype="bf16")
    pred = predict(TINY, METHODS["lora"], LORA, setting, PLAN)
    base = sum(p.numel() for p in tiny_model().parameters())
    h, kv, layers = TINY["hidden_size"], TINY["hidden_size"] // 4 * 2, TINY["num_hidden_layers"]
    adapters = layers * (4 * (h + h) + 4 * (h + kv))  # q: A r x h, B h x r; v: A r x h, B kv x r
    assert pred.base == 2 * base
    assert pred.trainable == pred.gradients == 4 * adapters
    assert pred.optimizer == 2 * 4 * adapters


def test_lora_fa_freezes_a_so_only_b_has_gradients_and_state():
    setting = Setting(batch_size=2, seq_len=16, dtype="fp32", optimizer="lora-fa")
    plain = predict(TINY, METHODS["lora"], LORA, Setting(batch_size=2, seq_len=16, dtype="fp32"), PLAN)
    fa = predict(TINY, METHODS["lora"], LORA, setting, PLAN)
    h, layers = TINY["hidden_size"], TINY["num_hidden_layers"]
    a_bytes = 4 * layers * 2 * 4 * h  # two lora_A of r x h per layer
    assert fa.gradients == plain.gradients - a_bytes
    assert fa.optimizer == plain.optimizer - 2 * a_bytes


def test_nf4_bytes_are_those_of_the_base_bitsandbytes_quantised():
    from bench.core.config import ModelSpec
    from bench.run.models import load_model

    quantised = load_model(ModelSpec(preset="tiny-llama"), None, dtype=torch.bfloat16, load_in_4bit=True, seed=0)
    stored = 0
    for p in quantised.parameters():
        stored += p.numel() * p.element_size()
        if type(p).__name__ == "Params4bit":
            s = p.quant_state
            stored += sum(t.numel() * t.element_size()
                          for t in (s.absmax, s.code, s.offset, s.state2.absmax, s.state2.code))
    model = tiny_model().to(torch.bfloat16).requires_grad_(False)
    assert frozen_bytes(model, four_bit=True) == stored
    assert nf4_bytes(64 * 256) == 64 * 256 // 2 + 256 + 16 * 4 + 4 + 4 + 256 * 4  # packed, absmax, code, offset, ...


def test_a_quantised_base_is_sized_at_what_its_backend_stores():
    """training.quantization (bitsandbytes 8-bit here): the frozen bytes bench plan counts for the unquantised
    model equal what the real 8-bit load holds (weights and their per-row scales), within the scales of the one
    layer wider than the hidden size the bytes per weight are measured at (down_proj)."""
    import json

    from bench.core.config import ModelSpec, Quantization
    from bench.run.models import load_model
    from bench.run.quantsize import weight_bytes

    q = Quantization(backend="bitsandbytes", bits=8)
    quantised = load_model(ModelSpec(preset="tiny-llama"), None, dtype=torch.bfloat16, load_in_4bit=False, seed=0,
                           quantization=q)
    linears = {n for n, m in quantised.named_modules() if type(m).__name__ == "Linear8bitLt"}
    stored = sum(weight_bytes(m) for n, m in quantised.named_modules() if n in linears)
    stored += sum(p.numel() * p.element_size() for n, p in quantised.named_parameters()
                  if n.rpartition(".")[0] not in linears)
    model = tiny_model().to(torch.bfloat16).requires_grad_(False)
    counted = frozen_bytes(model, four_bit=False, quantization=json.dumps(q.model_dump()))
    unquantised = frozen_bytes(model, four_bit=False)
    assert counted < 0.7 * unquantised  # the linear layers at about a byte a weight, not two
    assert abs(counted - stored) / stored < 0.01, (counted, stored)


def test_one_linear_layer_saves_its_input_only_where_its_weight_trains():
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(8, 32)
    with SavedBytes(layer) as saved:
        layer(x).sum().backward()
    assert saved.bytes == 8 * 32 * 4
    layer.requires_grad_(False)
    with SavedBytes(layer) as frozen:
        layer(x.requires_grad_(True)).sum().backward()
    assert frozen.bytes == 0


def test_fake_tensors_count_what_real_ones_do():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from bench.choose.memplan import _fakeify

    layer = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    x = torch.randn(8, 32)
    with SavedBytes(layer) as real:
        layer(x).sum().backward()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    _fakeify(layer, mode)
    with mode, SavedBytes(layer) as fake:
        layer(torch.empty(8, 32)).sum().backward()
    assert fake.bytes == real.bytes == 4 * (8 * 32 + 8 * 64 + 8 * 64)  # x; the GELU's input; the second layer's


def test_a_frozen_4bit_layer_saves_what_a_frozen_16bit_layer_saves():
    import bitsandbytes as bnb

    x = torch.randn(4, 64, dtype=torch.bfloat16, requires_grad=True)
    dense = torch.nn.Linear(64, 128, bias=False, dtype=torch.bfloat16).requires_grad_(False)
    four = bnb.nn.Linear4bit(64, 128, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    four.load_state_dict(dense.state_dict())
    four = four.to("cpu")
    four.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")._quantize("cpu")
    results = []
    for layer in (dense, four):
        with SavedBytes(layer) as saved:
            layer(x).float().sum().backward()
        results.append(saved.bytes)
    assert results[0] == results[1]


def test_depth_and_batch_scaling_match_a_direct_count():
    arch = dict(TINY, num_hidden_layers=5)
    setting = Setting(batch_size=3, seq_len=16, dtype="fp32")
    pred = predict(arch, METHODS["lora"], LORA, setting, PLAN)
    direct = measure(arch, METHODS["lora"], LORA, setting, PLAN, depth=5, rows=3)
    # Exact but for a few scalars (8 bytes in 814,596 here) that a one-layer build saves once more per layer.
    assert pred.activations == pytest.approx(direct.saved, rel=1e-4)
    assert (pred.trainable, pred.optimizer, pred.base) == (direct.trainable, direct.optimizer, direct.frozen)


def test_the_largest_batch_is_the_one_whose_peak_fits():
    setting = Setting(batch_size=4, seq_len=64, dtype="bf16")
    pred = predict(TINY, METHODS["lora"], LORA, setting, PLAN)
    assert pred.need == pred.reserved + CUDA_CONTEXT
    assert pred.reserved == int(pred.allocated * (1 + ALLOCATOR_SHARE))
    assert pred.largest_batch(pred.need + 1) == 4
    assert pred.largest_batch(pred.need + pred.per_row * 1.05 * 3 + 1) == 7
    assert pred.fits(pred.need) and not pred.fits(pred.need - 1)


def test_gpu_memory_takes_sizes_and_card_names():
    assert card_bytes("24GB") == (24e9, "24GB")
    assert card_bytes("80GiB")[0] == 80 * 2**30
    assert card_bytes("L40S") == (48e9, "L40S (48 GB)")
    assert card_bytes("NVIDIA H100 80GB HBM3")[0] == 80e9
    with pytest.raises(ValueError, match=r"--gpu-memory: expected a size such as 24GB or 80GiB, or a card \(H100 "
                       r"NVL, .*\); got 'lots'"):
        card_bytes("lots")


def test_an_unknown_hub_model_is_said_once_with_its_fix(capsys):
    from bench.core.config import ModelSpec
    from bench.choose.plan import Sizing, say_unknown_architecture

    rows = [Sizing(f"r{i}", "lora", None, None, None, None, None, "bf16", "meta", "architecture unknown: offline")
            for i in range(3)]
    say_unknown_architecture("s.yaml", ModelSpec(hub="someone/model"), rows)
    out = capsys.readouterr().err
    assert out.count("someone/model") == 2 and len(out.strip().splitlines()) <= 3
    assert "s.yaml: model.hub 'someone/model' has no config.json here" in " ".join(out.split())
    assert "huggingface-cli download someone/model config.json" in " ".join(out.split())
    assert {r.note for r in rows} == {"architecture unknown (see above)"}


def test_the_shipped_suites_plan_offline_with_their_real_shapes():
    from bench.choose.plan import architecture
    from bench.spec.suite import load_suite

    metamath = architecture(load_suite("suites/metamath.yaml").resolved_runs()[0])
    tinyllama = architecture(load_suite("suites/tinyllama.yaml").resolved_runs()[0])
    assert {k: metamath[k] for k in PRESETS["llama-3.2-3b"]} == PRESETS["llama-3.2-3b"]
    assert {k: tinyllama[k] for k in PRESETS["tinyllama-1.1b"]} == PRESETS["tinyllama-1.1b"]


@pytest.mark.worker
def test_the_cpu_prediction_is_within_15_percent_of_a_measured_training_peak(tmp_path):
    """The harness trains LoRA on the tiny preset (smoke suite) and records its training phase's resident peak;
    scripts/plan_vs_cpu.py predicts it (fp32, the measured resident floor of a fresh worker, no allocator)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "bench", "run", "suites/smoke.yaml", "--only", "lora", "--output",
                          str(tmp_path), "--no-report"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    check = subprocess.run([sys.executable, "scripts/plan_vs_cpu.py", "suites/smoke.yaml", str(tmp_path)],
                           capture_output=True, text=True, timeout=900)
    assert check.returncode == 0, check.stdout + check.stderr[-2000:]
    assert "1 runs, 0 outside +-15%" in check.stdout


def test_a_tuner_that_reads_weights_is_counted_at_two_depths_as_it_is_whole(monkeypatch):
    """bench plan counts SHiRA (random weights needed) on a model too big to build whole from depth 1 and 2."""
    from bench.run import tuners

    arch = dict(TINY, num_hidden_layers=4)
    params = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
    whole = tuners.apply(arch, METHODS["shira"], params, PLAN)
    tuners._apply.cache_clear()
    monkeypatch.setattr(tuners, "RANDOM_WEIGHTS_LIMIT", 0)
    with pytest.raises(tuners.NeedsWeights):
        tuners.apply(arch, METHODS["shira"], params, PLAN)
    scaled = tuners.apply(arch, METHODS["shira"], params, PLAN, scaled=True)
    assert (scaled.trainable, scaled.total, scaled.adapter_bytes) == (whole.trainable, whole.total, whole.adapter_bytes)
    assert scaled.weights == "random, depth 1 and 2 extended"
    tuners._apply.cache_clear()


def test_adapter_layers_beyond_the_builds_depth_are_sized_as_a_direct_count():
    """AdaptionPrompt adapts the top adapter_layers layers: more than a depth-1 or 2 build holds. The prediction
    from builds of 1 and 2 layers equals a direct count at the model's depth, with 3 of its 5 layers adapted."""
    arch = dict(TINY, num_hidden_layers=5)
    params = {"adapter_layers": 3, "adapter_len": 4}
    setting = Setting(batch_size=2, seq_len=16, dtype="fp32")
    pred = predict(arch, METHODS["adaption_prompt"], params, setting, PLAN)
    direct = measure(arch, METHODS["adaption_prompt"], params, setting, PLAN, depth=5, rows=2)
    assert pred.activations == pytest.approx(direct.saved, rel=1e-4)
    assert (pred.trainable, pred.optimizer, pred.base) == (direct.trainable, direct.optimizer, direct.frozen)
    one_adapted = measure(arch, METHODS["adaption_prompt"], {**params, "adapter_layers": 1}, setting, PLAN, 5, 2)
    assert direct.trainable == 3 * one_adapted.trainable  # the count is not the same at any other number of layers


def test_a_shared_copy_shares_frozen_bytes_and_nothing_else():
    from bench.choose.memplan import shared_copy

    model = tiny_model(dict(TINY, tie_word_embeddings=True))
    model.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)
    copy = shared_copy(model)
    frozen = model.model.layers[0].self_attn.q_proj.weight
    twin = copy.model.layers[0].self_attn.q_proj.weight
    assert twin is not frozen and twin.data_ptr() == frozen.data_ptr()
    assert copy.model.norm.weight.data_ptr() != model.model.norm.weight.data_ptr()
    copy.model.layers[0].self_attn.q_proj.weight = torch.nn.Parameter(torch.zeros(1))
    assert model.model.layers[0].self_attn.q_proj.weight is frozen and frozen.shape == (64, 64)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, and tied in the copy
    assert copy.lm_head.weight is copy.model.embed_tokens.weight is not model.lm_head.weight


def test_a_tuner_counted_for_real_extends_to_depth_as_a_direct_count():
    """SHiRA's sparse delta needs values: counted for real at REAL_TOKENS on random weights shared between builds;
    extended from depth 1 and 2 it equals the real count at depth 4 (and the count is not redone per length)."""
    from bench.choose import memplan

    arch = dict(TINY, num_hidden_layers=4)
    params = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
    setting = Setting(batch_size=1, seq_len=memplan.REAL_TOKENS[0], dtype="fp32")
    pred = predict(arch, METHODS["shira"], params, setting, PLAN)
    direct = measure(arch, METHODS["shira"], params, setting, PLAN, depth=4, rows=1)
    assert direct.how == "real" and pred.measured.startswith("real tensors")
    assert pred.activations == pytest.approx(direct.saved, rel=1e-3)
    assert (pred.trainable, pred.optimizer, pred.base) == (direct.trainable, direct.optimizer, direct.frozen)
    before = memplan._real_count.cache_info().misses
    longer = predict(arch, METHODS["shira"], params, Setting(batch_size=2, seq_len=96, dtype="fp32"), PLAN)
    assert memplan._real_count.cache_info().misses == before and longer.activations > pred.activations


def test_plan_sizes_the_longest_batch_the_data_makes(monkeypatch):
    """With the data at hand, the batch is the longest the run's own batches make (read here through the worker's
    load and collate); without it, max_seq_len, saying why."""
    import math

    from bench.datasets import batches as D
    from bench.run.load import load
    from bench.choose.plan import planned_setting
    from bench.spec.suite import load_suite

    runs = {cfg.method: cfg for cfg in load_suite("suites/smoke.yaml").resolved_runs()}
    for method, packed in (("lora", True), ("prompt_tuning", False)):
        cfg = runs[method]
        tr = cfg.training
        loaded = load(cfg)
        made = [D.collate([loaded.train[i] for i in b], 0, packed)["input_ids"]
                for b in D.batch_order(loaded.train, tr.batch_size, tr.seed)]
        expected = math.ceil(max(m.numel() for m in made) / tr.batch_size) if packed else max(m.shape[1] for m in made)
        setting, length_from = planned_setting(cfg)
        assert (setting.seq_len, setting.batch_size) == (expected, tr.batch_size)
        assert 0 < setting.seq_len < tr.max_seq_len and length_from.startswith("data: the longest batch")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    hub = runs["lora"].model_copy(update={"dataset": runs["lora"].dataset.model_copy(update={"path": None,
                                                                                           "hub": "someone/data"})})
    setting, length_from = planned_setting(hub)
    assert setting.seq_len == hub.training.max_seq_len
    assert length_from == ("max_seq_len (a Hub dataset is not downloaded to plan; with HF_DATASETS_OFFLINE=1 its "
                           "cached copy is read)")


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_the_loss_transient_is_sized_at_the_positions_the_model_returns_logits_for(method):
    """Prompt tuning and P-tuning prepend their virtual tokens to the input, so the model returns logits for them too;
    prefix tuning puts its tokens in the attention's keys and values only. The predicted loss transient is the
    logits' bytes plus two fp32 buffers of their size, at the positions a real model with PEFT's own config returns."""
    from peft import get_peft_model

    params = {"num_virtual_tokens": 24}
    setting = Setting(batch_size=2, seq_len=16, dtype="fp32")
    pred = predict(TINY, METHODS[method], params, setting, PLAN)
    config = METHODS[method].config(PLAN, **params)
    model = get_peft_model(tiny_model(), config)
    ids = torch.ones(2, 16, dtype=torch.long)
    logits = model(input_ids=ids, labels=ids).logits  # measured: what the real model hands the loss
    assert logits.shape[1] == 16 + (24 if method != "prefix_tuning" else 0)
    assert pred.logits == logits.numel() * (logits.element_size() + 8)


def _mapped_resident(path) -> int:
    """Resident bytes of the process's mappings of `path` (/proc/self/smaps)."""
    total, current = 0, None
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            current = fields[5] if len(fields) > 5 else None
        elif fields[0] == "Rss:" and current == str(path):
            total += int(fields[1]) * 1024
    return total


@pytest.mark.train
@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/smaps").exists(), reason="Linux /proc only")
def test_a_4bit_base_on_a_cpu_keeps_its_checkpoint_resident_when_stored_in_the_run_dtype(tmp_path):
    """On a CPU the quantised layers' checkpoint pages stay resident beside their NF4 copies when the checkpoint is
    in the dtype the run computes in (its unquantised weights are views of the mapping, so it stays mapped): measured
    on a tiny model saved in fp32 and loaded 4-bit as the harness loads QLoRA."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_model().save_pretrained(tmp_path)
    checkpoint = (tmp_path / "model.safetensors").resolve()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, quantization_config=quant)
    resident = _mapped_resident(checkpoint)  # measured
    arch = dict(TINY, dtype="float32")
    cpu, gpu = (Setting(batch_size=1, seq_len=8, dtype="fp32", device=d, four_bit=True) for d in ("cpu", "cuda"))
    on_cpu = predict(arch, METHODS["qlora"], LORA, cpu, PLAN)
    on_gpu = predict(arch, METHODS["qlora"], LORA, gpu, PLAN)
    fp32_linears = 4 * sum(m.weight.numel() for n, m in tiny_model().named_modules()
                           if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    assert on_cpu.base - on_gpu.base == fp32_linears  # the quantised layers' checkpoint pages, besides NF4
    assert resident == pytest.approx(checkpoint.stat().st_size, rel=0.02)  # every page of it stays resident
    del model
    other = predict(dict(arch, dtype="bfloat16"), METHODS["qlora"], LORA, cpu, PLAN)
    assert other.base == on_gpu.base  # a checkpoint in another dtype is copied at load and unmapped


def test_pure_bf16_is_sized_with_its_weights_gradients_and_states_in_bf16():
    """training.master_weights: false casts the adapters PEFT upcasts to fp32 down to bf16 (bench.run.load.trainable_in):
    the plan counts 2 bytes per trained weight, 2 per gradient and 4 for AdamW's two states, against 4, 4 and 8 with
    fp32 master weights; the frozen base is the same."""
    from bench.choose.memplan import setting_of
    from bench.spec.suite import load_suite

    lora = next(cfg for cfg in load_suite("suites/smoke.yaml").resolved_runs() if cfg.method == "lora")
    masters, pure = (setting_of(lora.model_copy(update={"training": lora.training.model_copy(update=change)}))
                     for change in ({"precision": "bf16"}, {"precision": "bf16", "master_weights": False}))
    assert (masters.pure, masters.trainable_fp32, masters.autocast) == (False, True, True)
    assert (pure.pure, pure.trainable_fp32, pure.autocast) == (True, False, False)
    fp32, bf16 = (predict(TINY, METHODS["lora"], LORA, s, PLAN) for s in (masters, pure))
    n = fp32.trainable // 4
    assert n > 0 and fp32.gradients == 4 * n and fp32.optimizer == 8 * n
    assert bf16.trainable == bf16.gradients == 2 * n
    assert bf16.optimizer == 4 * n
    assert bf16.base == fp32.base


def test_a_quantised_base_is_sized_at_the_dtype_it_keeps_its_constants_in():
    """HQQ keeps its scales and zeros in the compute dtype: 4-bit, group 64, is 0.5 + 2 x 2 / 64 bytes a weight from
    a bf16 base and 0.5 + 2 x 4 / 64 from an fp32 one; the plan measures it at the model's dtype."""
    import json
    import math

    pytest.importorskip("hqq")
    from bench.core.config import Quantization

    q = json.dumps(Quantization(backend="hqq", bits=4, group_size=64).model_dump())
    for dtype, per_weight in ((torch.bfloat16, 0.5 + 4 / 64), (torch.float32, 0.5 + 8 / 64)):
        model = tiny_model().to(dtype).requires_grad_(False)
        linears = [m.weight.numel() for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and n != "lm_head"]
        rest = sum(p.numel() for p in model.parameters()) - sum(linears)
        expected = sum(math.ceil(n * per_weight) for n in linears) + rest * (2 if dtype == torch.bfloat16 else 4)
        assert frozen_bytes(model, four_bit=False, quantization=q) == expected, dtype
