"""The documentation: the site builds with no broken link or missing page, the reference pages cover (and describe)
every suite field, method, metric and command, tables of measurements match their result files, the README quotes
the docs' numbers, and the CI workflow users copy parses and runs commands that exist."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import gen_docs  # noqa: E402  (scripts/gen_docs.py)


def test_every_suite_field_method_metric_command_and_argument_has_a_description():
    assert gen_docs.missing_descriptions() == []


def test_the_description_check_finds_a_field_without_one_at_any_depth():
    class Inner(BaseModel):
        documented: int = Field(0, description="has one")
        bare: str = ""

    class Outer(BaseModel):
        inner: Inner = Field(Inner(), description="a nested model")
        items: list[Inner] = Field([], description="a list of them")
        plain: int = 1

    assert gen_docs.undocumented_fields(Outer) == ["plain", "inner.bare"]


def test_the_suite_reference_lists_every_field_with_its_type_and_default():
    from bench.spec.suite import Suite

    page = gen_docs.suite_page()
    for path, model in gen_docs.model_tree(Suite):
        section = page.split(f"## `{path}`" if path else "## The suite (top level)")[1].split("\n## ")[0]
        for name, field in gen_docs.model_fields(model):
            assert f"| `{name}` |" in section, (path, name)
    training = page.split("## `training` {#training}")[1].split("\n## ")[0]
    assert "| `learning_rate` | float > 0 | 0.0002 |" in training
    assert "| `precision` | 'auto' \\| 'fp32' \\| 'bf16' \\| 'fp16' | \"auto\" |" in training
    assert "| `name` | str | required |" in page


def test_the_method_reference_has_every_method_its_peft_fields_and_the_harness_defaults():
    from methods import METHODS
    from methods.base import field_types

    page = gen_docs.methods_page()
    for m in METHODS.values():
        assert f"\n## `{m.id}`\n" in page, m.id
    lora = page.split("\n## `lora`\n")[1].split("\n## ")[0]
    assert "| `r` | int | 8 (harness) | Lora attention dimension |" in lora
    assert set(re.findall(r"^\| `(\w+)` \|", lora, re.M)) == set(field_types("LORA"))
    dora = page.split("\n## `dora`\n")[1].split("\n## ")[0]
    assert "`use_dora=True`" in dora and "| `use_dora` |" not in dora  # fixed by the method, not a param
    assert "init_kv_cache_prefix" in page.split("\n## `prefix_tuning`\n")[1].split("\n## ")[0]


def test_the_metric_and_cli_references_have_every_metric_and_command():
    from bench.cli import build_parser
    from bench.core.metrics import METRICS

    metrics = gen_docs.metrics_page()
    for name, m in METRICS.items():
        row = rf"^\| `{name}` \| {re.escape(gen_docs._cell(m.label))} \| {re.escape(m.unit or '-')} \| {m.better} \|"
        assert re.search(row, metrics, re.M), name
    cli = gen_docs.cli_page()
    for name in gen_docs._subcommands(build_parser()):
        assert f"\n## `{name}`\n" in cli
    assert "| `--max-memory` | - | peak memory, e.g. 8GB" in cli


def _block(text: str, name: str) -> str:
    begin, end = gen_docs.BEGIN.format(name=name), gen_docs.END.format(name=name)
    return text.split(begin)[1].split(end)[0]


def test_generated_tables_are_rendered_from_the_result_files_and_up_to_date():
    assert gen_docs.stale_pages() == []
    page = (ROOT / "docs" / "guides" / "getting-started.md").read_text()
    about, records = gen_docs._records("quickstart")
    lora = next(r for r in records if r.run == "lora")
    row = next(line for line in _block(page, "quickstart").splitlines() if line.startswith("| lora |"))
    interval = lora.intervals["exact_match"]
    assert f"{lora.metrics['exact_match']:.3f} ({interval.low:.3f}-{interval.high:.3f})" in row
    assert about["commit"] in _block(page, "quickstart") and about["machine"] in _block(page, "quickstart")


def test_a_stale_table_is_found_and_refreshed():
    page = (ROOT / "docs" / "guides" / "ci.md").read_text()
    stale = page.replace(_block(page, "overhead"), "\n| run | made up |\n")
    assert gen_docs.fill(stale) == page


def test_the_readme_is_short_and_quotes_the_docs_numbers():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    docs = (ROOT / "docs" / "guides" / "getting-started.md").read_text()
    for name in ("quickstart", "run-output"):
        assert _block(readme, name) == _block(docs, name) != "\n"
    for command in ("python3 -m pip install tox && tox -e quickstart", "bash scripts/test.sh"):
        assert command in readme
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link


def test_the_troubleshooting_guide_covers_every_bad_input_case():
    catalogue = (ROOT / "docs" / "bad-inputs.md").read_text()
    cases = {line.split("|")[1].strip().strip("`") for line in catalogue.splitlines() if line.startswith("| `")}
    guide = (ROOT / "docs" / "guides" / "troubleshooting.md").read_text()
    table = [line for line in guide.splitlines() if line.startswith("| ") and line.count("|") == 5]
    covered = {c for line in table for c in re.findall(r"`([a-z0-9-]+)`", line.split("|")[4])}
    assert len(cases) > 60 and cases <= covered, cases - covered


def test_the_github_actions_workflow_parses_and_runs_commands_that_exist():
    from bench.cli import build_parser

    workflow = yaml.safe_load((ROOT / "docs" / "ci" / "github-actions.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request", "workflow_dispatch"} <= set(triggers)
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    commands = list(gen_docs._subcommands(build_parser()))
    runs = [line for job in workflow["jobs"].values() for step in job["steps"] for line in
            step.get("run", "").splitlines()]
    assert any("tox -e gate" in line for line in runs)
    for line in runs:
        for part in re.split(r"&&|;", line):
            words = shlex.split(part.split("#")[0])
            if words[:2] == ["tox", "-e"]:
                assert tox.has_section(f"testenv:{words[2]}"), words
            if "bench" in words:
                assert words[words.index("bench") + 1] in commands, words
            for word in words:
                if re.match(r"(suites|baselines|scripts)/", word) and "bench" in words and "save-baseline" not in words:
                    assert (ROOT / word).exists(), word


def test_the_site_builds_strictly(tmp_path):
    """A broken link, a missing anchor or a page left out of the nav fails the build (mkdocs.yml: strict)."""
    site = tmp_path / "site"
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}  # Material's notice of its end of life, printed on every build
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    methods = (site / "reference" / "methods" / "index.html").read_text()
    assert 'id="lora"' in methods and "Lora attention dimension" in methods
    assert (site / "ci" / "github-actions.yml").is_file()
    assert "WARNING" not in done.stderr, done.stderr


def test_a_broken_link_fails_the_strict_build(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](missing.md) and [no anchor](#nowhere)\n")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config = {k: v for k, v in config.items() if k in ("strict", "validation", "markdown_extensions")}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump({"site_name": "t", "docs_dir": "docs", **config}))
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--site-dir", str(tmp_path / "site")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "missing.md" in done.stderr and "#nowhere" in done.stderr


def test_the_quantisation_guide_renders_the_suites_records_and_plan():
    """docs/guides/quantization.md's table: a row per trained run of docs/results/quantization.json, with its score,
    the setting its environment records, and bench plan's GPU peak for the same run where it was captured."""
    from bench.core.metrics import human_bytes

    page = (ROOT / "docs" / "guides" / "quantization.md").read_text()
    block = _block(page, "quantization")
    about, records = gen_docs._records("quantization")
    plan = gen_docs.load_results("quantization").get("plan", {"runs": {}})["runs"]
    trained = [r for r in records if r.trained]
    assert len(trained) == 10
    for r in trained:
        row = next(line for line in block.splitlines() if line.startswith(f"| {r.run} |"))
        assert f"| {r.metrics['exact_match']:.3f} |" in row and f"| {gen_docs._setting(r)} |" in row, row
        if r.run in plan:  # bench plan's predictions, where they were captured; "-" otherwise
            assert human_bytes(plan[r.run]["memory"]["need"]) in row, row
        else:
            assert row.endswith("| - |"), row
    assert about["commit"] in block


