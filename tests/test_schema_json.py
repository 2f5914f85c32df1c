"""`bench schema`: the JSON Schema of suite files, generated from the pydantic models, accepts every shipped suite
and refuses what the models refuse."""

from __future__ import annotations

import json

import jsonschema
import pytest

from bench.cli import main
from bench.core.yamlio import load_yaml, to_plain
from tests.conftest import ROOT

SUITES = sorted((ROOT / "suites").glob("*.yaml"))


@pytest.fixture(scope="module")
def schema():
    from bench.spec.schema import json_schema

    return json_schema()


def test_bench_schema_prints_it(capsys, schema):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == schema
    assert printed["title"] == "peft-bench suite" and "runs" in printed["required"]
    assert "source" not in printed["properties"]  # set by load_suite, never written in a suite


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_every_shipped_suite_meets_the_schema_and_names_it(path, schema):
    jsonschema.validate(to_plain(load_yaml(path)), schema)
    assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=../suite.schema.json"


def test_the_schema_refuses_what_the_models_refuse(schema):
    doc = to_plain(load_yaml(ROOT / "suites" / "smoke.yaml"))
    for bad in ({"training": {"learning_rat": 1e-3}}, {"budget": {"max_steps": 0}},
                {"runs": [{"method": "lora", "name": "x", "sweep": {"r": 4}}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc | bad, schema)
    jsonschema.validate(doc | {"tracking": ["mlflow"]}, schema)


def test_the_committed_schema_file_is_the_generated_one(schema):
    assert json.loads((ROOT / "suite.schema.json").read_text()) == schema
