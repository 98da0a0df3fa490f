"""The experiment record (cadx.records): the published JSON Schema is the generated one, real records validate
against it, records of schema 1 (made by cadx before the schema existed) are read and upgraded with their numbers and
config SHA-256 unchanged, and damaged records are refused with the path of the bad field."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import jsonschema
import pytest

from cadx.errors import CadxInputError
from cadx.records import (
    SCHEMA_VERSION,
    ExperimentConfig,
    ExperimentRecord,
    ExperimentResults,
    config_sha256,
    from_json,
    json_schema,
    read_config,
    read_results,
    to_json,
    upgrade_results,
)

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "docs" / "experiment-record.schema.json"
OLD = json.loads((Path(__file__).parent / "reference" / "experiment_record_v1.json").read_text())


def validate(record: dict) -> None:
    """Validate an experiment record (``experiment_summary`` / ``--json`` layout) against the published schema."""
    jsonschema.Draft202012Validator(json.loads(PUBLISHED.read_text())).validate(record)


def test_the_published_schema_is_the_generated_one():
    assert json.loads(PUBLISHED.read_text()) == json_schema(), (
        "docs/experiment-record.schema.json is stale: run `python -m cadx.records docs/experiment-record.schema.json`")
    jsonschema.Draft202012Validator.check_schema(json_schema())
    assert json_schema()["title"].endswith(f"(schema version {SCHEMA_VERSION})")


@pytest.mark.parametrize("label", ["one_seed", "two_seeds"])
def test_a_schema_1_record_is_read_upgraded_and_valid(label):
    old = OLD[label]
    assert "schema_version" not in old["results"] and "cohort" not in old["config"]  # really the old shape
    config, results = read_config(old["config"]), read_results(old["results"])
    # the config is never rewritten: its SHA-256 is the stored one, its JSON the stored JSON
    assert config_sha256(config) == old["config_sha256"] == hashlib.sha256(
        json.dumps(old["config"], sort_keys=True).encode()).hexdigest()
    assert to_json(config) == old["config"]
    assert config.repeats == (2 if label == "two_seeds" else 1) and config.cohort is None and config.extra == {}
    assert config.seeds == list(range(config.repeats))
    # the results gain the version, a None cohort and the paper's family; every number stays
    assert results.schema_version == SCHEMA_VERSION and results.cohort is None and results.roi_set_sha256 is None
    assert [(c.comparison, c.family) for c in results.comparisons] == [
        ("C vs A", "paper"), ("C vs B", "paper"), ("A vs B", "paper")]
    upgraded = to_json(results)
    assert upgraded == upgrade_results(old["results"])
    assert {k: v for k, v in upgraded.items() if k not in ("schema_version", "cohort", "roi_set_sha256",
                                                            "comparisons")} == {
        k: v for k, v in old["results"].items() if k != "comparisons"}
    for new, stored in zip(upgraded["comparisons"], old["results"]["comparisons"], strict=True):
        assert new == {"family": "paper", **stored}
    assert results.methods["A"].auc_mean == old["results"]["methods"]["A"]["auc_mean"]
    assert (results.repeats is not None) == (label == "two_seeds")
    assert results.methods["A"].calibration is None  # not recorded then: None, never invented
    record = from_json(ExperimentRecord, {**old, "config": old["config"], "results": upgraded})
    validate(to_json(record))
    assert from_json(ExperimentRecord, to_json(record)) == record  # one serializer, both ways


def test_upgrading_leaves_the_stored_json_alone_and_refuses_newer_records():
    old = copy.deepcopy(OLD["one_seed"]["results"])
    upgrade_results(old)
    assert old == OLD["one_seed"]["results"]
    current = upgrade_results(old)
    assert upgrade_results(current) == current  # the current schema is left as it is
    with pytest.raises(CadxInputError, match=rf"results.schema_version: .*schema {SCHEMA_VERSION + 1}.*update cadx"):
        read_results({**current, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(CadxInputError, match="results.schema_version"):
        read_results({**current, "schema_version": "2"})


def test_a_damaged_record_names_the_bad_field():
    results = upgrade_results(OLD["two_seeds"]["results"])
    missing = copy.deepcopy(results)
    del missing["methods"]["B"]["pooled_auc"]
    with pytest.raises(CadxInputError, match=r"results\.methods\.B\.pooled_auc: is missing"):
        read_results(missing)
    wrong = copy.deepcopy(results)
    wrong["sweep"]["fc7"]["fold_aucs"][1] = "high"
    with pytest.raises(CadxInputError, match=r"results\.sweep\.fc7\.fold_aucs\[1\]: got str 'high'.*a number"):
        read_results(wrong)
    unknown = copy.deepcopy(results)
    unknown["methods"]["A"]["auc_mode"] = 0.5
    with pytest.raises(CadxInputError, match=r"results\.methods\.A\.auc_mode: is not a field.*MethodRecord"):
        read_results(unknown)
    with pytest.raises(CadxInputError, match=r"config\.n_folds: got bool"):
        read_config({**OLD["one_seed"]["config"], "n_folds": True})


def test_optional_config_keys_keep_the_sha256_of_records_without_them():
    config = read_config(OLD["one_seed"]["config"])
    assert "repeats" not in to_json(config) and "min_lesions_per_class_per_fold" not in to_json(config)
    repeated = dataclasses.replace(config, repeats=3, extra={"note": "x"})
    assert to_json(repeated)["repeats"] == 3 and to_json(repeated)["note"] == "x"
    assert read_config(to_json(repeated)) == repeated  # extra keys come back as extra
    assert config_sha256(repeated) != config_sha256(config)


def test_non_finite_numbers_are_stored_as_null():
    results = read_results(OLD["one_seed"]["results"])
    layer = dataclasses.replace(results.sweep["fc8"], auc_sd=float("nan"), fold_aucs=[float("inf"), 0.5])
    assert to_json(layer)["auc_sd"] is None and to_json(layer)["fold_aucs"] == [None, 0.5]
    assert isinstance(from_json(ExperimentResults, to_json(results)), ExperimentResults)
    assert isinstance(read_config(to_json(read_config(OLD["one_seed"]["config"]))), ExperimentConfig)


def test_method_keys_are_those_of_the_registry():
    from cadx.methods import METHODS

    results = upgrade_results(OLD["one_seed"]["results"])
    renamed = copy.deepcopy(results)
    renamed["methods"]["SVM1"] = renamed["methods"].pop("A")
    with pytest.raises(CadxInputError, match=r"results\.methods\.SVM1: is not a method of cadx\.methods\.METHODS"):
        read_results(renamed)
    schema = json_schema()["$defs"]["ExperimentResults"]["properties"]["methods"]
    assert schema["propertyNames"] == {"enum": list(METHODS)} == {"enum": ["A", "B", "C", "Z"]}


def test_a_schema_2_record_reads_with_the_schema_3_fields_empty():
    """Schema 3 only added optional fields (the comparisons' within-fold-rank DeLong and repeated Nadeau-Bengio
    tests, the folds' operating points): a schema-2 record reads as it is, those fields None."""
    v2 = {**upgrade_results(copy.deepcopy(OLD["two_seeds"]["results"])), "schema_version": 2}
    results = read_results(v2)
    assert results.schema_version == SCHEMA_VERSION == 3
    assert all(c.repeated_nb_p is None and c.rank_delong_p is None and c.fold_mean_auc_difference is None
               for c in results.comparisons)
    assert all(m.calibration is None or m.calibration.operating_point is None for m in results.methods.values())
