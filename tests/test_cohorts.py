"""Cohorts and lesion types: the core definition and its guard rails, resolution against a database holding the
synthetic demo and the real MIAS files, an experiment on "MIAS masses", the migration of rows stored before, and the
``cadx cohort`` commands."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from cadx.cli import app
from cadx.cohorts import (
    PRESETS,
    CohortDefinition,
    CohortTooSmallError,
    check_cohort_name,
    check_cohort_size,
    roi_set_sha256,
)
from cadx.errors import CadxInputError
from cadx.lesion_types import MASS_TYPES, expand_lesion_types, normalise_lesion_type
from cadx.sources import parse_mias_info
from cadx.workflows import dataset_stats, exclude_roi, import_demo, import_mias
from cadx.workflows.cohorts import get_cohort, list_cohorts, resolve_cohort, save_cohort
from db.models import ImportRun, Lesion, Roi

runner = CliRunner()


# ------------------------------------------------------------------------------------------- lesion types ---
def test_every_mias_class_is_its_own_type_and_only_circ_spic_misc_and_mass_are_masses():
    assert MASS_TYPES == {"CIRC", "SPIC", "MISC", "mass"}
    assert expand_lesion_types(["masses"]) == MASS_TYPES
    assert expand_lesion_types(["calcifications", "ARCH"]) == {"CALC", "calcification", "ARCH"}
    # what cadx stored before the registry, and plain spellings from manifests
    assert normalise_lesion_type("ARCH (mass)") == "ARCH"  # a distortion, never a mass
    assert normalise_lesion_type("ASYM (mass)") == "ASYM"
    assert normalise_lesion_type("CALC (calcification)") == "CALC"
    assert normalise_lesion_type("synthetic spiculated mass") == "mass"
    assert normalise_lesion_type(" Calc ") == "CALC" and normalise_lesion_type("spic") == "SPIC"
    assert normalise_lesion_type("calcifications") == "calcification" and normalise_lesion_type("") is None
    with pytest.raises(CadxInputError, match=r"manifest.csv, row 3.*unknown lesion type 'tumour'.*CIRC"):
        normalise_lesion_type("tumour", source="manifest.csv, row 3")


# ------------------------------------------------------------------------------------------------- definition ---
def test_a_definition_is_validated_canonical_and_round_trips_as_versioned_json():
    definition = CohortDefinition(sources=["MIAS"], lesion_types="masses, ARCH (mass)", labels=["Malignant"],
                                  views=["mlo"], lateralities=["left", "R"], import_runs=["3", 1], n_folds=4)
    assert definition.sources == ("mias",) and definition.lesion_types == ("ARCH", "masses")
    assert definition.labels == ("malignant",) and definition.views == ("MLO",)
    assert definition.lateralities == ("L", "R") and definition.import_runs == (1, 3)
    data = definition.to_dict()
    assert data["version"] == 1 and json.loads(json.dumps(data)) == data
    assert CohortDefinition.from_dict(data) == definition
    assert "lesion types ARCH/masses" in definition.summary() and "4-fold" in definition.summary()


@pytest.mark.parametrize("kwargs, message", [
    ({"synthetic": "maybe"}, "cohort synthetic: got 'maybe'. Fix: use one of auto, real, synthetic, both"),
    ({"labels": ["cancer"]}, "cohort labels: got 'cancer'. Fix: use one of benign, malignant"),
    ({"lesion_types": ["tumour"]}, "cohort lesion types: unknown lesion type 'tumour'"),
    ({"review": "pending"}, "cohort review: got 'pending'"),
    ({"qc": "clean"}, "cohort qc: got 'clean'"),
    ({"lateralities": ["X"]}, "cohort lateralities: got 'X'. Fix: use one of L, R"),
    ({"import_runs": ["first"]}, "cohort import runs: 'first' is not an import run id"),
    ({"n_folds": 1}, "cohort folds: got 1. Fix: give a whole number of folds from 2 to 20"),
    ({"n_folds": True}, "cohort folds: got True"),
])
def test_a_bad_definition_is_refused_naming_the_field_and_the_fix(kwargs, message):
    with pytest.raises(CadxInputError) as caught:
        CohortDefinition(**kwargs)
    assert message in str(caught.value)


def test_stored_definitions_of_another_version_or_with_unknown_keys_are_refused():
    data = CohortDefinition().to_dict()
    with pytest.raises(CadxInputError, match="has version 2; this cadx reads version 1"):
        CohortDefinition.from_dict({**data, "version": 2})
    with pytest.raises(CadxInputError, match=r"unknown keys \['colour'\]"):
        CohortDefinition.from_dict({**data, "colour": "red"})
    with pytest.raises(CadxInputError, match="is a built-in preset"):
        check_cohort_name("Paper")
    with pytest.raises(CadxInputError, match="not a usable name"):
        check_cohort_name("../etc")
    assert check_cohort_name(" MIAS masses ") == "MIAS masses"


def test_the_paper_preset_is_masses_included_5_folds_and_never_pools_synthetic():
    paper = PRESETS["paper"]
    assert paper.lesion_type_codes == MASS_TYPES and paper.review == "included" and paper.n_folds == 5
    assert paper.synthetic == "auto" and PRESETS["all"].synthetic == "auto"


def test_guard_rails_refuse_one_class_and_fewer_than_5_lesions_per_class_per_fold():
    check_cohort_size({"benign": 25, "malignant": 25}, n_folds=5)  # exactly 5 per class per fold
    with pytest.raises(CohortTooSmallError) as caught:
        check_cohort_size({"benign": 33, "malignant": 14}, n_folds=5, cohort="cohort 'MIAS masses'")
    assert str(caught.value) == (
        "cohort 'MIAS masses': has 33 benign and 14 malignant lesions: fewer than 5 malignant lesions per fold for "
        "5-fold cross-validation (needs 25 of each class). Fix: use at most 2 folds (--folds 2), or widen the cohort "
        "/ import more cases; or keep 5 folds with --min-lesions-per-fold 2 (the record keeps the lowered guard "
        "rail), at a cost: about 2 malignant lesions per test fold, so each fold AUC moves in steps of "
        "1/(2 × 6) = 0.083 to 1/(2 × 7) = 0.071 (with 6-7 benign lesions per fold)")
    with pytest.raises(CohortTooSmallError, match="24 benign and 30 malignant lesions: fewer than 5 benign"):
        check_cohort_size({"benign": 24, "malignant": 30}, n_folds=5)
    with pytest.raises(CohortTooSmallError, match="one class only"):
        check_cohort_size({"benign": 60}, n_folds=5)
    with pytest.raises(CohortTooSmallError, match="at least 10 lesions of each class are needed even for 2 folds"):
        check_cohort_size({"benign": 9, "malignant": 9}, n_folds=2)
    check_cohort_size({"benign": 2, "malignant": 2}, n_folds=2, minimum_per_fold=1)


def test_guard_rail_on_all_mias_masses_offers_the_paper_5_folds_with_its_cost():
    """The complete MIAS masses (38 benign / 20 malignant) at 5 folds: besides 4 folds, the refusal offers the way
    that keeps 5 (--min-lesions-per-fold 4) and what it costs: 4 malignant per fold, AUC steps 1/(4 x 7 or 8)."""
    with pytest.raises(CohortTooSmallError) as caught:
        check_cohort_size({"benign": 38, "malignant": 20}, n_folds=5, cohort="cohort 'paper'")
    text = str(caught.value)
    assert "use at most 4 folds (--folds 4)" in text
    assert "keep 5 folds with --min-lesions-per-fold 4" in text
    assert "about 4 malignant lesions per test fold" in text
    assert f"1/(4 × 7) = {1 / 28:.3f} to 1/(4 × 8) = {1 / 32:.3f}" in text
    check_cohort_size({"benign": 38, "malignant": 20}, n_folds=5, minimum_per_fold=4)  # the advice works
    with pytest.raises(CadxInputError, match="at least 1"):
        check_cohort_size({"benign": 2, "malignant": 2}, n_folds=2, minimum_per_fold=0)


def test_the_roi_set_hash_depends_on_the_set_not_its_order():
    assert roi_set_sha256(["b" * 64, "a" * 64]) == roi_set_sha256(["a" * 64, "b" * 64])
    assert roi_set_sha256(["a" * 64]) != roi_set_sha256(["a" * 64, "b" * 64])


# ------------------------------------------------------------------------------------ demo + real MIAS ---
def _mias_truth(mias_dir):
    findings, _ = parse_mias_info(mias_dir / "Info.txt")
    return {f"{f.refnum}#{f.index}": f for f in findings if (mias_dir / f"{f.refnum}.pgm").exists()}


@pytest.mark.slow
def test_cohorts_resolve_demo_and_mias_without_silently_mixing_synthetic(workspace_cache, workspace, mias_dir):
    truth = _mias_truth(mias_dir)
    masses = {k: f for k, f in truth.items() if f.abnormality in ("CIRC", "SPIC", "MISC")}
    workspace_cache.fill(workspace, import_demo, n_lesions=10, seed=1)
    import_mias(workspace, mias_dir, user="tester")

    with workspace.sessions() as session:
        stored = dict(session.execute(select(Lesion.key, Lesion.lesion_type).where(~Lesion.is_synthetic)).all())
        demo_types = set(session.scalars(select(Lesion.lesion_type).where(Lesion.is_synthetic)))
        demo_run = session.scalar(select(ImportRun.id).where(ImportRun.kind == "demo"))
    assert stored == {key: f.abnormality for key, f in truth.items()}  # every MIAS class its own type
    assert demo_types == {"mass"}

    everything = resolve_cohort(workspace, "all")  # real data exists: the phantoms stay out
    assert everything.synthetic_used == "real" and everything.rois == len(truth)
    assert everything.rois_by_source == {"mias": len(truth)}
    assert any("synthetic ROIs left out" in note for note in everything.notes)

    paper = resolve_cohort(workspace, "paper")
    assert paper.lesions == len(masses) and paper.synthetic_used == "real"
    assert set(paper.lesions_by_type) == {f.abnormality for f in masses.values()} <= {"CIRC", "SPIC", "MISC"}
    expected = {"benign": sum(f.label == "benign" for f in masses.values()),
                "malignant": sum(f.label == "malignant" for f in masses.values())}
    assert paper.lesions_by_label == paper.rois_by_label == expected
    assert paper.patients == len({f.patient_number for f in masses.values()})
    with pytest.raises(CohortTooSmallError, match=f"{expected['benign']} benign and {expected['malignant']} "
                                                  "malignant lesions: fewer than 5 malignant lesions per fold"):
        paper.check()  # 14 malignant masses in this partial copy: refused at 5 folds, before any work

    pooled = resolve_cohort(workspace, CohortDefinition(synthetic="both"))  # explicit: real and synthetic
    assert pooled.synthetic_used == "both" and set(pooled.rois_by_source) == {"demo", "mias"}
    demo = resolve_cohort(workspace, CohortDefinition(sources=["demo"]))  # nothing real selected: the phantoms
    assert demo.synthetic_used == "synthetic" and demo.lesions == 10
    assert resolve_cohort(workspace, CohortDefinition(import_runs=[demo_run], synthetic="synthetic")).rois == demo.rois
    assert resolve_cohort(workspace, CohortDefinition(sources=["demo"], synthetic="real")).rois == 0
    with pytest.raises(CadxInputError, match=r"import runs \[999\] that do not exist"):
        resolve_cohort(workspace, CohortDefinition(import_runs=[999]))

    # saved cohorts; an exclusion changes the ROI set, visibly
    save_cohort(workspace, "MIAS masses", CohortDefinition(sources=["mias"], lesion_types=["masses"], n_folds=2),
                user="tester")
    assert [c.name for c in list_cohorts(workspace)] == ["paper", "all", "MIAS masses"]
    with pytest.raises(CadxInputError, match="exists already"):
        save_cohort(workspace, "MIAS masses", CohortDefinition(), user="tester")
    before = resolve_cohort(workspace, "MIAS masses")
    before.check()  # 2 folds: 10 of each class are enough
    assert before.roi_set_sha256 == paper.roi_set_sha256
    first = before.records[0]
    exclude_roi(workspace, first.id, reason="location_marker", user="tester")
    after = resolve_cohort(workspace, "MIAS masses")
    assert after.rois == before.rois - 1 and after.roi_set_sha256 != before.roi_set_sha256
    excluded_only = resolve_cohort(workspace, CohortDefinition(review="excluded"))
    assert [r.id for r in excluded_only.records] == [first.id]
    with pytest.raises(CadxInputError, match="no such cohort"):
        get_cohort(workspace, "nope")

    # findings that could not become ROIs, counted once however often MIAS is imported
    import_mias(workspace, mias_dir, user="tester")
    lost = dataset_stats(workspace)["findings_without_roi"]
    assert lost == {"count": 4, "by_reason": {"diffuse calcifications (*NOTE 3*): no centre given": 3,
                                              "no centre given in the truth table": 1}}


@pytest.mark.slow
def test_an_experiment_on_mias_masses_records_only_mias_mass_lesions(workspace_cache, workspace, mias_dir):
    from cadx.workflows.experiments import ExperimentSettings, experiment_summary, run_experiment
    from cadx.workflows.features import resolve_backbone

    truth = _mias_truth(mias_dir)
    workspace_cache.fill(workspace, import_demo, n_lesions=4, seed=1)
    import_mias(workspace, mias_dir, user="tester")
    save_cohort(workspace, "MIAS masses", CohortDefinition(sources=["mias"], lesion_types=["masses"], n_folds=2),
                user="tester")
    loaded, _ = resolve_backbone("alexnet", weights="random")
    with pytest.raises(CohortTooSmallError, match="fewer than 5 malignant lesions per fold for 5-fold"):
        run_experiment(workspace, loaded, ExperimentSettings(taps=("fc8",), ensemble_tap="fc8", analytic=False,
                                                             cohort="MIAS masses", n_folds=5),
                       name="refused", user="tester")
    experiment_id = run_experiment(workspace, loaded, ExperimentSettings(taps=("fc8",), ensemble_tap="fc8",
                                                                         analytic=False, cohort="MIAS masses"),
                                   name="MIAS masses", user="tester")
    summary = experiment_summary(workspace, experiment_id)
    config = summary["config"]
    assert config["n_folds"] == 2 and config["cohort"]["name"] == "MIAS masses"
    assert config["cohort"]["definition"]["lesion_types"] == ["masses"]
    assert config["roi_set_sha256"] == roi_set_sha256(config["roi_sha256"]) == config["cohort"]["roi_set_sha256"]
    assert not summary["uses_synthetic_data"]
    with workspace.sessions() as session:
        keys = session.scalars(select(Lesion.key).join(Roi, Roi.lesion_id == Lesion.id)
                               .where(Roi.id.in_(config["roi_ids"]))).all()
    assert sorted(keys) == sorted(k for k, f in truth.items() if f.abnormality in ("CIRC", "SPIC", "MISC"))
    assert {truth[k].abnormality for k in keys} <= {"CIRC", "SPIC", "MISC"}


# -------------------------------------------------------------------------------------------- migration ---
def test_migration_maps_stored_classes_links_rois_to_their_import_and_codes_lost_findings(database_url):
    from alembic import command

    from db.session import alembic_config, create_db_engine, init_db

    engine = create_db_engine(database_url)
    config = alembic_config(engine)
    command.upgrade(config, "0003")
    report = {"items": [
        {"name": "mdb059 (Info.txt line 70)", "status": "skipped", "reason": "no centre given in the truth table",
         "roi_id": None},
        {"name": "mdb001 finding 1", "status": "imported", "reason": "", "roi_id": 1},
        {"name": "mdb003 finding 1", "status": "imported", "reason": "", "roi_id": 2},
    ]}
    now = "CURRENT_TIMESTAMP"
    with engine.begin() as c:
        c.execute(text(f"INSERT INTO patients (id, source, key, is_synthetic, created_at) VALUES "
                       f"(1, 'mias', 'mias-001', false, {now}), (2, 'demo', 'demo-P1', true, {now})"))
        c.execute(text(
            "INSERT INTO lesions (id, patient_id, key, label, pathology_source, lesion_type, is_synthetic, truth, "
            f"created_at) VALUES (1, 1, 'mdb001#1', 'benign', 'MIAS', 'ARCH (mass)', false, NULL, {now}), "
            f"(2, 1, 'mdb003#1', 'malignant', 'MIAS', 'CALC (calcification)', false, NULL, {now}), "
            f"(3, 2, 'demo-L1', 'benign', 'synthetic', 'synthetic spiculated mass', true, "
            f"'{{\"morphology\": \"spiculated\"}}', {now})"))
        c.execute(text(
            "INSERT INTO images (id, patient_id, source_name, sha256, source_format, rows, columns, "
            "pixel_spacing_row_mm, pixel_spacing_col_mm, pixel_spacing_source, header, burned_in_annotation, "
            f"is_synthetic, created_at) VALUES (1, 1, 'mdb001.pgm', '{'a' * 64}', 'pgm', 1024, 1024, 0.2, 0.2, "
            f"'MIAS', '{{}}', false, false, {now})"))
        for roi_id, lesion_id in ((1, 1), (2, 2)):
            c.execute(text(
                "INSERT INTO rois (id, lesion_id, image_id, sha256, file, centre_row, centre_col, centre_source, "
                "size_px, pixel_size_mm, field_mm, padded_fraction, background_fraction, qc_flags, included, "
                f"is_synthetic, created_at) VALUES ({roi_id}, {lesion_id}, 1, '{str(roi_id) * 64}', 'r.png', 1, 1, "
                f"'x', 512, 0.1, 51.2, 0, 0, '[]', true, false, {now})"))
        c.execute(text("INSERT INTO import_runs (id, kind, source, \"user\", at, n_imported, n_skipped, report) "
                       f"VALUES (7, 'mias', 'all-mias', 'tester', {now}, 2, 1, :report)"),
                  {"report": json.dumps(report)})
    init_db(engine)
    with engine.connect() as c:
        types = dict(c.execute(text("SELECT key, lesion_type FROM lesions")).all())
        runs = dict(c.execute(text("SELECT id, import_run_id FROM rois")).all())
        stored = c.execute(text("SELECT report FROM import_runs")).scalar_one()
    assert types == {"mdb001#1": "ARCH", "mdb003#1": "CALC", "demo-L1": "mass"}
    assert runs == {1: 7, 2: 7}
    stored = stored if isinstance(stored, dict) else json.loads(stored)
    assert stored["items"][0]["code"] == "no_centre" and "code" not in stored["items"][1]
    command.downgrade(config, "0003")
    with engine.connect() as c:
        types = dict(c.execute(text("SELECT key, lesion_type FROM lesions")).all())
    assert types == {"mdb001#1": "ARCH (mass)", "mdb003#1": "CALC (calcification)",
                     "demo-L1": "synthetic spiculated mass"}
    engine.dispose()


# ------------------------------------------------------------------------------------------------- CLI ---
@pytest.mark.slow
def test_cohort_commands_create_list_show_and_refuse_a_too_small_cohort_before_any_work(tmp_path):
    data = tmp_path / "data"
    assert runner.invoke(app, ["demo", "--lesions", "12", "--seed", "2", "--data-dir", str(data)]).exit_code == 0
    result = runner.invoke(app, ["cohort", "create", "demo benign", "--label", "benign", "--lesion-type", "masses",
                                 "--view", "CC", "--data-dir", str(data), "--user", "tester"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "cohort demo benign saved" in output and "lesion types masses" in output
    assert "one class only" in output  # the verdict is shown with the counts

    result = runner.invoke(app, ["cohort", "create", "bad", "--synthetic", "sometimes", "--data-dir", str(data)])
    assert result.exit_code == 2 and "use one of auto, real, synthetic, both" in " ".join(result.output.split())

    result = runner.invoke(app, ["cohort", "list", "--json", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    listed = {c["name"]: c for c in json.loads(result.output)}
    assert list(listed) == ["paper", "all", "demo benign"] and listed["paper"]["preset"]
    assert listed["all"]["counts"]["lesions"] == 12 and listed["all"]["counts"]["lesions_by_label"] == {
        "benign": 6, "malignant": 6}
    assert listed["demo benign"]["counts"]["rois_by_label"] == {"benign": listed["demo benign"]["counts"]["rois"]}

    result = runner.invoke(app, ["cohort", "show", "paper", "--json", "--data-dir", str(data)])
    shown = json.loads(result.output)
    assert shown["synthetic_used"] == "synthetic" and shown["counts"]["lesions"] == 12
    assert shown["guard_rails"].startswith("REFUSED for experiments: has 6 benign and 6 malignant lesions: fewer "
                                           "than 5 benign and malignant lesions per fold")
    result = runner.invoke(app, ["cohort", "show", "paper", "--data-dir", str(data)])
    assert result.exit_code == 0 and "12 lesions (benign 6, malignant 6)" in " ".join(result.output.split())

    result = runner.invoke(app, ["sweep", "--cohort", "paper", "--backbone", "alexnet", "--weights", "random",
                                 "--data-dir", str(data)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "fewer than 5 benign and malignant lesions per fold" in output
    assert "Backbone:" not in output  # refused before loading anything
    result = runner.invoke(app, ["evaluate", "--cohort", "nope", "--data-dir", str(data)])
    assert result.exit_code == 2 and "no such cohort" in result.output
    assert runner.invoke(app, ["cohort", "delete", "demo benign", "--data-dir", str(data)]).exit_code == 0
