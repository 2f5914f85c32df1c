"""Suite parsing and validation: shipped suites validate, problems are reported all at once with their lines."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.spec.suite import deep_merge, load_suite
from bench.core.yamlio import SuiteError
from tests.conftest import ROOT

SUITES = sorted((ROOT / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_every_shipped_suite_validates(path):
    suite = load_suite(path)
    runs = suite.resolved_runs()
    assert runs[0].method == "baseline"
    if path.stem == "peft-all":
        return  # the tuners the other suites do not run (tests/test_tuners.py checks it has one per tuner)
    if path.stem.startswith("metamath"):
        return  # PEFT's MetaMathQA benchmark: its own methods (tests/test_shapes.py checks its settings)
    if path.stem.startswith("quantization"):  # one LoRA over each base, optimiser and precision
        quantized = {r.training.quantization.backend for r in runs if r.training.quantization is not None}
        assert {"lora", "qlora"} <= {r.method for r in runs} and quantized == {"bitsandbytes", "torchao", "hqq"}
        return
    assert {r.method for r in runs} >= {"full", "lora", "qlora", "prefix_tuning", "prompt_tuning", "p_tuning",
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
    assert "runs[1].params.rank: lora takes the fields of PEFT's LoraConfig - not 'rank'" in err
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
    runs = {r.run: r for r in suite.resolved_runs()}
    assert runs["ia3"].training.learning_rate == 1e-2
    assert runs["ia3"].training.batch_size == suite.training.batch_size
    assert runs["lora"].params == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear",
                                      "use_dora": False}
    assert deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}, "b": 1}
    assert len({r.config_hash for r in runs.values()}) == len(runs)


SEEDED = """\
name: seedy
version: 1
model: {preset: tiny-llama}
dataset: {path: DATA, eval_size: 8}
budget: {max_steps: 3}
seeds: [0, 1, 2]
runs:
  - method: lora
  - method: ia3
    name: ia3-fast
    training: {learning_rate: 1e-2}
"""


def seeded_suite(tmp_path, text: str = SEEDED):
    path = tmp_path / "seedy.yaml"
    path.write_text(text.replace("DATA", str(ROOT / "data" / "smoke.jsonl")))
    return path


def test_seeds_expand_every_run_with_its_group_and_seed(tmp_path):
    runs = load_suite(seeded_suite(tmp_path)).resolved_runs()
    assert [(r.run, r.group, r.seed, r.training.seed) for r in runs] == [
        (f"{name}@seed{s}", name, s, s) for name in ("baseline", "lora", "ia3-fast") for s in (0, 1, 2)]
    assert {r.training.learning_rate for r in runs if r.group == "ia3-fast"} == {1e-2}
    assert len({r.config_hash for r in runs}) == 9


def test_a_pretrained_model_gets_one_baseline_under_seeds(tmp_path):
    text = (ROOT / "suites" / "quickstart.yaml").read_text().replace("../data/", f"{ROOT}/data/")
    plain = tmp_path / "plain.yaml"
    plain.write_text(text)
    seeded = tmp_path / "seeded.yaml"
    seeded.write_text(text.replace("runs:\n", "seeds: [0, 1]\nruns:\n", 1))
    before, after = load_suite(plain).resolved_runs(), load_suite(seeded).resolved_runs()
    # The untrained model answers greedily: the same under any seed, so one baseline, and the same record as before.
    assert [r.run for r in after][:3] == ["baseline", "full@seed0", "full@seed1"]
    assert after[0] == before[0]
    assert len(after) == 1 + 2 * (len(before) - 1)


def test_without_seeds_configs_and_hashes_do_not_change():
    """Stored records and baselines/smoke.json match by config hash: a suite without seeds gains no keys."""
    for cfg in load_suite(ROOT / "suites" / "smoke.yaml").resolved_runs():
        dumped = cfg.model_dump()
        assert "group" not in dumped and "seed" not in dumped and "@" not in cfg.run


def test_bad_seeds_are_reported_with_their_lines(tmp_path):
    text = SEEDED.replace("seeds: [0, 1, 2]", "seeds: [0, 1, 1, 2.5]").replace("learning_rate: 1e-2}",
                                                                            "learning_rate: 1e-2, seed: 3}")
    with pytest.raises(SuiteError) as e:
        load_suite(seeded_suite(tmp_path, text))
    assert e.value.problems == ["line 6, seeds[3]: Input should be a valid integer, got 2.5"]
    with pytest.raises(SuiteError) as e:
        load_suite(seeded_suite(tmp_path, text.replace(", 2.5]", "]")))
    assert e.value.problems == ["line 6, seeds: repeats 1; give each seed once, got [0, 1, 1]"]
    with pytest.raises(SuiteError) as e:
        load_suite(seeded_suite(tmp_path, text.replace(", 1, 2.5]", "]")))
    assert e.value.problems == ["line 11, runs[1].training.seed: the suite's seeds set every run's seed; remove one "
                                "of the two"]
    with pytest.raises(SuiteError) as e:
        load_suite(seeded_suite(tmp_path, SEEDED.replace("[0, 1, 2]", "[]")))
    assert e.value.problems == ["line 6, seeds: List should have at least 1 item after validation, not 0, got []"]


def test_only_a_method_selects_all_its_seeds(tmp_path):
    from bench.launch.runner import plan

    suite = load_suite(seeded_suite(tmp_path))
    assert [p.config.run for p in plan(suite.resolved_runs(), tmp_path / "out", only=["lora"])] == [
        "lora@seed0", "lora@seed1", "lora@seed2"]
    assert [p.config.run for p in plan(suite.resolved_runs(), tmp_path / "out", only=["ia3-fast@seed1"])] == [
        "ia3-fast@seed1"]


REFUSED_AND_MORE = """\
name: s
version: 1
model: {path: no-model}
dataset: {path: gone.jsonl, eval_size: 0}
budget: {max_steps: 1}
training:
  batch_size: 0
  optimizer: {name: AdamW, kwargs: {eps: .inf}}
  distributed: {num_processes: 2, config: a.yaml}
