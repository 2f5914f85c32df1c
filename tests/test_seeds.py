"""Seeds: one row per suite entry with mean ± 95% interval, the pairs the seeds do not support, compare by group
means; and the real CLI running a suite with seeds [0, 1, 2] end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.choose.compare import compare
from bench.core.records import load_records
from bench.core.regression import Regression
from bench.report.content import doubts, summary_table
from bench.report.gate import render_markdown as compare_markdown
from bench.report.html import render_html
from bench.report.markdown import render_markdown
from bench.report.write import render_csv
from bench.analysis.rows import multi_seed, seed_groups
from tests.conftest import ROOT
from tests.handmade import record, seeded_records
from tests.test_suite import SEEDED


def test_groups_follow_the_config_and_runs_without_seeds_stand_alone():
    records = seeded_records()
    groups = seed_groups(records)
    assert [(g.name, len(g.records), g.seeds) for g in groups] == [
        ("baseline", 1, [0]), ("full", 3, [0, 1, 2]), ("lora", 3, [0, 1, 2]), ("prompt_tuning", 3, [0, 1, 2]),
        ("ia3", 3, [0, 1, 2])]
    assert multi_seed(records)
    # Two copies of one run without seeds (a merged folder) are two rows, as before seeds existed.
    twice = [record("lora", "lora", {"exact_match": 1.0}), record("lora", "lora", {"exact_match": 0.0}, started=5)]
    assert [len(g.records) for g in seed_groups(twice)] == [1, 1] and not multi_seed(twice)


def test_summary_has_one_row_per_entry_with_mean_and_interval():
    table = summary_table(seeded_records())
    col = {h: i for i, h in enumerate(table.headers)}
    rows = {r.cells[0].text: r.cells for r in table.rows}
    assert list(rows) == ["baseline", "full", "lora", "prompt_tuning", "ia3"]
    assert rows["full"][col["seeds"]].text == "3"
    assert rows["full"][col["exact match"]].text == "0.983 ± 0.072"
    assert rows["full"][col["exact match"]].best and rows["full"][col["exact match"]].note == "base 0.000"
    assert rows["lora"][col["exact match"]].text == "0.950 ± 0.124"
    assert rows["lora"][col["eval loss"]].text == "0.2000 ± 0.0000"
    assert rows["lora"][col["peak mem"]].text == "2.7 GB"  # costs: the mean, no interval
    assert rows["baseline"][col["exact match"]].text == "0.000"  # one run: no interval to give


def test_doubts_list_the_pairs_the_seeds_do_not_support():
    # full - lora: se 0.0333 on 3.2 df, half-width 0.10 > 0.033; lora - ia3: 0.1 < 0.113 (4 df); full - ia3:
    # 0.133 > 0.10 is supported; every pair against prompt_tuning (all 0) is too. Eval losses repeat exactly
    # within each method and differ between them: no spread, so every difference is supported.
    assert doubts(seeded_records()) == ["exact match: full vs lora; lora vs ia3"]
    # One better method level with several worse ones is listed once.
    records = [r.model_copy(update={"metrics": {**r.metrics, "exact_match": [0.5, 0.0, 1.0][r.config.seed]}})
               if r.config.group == "prompt_tuning" else r for r in seeded_records()]
    assert doubts(records) == ["exact match: full vs lora, prompt_tuning; lora vs ia3, prompt_tuning; "
                               "ia3 vs prompt_tuning"]


def test_reports_say_what_the_interval_is_and_which_test_judges_pairs():
    records = seeded_records()
    md = render_markdown(records)
    # These handmade records hold no steady figures: their whole-run time is shown, marked (bench.core.headline).
    assert ("| full | 3 | **1,000** | 3.2 GB | 90.0 † | - | - | **0.1000 ± 0.0000** (base 2.0000) | "
            "**0.983 ± 0.072** (base 0.000) |") in md
    assert "Every row ran over seeds" not in md  # the pretrained baseline ran once
    assert "4 of the 5 rows ran over seeds 0, 1, 2; each row is one suite entry." in md
    assert "95% confidence interval (Student's t with n - 1 degrees of freedom)" in md
    assert "Welch's t-test finds it at the 5% level" in md
    assert "Differences in mean that the seeds do not support:\n\n- exact match: full vs lora; lora vs ia3\n" in md
    # --prefer memory by default: lora ties with full (Welch) and needs less memory.
    assert "## Recommendation\n\n**Recommended: lora (exact match 0.950 ± 0.124, 3 seeds)**" in md
    html = render_html(records)
    assert "0.983 ± 0.072" in html and '<section id="recommendation">' in html
    assert "Recommended: lora (exact match 0.950 ± 0.124, 3 seeds)" in html
    csv = render_csv(records).splitlines()
    assert csv[0].endswith(",group,seed") and csv[2].endswith(",full,0")


def test_a_failed_seed_marks_its_row_and_the_rest_still_count():
    records = [r.model_copy(update={"status": "oom", "metrics": {}}) if r.run == "lora@seed2" else r
               for r in seeded_records()]
    table = summary_table(records)
    col = {h: i for i, h in enumerate(table.headers)}
    lora = next(r for r in table.rows if r.cells[0].text == "lora")
    assert not lora.ok and lora.cells[col["seeds"]].text == "2 of 3" and lora.cells[col["status"]].text == "oom"
    # 0.95 and 1.0: mean 0.975, sd 0.035355, half-width 12.706 * 0.035355 / sqrt(2) = 0.3177.
    assert lora.cells[col["exact match"]].text == "0.975 ± 0.318"


def test_compare_uses_group_means_and_shows_their_intervals():
    base = seeded_records()
    worse = [r.model_copy(update={"metrics": {**r.metrics, "exact_match": r.metrics["exact_match"] - 0.1}})
             if r.config.group == "lora" else r for r in base]
    c = compare(base, worse, Regression())
    row = next(r for r in c.rows if r.run == "lora" and r.metric == "exact_match")
    assert (row.reference, row.current, row.verdict) == (0.95, 0.85, "regression")
    assert (round(row.reference_half_width, 4), round(row.current_half_width, 4)) == (0.1242, 0.1242)
    text = compare_markdown(c)
    assert ("| lora | exact match | 0.950 ± 0.124 | 0.850 ± 0.124 | -0.100 (-10.5%) | ↑ | ±0.02 | **regression** "
            "|") in text
    assert "compared by their mean over the seeds that finished" in text
    # A baseline stored before the suite had seeds compares with the entry's mean.
    single = [record("lora", "lora", {"exact_match": 0.95}, suite="hand")]
    row = next(r for r in compare(single, base, Regression()).rows if r.metric == "exact_match")
    assert (row.run, row.current, row.current_half_width is not None, row.verdict) == ("lora", 0.95, True, "ok")


@pytest.mark.worker
def test_real_cli_runs_a_suite_over_three_seeds_and_reports_intervals(tmp_path):
    """bench run with seeds [0, 1, 2]: --only a named entry runs its three seeds; the rest resumes; the report
    has one row per entry with intervals; recommend picks a method and compare reads group means."""
    suite = tmp_path / "seedy.yaml"
    suite.write_text(SEEDED.replace("DATA", str(ROOT / "data" / "smoke.jsonl")))
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench", "run", str(suite), "--output", str(out), "--devices", "cpu,cpu"]
    first = subprocess.run(cmd + ["--only", "ia3-fast"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert first.returncode == 0, first.stdout + first.stderr
    assert sorted(p.stem for p in out.glob("*.json")) == ["ia3-fast@seed0", "ia3-fast@seed1", "ia3-fast@seed2"]
    rest = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert "skip ia3-fast@seed1: up to date" in rest.stdout and "6 run(s) to do" in rest.stdout
    records = load_records(out)
    assert len(records) == 9 and all(r.status == "success" for r in records)
    # The preset's random weights follow the seed: the three untrained baselines differ.
    base_losses = {r.metrics["eval_loss"] for r in records if r.method == "baseline"}
    assert len(base_losses) == 3
    md = (out / "report.md").read_text()
    assert "Every row ran over seeds 0, 1, 2; each row is one suite entry." in md
    row = next(line for line in md.splitlines() if line.startswith("| ia3-fast (ia3) | 3 |"))
    loss = next(g for g in seed_groups(records) if g.name == "ia3-fast").summary("eval_loss")
    assert f"{loss.mean:.4f} ± {loss.half_width:.4f}" in row and loss.half_width > 0
    assert "## Recommendation" in md
    rec = subprocess.run([sys.executable, "-m", "bench", "recommend", str(out)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert rec.returncode == 0, rec.stderr
    # The random model scores its untrained baseline's 0: the headline says so first.
    assert rec.stdout.startswith("No trained method scores above the untrained baseline") and \
        ", 3 seeds)" in rec.stdout.splitlines()[0]
    gate = subprocess.run([sys.executable, "-m", "bench", "compare", str(out), str(out)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "0 of " in gate.stdout and "over 3 runs fail the gate" in gate.stdout
