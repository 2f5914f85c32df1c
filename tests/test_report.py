"""Reports from fixed records: the golden Markdown, Pareto fronts, best marks, failures, warnings, CSV."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.core.records import Prediction, load_records
from bench.report.content import labels, summary_table
from bench.report.provenance import config_sections, data_notes, warnings
from bench.report.markdown import render_markdown
from bench.report.write import write_csv, write_reports
from bench.analysis.stats import pareto_front
from tests.conftest import with_config

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "records"
GOLDEN = ROOT / "reports" / "golden" / "report.md"


@pytest.fixture
def records():
    return load_records(FIXTURES)


@pytest.fixture
def folder(tmp_path):
    """A results folder holding copies of the fixture records, free to change."""
    out = tmp_path / "results"
    shutil.copytree(FIXTURES, out)
    return out


def test_markdown_matches_golden(records):
    got, want = render_markdown(records), GOLDEN.read_text(encoding="utf-8")
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "rendered", n=1))
    assert got == want, f"report.md changed; if intended, run `python scripts/regen_golden.py`:\n{diff[:4000]}"


def test_pareto_front_lower_x_higher_y():
    pts = [(1, 0.5, "a"), (2, 0.7, "b"), (3, 0.6, "c"), (4, 0.9, "d"), (2, 0.4, "e"), (1, 0.5, "f")]
    # c loses to b (cheaper and better), e to a; a and f are the same point, so neither beats the other.
    assert pareto_front(pts) == [(1, 0.5, "a"), (1, 0.5, "f"), (2, 0.7, "b"), (4, 0.9, "d")]


def test_pareto_front_higher_x_lower_y():
    pts = [(1, 0.5, "a"), (2, 0.7, "b"), (3, 0.6, "c"), (4, 0.9, "d"), (2, 0.4, "e")]
    # Now big x and small y win: b loses to c, a to e; d, c and e each win on one axis.
    assert pareto_front(pts, x_better="higher", y_better="lower") == [(4, 0.9, "d"), (3, 0.6, "c"), (2, 0.4, "e")]


def test_pareto_front_of_one_and_none():
    assert pareto_front([(5.0, 1.0)]) == [(5.0, 1.0)]
    assert pareto_front([]) == []


def test_best_marks_follow_metric_direction_and_skip_ties(records):
    table = summary_table(records)
    col = {h: i for i, h in enumerate(table.headers)}
    best = {h: [r.cells[0].text for r in table.rows if r.cells[i].best] for h, i in col.items()}
    assert best["peak mem"] == ["prompt_tuning"]  # lower is better
    assert best["tok/s"] == ["prompt_tuning"]  # higher is better
    assert best["eval loss"] == ["full"]  # the baseline's lower-than-some loss never counts
    assert best["exact match"] == []  # every run scored 0.000: a tie, not a best
    lora = next(r for r in table.rows if r.cells[0].text == "lora")
    assert lora.cells[col["token F1"]].note == "base 0.000"
    assert lora.cells[col["trainable params"]].text == "16,384"
    assert lora.cells[col["trainable params"]].note == "12.4696%"


def steady(record, seconds: float, tokens_per_second: float, warmup_steps: int, warmup_seconds: float):
    """A copy of a record as the loop writes it now: the steady figures beside the whole run's."""
    return record.model_copy(deep=True, update={"metrics": {
        **record.metrics, "steady_train_seconds": seconds, "steady_tokens_per_second": tokens_per_second,
        "warmup_steps": warmup_steps, "warmup_seconds": warmup_seconds}})


