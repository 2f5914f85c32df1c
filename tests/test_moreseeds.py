"""`bench run --seeds N`: the seeds it adds, and a finished run from before the suite had seeds adopted as its seed
so that only the missing seeds run (checked on the real smoke suite's resolved configs, without training)."""

from __future__ import annotations

import json

import pytest

from bench.launch import runner
from bench.launch.moreseeds import adopt_unseeded, seeds_for
from bench.core.records import RunRecord, write_record
from bench.spec.suite import load_suite
from tests.conftest import ROOT


def test_seeds_start_with_the_suite_s_own_or_the_training_seed():
    assert seeds_for(None, 0, 3) == [0, 1, 2]
    assert seeds_for(None, 7, 2) == [7, 8]
    assert seeds_for([5, 1], 0, 4) == [5, 1, 2, 3]  # after the last, the next integers not taken
    assert seeds_for([0, 1, 2], 0, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"--seeds 2: the suite already runs over 3 seeds \(0, 1, 2\); --seeds adds"):
        seeds_for([0, 1, 2], 0, 2)


def test_a_finished_single_seed_run_counts_as_its_seed_and_only_the_others_run(tmp_path):
    suite = load_suite(ROOT / "suites" / "smoke.yaml")
    plain = {c.run: c for c in suite.resolved_runs()}
    for name in ("lora", "ia3"):
        write_record(tmp_path / f"{name}.json", RunRecord.start(plain[name], status="success",
                                                                metrics={"exact_match": 0.5}))
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")
    failed = plain["full"]
    write_record(tmp_path / "full.json", RunRecord.start(failed, status="failed"))
    seeded = suite.model_copy(update={"seeds": seeds_for(suite.seeds, suite.training.seed, 3)}).resolved_runs()
    said = adopt_unseeded(seeded, tmp_path)
    assert sorted(said) == ["ia3@seed0: the record of ia3 ran this config at seed 0; adopted, not rerun",
                            "lora@seed0: the record of lora ran this config at seed 0; adopted, not rerun"]
    adopted = json.loads((tmp_path / "lora@seed0.json").read_text())
    assert adopted["run"] == "lora@seed0" and adopted["config"]["seed"] == 0 and adopted["config"]["group"] == "lora"
    assert adopted["metrics"] == {"exact_match": 0.5}
    assert not (tmp_path / "lora.json").exists() and len(list((tmp_path / "history").glob("lora.*.json"))) == 1
    assert (tmp_path / "lora@seed0" / "adapter_config.json").exists()  # its run folder went with it
    assert (tmp_path / "full.json").exists()  # a failed run is nothing to adopt
    plans = {p.config.run: p for p in runner.plan(seeded, tmp_path)}
    assert plans["lora@seed0"].action == "skip" and plans["lora@seed0"].why == "up to date"
    assert plans["lora@seed1"].action == "run" and plans["full@seed0"].action == "run"
    assert adopt_unseeded(seeded, tmp_path) == []  # once is enough


def test_a_record_at_another_training_seed_is_not_adopted(tmp_path):
    suite = load_suite(ROOT / "suites" / "smoke.yaml")
    other = suite.model_copy(update={"training": suite.training.model_copy(update={"seed": 4})})
    lora = next(c for c in other.resolved_runs() if c.run == "lora")
    write_record(tmp_path / "lora.json", RunRecord.start(lora, status="success"))
    seeded = suite.model_copy(update={"seeds": [0, 1]}).resolved_runs()
    assert adopt_unseeded(seeded, tmp_path) == [] and (tmp_path / "lora.json").exists()
