"""The choice rule: the cheapest method not significantly worse than the best (paired tests over the eval examples
with one seed, Welch's t-test with seeds), the tie it names, the noise it owns up to, and --servable."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.core.records import Prediction, ScoreInterval, write_record
from bench.choose.recommend import Constraints, SEEDS_HINT, explain, recommend, render_text
from bench.core.scoring import interval
from tests.handmade import GB, KB, MB, record, seeded_records


def scored(name: str, method: str, right: list[int], memory: float, seconds: float, size: float, params: int,
           started: int, store_values: bool = True):
    """A one-seed run whose exact match is the mean of `right` (1 right, 0 wrong per eval example)."""
    values = [float(v) for v in right]
    low, high, how = interval(values)
    metrics = {"exact_match": sum(values) / len(values), "eval_loss": 0.1 + started / 100,
               "peak_memory_bytes": memory, "train_seconds": seconds, "steady_train_seconds": seconds,
               "trainable_params": params}
    metrics |= {"checkpoint_bytes": size} if method == "full" else {"adapter_bytes": size}
    iv = ScoreInterval(low=low, high=high, method=how, n=len(values), values=values if store_values else None)
    return record(name, method, metrics, started=started).model_copy(update={"intervals": {"exact_match": iv}})


ALL = [1] * 30
ONE_WRONG = [1] * 29 + [0]


def quickstart_like():
    """The quickstart's case: four methods right on all 30 examples, LoRA on 29, at very different costs."""
    return [record("baseline", "baseline", {"exact_match": 0.0, "peak_memory_bytes": 0.5 * GB}),
            scored("full", "full", ALL, 1.6 * GB, 120, 513 * MB, 134_000_000, 1),
            scored("lora", "lora", ONE_WRONG, 1.1 * GB, 60, 9.4 * MB, 2_400_000, 2),
            scored("qlora", "qlora", ALL, 1.0 * GB, 90, 9.4 * MB, 2_400_000, 3),
            scored("ia3", "ia3", ALL, 0.85 * GB, 40, 236 * KB, 60_000, 4),
            scored("p_tuning", "p_tuning", ALL, 0.9 * GB, 30, 300 * KB, 200_000, 5)]


@pytest.mark.parametrize("prefer, chosen", [("memory", "ia3"), ("time", "p_tuning"), ("size", "ia3"),
                                            ("params", "ia3"), ("score", "full")])
def test_four_tied_methods_the_cheapest_by_priority_wins(prefer, chosen):
    rec = recommend(quickstart_like(), prefer=prefer)
    assert rec.best.name == "full"  # the best score, then the lowest eval loss
    assert rec.choice.name == chosen
    assert sorted(v.group.name for v in rec.tied) == ["ia3", "lora", "p_tuning", "qlora"]
    lora = next(v for v in rec.versus if v.group.name == "lora")
    assert lora.how == "McNemar's exact test: 1 vs 0 of 30 examples right for one run only, p = 1"


def test_the_reason_names_the_tie_and_what_the_choice_saves():
    e = explain(recommend(quickstart_like()))
    assert e.headline == "Recommended: ia3 (exact match 1.000)"
    assert e.reason == (
        "ia3 needs the least peak memory (870.4 MB) of the 5 methods whose exact match is not significantly worse "
        "than the best, full (1.000). Tied with it: full 1.000, 1.6 GB (the best score); qlora 1.000, 1.0 GB (the "
        "same score); p_tuning 1.000, 921.6 MB (the same score); lora 0.967, 1.1 GB (McNemar's exact test: 1 vs 0 "
        "of 30 examples right for one run only, p = 1). Against full it is better on peak memory (1.9x less: 870.4 MB "
        "vs 1.6 GB), training time (3.0x faster: 40 s vs 120 s) and size on disk (2226x smaller: 236.0 KB vs "
        "513.0 MB).")
    assert SEEDS_HINT in e.details and "`seeds: [0, 1, 2]`" in SEEDS_HINT
    assert ("Chosen as the least peak memory among the methods whose exact match is not significantly worse than "
            "the best (--prefer memory; --prefer score takes the best score).") in e.details