def test_the_headline_time_and_throughput_are_steady_with_the_warmup_beside_them(records):
    # full's warm-up is most of its run: whole run 0.179 s at 29,889 tok/s, steady 0.05 s at 70,000 tok/s.
    full = next(r for r in records if r.run == "full")
    assert round(full.metrics["train_seconds"], 2) == 0.18 and round(full.metrics["train_tokens_per_second"]) == 29889
    now = [steady(r, 0.05, 70000.0, 5, 0.129) if r.run == "full" else r for r in records]
    table = summary_table(now)
    col = {h: i for i, h in enumerate(table.headers)}
    row = next(r for r in table.rows if r.cells[0].text == "full")
    assert [row.cells[col[h]].text for h in ("train s", "tok/s", "warm-up")] == ["0.1", "70,000", "5 steps, 0.1 s"]
    # The steady figures are judged among themselves: full's is the only one, so none is marked best ...
    assert not row.cells[col["tok/s"]].best and not row.cells[col["train s"]].best
    # ... and the older records keep their whole-run figures, marked, with the mark explained under the table.
    lora = next(r for r in table.rows if r.cells[0].text == "lora")
    shown = [lora.cells[col[h]].text for h in ("train s", "tok/s", "warm-up")]
    assert shown == ["0.2 †", "22,910 †", "-"]
    assert any(n.startswith("† whole run, warm-up included") for n in table.notes.values())
    assert any(n.startswith("train s and tok/s leave out the first steps") for n in table.notes.values())
    md = render_markdown(now)
    assert "| full | 115,008 (100.0000%) | 538.0 MB | 0.1 | 70,000 | 5 steps, 0.1 s |" in md
    assert "- exact match vs train time, steady (s): full (0.1, 0.000)" in md  # golden: prompt_tuning †


def test_steady_figures_of_every_run_are_marked_best_among_themselves(records):
    numbers = {"full": (0.3, 9000.0), "lora": (0.02, 80000.0), "qlora": (0.04, 60000.0), "prompt_tuning": (0.1, 1.0)}
    now = [steady(r, *numbers[r.run], 3, 0.01) if r.run in numbers else r for r in records]
    table = summary_table(now)
    col = {h: i for i, h in enumerate(table.headers)}
    best = {h: [r.cells[0].text for r in table.rows if r.cells[col[h]].best] for h in ("train s", "tok/s")}
    # Whole-run, prompt_tuning was best on both (0.09 s, 56,517 tok/s); steady, lora is.
    assert best == {"train s": ["lora"], "tok/s": ["lora"]}
    assert not any("†" in c.text for r in table.rows for c in r.cells)
    assert not any(n.startswith("†") for n in table.notes.values())


def test_each_headline_figure_is_marked_on_its_own(records):
    # Records from before steady_train_seconds held the steady throughput already (docs/results/quickstart.json).
    now = [r.model_copy(deep=True, update={"metrics": {**r.metrics, "steady_tokens_per_second": 33.0}})
           if r.run == "lora" else r for r in records]
    table = summary_table(now)
    col = {h: i for i, h in enumerate(table.headers)}
    lora = next(r for r in table.rows if r.cells[0].text == "lora")
    assert [lora.cells[col[h]].text for h in ("train s", "tok/s", "warm-up")] == ["0.2 †", "33", "-"]
    # lora's steady 33 tok/s is judged alone among the steady figures (no mark); the whole-run ones are not.
    assert [r.cells[0].text for r in table.rows if r.cells[col["tok/s"]].best] == []


def test_failed_record_is_a_failed_row_with_its_error(records):
    md = render_markdown(records)
    assert "| lora-typo (lora) | - | - | - | - | - | - | - | - | - | - | - | - | failed |" in md  # serve as-is: "-"
    assert "### lora-typo (lora): failed at step 0" in md
    # The headline is the exception, not the traceback's first line.
    section = md.split("## Runs that did not finish")[1]
    assert section.split("\n\n")[2] == ("peft.utils.error.NoMatchingPeftModuleError: Target modules {'q_prj'} not "
                                         "found in the base model. Please check the target modules and try again.")
    assert "in inject_adapter" in section  # the full error follows


def test_removing_a_record_drops_it_from_the_reports(folder):
    md_path, html_path = write_reports(folder)
    assert (md_path.name, html_path.name) == ("report.md", "report.html")
    before = md_path.read_text()
    assert "| qlora |" in before and "qlora" in html_path.read_text()
    (folder / "qlora.json").unlink()
    write_reports(folder)
    after = md_path.read_text()
    assert "qlora" not in after and "qlora" not in html_path.read_text()
    assert "| lora |" in after and "5 runs, 1 did not finish" in after
    assert after == render_markdown(load_records(folder))


