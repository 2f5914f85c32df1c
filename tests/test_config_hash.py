"""Config hashes: what a run computes, from the fields marked on the schema (bench.core.config KEPT / NOT_HASHED); every
stored record keeps its hash, and a field added later with a default changes none."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
from pydantic import create_model

from bench.core.config import KEPT, RunConfig, Training, Versioned, config_hash
from bench.core.records import read_record
from bench.spec.suite import load_suite
from tests.conftest import ROOT

BASELINES = json.loads((ROOT / "baselines" / "smoke.json").read_text())["records"]

# tests/fixtures/records were trimmed after they were run (their data path made relative), so their stored hashes
# are not their configs' any more; these are their configs' hashes as the schema of a79844d computed them.
FIXTURES = {
    "baseline.json": "38f95f6073a4b77d",
    "full.json": "c664b043e936ee43",
    "lora-typo.json": "647fc8cb44299c59",
    "lora.json": "102c572fb350c1b1",
    "prompt_tuning.json": "4aa168985c68b3a7",
    "qlora.json": "3d5d903d9e70ea43",
}


def stored_configs() -> list[RunConfig]:
    return [RunConfig.model_validate(r["config"]) for r in BASELINES] + \
        [read_record(ROOT / "tests" / "fixtures" / "records" / name).config for name in sorted(FIXTURES)]


@pytest.mark.parametrize("record", BASELINES, ids=[r["run"] for r in BASELINES])
def test_every_baseline_record_keeps_its_hash(record):
    assert config_hash(RunConfig.model_validate(record["config"])) == record["config_hash"]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_every_fixture_record_keeps_its_hash(name):
    assert config_hash(read_record(ROOT / "tests" / "fixtures" / "records" / name).config) == FIXTURES[name]


def test_a_fresh_smoke_suite_resolves_to_the_baselines_hashes():
    # scripts/ci_gate.sh runs the smoke suite from /tmp/ci, where baselines/smoke.json was made.
    suite = load_suite(ROOT / "suites" / "smoke.yaml")
    dataset = suite.dataset.model_copy(update={"path": "/tmp/ci/data/smoke.jsonl"})
    suite = suite.model_copy(update={"dataset": dataset})
    assert {c.run: c.config_hash for c in suite.resolved_runs()} == {r["run"]: r["config_hash"] for r in BASELINES}


def test_a_field_added_with_a_default_changes_no_stored_hash():
    # A config part that gains fields (a quantization section, a GPU memory cap), each left at its default.
    Wider = create_model("Wider", __base__=Training, quantization=(dict | None, None), gpu_memory_gb=(float, 0.0))
    WiderConfig = create_model("WiderConfig", __base__=RunConfig, training=(Wider, ...), max_gpus=(int, 1))
    for cfg in stored_configs():
        wider = WiderConfig(**dict(cfg) | {"training": Wider(**dict(cfg.training))})
        assert config_hash(wider) == config_hash(cfg)
        changed = wider.model_copy(update={"max_gpus": 2})
        assert config_hash(changed) != config_hash(cfg), "a field set off its default is part of the hash"


def test_a_field_marked_kept_is_hashed_at_its_default():
    class Part(Versioned):
        kept: Annotated[int, KEPT] = 0
        later: int = 0

    assert Part().model_dump() == {"kept": 0}
    assert Part(later=3).model_dump() == {"kept": 0, "later": 3}


def test_a_regression_tolerance_is_stored_but_not_hashed():
    cfg = stored_configs()[0]
    looser = cfg.model_copy(update={"regression": cfg.regression.model_copy(update={"warn_only": ["exact_match"]})})
    assert looser.model_dump()["regression"]["warn_only"] == ["exact_match"]
    assert config_hash(looser) == config_hash(cfg)
