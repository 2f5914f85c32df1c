"""What trains in which precision, and the GPU-bound logic that runs on a CPU too: bf16 with fp32 master weights,
QLoRA's base dtype, fp16 loss scaling, time left out of training, attention kernels, eval memory, device peaks."""

from __future__ import annotations

import time

import pytest
import torch

from bench.core.config import Budget
from bench.datasets.batches import Features
from bench.run.device import Place
from bench.run.evaluation import BYTES_PER_LOGIT, eval_loss
from bench.run.flops import peak_for
from bench.commands.gpucheck import Shapes, batches, config, fit
from bench.run.load import build
from bench.run.memory import Meter
from bench.run.models import PRESETS
from bench.spec.suite import load_suite
from bench.run.train import train
from bench.core.yamlio import SuiteError
from methods import METHODS
from tests.conftest import ROOT

CPU = torch.device("cpu")
BF16 = Place(CPU, torch.bfloat16)
TINY = Shapes.of(dry_run=True)


def one_step_changed(model, batch, lr=2e-5) -> float:
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    with BF16.autocast():
        loss = model(**batch, use_cache=False).loss
    loss.backward()
    opt.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    return sum(int((a != b).sum()) for a, b in zip(after, before)) / sum(b.numel() for b in before)


@pytest.mark.train
def test_bf16_full_fine_tuning_keeps_fp32_master_weights_so_small_steps_land():
    cfg = config(TINY, "full", precision="bf16")
    model = build(cfg, None, BF16, METHODS["full"])
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    batch = batches(320, 64, 2, 1)[0][1]
    assert one_step_changed(model, batch) > 0.99
    # The same step on bf16 weights (no masters) rounds most updates away: 2e-5 is below half a bf16 step there.
    assert one_step_changed(build(cfg, None, BF16, METHODS["full"]).to(torch.bfloat16), batch) < 0.6


@pytest.mark.train
def test_bf16_training_learns_as_fp32_training_does():
    """Autocast's weight cache kept the first bf16 copy of every trainable weight for a whole region: with the loop
    inside one region, every forward used the step-0 weights and bf16 runs barely learned (here 0.03 of 0.08)."""
    cfg = config(TINY, "full", precision="bf16")
    data = batches(320, 128, 2, 2)
    bf16, _ = fit(cfg, BF16, data, 20, 1e-4)
    fp32, _ = fit(cfg, Place(CPU, torch.float32), data, 20, 1e-4)
    assert (bf16[0] - bf16[-1]) / (fp32[0] - fp32[-1]) == pytest.approx(1.0, abs=0.2)


@pytest.mark.parametrize("method", ["lora", "qlora", "head_only", "ia3"])
def test_what_trains_is_fp32_and_what_is_frozen_keeps_the_compute_dtype(method):
    cfg = config(TINY, method, precision="bf16")
    model = build(cfg, None, BF16, METHODS[method])
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {"nf4" if p.__class__.__name__ == "Params4bit" else p.dtype
              for p in model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32}
    # QLoRA without prepare_model_for_kbit_training: embeddings, norms and the head stay bf16 beside the 4-bit layers.
    assert frozen == ({torch.bfloat16, "nf4"} if method == "qlora" else {torch.bfloat16})


def test_fp16_is_refused_at_validate_time_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is here: fp16 is allowed")
    text = (ROOT / "suites" / "smoke.yaml").read_text().replace("../data/", f"{ROOT}/data/")
    path = tmp_path / "s.yaml"
    path.write_text(text.replace("  seed: 0\n", "  seed: 0\n  precision: fp16\n", 1))
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    assert e.value.problems == ["line 23, training.precision: fp16 needs a CUDA device and this machine has none; use "
                                "bf16 or fp32 (or validate where the runs will run)"]


@pytest.mark.train
def test_fp16_loss_scaling_trains_and_reports_finite_losses():
    """The loop's GradScaler path (what an fp16 run on CUDA takes), on the CPU's fp16 autocast."""
    fp16 = Place(CPU, torch.float16)
    cfg = config(TINY, "lora", {"r": 8, "lora_alpha": 16}, precision="fp16")
    model = build(cfg, None, fp16, METHODS["lora"])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    data = batches(320, 64, 2, 2) * 5
    result = train(model, iter(data), cfg.training.model_copy(update={"learning_rate": 1e-2}), Budget(max_steps=10),
                   10, fp16, scaler=scaler)
    losses = [p["loss"] for p in result.curve]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] and scaler.get_scale() > 0


