"""The ``cadx`` command line over the real MIAS files and the demo data."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from cadx.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_import_mias_then_stats_json(tmp_path, mias_dir):
    data = tmp_path / "data"
    result = runner.invoke(app, ["import", "mias", str(mias_dir), "--data-dir", str(data), "--user", "tester",
                                 "--report", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["committed"] and report["errors"] == 0 and report["imported"] > 50
    assert "imported" in result.output and "mdb059" in result.output  # skipped rows are named with their reason

    result = runner.invoke(app, ["stats", "--json", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["rois"] == report["imported"] and stats["rois_included"] == stats["rois"]
    assert stats["rois_by_view"] == {"MLO": {"included": stats["rois"], "excluded": 0}}
    assert sum(stats["lesions_by_label"].values()) == stats["lesions"] == stats["rois"]
    # issue 12.7: mdb059 and the three *NOTE 3* clusters have no centre
    assert stats["findings_without_roi"] == {"count": 4, "by_reason": {
        "diffuse calcifications (*NOTE 3*): no centre given": 3, "no centre given in the truth table": 1}}
    assert set(stats["lesions_by_type"]) == {"ARCH", "ASYM", "CALC", "CIRC", "MISC", "SPIC"}
    text = " ".join(runner.invoke(app, ["stats", "--data-dir", str(data)]).output.split())
    assert "findings that could not become ROIs: 4 (diffuse calcifications (*NOTE 3*): no centre given: 3; " in text

    result = runner.invoke(app, ["exclude", "1", "--reason", "location_marker", "--data-dir", str(data),
                                 "--user", "tester"])
    assert result.exit_code == 0, result.output
    stats = json.loads(runner.invoke(app, ["stats", "--json", "--data-dir", str(data)]).output)
    assert stats["rois_excluded"] == 1 and stats["excluded_by_reason"] == {"location_marker": 1}


def test_bad_manifest_exits_nonzero_with_the_fix(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,lesion,label,centre_x,centre_y\nmissing.png,L1,benign,10,10\n")
    result = runner.invoke(app, ["import", "csv", str(manifest), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert "not found" in result.output and "Fix:" in result.output and "Nothing was written" in result.output


def test_unknown_exclusion_reason_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["exclude", "1", "--reason", "blurry", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert "unknown exclusion reason" in result.output


@pytest.mark.slow
def test_sweep_and_evaluate_write_their_json_and_refuse_bad_repeats(tmp_path):
    data = tmp_path / "data"
    assert runner.invoke(app, ["demo", "--lesions", "12", "--seed", "2", "--data-dir", str(data)]).exit_code == 0
    common = ["--backbone", "alexnet", "--weights", "random", "--data-dir", str(data), "--user", "tester",
              "--min-lesions-per-fold", "1"]  # 12 demo lesions: the guard rail (5 per class per fold) lowered

    sweep_json = tmp_path / "sweep.json"
    result = runner.invoke(app, ["sweep", "--taps", "fc7,fc8", "--tap", "fc8", "--no-analytic", "--repeats", "1",
                                 "--json", str(sweep_json), *common])
    assert result.exit_code == 0, result.output
    assert "Layer sweep: AUC per tap" in result.output and "RANDOM (UNTRAINED) WEIGHTS" in result.output
    sweep = json.loads(sweep_json.read_text())
    assert list(sweep["results"]["sweep"]) == ["fc7", "fc8"] and list(sweep["results"]["methods"]) == ["A"]
    assert sweep["uses_synthetic_data"] and "repeats" not in sweep["config"]  # one seed: the config as before

    # --estimate: the time of a sweep on this machine, from the first sweep's measured seconds; nothing runs
    result = runner.invoke(app, ["sweep", "--taps", "fc7,fc8", "--tap", "fc8", "--no-analytic", "--quick",
                                 "--estimate", "--json", "-", *common])
    assert result.exit_code == 0, result.output
    planned = json.loads(result.output[result.output.index("{"):])
    assert planned["n_units"] == 2 * 1 * 5  # two taps x one seed (--quick) x five folds
    assert "extract" not in planned["parts"]  # the features are stored: nothing to extract
    # the same work as the first sweep (its taps' widths measured once each): exactly the seconds it recorded
    assert planned["parts"]["sweep"] == pytest.approx(sum(v["seconds"] for v in sweep["results"]["sweep"].values()))
    assert planned["low"] <= planned["seconds"] <= planned["high"]
    text = " ".join(runner.invoke(app, ["sweep", "--taps", "fc8", "--tap", "fc8", "--no-analytic", "--estimate",
                                        *common]).output.split())
    assert "Estimated time on this machine: about" in text and "for 25 units of work (5 seeds)" in text
    assert "from the seconds measured by earlier experiments on this machine" in text

    evaluate_json = tmp_path / "evaluate.json"
    result = runner.invoke(app, ["evaluate", "--tap", "fc8", "--seed", "1", "--repeats", "2", "--json",
                                 str(evaluate_json), *common])
    assert result.exit_code == 0, result.output
    assert "Repeated cross-validation" in result.output and "Comparisons" in result.output
    assert "What could this cohort show? (80 % power, lesions)" in result.output  # the power panel (issue 24)
    assert "Hanley & McNeil (1982) variances" in " ".join(result.output.split())
    results = json.loads(evaluate_json.read_text())["results"]
    assert results["repeats"]["seeds"] == [1, 2] and set(results["repeats"]["methods"]) == {"A", "B", "C", "Z"}
    # the first seed's SVM1 is the Table-1 row
    assert results["repeats"]["methods"]["A"]["auc_mean_by_seed"][0] == results["methods"]["A"]["auc_mean"]

    result = runner.invoke(app, ["evaluate", "--tap", "fc8", "--repeats", "0", *common])
    assert result.exit_code == 2 and "repeats" in result.output and "whole number from 1" in result.output


    # the experiments and their out-of-fold predictions, for batch work
    listing = tmp_path / "experiments.json"
    result = runner.invoke(app, ["experiments", "--json", str(listing), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    experiments = json.loads(listing.read_text())
    assert [(e["kind"], e["repeats"]) for e in experiments] == [("evaluate", 2), ("sweep", 1)]
    assert "SYNTHETIC DATA" in result.output and "5 folds × 2 seed(s)" in result.output
    evaluate_id, n_rois = experiments[0]["id"], experiments[0]["n_rois"]
    for name, args, rows, seeds in (("roi", ["--level", "roi"], n_rois, None),
                                    ("seeds", ["--all-seeds"], 2 * n_rois, [0, 1]),
                                    ("lesion", ["--level", "lesion"], experiments[0]["n_lesions"], None)):
        out = tmp_path / f"predictions-{name}.csv"
        result = runner.invoke(app, ["predictions", str(evaluate_id), "--csv", str(out), *args, "--data-dir",
                                     str(data)])
        assert result.exit_code == 0, result.output
        with out.open() as handle:
            table = list(csv.DictReader(handle))
        assert len(table) == rows and {"truth", "fold", "p1", "p2", "p3"} <= set(table[0])
        if seeds is not None:
            assert sorted({int(r["repeat"]) for r in table}) == seeds
    # seed 0 of --all-seeds is the one-seed export, row for row
    with (tmp_path / "predictions-roi.csv").open() as a, (tmp_path / "predictions-seeds.csv").open() as b:
        first_seed = [r for r in csv.DictReader(b) if r.pop("repeat") == "0"]
        assert first_seed == list(csv.DictReader(a))
    result = runner.invoke(app, ["predictions", "999", "--csv", str(tmp_path / "x.csv"), "--data-dir", str(data)])
    assert result.exit_code == 2 and "`cadx experiments`" in result.output and not (tmp_path / "x.csv").exists()


def test_a_full_disk_during_an_import_is_a_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    import errno

    import cadx.workflows.importing as importing
    from cadx.workflows import open_workspace
    from tests.test_import_files import _snapshot

    data = tmp_path / "data"
    workspace = open_workspace(data)
    before = _snapshot(workspace)
    written = []

    def store_until_full(data_dir, pixels):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(data_dir / "rois" / "x.png"))
        written.append(True)
        return real_store(data_dir, pixels)

    real_store = importing.store_roi_png
    monkeypatch.setattr(importing, "store_roi_png", store_until_full)
    result = runner.invoke(app, ["demo", "--lesions", "3", "--data-dir", str(data)])
    assert written and result.exit_code == 1, result.output
    assert "No space left on device" in result.output and "Nothing was half-written" in result.output
    assert result.exception is not None and "Traceback" not in result.output
    assert _snapshot(workspace) == before  # the one ROI file written before the disk filled is gone again
    workspace.engine.dispose()


def test_an_error_is_one_unwrapped_line_in_a_narrow_terminal(tmp_path, monkeypatch):
    # A 20-column terminal: rich used to fold the message mid-sentence, so tests and users could not find it whole.
    import cadx.cli as cli

    monkeypatch.setattr(cli._console, "_width", 20)
    result = runner.invoke(app, ["exclude", "1", "--reason", "blurry", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2
    error_line = next(line for line in result.output.splitlines() if line.startswith("Error:"))
    assert "unknown exclusion reason" in error_line and len(error_line) > 20


MARKUP = "[/x] [red]boom[/red] [bold]"  # rich markup: "[/x]" made rich raise, "[red]" restyled the output


def test_user_text_in_errors_and_notes_is_printed_literally(tmp_path):
    """An error quoting user input and a cohort's description: with markup on, "[/x]" raised MarkupError."""
    result = runner.invoke(app, ["exclude", "1", "--reason", MARKUP, "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2, result.output
    assert MARKUP in result.output and "unknown exclusion reason" in result.output
    data = tmp_path / "data"
    assert runner.invoke(app, ["demo", "--lesions", "3", "--data-dir", str(data)]).exit_code == 0
    result = runner.invoke(app, ["cohort", "create", "tagged", "--source", "demo", "--synthetic", "synthetic",
                                 "--description", MARKUP, "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert MARKUP in result.output
    result = runner.invoke(app, ["cohort", "show", "tagged", "--data-dir", str(data)])
    assert result.exit_code == 0 and MARKUP in result.output, result.output


def test_experiment_names_have_one_limit_checked_before_any_work(tmp_path):
    from cadx.errors import CadxInputError
    from cadx.records import EXPERIMENT_NAME_MAX, experiment_name
    from cadx.workflows import open_workspace
    from cadx.workflows.jobs import submit_job
    from db.models import Experiment

    assert EXPERIMENT_NAME_MAX == 128 and Experiment.__table__.c.name.type.length == EXPERIMENT_NAME_MAX
    assert experiment_name(" " + "x" * 128 + " ") == "x" * 128
    data = tmp_path / "data"  # no data at all: a name refused before anything is looked at
    result = runner.invoke(app, ["sweep", "--name", "x" * 135, "--data-dir", str(data)])
    assert result.exit_code == 2, result.output
    assert "the experiment name has 135 characters" in result.output and "at most 128" in result.output
    workspace = open_workspace(data)
    with pytest.raises(CadxInputError, match="at most 128"):  # the Sweep page's queue, and scripts
        submit_job(workspace, "experiment", {"name": "x" * 129}, user="tester")
    workspace.engine.dispose()


@pytest.mark.slow
def test_a_sweep_named_with_markup_is_stored_and_listed_literally(tmp_path):
    """Before, `cadx sweep --name '[/x]'` stored the experiment, then crashed printing it; `cadx experiments` then
    crashed on every call."""
    data = tmp_path / "data"
    assert runner.invoke(app, ["demo", "--lesions", "12", "--seed", "2", "--data-dir", str(data)]).exit_code == 0
    result = runner.invoke(app, ["sweep", "--name", MARKUP, "--taps", "fc8", "--tap", "fc8", "--no-analytic",
                                 "--repeats", "1", "--backbone", "alexnet", "--weights", "random", "--min-lesions-per-fold", "1",
                                 "--data-dir", str(data), "--user", "tester"])
    assert result.exit_code == 0, result.output
    assert f"'{MARKUP}'" in result.output and "RANDOM (UNTRAINED) WEIGHTS" in result.output
    result = runner.invoke(app, ["experiments", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "│ [/x] [red]boom[/red]   │" in result.output and "│ [bold]  " in result.output  # the cell wraps at 80