def test_the_gap_to_the_baseline_is_judged_by_the_paired_test_too():
    e = explain(recommend([scored("baseline", "baseline", [0] * 28 + [1] * 2, GB, 0, 0, 0, 0)] +
                          quickstart_like()[1:]))
    assert e.details[0] == ("ia3 beats the untrained baseline on exact match (1.000 vs 0.067), by more than the noise "
                            "of the eval examples (McNemar's exact test: 28 vs 0 of 30 examples right for one run "
                            "only, p = 7.5e-09).")


def test_a_method_significantly_better_on_the_same_examples_wins_whatever_its_cost():
    strong = [1] * 27 + [0] * 3
    weak = [1] * 15 + [0] * 15  # 12 examples only the strong run got right, none the other way: p = 2^-11
    records = [scored("full", "full", strong, 3 * GB, 100, 500 * MB, 10 ** 8, 1),
               scored("ia3", "ia3", weak, 1 * GB, 10, 100 * KB, 10 ** 4, 2)]
    rec = recommend(records)
    assert rec.choice.name == "full" and rec.tied == []
    assert rec.versus[0].worse
    assert rec.versus[0].how.endswith("12 vs 0 of 30 examples right for one run only, p = 0.00049")
    assert explain(rec).reason.startswith(
        "full: exact match 0.900 vs ia3 0.500, a difference the eval examples support (McNemar's exact test: 12 vs 0 "
        "of 30 examples right for one run only, p = 0.00049).")


def test_without_per_example_scores_a_lower_score_is_not_counted_as_a_tie():
    records = [scored("full", "full", ALL, 3 * GB, 100, 500 * MB, 10 ** 8, 1),
               scored("ia3", "ia3", ONE_WRONG, 1 * GB, 10, 100 * KB, 10 ** 4, 2, store_values=False)]
    rec = recommend(records)
    assert rec.choice.name == "full" and rec.versus[0].worse is None
    assert ("Not compared with full, so not counted as tied: ia3 (no per-example scores on the same eval examples "
            "to pair)") in explain(rec).details


def test_records_from_before_per_example_scores_are_rescored_from_their_predictions():
    preds = [Prediction(prompt=f"q{i}", reference=f"a{i}", prediction=f"a{i}" if i else "wrong") for i in range(30)]
    old = scored("ia3", "ia3", ONE_WRONG, 1 * GB, 10, 100 * KB, 10 ** 4, 2, store_values=False).model_copy(
        update={"predictions": preds})
    records = [scored("full", "full", ALL, 3 * GB, 100, 500 * MB, 10 ** 8, 1), old]
    rec = recommend(records)
    assert rec.versus[0].worse is False and rec.choice.name == "ia3"
    # Predictions that do not rescore to the recorded mean are not trusted to stand in for the stored values.
    off = old.model_copy(update={"metrics": {**old.metrics, "exact_match": 0.9}})
    assert recommend([records[0], off]).versus[0].worse is None


def test_with_seeds_welch_decides():
    rec = recommend(seeded_records())
    # full 0.983 vs lora 0.950: Welch does not separate them; ia3 (p = 0.025) and prompt_tuning are worse.
    assert rec.choice.name == "lora" and [v.group.name for v in rec.tied] == ["lora"]
    assert {v.group.name: v.worse for v in rec.versus} == {"lora": False, "ia3": True, "prompt_tuning": True}
    assert all(v.how.startswith("Welch's t-test over seeds") for v in rec.versus)
    # 0.0333 apart, Welch's half-width 0.1027 (3.2 df): a tie, and the text says how large a gap it leaves open.
    assert rec.versus[0].how == "Welch's t-test over seeds, p = 0.39; a gap up to 0.136 is not ruled out"
    assert explain(rec).reason.startswith(
        "lora needs the least peak memory (2.7 GB) of the 2 methods whose exact match is not significantly worse than "
        "the best, full (0.983 ± 0.072; lora against it: Welch's t-test over seeds, p = 0.39; a gap up to 0.136 is "
        "not ruled out). Tied with it: full 0.983 ± 0.072, 3.2 GB (the best score).")
    assert SEEDS_HINT not in explain(rec).details  # three seeds: training noise is measured
    sharper = [r.model_copy(update={"metrics": {**r.metrics, "exact_match": 0.7}}) if r.config.group == "lora"
               else r for r in seeded_records()]
    assert recommend(sharper).choice.name == "full"  # lora at 0.7 on every seed: significantly worse