def test_reports_ignore_history_and_run_folders(folder):
    # A replaced record in history/ and a run's config.json must not become rows.
    (folder / "history").mkdir()
    shutil.copy(folder / "lora.json", folder / "history" / "lora.20260101T000000.json")
    (folder / "lora").mkdir()
    (folder / "lora" / "config.json").write_text((folder / "lora.json").read_text())
    write_reports(folder)
    assert (folder / "report.md").read_text() == GOLDEN.read_text()


def test_no_warnings_for_like_records(records):
    assert warnings(records) == []


def test_warnings_name_what_differs_and_where(records):
    def on_a_gpu(r):
        env = {**r.environment, "device": "NVIDIA H100 80GB HBM3",
               "packages": {**r.environment["packages"], "peft": "0.18.0"}}
        return with_config(r, suite_version=2).model_copy(update={
            "environment": env, "data": r.data.model_copy(update={"fingerprint": "0000"})})

    changed = [on_a_gpu(r) if r.run == "qlora" else r for r in records]
    got = warnings(changed)
    assert "Records differ in suite version: 1 (baseline, full, lora, prompt_tuning, lora-typo); 2 (qlora)." in got[0]
    assert got[1].startswith("Records differ in dataset fingerprint: 7bf018eb30ef635b (baseline, full, lora, "
                             "prompt_tuning); 0000 (qlora).")
    assert got[2].startswith("Records differ in device: cpu (AMD EPYC) (baseline, full, lora, prompt_tuning); "
                             "NVIDIA H100 80GB HBM3 (qlora).")
    assert got[3].startswith("Records differ in peft: 0.21.2 (baseline, full, lora, prompt_tuning); 0.18.0 (qlora).")
    assert len(got) == 4
    assert "## Warnings" in render_markdown(changed)


def test_runs_are_grouped_by_machine_and_a_suite_on_two_device_types_is_warned(records):
    from bench.core.records import LostAttempt, Placement
    from bench.report.provenance import environment

    cpu = "cpu (AMD EPYC)"

    def placed(r, node="a", device=cpu, ip=None, attempt=1):
        lost = [LostAttempt(attempt=1, node="b", error="NodeDiedError: ...")] if attempt > 1 else []
        where = Placement(node=node, device_name=device, ray_node=ip and f"{node}-id-0123456789", ray_node_ip=ip,
                          attempt=attempt, lost=lost)
        return r.model_copy(update={"placement": where})

    alike = [placed(r) for r in records]
    assert warnings(alike) == []
    assert ("machine", "a: cpu (AMD EPYC)") in environment(alike)
    gpu = "NVIDIA H100 80GB HBM3"
    mixed = [placed(r, "gpu1", gpu, "10.0.0.2", attempt=2) if r.run == "qlora" else placed(r, ip="10.0.0.1")
             for r in records]
    # A device of its own for qlora, as the environment would say too; the warning names machines and runs.
    mixed = [r.model_copy(update={"environment": {**r.environment, "device": gpu}}) if r.run == "qlora" else r
             for r in mixed]
    (got,) = warnings(mixed)
    assert got == ("Runs of suite smoke ran on different device types: cpu (AMD EPYC) on a (10.0.0.1) "
                   "(baseline, full, lora, prompt_tuning, lora-typo); NVIDIA H100 80GB HBM3 on gpu1 (10.0.0.2) "
                   "(qlora). Their times, memory and throughput do not compare like with like.")
    rows = dict(environment(mixed))
    assert rows["machine"] == ("a (10.0.0.1): cpu (AMD EPYC) (baseline, full, lora, prompt_tuning, lora-typo); "
                               "gpu1 (10.0.0.2): NVIDIA H100 80GB HBM3 (qlora)")
    assert rows["Ray node"] == "a-id-012 (baseline, full, lora, prompt_tuning, lora-typo); gpu1-id- (qlora)"
    assert rows["retried after a lost node"] == "qlora (attempt 2)"
    assert "| machine |" in render_markdown(mixed)