@pytest.mark.train
def test_time_in_callbacks_is_not_training_time():
    cfg = config(TINY, "lora", {"r": 8})
    fp32 = Place(CPU, torch.float32)
    model = build(cfg, None, fp32, METHODS["lora"])
    start = time.perf_counter()
    result = train(model, iter(batches(320, 32, 1, 4)), cfg.training, Budget(max_steps=4), 4, fp32,
                   on_step=lambda point: time.sleep(0.5))
    wall = time.perf_counter() - start
    assert result.callback_seconds >= 2.0
    # The two seconds of "saving" are not in the training time: both fit in the call's wall time side by side, however
    # slow a loaded machine makes the four tiny steps (an absolute bound, < 1.5 s, failed under pytest-xdist).
    assert result.seconds + result.callback_seconds <= wall
    assert result.curve[-1]["seconds"] == pytest.approx(result.seconds, abs=0.2)


@pytest.mark.train
def test_eager_and_sdpa_attention_give_the_same_loss_packed_and_padded():
    from bench.datasets.batches import collate
    from bench.run.models import load_model
    from bench.core.config import ModelSpec

    feats = [Features(list(range(1, n)), list(range(1, n))) for n in (40, 17, 25)]
    losses = []
    for kernel in ("eager", "sdpa"):
        model = load_model(ModelSpec(preset="tiny-llama"), None, dtype=torch.float32, load_in_4bit=False, seed=0,
                           attention=kernel).eval()
        assert model.config._attn_implementation == kernel
        with torch.no_grad():
            losses += [float(model(**collate(feats, 0, packed=p), use_cache=False).loss) for p in (True, False)]
    assert losses == pytest.approx([losses[0]] * 4, abs=1e-5)


@pytest.mark.train
def test_eval_loss_in_logit_budgeted_batches_equals_one_batch_and_stays_small():
    """A 32k vocabulary: one 256-token row's logits and loss buffers are 82 MB; 12 rows in one batch would be 1 GB."""
    from bench.core.config import ModelSpec
    from bench.run.models import load_model

    spec = ModelSpec(config=PRESETS["tiny-llama"] | {"vocab_size": 32000})
    model = load_model(spec, None, dtype=torch.float32, load_in_4bit=False, seed=0)
    g = torch.Generator().manual_seed(0)
    feats = [Features(ids := torch.randint(32000, (256,), generator=g).tolist(), ids) for _ in range(12)]
    row = 256 * 32000 * BYTES_PER_LOGIT
    meter, peaks = Meter(CPU), {}
    with meter.phase(peaks, "budgeted"):
        budgeted = eval_loss(model, feats, 12, 0, CPU, budget=2 * row)
    with meter.phase(peaks, "whole"):
        whole = eval_loss(model, feats, 12, 0, CPU, budget=100 * row)
    assert budgeted == pytest.approx(whole, rel=1e-6)
    assert peaks["budgeted"].used < peaks["whole"].used - 400 * 1024 ** 2


def test_device_peaks_by_their_real_names():
    assert peak_for("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert peak_for("NVIDIA H100 PCIe")[0] == 756e12
    assert peak_for("NVIDIA H100 NVL")[0] == 835e12
    assert peak_for("NVIDIA H200")[0] == 989e12
    assert peak_for("NVIDIA A100-SXM4-80GB")[0] == 312e12
    none, why = peak_for("NVIDIA A100-SXM4-40GB MIG 1g.5gb")
    assert none is None and "MIG slice" in why
    assert peak_for("NVIDIA GeForce RTX 4090") == (None, "no peak known for 'NVIDIA GeForce RTX 4090' "
                                                         "(bench.run.flops.BF16_PEAK)")


def test_pure_bf16_saves_half_the_bytes_per_trained_weight_and_rounds_small_updates_away():
    """`training.master_weights: false` (PEFT's benchmark, litgpt's bf16-true): weights that train, their gradients and
    AdamW's states in bf16. What it saves, per trainable parameter: 16 bytes (fp32 weight, gradient, two states) down
    to 8. What it costs: a 2e-5 step is below half a bf16 step on most weights, so most updates round away."""
    from bench.run.optim import state_bytes_per_param

    batch = batches(320, 64, 2, 1)[0][1]
    masters = config(TINY, "full", precision="bf16")
    pure = config(TINY, "full", precision="bf16", master_weights=False)
    kept = build(masters, None, BF16, METHODS["full"])
    bare = build(pure, None, BF16, METHODS["full"])
    assert {p.dtype for p in bare.parameters() if p.requires_grad} == {torch.bfloat16}
    per_param = {name: 2 * torch.finfo(dtype).bits // 8 + state_bytes_per_param("AdamW", "{}", str(dtype)[6:])
                 for name, dtype in (("masters", torch.float32), ("pure", torch.bfloat16))}
    assert per_param == {"masters": 16.0, "pure": 8.0}
    landed_masters, landed_pure = one_step_changed(kept, batch), one_step_changed(bare, batch)
    assert landed_masters > 0.99 and landed_pure < 0.6
    # The same holds for the adapters PEFT upcasts to fp32 by itself: pure bf16 casts them back.
    lora = build(config(TINY, "lora", {"r": 8}, precision="bf16", master_weights=False), None, BF16, METHODS["lora"])
    assert {p.dtype for p in lora.parameters() if p.requires_grad} == {torch.bfloat16}

