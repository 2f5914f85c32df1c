"""Forgetting: loss on general text before and after training, per run, from the real smoke suite and a worker run."""

from __future__ import annotations

import pytest
import torch

from bench.run import evaluation as E
from bench.run import models as M
from bench.core.config import ModelSpec
from bench.core.records import load_records
from bench.spec.suite import load_suite
from bench.core.yamlio import SuiteError
from tests.conftest import ROOT


def test_every_trained_run_records_general_loss_before_after_and_the_rise(smoke_results):
    out, _ = smoke_results
    records = {r.run: r for r in load_records(out)}
    base = records["baseline"].metrics
    assert base["general_loss"] == base["general_loss_before"] and "forgetting" not in base
    for r in records.values():
        if r.method == "baseline" or r.status != "success":
            continue
        m = r.metrics
        assert m["forgetting"] == pytest.approx(m["general_loss"] - m["general_loss_before"], abs=1e-12)
        assert m["general_loss"] != m["general_loss_before"], f"{r.run}: training should move the general loss"
        # Methods that start from the untouched full-precision base measure the baseline's loss before training.
        if r.method in ("full", "lora", "ia3"):
            assert m["general_loss_before"] == pytest.approx(base["general_loss"], abs=1e-6)


def test_text_loss_is_the_mean_token_loss_of_the_plain_text():
    tok = M.byte_tokenizer()
    model = M.load_model(ModelSpec(preset="tiny-llama"), None, dtype=torch.float32, load_in_4bit=False, seed=0)
    texts = E.paragraphs(E.GENERAL_TEXT)[:3]
    assert len(E.paragraphs(E.GENERAL_TEXT)) >= 20
    by_hand = []
    for t in texts:
        ids = torch.tensor([tok(t, add_special_tokens=False).input_ids])
        logits = model(input_ids=ids).logits[0, :-1]
        by_hand.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none"))
    expected = float(torch.cat(by_hand).mean())
    # Padded batches of different lengths must give the per-token mean over all texts, not a mean of means.
    assert E.text_loss(model, tok, texts, 4096, 2, torch.device("cpu")) == pytest.approx(expected, rel=1e-5)


def test_a_missing_forgetting_file_is_named_with_its_line(tmp_path):
    suite = (ROOT / "suites" / "smoke.yaml").read_text().replace("max_new_tokens: 8",
                                                                  "max_new_tokens: 8\n  forgetting: nowhere.txt")
    path = tmp_path / "s.yaml"
    path.write_text(suite.replace("../data/smoke.jsonl", str(ROOT / "data" / "smoke.jsonl")))
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    text = e.value.render()
    assert "eval.forgetting: no such file" in text and "nowhere.txt" in text