def test_servable_limit_keeps_adapters_the_stack_loads_as_they_are(tmp_path, capsys):
    rec = recommend(quickstart_like(), Constraints(servable="vllm"))
    assert rec.choice.name == "qlora"  # ia3 must be merged first and P-tuning needs PEFT
    assert [(e.limit, e.excluded) for e in rec.exclusions] == [
        ("--servable vllm", [("ia3", "merge first"), ("p_tuning", "needs PEFT")])]
    for r in quickstart_like():
        write_record(tmp_path / f"{r.run}.json", r)
    assert main(["recommend", str(tmp_path), "--servable", "vLLM"]) == 0
    assert capsys.readouterr().out.startswith("Recommended: qlora (exact match 1.000)\n")
    assert main(["recommend", str(tmp_path), "--servable", "vlm"]) == 2
    assert capsys.readouterr().err.startswith("--servable: unknown serving stack 'vlm' (did you mean 'vllm'?)")
    assert main(["recommend", str(tmp_path), "--prefer", "speed"]) == 2
    assert "--prefer: unknown priority 'speed'" in capsys.readouterr().err


def test_the_command_says_training_noise_is_not_measured(tmp_path, capsys):
    for r in quickstart_like():
        write_record(tmp_path / f"{r.run}.json", r)
    assert main(["recommend", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Recommended: ia3 (exact match 1.000)\nWhy: ia3 needs the least peak memory")
    assert SEEDS_HINT + "\n" in out
    assert render_text(explain(recommend(quickstart_like()))) == out


def test_compare_uses_the_paired_test_between_two_runs_on_the_same_examples():
    from bench.choose.compare import compare
    from bench.core.regression import Regression
    from bench.report.gate import _verdict

    before = scored("lora", "lora", [1] * 27 + [0] * 3, GB, 10, MB, 10, 1)
    worse = scored("lora", "lora", [1] * 15 + [0] * 15, GB, 10, MB, 10, 1)
    row = next(r for r in compare([before], [worse], Regression()).rows if r.metric == "exact_match")
    assert row.verdict == "regression" and row.paired_supported is True
    assert row.paired == "McNemar's exact test: 0 vs 12 of 30 examples right for one run only, p = 0.00049"
    assert _verdict(row) == ("**regression**; beyond the noise of the eval examples by McNemar's exact test: 0 vs 12 "
                             "of 30 examples right for one run only, p = 0.00049")
    close = scored("lora", "lora", [1] * 25 + [0] * 5, GB, 10, MB, 10, 1)
    row = next(r for r in compare([before], [close], Regression()).rows if r.metric == "exact_match")
    assert row.paired_supported is False and "within the noise of the eval examples" in _verdict(row)


def test_costs_within_5_percent_are_the_same_and_the_better_score_decides():
    # The measured quickstart: prefix tuning 26/30 at 1.49 GB ties with full by McNemar (p = 0.125), IA3 30/30 at 1.54.
    records = [scored("full", "full", ALL, 3.05 * GB, 524, 513 * MB, 10 ** 8, 1),
               scored("ia3", "ia3", ALL, 1.54 * GB, 62, 236 * KB, 6 * 10 ** 4, 2),
               scored("prefix_tuning", "prefix_tuning", [1] * 26 + [0] * 4, 1.49 * GB, 298, 720 * KB, 10 ** 5, 3)]
    rec = recommend(records)
    assert [v.worse for v in rec.versus] == [False, False] and rec.choice.name == "ia3"
    assert explain(rec).reason.startswith("ia3 needs the least peak memory within 5% (1.5 GB) of the 3 methods whose "
                                          "exact match is not significantly worse than the best, full (1.000). Costs "
                                          "within 5% count as the same, so the better score decides among them.")
    assert recommend(records[:1] + records[2:]).choice.name == "prefix_tuning"  # 1.49 GB against 3.05: it wins