runs:
  - {method: lora, params: {r: 4, lora_dropout: .nan}}
  - {method: lora, name: two, training: {optimizer: {name: Adamw}}}
"""


def test_keys_the_schema_refuses_hide_no_other_problem(tmp_path):
    """The checks read typed sections; where the schema refuses a key (batch_size: 0, eval_size: 0), its section is
    typed without it, so the paths, the optimiser and the params beside it are still checked, each with its line."""
    path = tmp_path / "s.yaml"
    path.write_text(REFUSED_AND_MORE)
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    assert [p.split(":")[0] for p in e.value.problems] == [
        "line 3, model.path", "line 4, dataset.eval_size", "line 4, dataset.path", "line 7, training.batch_size",
        "line 8, training.optimizer.kwargs.eps", "line 9, training.distributed.config",
        "line 11, runs[0].params.lora_dropout", "line 12, runs[1].training.optimizer.name"]
    assert f"no such folder '{tmp_path / 'no-model'}'" in e.value.problems[0]
    assert "unknown optimiser 'Adamw'" in e.value.problems[-1]


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_the_line_map_agrees_with_the_document_everywhere(path):
    from bench.core.yamlio import Lines, line_of, load_yaml

    doc = load_yaml(path)
    lines, places, stack = Lines(doc), [], [((), doc)]
    while stack:
        loc, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            places.append((*loc, key))
            stack.append(((*loc, key), value))
    assert len(places) > 20
    for loc in places + [(*places[0], "not-there"), ("not-there",)]:
        assert lines.of(loc) == line_of(doc, loc), loc


def test_a_nul_byte_in_a_path_is_a_problem_not_a_crash(tmp_path):
    """Found by the fuzzer: resolving such a path raised ValueError out of load_suite."""
    text = (ROOT / "suites" / "smoke.yaml").read_text().replace("path: ../data/smoke.jsonl", 'path: "\\0"')
    assert '"\\0"' in text
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    assert [p.split(": no such file")[0] for p in e.value.problems] == ["line 12, dataset.path"]
