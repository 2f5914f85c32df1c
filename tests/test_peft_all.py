"""suites/peft-all.yaml through the real CLI: every PEFT tuner the smoke suite does not run trains, saves an adapter
that plain `PeftModel.from_pretrained` reloads into the same model, and merges where PEFT says it can (the
difference measured) or ends with PEFT's recorded reason."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench.run.load import load
from bench.core.records import load_records
from bench.spec.suite import load_suite
from methods import METHODS
from tests.conftest import ROOT

pytestmark = pytest.mark.worker  # every test here starts worker processes (tests/conftest.py: the tiers)

SUITE = ROOT / "suites" / "peft-all.yaml"


@pytest.fixture(scope="module")
def peft_all(tmp_path_factory):
    out = tmp_path_factory.mktemp("peft-all")
    # Two CPU slots: a tiny run is some 9 s of imports and 1 s of work, and imports take one core (192 s against 299 s
    # for the 35 runs here). What a slot changes in a record is covered by test_distributed.
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(SUITE), "--output", str(out), "--no-report",
                           "--devices", "cpu,cpu"], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    return out, proc, {r.run: r for r in load_records(out)}


def test_every_tuner_run_succeeds_and_merges_or_says_why_not(peft_all):
    out, proc, records = peft_all
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    configs = load_suite(SUITE).resolved_runs()
    assert set(records) == {c.run for c in configs}
    for run, r in records.items():
        assert r.status == "success", (run, r.error)
        if r.method == "baseline":
            continue
        assert r.metrics["train_steps"] == 3 and r.metrics["trainable_params"] > 0, run
        assert r.merge is not None, run
        if r.merge.status == "merged":
            assert r.merge.max_abs_logit_diff < 1e-5 and r.merge.greedy_identical, (run, r.merge)
            assert r.merge.layer_rel_error_fp64 is not None, run
        else:
            assert r.merge.status == "not mergeable" and r.merge.note, (run, r.merge)


def test_each_saved_adapter_reloads_with_plain_peft_into_the_trained_model(peft_all):
    """The reloaded adapter on a freshly built base gives the eval loss the run recorded, computed on as many threads
    as the run had: FRoD does not save its decomposition of the base weights but redoes it at load, and on 2 threads
    that of a 1-thread run's adapter gave eval loss 5.8211 against the run's 5.8305 (on 1 thread: equal)."""
    from peft import PeftModel

    from bench.run import models as M
    from bench.run.evaluation import eval_loss

    out, _, records = peft_all
    configs = {c.run: c for c in load_suite(SUITE).resolved_runs() if c.trains}
    loaded = load(next(iter(configs.values())))  # every run shares the model, data and max_seq_len
    threads = torch.get_num_threads()
    try:
        for run, cfg in configs.items():
            torch.set_num_threads(records[run].environment["threads"])
            base = M.load_model(cfg.model, loaded.folder, dtype=torch.float32, load_in_4bit=False,
                                seed=cfg.training.seed)
            # peft 0.21.2: an AdaLoRA adapter loaded for inference has no trainable_adapter_name, and its forward
            # with labels raises AttributeError (PEFT issue 571's fix covers calls without labels): load it trainable.
            model = PeftModel.from_pretrained(base, out / run / "adapter", is_trainable=cfg.method == "adalora").eval()
            with METHODS[cfg.method].measuring(model):  # AdaLoRA's regulariser off: the task's loss alone
                loss = eval_loss(model, loaded.eval, cfg.eval.batch_size, loaded.tokenizer.pad_token_id,
                                 torch.device("cpu"))
            assert loss == pytest.approx(records[run].metrics["eval_loss"], rel=1e-5), run
    finally:
        torch.set_num_threads(threads)
