"""The ``cadx`` command line over the real MIAS files and the demo data."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cadx.cli import app

runner = CliRunner()


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
