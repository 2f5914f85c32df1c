"""Suite parsing and validation: shipped suites validate, problems are reported all at once with their lines."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.suite import deep_merge, load_suite
from bench.yamlio import SuiteError
from tests.conftest import ROOT

SUITES = sorted((ROOT / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_every_shipped_suite_validates(path):
    suite = load_suite(path)
    runs = suite.resolved_runs()
    assert runs[0]["method"] == "baseline"
    assert {r["method"] for r in runs} >= {"full", "lora", "qlora", "prefix_tuning", "prompt_tuning", "p_tuning",
                                           "ia3"}


def test_three_planted_mistakes_are_all_reported_with_lines(tmp_path, capsys):
    text = (ROOT / "suites" / "smoke.yaml").read_text().replace("../data/", f"{ROOT}/data/")
    text = text.replace("  - method: ia3", "  - method: ia-3")
    text = text.replace("    params: {r: 8, lora_alpha: 16}\n  - method: qlora", "    params: {rank: 8}\n  - method: qlora")
    text = text.replace("  batch_size: 4", "  batch_size: 0")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == f"{bad} is not valid (3 problems):"
    assert "training.batch_size: Input should be greater than 0, got 0" in err
    assert "runs[1].params.rank: lora takes r, lora_alpha, lora_dropout, target_modules, use_dora - not 'rank'" in err
    assert "runs[6].method: unknown method 'ia-3' (did you mean 'ia3'?)" in err
    assert all(line.strip().startswith("line ") for line in lines[1:])
    assert "Traceback" not in err


def test_floats_in_exponent_form_and_duplicate_keys(tmp_path):
    # Data paths resolve against the suite file, so point at the repo's data.
    text = (ROOT / "suites" / "smoke.yaml").read_text().replace("../data/", f"{ROOT}/data/")
    suite_path = tmp_path / "s.yaml"
    suite_path.write_text(text.replace("learning_rate: 1e-3\n  batch_size", "learning_rate: 1e-4\n  batch_size"))
    suite = load_suite(suite_path)
    assert suite.training.learning_rate == 1e-4 and isinstance(suite.training.learning_rate, float)
    suite_path.write_text(suite_path.read_text().replace("  seed: 0\n", "  seed: 0\n  seed: 1\n", 1))
    with pytest.raises(SuiteError) as e:
        load_suite(suite_path)
    assert 'found duplicate key "seed"' in e.value.problems[0]
    assert e.value.problems[0].startswith("line ")


def test_run_overrides_merge_over_defaults_key_by_key():
    suite = load_suite(ROOT / "suites" / "smoke.yaml")
    runs = {r["run"]: r for r in suite.resolved_runs()}
    assert runs["ia3"]["training"]["learning_rate"] == 1e-2
    assert runs["ia3"]["training"]["batch_size"] == suite.training.batch_size
    assert runs["lora"]["params"] == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear",
                                      "use_dora": False}
    assert deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}, "b": 1}
    assert len({r["config_hash"] for r in runs.values()}) == len(runs)
