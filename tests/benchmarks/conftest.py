"""Micro-benchmarks (pytest-benchmark) of the harness's hot paths on the tiny-llama preset; not run by `pytest`.

They are left out of the default test run (pyproject's addopts has --ignore=tests/benchmarks): timings on a shared
machine are not pass/fail material for every commit. Run them on purpose, on a quiet machine:

    # measure and store a numbered result under .benchmarks/ (one JSON per run, with the machine's description)
    pytest tests/benchmarks --benchmark-only -p no:cacheprovider --benchmark-save=main

    # later, after a change: measure again and compare with the latest stored result; fail if a mean is 10% slower
    pytest tests/benchmarks --benchmark-only -p no:cacheprovider --benchmark-compare \
        --benchmark-compare-fail=mean:10%

    # compare two stored results without measuring
    pytest-benchmark compare 0001 0002 --group-by=name

pytest-benchmark warns when the stored result came from another machine; compare only like with like. Each
training benchmark times `bench.run.train.train` over a few steps of the same batches, so its mean divided by
`extra_info["steps"]` is the time of one optimiser step. Torch runs on one thread here (see `one_thread`). Measured
on the shared 2-core development machine, two back-to-back runs: training means within 2%, generation means within
15% (a tiny model's generation is mostly Python and short kernels), so a 10% gate suits the training benchmarks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def smoke_runs() -> dict:
    """The smoke suite's resolved run configs by run name (tiny-llama preset, the smoke data)."""
    from bench.spec.suite import load_suite

    return {c.run: c for c in load_suite(ROOT / "suites" / "smoke.yaml").resolved_runs()}


@pytest.fixture(scope="session")
def tokenized(smoke_runs):
    """Train features, eval examples and the tokenizer, exactly as a worker prepares them."""
    from bench.datasets import batches as B
    from bench.datasets import examples as D
    from bench.run import models as M

    cfg = smoke_runs["baseline"]
    tokenizer = M.load_tokenizer(cfg.model, None)
    train_ex, eval_ex, report = D.load_examples(cfg.dataset, max_eval=cfg.eval.max_examples)
    features = B.tokenize(train_ex, tokenizer, cfg.training.max_seq_len, cfg.dataset, report, report.source)
    return features, eval_ex, tokenizer


@pytest.fixture(scope="session")
def cpu() -> torch.device:
    return torch.device("cpu")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread: on a few cores shared with other processes, OpenMP's waiting threads spin and the same
    step's wall time swings tenfold (189 ms to 15 s measured here); with one thread the numbers track the code."""
    torch.set_num_threads(1)
