"""Record evolution: every stored record reads through one migration step per schema version, an old record reads
equal to today's, and a written record holds its config fully resolved with its hash unchanged."""

from __future__ import annotations

import json

import pytest

from bench.core.config import RESOLVED, RunConfig, config_hash
from bench.core.records import (
    MIGRATIONS,
    SCHEMA_VERSION,
    RecordError,
    RunRecord,
    parse_record,
    read_record,
    write_record,
)
from tests.conftest import ROOT, make_config

FIXTURES = sorted((ROOT / "tests" / "fixtures" / "records").glob("*.json"))
BASELINES = json.loads((ROOT / "baselines" / "smoke.json").read_text())["records"]
DOCS = {p.stem: json.loads(p.read_text())["records"] for p in sorted((ROOT / "docs" / "results").glob("*.json"))
        if "records" in json.loads(p.read_text())}
STORED = [(p.name, json.loads(p.read_text())) for p in FIXTURES] + \
    [(f"smoke.json:{r['run']}", r) for r in BASELINES] + \
    [(f"{name}.json:{r['run']}", r) for name, records in DOCS.items() for r in records]


def test_there_is_one_step_per_older_version():
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))


def test_the_stored_records_span_every_version():
    assert {data["schema_version"] for _, data in STORED} == set(range(1, SCHEMA_VERSION + 1))


@pytest.mark.parametrize("name,data", STORED, ids=[n for n, _ in STORED])
def test_every_stored_record_migrates_and_reads_back_as_it_read(name, data, tmp_path):
    record = parse_record(data, name)
    assert record.schema_version == data["schema_version"]  # the version that wrote it: what its metrics meant
    assert record.config == RunConfig.model_validate(data["config"])
    write_record(tmp_path / "r.json", record)
    again = read_record(tmp_path / "r.json")
    assert again == record
    assert config_hash(again.config) == config_hash(RunConfig.model_validate(data["config"]))


def test_a_version_1_record_reads_equal_to_the_same_record_written_now():
    old = json.loads((ROOT / "tests" / "fixtures" / "records" / "lora-typo.json").read_text())
    assert old["schema_version"] == 1 and old["merge"] == {} and old["data"] == {}
    now = old | {"schema_version": SCHEMA_VERSION, "merge": None, "data": None}
    read_old, read_now = parse_record(old, "old"), parse_record(now, "now")
    assert read_old.merge is None and read_old.data is None
    assert read_old.model_dump(exclude={"schema_version"}) == read_now.model_dump(exclude={"schema_version"})
    assert (read_old.schema_version, read_now.schema_version) == (1, SCHEMA_VERSION)


def test_every_version_1_fixture_reads_equal_to_its_current_form():
    for path in FIXTURES:
        old = json.loads(path.read_text())
        current = old | {"schema_version": SCHEMA_VERSION} | {k: None for k in ("merge", "data") if old[k] == {}}
        assert parse_record(old, path.name).model_dump(exclude={"schema_version"}) == \
            parse_record(current, path.name).model_dump(exclude={"schema_version"}), path.name


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1, "2", None])
def test_a_record_of_a_version_this_harness_does_not_know_is_refused_by_name(version):
    data = json.loads(FIXTURES[0].read_text()) | {"schema_version": version}
    with pytest.raises(RecordError) as e:
        parse_record(data, "results/x.json")
    assert str(e.value) == (f"results/x.json: schema_version {version!r} is not one this harness reads (1 to "
                            f"{SCHEMA_VERSION}; a newer harness wrote it?)")


def test_a_written_record_holds_every_field_of_its_config_and_keeps_its_hash(tmp_path):
    cfg = make_config("lora", "lora").hashed()
    write_record(tmp_path / "r.json", RunRecord.start(cfg))
    stored = json.loads((tmp_path / "r.json").read_text())["config"]
    assert stored == cfg.model_dump(mode="json", context={RESOLVED: True})
    # Defaults a hash leaves out are written out here: a reader needs no harness to know what ran.
    assert set(stored["training"]) == set(type(cfg.training).model_fields)
    assert set(stored["eval"]) == set(type(cfg.eval).model_fields)
    assert {"optimizer", "loss_chunk_bytes", "quantization"} <= set(stored["training"])
    assert "optimizer" not in cfg.model_dump(mode="json")["training"]
    back = read_record(tmp_path / "r.json")
    assert back.config == cfg and config_hash(back.config) == cfg.config_hash