def test_the_quantisation_guide_says_what_each_setting_saves_by_the_plan():
    """docs/guides/quantization.md's plan table: per run, each part of bench plan's GPU peak with its difference from
    the unquantised LoRA run's, read from the captured plan in docs/results/quantization.json."""
    from bench.core.metrics import human_bytes

    block = _block((ROOT / "docs" / "guides" / "quantization.md").read_text(), "quantization-plan")
    plan = gen_docs.load_results("quantization")["plan"]["runs"]
    reference = plan["lora-fp32"]["memory"]
    assert len(plan) == 10 and block.strip().splitlines()[2].startswith("| lora-fp32 | fp32 |")
    for run, part in (("lora-8bit", "base"), ("qlora", "base"), ("lora-paged-adamw8bit", "optimizer"),
                      ("lora-pure-bf16", "optimizer")):
        value = plan[run]["memory"][part]
        assert value < reference[part], (run, part)  # each setting saves where it should
        row = next(line for line in block.splitlines() if line.startswith(f"| {run} |"))
        assert f"{human_bytes(value)} (-{human_bytes(reference[part] - value)}" in row, row
    pure = plan["lora-pure-bf16"]["memory"]
    assert 2 * pure["trainable"] == reference["trainable"] and 2 * pure["optimizer"] == reference["optimizer"]
