"""Shared test fixtures: a tiny random Llama with the byte tokenizer, and the smoke data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def tiny_config(method: str, params: dict | None = None, **training) -> dict:
    """A resolved run config like the suite produces, for the tiny preset and the smoke data."""
    from bench.suite import load_suite

    suite = load_suite(ROOT / "suites" / "smoke.yaml")
    cfg = next(c for c in suite.resolved_runs() if c["method"] in (method, "baseline") and c["run"] == method)
    if params:
        cfg["params"] = {**cfg["params"], **params}
    cfg["training"] = {**cfg["training"], **training}
    return cfg


@pytest.fixture(scope="session")
def smoke_examples():
    from bench.data import load_examples

    cfg = tiny_config("lora")
    train, evals, _ = load_examples(cfg["dataset"], max_eval=8)
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
