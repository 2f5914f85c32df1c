"""PEFT's answers stored in methods/peft_facts.json equal PEFT's own, and the light commands import neither PEFT nor
torch: `bench --help`, `bench list` and `bench report` on stored records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest

from methods import METHODS, catalog
from methods.base import config_class, field_types, tuner_layers_merge
from tests.conftest import ROOT


def test_stored_facts_are_what_peft_answers_now():
    stored = json.loads(catalog.FILE.read_text())
    assert stored["peft"] == version("peft"), "PEFT moved: python scripts/regen_peft_facts.py"
    assert stored == json.loads(json.dumps(catalog.ask_peft()))


def test_the_registry_reads_the_same_as_peft_for_every_tuner():
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.config import PromptLearningConfig
    from peft.utils.constants import DUMMY_TARGET_MODULES

    assert set(catalog.peft_types()) == {t.value for t in PEFT_TYPE_TO_CONFIG_MAPPING}
    assert {"LORA", "PREFIX_TUNING", "XLORA"} <= set(catalog.peft_types())
    assert METHODS["head_only"].fixed["target_modules"] == DUMMY_TARGET_MODULES == "dummy-target-modules"
    for m in METHODS.values():
        if m.peft_type is None:
            continue
        cls = config_class(m.peft_type)
        assert m.config_name == cls.__name__
        assert m.prompt_learning == issubclass(cls, PromptLearningConfig), m.id
        assert catalog.tuner(m.peft_type).merges == tuner_layers_merge(m.peft_type), m.id
        assert set(m.field_names()) == set(field_types(m.peft_type)) - set(m.fixed), m.id
    assert (METHODS["lora"].merge, METHODS["qlora"].merge, METHODS["prefix_tuning"].merge) == ("exact", "lossy", "none")
    assert len(METHODS["dora"].field_names()) == len(METHODS["lora"].field_names()) - 1  # use_dora is fixed


# Each snippet runs a command in a fresh interpreter and prints the heavy modules it left in sys.modules.
HEAVY = ("torch", "peft", "transformers", "bitsandbytes", "scipy")
PROBE = """
import sys
{first}
from bench.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("HEAVY:" + ",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_after(argv: list[str], cwd, first: str = "") -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY, first=first)], cwd=cwd, capture_output=True,
                         text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("HEAVY:"), out.stdout
    return [m for m in line.removeprefix("HEAVY:").split(",") if m]


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["report", "RECORDS"]], ids=["help", "list", "report"])
def test_light_commands_import_no_model_library(argv, tmp_path):
    records = tmp_path / "records"
    shutil.copytree(ROOT / "tests" / "fixtures" / "records", records)
    argv = [str(records) if a == "RECORDS" else a for a in argv]
    assert _heavy_after(argv, tmp_path) == []
    if argv[0] == "report":
        assert "lora" in (records / "report.md").read_text()  # it did render


def test_the_probe_sees_an_import():
    assert _heavy_after(["--help"], ROOT, first="import scipy.stats") == ["scipy"]