def test_missing_baseline_is_a_warning(records):
    got = warnings([r for r in records if r.method != "baseline"])
    assert got == ["No successful baseline run: scores have no untrained reference beside them."]


def test_same_run_name_from_two_suites_gets_suite_prefix(records):
    lora = next(r for r in records if r.run == "lora")
    other = lora.model_copy(update={"suite": "other"})
    assert sorted(labels([lora, other]).values()) == ["other/lora", "smoke/lora"]
    assert any(w.startswith("Records differ in suite: smoke (smoke/lora); other (other/lora).")
               for w in warnings([lora, other]))


def test_config_shows_shared_settings_once_and_differences_per_run(records):
    shared, per_run = config_sections(records)
    shared = dict(shared)
    assert shared["budget.max_steps"] == "6" and shared["model.preset"] == "tiny-llama"
    assert "training.learning_rate" not in shared
    rows = {run: (params, other) for run, params, other in per_run}
    assert rows["prompt_tuning"] == ("num_virtual_tokens=8, prompt_tuning_init=RANDOM",
                                     "method_version=1, training.learning_rate=0.01")
    assert rows["lora-typo"][0] == 'r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_prj"], use_dora=false'
    assert rows["baseline"] == ("-", "method_version=0, training.learning_rate=0.001")


def test_data_notes_count_skipped_and_truncated_rows(records):
    lora = next(r for r in records if r.run == "lora")
    odd = lora.model_copy(update={"data": lora.data.model_copy(update={"skipped": {"empty response": 2},
                                                                      "truncated": 3})})
    notes = data_notes([odd])
    assert notes == [("suites/../data/smoke.jsonl: 40 train rows, 8 eval rows; skipped 2 (empty response); "
                      "3 truncated to max_seq_len 384 (fingerprint 7bf018eb30ef635b)")]


def test_csv_has_raw_numbers_and_error_headlines(folder):
    path = write_csv(folder, load_records(folder))
    assert path == folder / "summary.csv"
    frame = pd.read_csv(path)
    assert list(frame["run"]) == ["baseline", "full", "lora", "qlora", "prompt_tuning", "lora-typo"]
    assert frame.set_index("run").loc["lora", "peak_memory_bytes"] == 569602048
    # An older record's time is the whole run's, and the CSV says so beside it.
    lora = frame.set_index("run").loc["lora"]
    assert (round(lora["steady_train_seconds"], 4), lora["whole_run"]) == (0.234, "steady_train_seconds "
                                                                          "steady_tokens_per_second")
    failed = frame.set_index("run").loc["lora-typo"]
    assert failed["status"] == "failed"
    assert failed["error"].startswith("peft.utils.error.NoMatchingPeftModuleError: Target modules {'q_prj'}")


def test_markdown_escapes_free_text(records):
    full = next(r for r in records if r.run == "full")
    tricky = full.model_copy(update={"predictions": [
        Prediction(prompt="# heading?\nline two", reference="a | b", prediction="*x* <b>y</b>\nz `q`")]})
    md = render_markdown([tricky])
    assert "| full | \\*x\\* \\<b\\>y\\</b\\>↵z \\`q\\` |" in md
    assert "| *reference* | a \\| b |" in md
    assert "> \\# heading?\n> line two" in md


def test_merged_folder_keeps_two_runs_of_the_same_suite_apart(folder):
    # Two result folders copied under one: the same run of the same suite, started at different times.
    (folder / "again").mkdir()
    lora = next(r for r in load_records(folder) if r.run == "lora")
    (folder / "again" / "lora.json").write_text(
        lora.model_copy(update={"started_at": "2026-12-01T09:00:00+00:00"}).model_dump_json())
    md = render_markdown(load_records(folder))
    assert "| smoke/lora @ 2026-11-28T01:50:48+00:00 |" in md
    assert "| smoke/lora @ 2026-12-01T09:00:00+00:00 |" in md
    assert "7 runs, 1 did not finish" in md
