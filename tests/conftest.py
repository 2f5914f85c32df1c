"""Shared test fixtures: a tiny random Llama with the byte tokenizer, and the smoke data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bench.run.device import Place

pytest_plugins = ["pytester"]  # tests/test_tiers.py runs pytest sessions of its own

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


# The tiers: a test is `fast` (`pytest -m fast`, what a developer runs on every change) unless it starts worker
# processes, trains or generates with a model in its own process, or loads the real model; those carry `worker`,
# `train`, `slow` or `gpu` (a module of them says so in its `pytestmark`), and a test taking a session-wide run's
# fixture is a `worker` test by that alone. `@pytest.mark.fast` on a worker test puts it in the fast tier anyway: the
# one tiny end-to-end run the tier keeps.
NOT_FAST = ("worker", "train", "slow", "gpu")
WORKER_FIXTURES = {"smoke_results"}
# A fast-tier test slower than this is named at the end of the session (BENCH_FAST_SECONDS: its own test sets it).
FAST_SECONDS = float(os.environ.get("BENCH_FAST_SECONDS", "10"))
# A test fast by the rule carries this property into its reports, for the summary's list of slow ones (the tier's one
# run, marked fast by hand, may take its time): under pytest-xdist the summary is written by a process that never
# collected the tests (and a report's keywords hold folder names too: a checkout's may be called "fast").
TIER = ("tier", "fast")


def pytest_collection_modifyitems(config, items):
    """The tiers (fast or not); tests marked gpu run where CUDA is, elsewhere they are skipped, saying so."""
    for item in items:
        if WORKER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.worker)
        if item.get_closest_marker("fast") is None and not any(item.get_closest_marker(m) for m in NOT_FAST):
            item.add_marker(pytest.mark.fast)
            item.user_properties.append(TIER)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """Fast-tier tests that took long: a new test that starts workers belongs in the worker tier."""
    slow = [r for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
            if r.when == "call" and TIER in r.user_properties and r.duration > FAST_SECONDS]
    if slow:
        terminalreporter.section(f"fast-tier tests over {FAST_SECONDS:g} s (mark them `worker` or `train`)")
        for r in sorted(slow, key=lambda r: -r.duration):
            terminalreporter.write_line(f"{r.duration:6.1f} s  {r.nodeid}")


def default_sigint() -> None:
    """preexec_fn for a process a test interrupts with SIGINT: a shell that starts pytest in the background (`pytest
    &`, nohup) leaves SIGINT ignored, children inherit that across exec, and Python then installs no KeyboardInterrupt
    handler, so the Ctrl-C under test would never arrive."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tiny_config(method: str, params: dict | None = None, **changes):
    """A resolved run config like the suite produces, for the tiny preset and the smoke data; `changes` set
    training fields."""
    from bench.spec.suite import load_suite

    suite = load_suite(ROOT / "suites" / "smoke.yaml")
    cfg = next(c for c in suite.resolved_runs() if c.method in (method, "baseline") and c.run == method)
    return cfg.model_copy(update={"params": cfg.params | (params or {}), "training": training(cfg, **changes)})


def training(cfg, **changes):
    """The run's training settings with some fields changed."""
    return cfg.training.model_copy(update=changes)


def make_config(run: str = "r", method: str = "lora", **fields):
    """A minimal resolved config for records made by hand (reports, compare, recommend read them)."""
    from bench.core.config import Budget, DatasetSpec, Eval, ModelSpec, ResolvedTraining, RunConfig

    base = dict(suite="hand", suite_version=1, run=run, method=method, model=ModelSpec(preset="tiny-llama"),
                dataset=DatasetSpec(path="data.jsonl"), budget=Budget(max_steps=1), training=ResolvedTraining(),
                eval=Eval())
    return RunConfig(**base | fields)


def with_config(record, **changes):
    """A record whose config has some fields changed."""
    return record.model_copy(update={"config": record.config.model_copy(update=changes)})


CPU32 = Place(torch.device("cpu"), torch.float32)  # where every test model runs


def assert_same_record(r, b, run: str) -> None:
    """A run's record made elsewhere (a parallel slot, a Ray node) against the sequential run's `b`. The worker there
    has one thread where the sequential run has two, and one thread sums a matmul in another order: losses may differ
    in float rounding (seen: 5.4293308 vs 5.4293303 at one step of full fine-tuning), and the merge check, which
    subtracts two nearly equal sets of logits, leaves rounding itself (CI saw DoRA's 2.7e-07 become 2.4e-07). Scores,
    answers and verdicts are the same."""
    import pytest

    assert r.status == "success", (run, r.error)
    assert r.config_hash == b.config_hash
    assert [p["loss"] for p in r.curve] == pytest.approx([p["loss"] for p in b.curve], rel=1e-5), run
    assert r.metrics["eval_loss"] == pytest.approx(b.metrics["eval_loss"], rel=1e-5), run
    for name in ("exact_match", "token_f1", "rouge_l", "train_tokens", "trainable_params"):
        assert r.metrics.get(name) == b.metrics.get(name), (run, name)
    assert [p.prediction for p in r.predictions] == [p.prediction for p in b.predictions], run
    assert (r.merge is None) == (b.merge is None), run  # the baseline merges nothing
    if b.merge is None:
        return
    for key in ("status", "kind", "greedy_identical"):
        assert getattr(r.merge, key) == getattr(b.merge, key), (run, key)
    if b.merge.max_abs_logit_diff is not None:
        assert r.merge.max_abs_logit_diff == pytest.approx(b.merge.max_abs_logit_diff, abs=1e-5), run


@pytest.fixture(scope="session")
def smoke_examples():
    from bench.datasets.examples import load_examples

    cfg = tiny_config("lora")
    train, evals, _ = load_examples(cfg.dataset, max_eval=8)
    return train, evals


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory):
    """The real CLI running the smoke suite once per test session, in a fresh folder."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("smoke") / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(ROOT / "suites" / "smoke.yaml"), "--output", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout
