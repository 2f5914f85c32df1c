"""The regression gate: the committed smoke baseline passes against itself, injected regressions fail it, and
records that are not like with like are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.choose.reference import load_side, parse_reference, save_reference
from bench.cli import main
from bench.choose.compare import Comparison, Row, compare, settings_from, verdict
from bench.core.records import RecordError, RunRecord, load_records, write_record
from bench.core.regression import Regression, Tolerance
from bench.report.gate import render_markdown
from bench.spec.suite import load_suite
from bench.core.yamlio import SuiteError
from tests.conftest import with_config

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "baselines" / "smoke.json"


@pytest.fixture(scope="module")
def committed() -> list[RunRecord]:
    # The suite's own regression section (peak memory at +30%) is tested on its own; start from the defaults.
    return [with_config(r, regression=Regression()) for r in load_side(BASELINE)]


def as_folder(records: list[RunRecord], folder: Path) -> Path:
    for r in records:
        write_record(folder / f"{r.run}.json", r)
    return folder


def edited(records: list[RunRecord], run: str, **changes) -> list[RunRecord]:
    """Copies of the records, with one run's fields replaced (metrics merged key by key)."""
    out = []
    for r in records:
        if r.run == run:
            update = dict(changes)
            if "metrics" in update:
                update["metrics"] = {**r.metrics, **update["metrics"]}
            r = r.model_copy(deep=True, update=update)
        out.append(r)
    return out


def gate(capsys, *argv) -> tuple[int, str, str]:
    code = main(["compare", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- the committed baseline ---------------------------------------------------------------------------------


def test_committed_baseline_covers_every_smoke_run_and_all_succeeded(committed):
    suite = load_suite(ROOT / "suites" / "smoke.yaml")
    assert sorted(r.run for r in committed) == sorted(c.run for c in suite.resolved_runs())
    assert all(r.status == "success" for r in committed)


def test_committed_baseline_matches_the_smoke_suite_config(committed, monkeypatch):
    """A changed smoke suite needs a new baseline (scripts/ci_gate.sh would compare unlike runs otherwise)."""
    monkeypatch.chdir(ROOT)  # data paths resolve as scripts/ci_gate.sh resolves them: relative to the repository
    skip = ("config_hash", "regression")

    def comparable(config):
        # Data paths are absolute, so they name the checkout; the data fingerprint is what the gate checks.
        out = {k: v for k, v in config.model_dump(mode="json").items() if k not in skip}
        out["dataset"] = {k: v for k, v in out["dataset"].items() if k not in ("path", "eval_path")}
        return json.loads(json.dumps(out))

    by_run = {r.run: r for r in committed}
    for cfg in load_suite("suites/smoke.yaml").resolved_runs():
        assert comparable(by_run[cfg.run].config) == comparable(cfg), (
            f"baselines/smoke.json is stale for run {cfg.run}: rerun the smoke suite and "
            "python -m bench save-baseline")


def test_gate_passes_on_the_baseline_itself(committed, tmp_path, capsys):
    code, out, err = gate(capsys, BASELINE, as_folder(committed, tmp_path))
    assert code == 0, out + err
    assert out.startswith("### Regression gate: PASS\n")
    assert f"0 of {len(compare(committed, committed, Regression()).rows)} checks over {len(committed)} runs fail the gate" in out
    assert err == ""  # same environment: no warnings


def test_baseline_file_round_trips(committed, tmp_path):
    save_reference(committed, tmp_path / "b.json")
    assert load_side(tmp_path / "b.json") == committed
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind


# ---- injected regressions -------------------------------------------------------------------------------------


def test_doubled_peak_memory_fails_the_gate(committed, tmp_path, capsys):
    lora = next(r for r in committed if r.run == "lora")
    current = edited(committed, "lora", metrics={"peak_memory_bytes": 2 * lora.metrics["peak_memory_bytes"]})
    code, out, _ = gate(capsys, BASELINE, as_folder(current, tmp_path))
    assert code == 1
    assert out.startswith("### Regression gate: FAIL\n")
    row = next(line for line in out.splitlines() if line.startswith("| lora | peak memory (training) |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[4].endswith("(+100.0%)") and cells[5:] == ["↓", "±10%", "**regression**"]


def test_lower_score_fails_the_gate(committed, tmp_path, capsys):
    # The tiny random model scores 0 everywhere, so the baseline is the side given a score to lose.
    save_reference(edited(committed, "ia3", metrics={"token_f1": 0.5}), tmp_path / "baseline.json")
    code, out, _ = gate(capsys, tmp_path / "baseline.json", as_folder(committed, tmp_path / "current"))
    assert code == 1
    assert "| ia3 | token F1 | 0.500 | 0.000 | -0.500 (-100.0%) | ↑ | ±0.02 | **regression**" in out


def test_higher_eval_loss_fails_and_lower_is_an_improvement(committed):
    full = next(r for r in committed if r.run == "full").metrics["eval_loss"]
    # 0.004 is what a fix to packed attention moved the smoke losses by: the gate must see a change that size.
    worse = compare(committed, edited(committed, "full", metrics={"eval_loss": full + 0.004}), Regression())
    better = compare(committed, edited(committed, "full", metrics={"eval_loss": full - 0.004}), Regression())
    within = compare(committed, edited(committed, "full", metrics={"eval_loss": full + 0.0005}), Regression())
    pick = lambda c: next(r for r in c.rows if r.run == "full" and r.metric == "eval_loss")  # noqa: E731
    assert (pick(worse).verdict, pick(better).verdict, pick(within).verdict) == ("regression", "improved", "ok")
    assert worse.failed and not better.failed and not within.failed


def test_failed_run_fails_the_gate(committed, tmp_path, capsys):
    current = edited(committed, "qlora", status="failed", error="RuntimeError: boom")
    current = [r.model_copy(update={"metrics": {}}) if r.run == "qlora" else r for r in current]
    code, out, _ = gate(capsys, BASELINE, as_folder(current, tmp_path))
    assert code == 1
    assert "| qlora | status | success | failed | - |  |  | **regression** |" in out


def test_missing_run_and_missing_metric_fail_the_gate(committed):
    without_p = [r for r in committed if r.run != "p_tuning"]
    c = compare(committed, without_p, Regression())
    assert [(r.run, r.metric, r.verdict) for r in c.regressions] == [("p_tuning", "run", "missing")]
    no_loss = [r.model_copy(update={"metrics": {k: v for k, v in r.metrics.items() if k != "eval_loss"}})
               if r.run == "lora" else r for r in committed]
    assert [(r.run, r.metric, r.verdict) for r in compare(committed, no_loss, Regression()).regressions] == [
        ("lora", "eval_loss", "missing")]


def test_nan_loss_is_a_regression_not_silently_ok():
    assert verdict("lower", 5.0, float("nan"), 0.02) == "regression"
    assert verdict("higher", 0.5, float("nan"), 0.02) == "regression"


def test_counts_regress_in_either_direction():
    assert verdict("none", 6, 5, 0) == "regression"
    assert verdict("none", 6, 7, 0) == "regression"
    assert verdict("none", 6, 6, 0) == "ok"


def test_time_is_reported_but_not_gated_unless_a_suite_asks(committed):
    # The gated time is the steady one (bench.core.headline.TIME): warm-up left out.
    slow = edited(committed, "lora", metrics={"steady_train_seconds": 10 * next(
        r for r in committed if r.run == "lora").metrics["steady_train_seconds"]})
    on_gpu = [r.model_copy(update={"environment": {**r.environment, "device_type": "cuda"}}) for r in slow]
    by_default = compare(committed, on_gpu, Regression())
    row = next(r for r in by_default.rows if r.run == "lora" and r.metric == "steady_train_seconds")
    assert (row.verdict, row.gated, by_default.failed) == ("regression", False, False)
    assert "regression (not gated)" in render_markdown(by_default)
    gpu_only = Regression(warn_only=[], warn_only_on_cpu=["steady_train_seconds"])
    assert compare(committed, on_gpu, gpu_only).failed
    assert not compare(committed, slow, gpu_only).failed  # the committed records ran on a CPU


def test_the_gate_judges_the_steady_time_not_the_warmup(committed):
    strict = Regression(warn_only=[])  # time gated, as a suite on a card of its own would
    lora = next(r for r in committed if r.run == "lora")
    # A slower warm-up (kernel selection, allocator growth) moves the whole run's time, not the steady one: ok.
    warm = edited(committed, "lora", metrics={"train_seconds": 10 * lora.metrics["train_seconds"],
                                              "warmup_seconds": 10 * lora.metrics["warmup_seconds"] + 1})
    c = compare(committed, warm, strict)
    assert not c.failed and "train_seconds" not in {r.metric for r in c.rows}
    row = next(r for r in c.rows if r.run == "lora" and r.metric == "steady_train_seconds")
    assert (row.verdict, row.gated, row.tolerance) == ("ok", True, "±25%")
    slow = edited(committed, "lora", metrics={"steady_train_seconds": 1.3 * lora.metrics["steady_train_seconds"]})
    assert compare(committed, slow, strict).failed


# ---- like with like ---------------------------------------------------------------------------------------------


def test_different_dataset_is_refused_unless_forced(committed, tmp_path, capsys):
    current = [r.model_copy(update={"data": r.data.model_copy(update={"fingerprint": "0000000000000000"})})
               for r in committed]
    folder = as_folder(current, tmp_path / "current")
    code, out, err = gate(capsys, BASELINE, folder, "--markdown", tmp_path / "refused.md")
    assert code == 2
    assert out == ""
    fp = committed[0].data.fingerprint
    assert err.splitlines() == [
        f'not comparable: data.fingerprint differs: reference "{fp}", current "0000000000000000" '
        f'(all {len(committed)} runs)',
        "Store new reference records for the changed suite (bench save-reference), or compare anyway with --force.",
    ]
    assert "not like with like" in (tmp_path / "refused.md").read_text()
    code, out, _ = gate(capsys, BASELINE, folder, "--force", "--markdown", tmp_path / "forced.md")
    assert code == 0
    assert "**Compared with --force although the two sides are not like with like:**" in out
    assert (tmp_path / "forced.md").read_text() == out


def test_suite_version_and_model_differences_each_get_one_line(committed):
    current = [with_config(r, suite_version=2) for r in committed]
    current = edited(current, "lora", model_info={"source": "preset", "preset": "tinyllama-1.1b"})
    refusals = compare(committed, current, Regression()).refusals
    assert refusals == [
        f"config.suite_version differs: reference 1, current 2 (all {len(committed)} runs)",
        'model_info.preset differs: reference "tiny-llama", current "tinyllama-1.1b" (run lora)',
    ]


def test_environment_differences_warn_but_compare(committed, tmp_path, capsys):
    current = [r.model_copy(update={"environment": {**r.environment, "device": "cpu (Other)",
                                                    "packages": {**r.environment["packages"], "peft": "9.9"}}})
               for r in committed]
    code, out, err = gate(capsys, BASELINE, as_folder(current, tmp_path))
    assert code == 0
    assert "warning: environment differs: environment.device differs: reference " in err
    assert 'environment.packages.peft differs: reference "' in err and f'current "9.9" (all {len(committed)} runs)' in err
    assert "Environment differs" in out


def test_memory_is_not_gated_across_environments(committed, tmp_path, capsys):
    """Another machine's libraries change the process's footprint (a CUDA build of torch: +70% RSS measured)."""
    lora = next(r for r in committed if r.run == "lora")
    current = edited(committed, "lora", metrics={"peak_memory_bytes": 2 * lora.metrics["peak_memory_bytes"]})
    current = [r.model_copy(update={"environment": {**r.environment, "packages": {
        **r.environment["packages"], "torch": "2.13.0"}}}) for r in current]
    code, out, _ = gate(capsys, BASELINE, as_folder(current, tmp_path))
    assert code == 0
    assert "| lora | peak memory (training) |" in out and "regression (not gated)" in out
    assert ("- peak_memory_bytes, cuda_max_allocated_bytes, steady_train_seconds: not gated where the environment "
            "differs") in out


def test_not_a_baseline_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "x.json").write_text("[1, 2]")
    code, _, err = gate(capsys, tmp_path / "x.json", tmp_path)
    assert code == 2
    assert err.startswith(f"{tmp_path / 'x.json'}: not a stored reference file")
    with pytest.raises(RecordError, match="no such results folder or reference file"):
        load_side(tmp_path / "nope")


# ---- settings ---------------------------------------------------------------------------------------------------


def test_suite_regression_section_overrides_defaults_metric_by_metric(tmp_path):
    text = (ROOT / "suites" / "smoke.yaml").read_text().split("\nregression:")[0].replace("../data/", str(ROOT / "data") + "/")
    text += textwrap.dedent("""
        regression:
          tolerances:
            peak_memory_bytes: {relative: 0.5}
          warn_only: [final_train_loss]
    """)
    (tmp_path / "s.yaml").write_text(text)
    r = load_suite(tmp_path / "s.yaml").regression
    assert r.tolerance("peak_memory_bytes") == Tolerance(relative=0.5)
    assert r.tolerance("eval_loss") == Tolerance(absolute=0.001)  # the other defaults stay
    assert not r.gated("final_train_loss", "cuda") and r.gated("eval_loss", "cpu")


def test_suite_regression_typos_are_reported_with_their_line(tmp_path):
    text = (ROOT / "suites" / "smoke.yaml").read_text().split("\nregression:")[0].replace("../data/", str(ROOT / "data") + "/")
    n = text.count("\n")
    text += "regression:\n  tolerance: {}\n  warn_only: [peak_memroy_bytes]\n"
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(SuiteError) as e:
        load_suite(tmp_path / "s.yaml")
    assert e.value.problems == [
        f"line {n + 2}, regression.tolerance: unknown key 'tolerance' (did you mean 'tolerances'?)",
        f"line {n + 3}, regression.warn_only: unknown metric 'peak_memroy_bytes' (did you mean 'peak_memory_bytes'?), "
        "got ['peak_memroy_bytes']",
    ]


def test_tolerance_needs_exactly_one_kind():
    with pytest.raises(ValueError, match="exactly one of absolute or relative"):
        Tolerance(absolute=0.1, relative=0.1)


def test_settings_come_from_the_current_records(committed):
    assert settings_from(committed) == Regression()
    loose = Regression(tolerances={"eval_loss": {"absolute": 1.0}})
    stored = [with_config(r, regression=loose) for r in committed]
    assert settings_from(stored).tolerance("eval_loss") == Tolerance(absolute=1.0)


# ---- rendering --------------------------------------------------------------------------------------------------


def test_markdown_golden():
    c = Comparison(
        rows=[
            Row("lora", "eval_loss", 5.7347, 5.7347, "ok", True, "lower", "±0.001", 0.0, 0.0),
            Row("lora", "peak_memory_bytes", 500 * 2**20, 1000 * 2**20, "regression", True, "lower", "±10%",
                500 * 2**20, 1.0),
            Row("lora", "train_seconds", 1.0, 2.0, "regression", False, "lower", "±25%", 1.0, 1.0),
            Row("full", "status", "success", "failed", "regression"),
        ],
        warnings=['environment.packages.peft differs: reference "0.21.2", current "0.22.0" (all 2 runs)'],
    )
    changed = """\
| run | metric | reference | current | Δ | better | tolerance | verdict |
|---|---|---:|---:|---:|:---:|---:|---|
| lora | peak memory (training) | 500.0 MB | 1000.0 MB | +500.0 MB (+100.0%) | ↓ | ±10% | **regression** |
| lora | train time | 1.0 | 2.0 | +1.0 (+100.0%) | ↓ | ±25% | regression (not gated) |
| full | status | success | failed | - |  |  | **regression** |"""
    assert render_markdown(c) == f"""\
### Regression gate: FAIL

2 of 4 checks over 2 runs fail the gate; 1 more outside tolerance but not gated; 0 improved.

Environment differs (numbers may move for reasons outside the code):
- environment.packages.peft differs: reference "0.21.2", current "0.22.0" (all 2 runs)

{changed}

<details><summary>All 4 checks</summary>

| run | metric | reference | current | Δ | better | tolerance | verdict |
|---|---|---:|---:|---:|:---:|---:|---|
| lora | eval loss | 5.7347 | 5.7347 | +0.0000 | ↓ | ±0.001 | ok |
{changed.split(chr(10), 2)[2]}

</details>
"""


# ---- the stored-baseline command ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["save-reference", "save-baseline"])  # the old name stays accepted
def test_save_reference_command_refuses_failed_runs(committed, tmp_path, command):
    folder = as_folder(edited(committed, "ia3", status="failed"), tmp_path / "res")
    cmd = [sys.executable, "-m", "bench", command, str(folder), str(tmp_path / "b.json")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and "not every run succeeded (ia3)" in p.stderr
    folder = as_folder(committed, tmp_path / "ok")
    cmd[-2] = str(folder)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert parse_reference((tmp_path / "b.json").read_text(), "b.json") == load_records(folder)


def test_misspelt_metric_names_are_errors_with_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown metric 'peak_memroy_bytes' \(did you mean 'peak_memory_bytes'\?\)"):
        Regression(tolerances={"peak_memroy_bytes": {"relative": 0.2}})
    with pytest.raises(ValueError, match="unknown metric 'train_secs'"):
        Regression(warn_only=["train_secs"])
    assert Regression(tolerances={"hub:bleu": {"absolute": 0.05}}).tolerance("bleu") == Tolerance(absolute=0.05)


def test_pipes_in_metric_labels_are_escaped(committed):
    settings = Regression(tolerances={"merge_max_abs_logit_diff": {"absolute": 1e-4}})
    text = render_markdown(compare(committed, committed, settings))
    assert "| lora | merge max \\|Δlogit\\| | " in text
