"""bitsandbytes' CPU repacking of 4-bit weights must not change what the model computes (bench.run.models.no_cpu_repacking)."""

from __future__ import annotations

import pytest
import torch

from bench.run import models as M
from bench.core.config import ModelSpec

pytest.importorskip("bitsandbytes")
from bitsandbytes.functional import has_avx512bf16  # noqa: E402

pytestmark = pytest.mark.train  # every test here trains or generates with a tiny model (tests/conftest.py: the tiers)


def losses(model, ids):
    out = []
    for training, grad in ((True, True), (False, False), (True, True)):
        model.train(training)
        with torch.set_grad_enabled(grad):
            out.append(float(model(input_ids=ids, labels=ids).loss))
    return out


@pytest.mark.skipif(not has_avx512bf16(), reason="bitsandbytes repacks only on CPUs with AVX512-BF16")
def test_an_eval_forward_leaves_4bit_training_and_inference_equal_to_the_dequantised_weights():
    spec = ModelSpec(preset="tiny-llama")
    ids = torch.tensor([list(range(40, 104))])
    model = M.load_model(spec, None, dtype=torch.float32, load_in_4bit=True, seed=0)
    reference = float(M.load_model(spec, None, dtype=torch.float32, load_in_4bit=True, seed=0)
                      .dequantize(dtype=torch.float32)(input_ids=ids, labels=ids).loss)
    got = losses(model, ids)
    assert got[0] == got[1] == got[2], got
    assert got[0] == pytest.approx(reference, abs=1e-6)

    # What the guard prevents: with bitsandbytes' default, the eval forward repacks the weights and changes results.
    raw = M.load_model(spec, None, dtype=torch.float32, load_in_4bit=True, seed=0)
    for module in raw.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True
    first, after_eval, train_again = losses(raw, ids)
    assert first == pytest.approx(reference, abs=1e-6)
    # Small on a random tiny model (1e-5 here); on SmolLM2-135M QLoRA's loss then climbed from 2.8 to 4.7 in 25 steps.
    assert abs(after_eval - first) > 2e-6 and abs(train_again - first) > 2e-6
