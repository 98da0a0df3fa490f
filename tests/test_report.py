"""The study report: a self-contained HTML page whose sections, numbers and figures are checked by parsing it."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cadx.cli import app
from cadx.report import SECTIONS, roi_set_sha256, svg_line_chart
from cadx.workflows import import_mias
from cadx.workflows.experiments import ExperimentSettings, experiment_summary, run_experiment
from cadx.workflows.features import resolve_backbone, roi_records
from cadx.workflows.report import chromium_path, report_data, report_html, write_report
from tests.workspace_cache import demo_experiment as build_demo_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
OLD = json.loads((REPO_ROOT / "tests" / "reference" / "experiment_record_v1.json").read_text())  # schema-1 records


class _Page(HTMLParser):
    """Collects what the tests check: sections (with their banners), tables' cells, SVGs and every URL."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, str] = {}
        self.banners: dict[str, int] = {}
        self.cells: dict[str, list[list[tuple[str, str | None]]]] = {}
        self.svgs = 0
        self.svg_elements: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self._section: str | None = None
        self._table: str | None = None
        self._cell: list | None = None
        self._banner = False
        self._in_svg = 0
        self.print_header = ""
        self._print = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("href", "src", "srcset", "action", "poster", "data", "xlink:href") and value is not None:
                self.urls.append((tag, name, value))
            if name == "style" and value and "url(" in value:
                self.urls.append((tag, name, value))
        if tag == "section":
            self._section = a["id"]
            self.sections[self._section] = ""
            self.banners[self._section] = 0
        if tag == "div" and a.get("class") == "banner":
            self._banner = True
            self.banners[self._section] += 1
        if tag == "div" and a.get("class") == "print-header":
            self._print = True
        if tag == "table":
            self._table = a.get("id")
            self.cells[self._table] = []
        if tag == "tr" and self._table:
            self.cells[self._table].append([])
        if tag in ("td", "th") and self._table:
            self._cell = ["", a.get("data-value")]
        if tag == "svg":
            self.svgs += 1
            self._in_svg += 1
        if self._in_svg:
            self.svg_elements.append(tag)

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        if tag == "div":
            self._banner = False
            self._print = False
        if tag == "table":
            self._table = None
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.cells[self._table][-1].append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        if tag == "svg":
            self._in_svg -= 1

    def handle_data(self, data):
        if self._section:
            self.sections[self._section] += data
        if self._cell is not None:
            self._cell[0] += data
        if self._print:
            self.print_header += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _assert_self_contained(text: str, page: _Page) -> None:
    assert page.urls == [], f"external resources: {page.urls}"
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(page.tags)
    assert "@import" not in text and "url(" not in text
    # the only URL-like string is the SVG namespace, which is a name, not a resource that is fetched
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) <= {"http://www.w3.org/2000/svg"}


def _row(page: _Page, table: str, first: str) -> list[tuple[str, str | None]]:
    rows = [r for r in page.cells[table] if r and r[0][0] == first]
    assert len(rows) == 1, (table, first, page.cells[table])
    return rows[0]


def _value(cell: tuple[str, str | None]) -> float:
    assert cell[1] is not None, cell
    return float(cell[1])


# ------------------------------------------------------------------------------------------------ pure parts ---
def test_roi_set_hash_is_order_free_and_known():
    import hashlib

    assert roi_set_sha256(["b", "a"]) == roi_set_sha256(["a", "b"]) == hashlib.sha256(b"a\nb").hexdigest()


def test_svg_line_chart_maps_data_to_the_plot_area():
    svg = svg_line_chart([{"name": "diag", "x": [0.0, 1.0], "y": [0.0, 1.0], "colour": "#123456"}],
                         title="t", x_label="x", y_label="y", width=400, height=300)
    # plot area: left 64, right margin 190, top 38, bottom 52 -> (64, 248) to (210, 38)
    assert '<polyline points="64.00,248.00 210.00,38.00"' in svg
    page = _parse(svg)
    assert page.svgs == 1 and page.urls == []
    with pytest.raises(ValueError, match="2 x values but 1 y values"):
        svg_line_chart([{"name": "bad", "x": [0, 1], "y": [0]}], title="t", x_label="x", y_label="y")


def test_svg_escapes_text():
    svg = svg_line_chart([{"name": "<script>alert(1)</script>", "x": [0, 1], "y": [0, 1]}],
                         title="a & b", x_label="x", y_label="y")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "a &amp; b" in svg


# ------------------------------------------------------------------------------------------ on the demo data ---
@pytest.fixture
def demo_experiment(workspace_cache, workspace):
    # the demo set with its first ROI excluded, and an experiment: built once, copied (tests/workspace_cache.py)
    settings = {"min_lesions_per_class_per_fold": 1, "taps": ("conv5", "fc6", "fc8"), "ensemble_tap": "fc8",
                "n_folds": 3, "seed": 0, "repeats": 2}
    experiment_id = workspace_cache.fill(workspace, build_demo_experiment, n_lesions=12, seed=5, exclude_first=True,
                                         settings=settings, name="report <demo>")
    return workspace, experiment_id


@pytest.mark.slow
def test_report_on_demo_has_every_section_the_stored_numbers_and_no_external_resource(demo_experiment):
    workspace, experiment_id = demo_experiment
    summary = experiment_summary(workspace, experiment_id)
    config, results = summary["config"], summary["results"]
    text = report_html(workspace, experiment_id)
    page = _parse(text)
    _assert_self_contained(text, page)
    assert list(page.sections) == list(SECTIONS)
    # synthetic data and random weights: said in every section and in the header printed on every page
    assert all(page.banners[s] == 1 for s in SECTIONS), page.banners
    assert "SYNTHETIC DATA" in page.print_header and "RANDOM (UNTRAINED) CNN WEIGHTS" in page.print_header
    assert re.search(r"\.print-header\{display:block;position:fixed", text)
    # the name is escaped, never markup
    assert "report &lt;demo&gt;" in text and "<demo>" not in text
    # two figures, both vector with drawn curves
    assert page.svgs == 2 and page.svg_elements.count("polyline") >= 3 + 2
    # Table 1 equals the stored record
    for key, name in (("A", "SVM1 (CNN features)"), ("B", "SVM2 (analytic features)"),
                      ("C", "Ensemble (SVM1 + SVM2)")):
        row = _row(page, "table1", name)
        stored = results["methods"][key]
        assert _value(row[1]) == stored["auc_mean"] and _value(row[2]) == stored["auc_sd"]
        assert _value(row[4]) == stored["pooled_auc"] and _value(row[8]) == stored["binormal"]["auc"]
        assert row[1][0] == f"{stored['auc_mean']:.3f}"
    # the sweep table equals the stored sweep, in network order
    assert [r[0][0] for r in page.cells["sweep-table"][1:]] == ["conv5", "fc6", "fc8"]
    for tap in ("conv5", "fc6", "fc8"):
        row = _row(page, "sweep-table", tap)
        assert _value(row[3]) == results["sweep"][tap]["auc_mean"]
        assert int(row[1][0]) == results["sweep"][tap]["n_features"]
    # the tests with their Bonferroni adjustment
    from cadx.workflows.results import METHOD_NAMES as names

    assert len(page.cells["tests-table"]) == 1 + len(results["comparisons"]) == 1 + 6  # the paper's 3 + the z-ensemble's
    for comparison in results["comparisons"]:
        first, second = comparison["comparison"].split(" vs ")
        row = _row(page, "tests-table", f"{names[first]} vs {names[second]}")
        # the headline is the fold-level test over every seed's folds, Bonferroni within its family of 3
        assert _value(row[6]) == comparison["repeated_nb_p"]
        assert _value(row[7]) == comparison["repeated_nb_p_bonferroni"]
        assert _value(row[7]) == pytest.approx(min(1.0, 3 * comparison["repeated_nb_p"]))
        assert repr(float(comparison["delong_p"])) not in page.sections["tests"]  # pooled DeLong never shown
    # repeated cross-validation: seeds 0 and 1
    header = [c[0] for c in page.cells["repeats-table"][0]]
    assert header[-2:] == ["seed 0", "seed 1"]
    row = _row(page, "repeats-table", "SVM1 (CNN features)")
    assert _value(row[1]) == results["repeats"]["methods"]["A"]["auc_mean"]
    # cohort: the experiment's ROI set, one exclusion by its reason
    lesions = {r.lesion_id for r in roi_records(workspace)}
    all_row = _row(page, "cohort-by-label", "all")
    assert [int(c[0]) for c in all_row[1:]] == [len({r.patient_id for r in roi_records(workspace)}), len(lesions),
                                                 len(config["roi_ids"])]
    assert _row(page, "cohort-exclusions", "location_marker")[1][0] == "1"
    # methods paragraph from the config
    methods = " ".join(page.sections["methods"].split())
    assert config["weights"]["sha256"] in methods and config["preprocessing"] in methods
    assert "conv5, fc6, fc8" in methods and "3-fold" in methods and "seeds 0, 1" in methods
    # provenance
    provenance = " ".join(page.sections["provenance"].split())
    for value in (summary["config_sha256"], summary["code_version"], roi_set_sha256(config["roi_sha256"])):
        assert value in provenance
    assert "Not a medical device" in page.sections["disclaimer"]
    # Method B against the phantoms' true outlines (issue 27.3): the median Dice over the experiment's ROIs
    from cadx.workflows.features import segmentation_scores

    scores = segmentation_scores(workspace, config["roi_ids"], version=config["analytic_version"])
    assert len(scores) == len(config["roi_ids"])  # every phantom ROI has its truth
    dice_row = _row(page, "segmentation-table", "Dice")
    assert _value(dice_row[1]) == pytest.approx(float(np.median([s.dice for s in scores])), abs=5e-4)
    assert f"{len(scores)} against the synthetic phantom truth" in " ".join(page.sections["segmentation"].split())


@pytest.mark.slow
def test_report_at_lesion_level_uses_the_lesion_statistics(demo_experiment):
    workspace, experiment_id = demo_experiment
    data = report_data(workspace, experiment_id, level="lesion")
    page = _parse(report_html(workspace, experiment_id, level="lesion"))
    row = _row(page, "table1", "SVM1 (CNN features)")
    assert _value(row[1]) == data.results.methods["A"].auc_mean
    assert data.results.level == "lesion" and data.results.n_cases == data.cohort.lesions


@pytest.mark.slow
def test_cli_report_writes_the_html_and_refuses_an_unknown_experiment(demo_experiment, tmp_path):
    workspace, experiment_id = demo_experiment
    if workspace.engine.url.get_backend_name() != "sqlite":
        pytest.skip("the CLI test runs once, on the SQLite workspace")
    runner = CliRunner()
    out = tmp_path / "out" / "report.html"
    env = {"CADX_DATA_DIR": str(workspace.data_dir), "CADX_DATABASE_URL": str(workspace.engine.url)}
    result = runner.invoke(app, ["report", str(experiment_id), "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert "HTML report written" in result.output
    assert list(_parse(out.read_text()).sections) == list(SECTIONS)
    missing = runner.invoke(app, ["report", "999", "--out", str(tmp_path / "x.html")], env=env)
    assert missing.exit_code == 2 and "no such experiment" in missing.output
    assert not (tmp_path / "x.html").exists()


@pytest.mark.slow
def test_pdf_is_printed_by_chromium(demo_experiment, tmp_path):
    workspace, experiment_id = demo_experiment
    if workspace.engine.url.get_backend_name() != "sqlite":
        pytest.skip("the PDF test runs once, on the SQLite workspace")
    if chromium_path() is None:
        pytest.skip("no Chromium: apt-get install chromium (scripts/services.sh does it as root)")
    written = write_report(workspace, experiment_id, tmp_path / "r.html", pdf=tmp_path / "r.pdf")
    data = written["pdf"].read_bytes()
    assert data.startswith(b"%PDF-") and len(data) > 10_000
    # the ROC page's download: the same report, printed the same way, as bytes (nothing left behind)
    from cadx.workflows.report import report_pdf

    page = report_pdf(workspace, experiment_id)
    assert page.startswith(b"%PDF-") and abs(len(page) - len(data)) < len(data) // 10


# ----------------------------------------------------------------------------------------------- on real MIAS ---
@pytest.mark.slow
def test_report_of_a_real_mias_experiment_is_written_as_a_test_artifact(tmp_path, mias_dir):
    from cadx.workflows import open_workspace

    workspace = open_workspace(tmp_path / "data")
    import_mias(workspace, mias_dir, user="tester")
    loaded, note = resolve_backbone("efficientnet_lite0")
    settings = ExperimentSettings(min_lesions_per_class_per_fold=1, repeats=1, taps=("stage5", "stage7", "pool"), ensemble_tap="pool", seed=0)
    experiment_id = run_experiment(workspace, loaded, settings, name="MIAS report", user="tester",
                                   weights_note=note)
    summary = experiment_summary(workspace, experiment_id)
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / "report-mias.html"
    write_report(workspace, experiment_id, out)
    text = out.read_text()
    page = _parse(text)
    _assert_self_contained(text, page)
    assert list(page.sections) == list(SECTIONS)
    assert sum(page.banners.values()) == 0 and page.print_header == ""  # real data, real weights: no banner
    assert page.svgs == 2
    row = _row(page, "table1", "SVM1 (CNN features)")
    assert _value(row[1]) == summary["results"]["methods"]["A"]["auc_mean"]
    assert int(_row(page, "cohort-by-label", "all")[3][0]) == summary["results"]["n_rois"]
    types = {r[0][0] for r in page.cells["cohort-by-type"][1:]}
    assert types and "unknown" not in types  # MIAS gives every lesion a class (CIRC, SPIC, ...)


def _old_record(label: str):
    """A schema-1 record (tests/reference/experiment_record_v1.json: SYNTHETIC data, random weights) as
    ``load_experiment`` gives it: typed, upgraded on reading."""
    from cadx.records import ExperimentRecord, from_json, upgrade_results

    old = OLD[label]
    return from_json(ExperimentRecord, {**old, "results": upgrade_results(old["results"])})


def _store_record(workspace, record: dict) -> int:
    """Store an experiment row with this JSON config and results as written by another (older) cadx; its id."""
    from datetime import datetime

    from db.models import Experiment

    with workspace.sessions() as session, session.begin():
        row = Experiment(name=record["name"], kind=record["kind"], config=record["config"],
                         config_sha256=record["config_sha256"], code_version=record["code_version"],
                         results=record["results"], seconds=record["seconds"],
                         uses_synthetic_data=record["uses_synthetic_data"],
                         uses_random_weights=record["uses_random_weights"], created_by=record["created_by"],
                         created_at=datetime.fromisoformat(record["created_at"]))
        session.add(row)
        session.flush()
        return int(row.id)


def test_render_an_svm1_only_experiment_without_sweep_or_tests():
    """An experiment without analytic features: Table 1 has SVM1 only; no tests, no sweep, no repeats; still valid."""
    from cadx.records import Binormal, LevelResults
    from cadx.report import CohortSummary, LabelCounts, ReportData, render_report

    record = _old_record("one_seed")
    method = dataclasses.replace(record.results.methods["A"], title="SVM1", auc_mean=0.61, auc_sd=0.05,
                                 auc_se=0.02, pooled_auc=0.6, binormal=Binormal(error="no finite fit"))
    config = dataclasses.replace(record.config, taps=["fc6"], ensemble_tap="fc6", n_folds=2, n_inner=2, seed=3,
                                 analytic_version=None, grid={"gamma": [0.5], "coef0": [1.0], "degree": [2]})
    record = dataclasses.replace(
        record, id=7, name="svm1 only", uses_synthetic_data=False, uses_random_weights=False, config=config,
        results=dataclasses.replace(record.results, sweep={}, methods={"A": method}, comparisons=[], repeats=None))
    cohort = CohortSummary(
        patients=3, lesions=4, rois=6, rois_deleted_since=0, label_names=["benign", "malignant"],
        by_label={"benign": LabelCounts(patients=2, lesions=2, rois=3),
                  "malignant": LabelCounts(patients=1, lesions=2, rois=3)},
        lesions_by_label={"benign": 2, "malignant": 2}, rois_by_view={"CC": {"benign": 3, "malignant": 3}},
        lesions_by_type={"mass": {"benign": 2, "malignant": 2}}, excluded_by_reason={})
    data = ReportData(
        experiment=record, cohort=cohort,
        results=LevelResults(level="roi", n_cases=6, n_positive=3, methods={"A": method}, comparisons=[]),
        sweep=[], table1=[{"classifier": "SVM1 (CNN features)", "AUC": 0.61, "AUC.SD": 0.05, "SE": 0.02,
                           "pooled AUC": 0.6, "CI95 low": None, "CI95 high": None, "lesion AUC": None,
                           "binormal AUC": None, "time (s)": 1.0}],
        tests=[], repeats=[], roi_set_sha256=None, generated_at="2026-11-30T00:00:00+00:00", generator="cadx test")
    text = render_report(data)
    page = _parse(text)
    _assert_self_contained(text, page)
    assert list(page.sections) == list(SECTIONS) and sum(page.banners.values()) == 0
    assert [r[0][0] for r in page.cells["table1"][1:]] == ["SVM1 (CNN features)"]
    assert "No comparisons" in page.sections["tests"] and "no layer sweep" in page.sections["fig3"]
    methods = " ".join(page.sections["methods"].split())
    assert "gamma ∈ {0.5000}; coef0 ∈ {1.0000}; degree ∈ {2}" in methods and "seed 3" in methods
    assert "Analytic features" not in methods
    assert _row(page, "provenance-table", "ROI-set SHA-256")[1][0] == "not recorded"
    # the binormal fit failed: only the empirical curve (and chance) is drawn, its AUC in the legend
    assert "SVM1 (CNN): empirical 0.600" in text and "binormal" not in page.sections["fig4"].replace(
        "Fitted binormal", "")


@pytest.mark.parametrize("label", ["one_seed", "two_seeds"])
def test_a_schema_1_record_renders_with_its_stored_numbers(workspace, label):
    """On SQLite and PostgreSQL: a record written by cadx before the schema existed (schema 1: no cohort, no ROI-set
    SHA-256, no comparison families) is upgraded on reading and rendered from its stored numbers; its ROIs are not
    in this database, so the cohort counts none and says how many are gone."""
    from cadx.records import SCHEMA_VERSION
    from cadx.report import ReportData

    old = OLD[label]
    experiment_id = _store_record(workspace, old)
    data = report_data(workspace, experiment_id)
    assert isinstance(data, ReportData) and data.experiment.results.schema_version == SCHEMA_VERSION
    assert data.experiment.config.cohort is None and data.experiment.results.roi_set_sha256 is None
    assert data.roi_set_sha256 == roi_set_sha256(old["config"]["roi_sha256"])  # computed from the ROI hashes
    assert data.cohort.rois == 0 and data.cohort.rois_deleted_since == len(old["config"]["roi_ids"])
    page = _parse(report_html(workspace, experiment_id))
    assert list(page.sections) == list(SECTIONS)
    assert all(page.banners[s] == 1 for s in SECTIONS)  # synthetic data, random weights
    stored = old["results"]
    for key, name in (("A", "SVM1 (CNN features)"), ("B", "SVM2 (analytic features)"),
                      ("C", "Ensemble (SVM1 + SVM2)")):
        row = _row(page, "table1", name)
        assert _value(row[1]) == stored["methods"][key]["auc_mean"]
        assert _value(row[8]) == stored["methods"][key]["binormal"]["auc"]
    assert [r[0][0] for r in page.cells["sweep-table"][1:]] == list(stored["sweep"]) == ["fc7", "fc8"]
    assert len(page.cells["tests-table"]) == 1 + 3  # the paper's three tests (the family schema 1 implies)
    from cadx.workflows.results import METHOD_NAMES as names

    for comparison in stored["comparisons"]:
        first, second = comparison["comparison"].split(" vs ")
        row = _row(page, "tests-table", f"{names[first]} vs {names[second]}")
        # schema 1: the headline is the first seed's Nadeau-Bengio test, as recorded; its pooled-probability DeLong
        # test is not shown
        assert row[4][0].startswith("Nadeau-Bengio corrected t, 1 seed × 3 folds")
        assert _value(row[6]) == comparison["nadeau_bengio_p"]
        assert _value(row[7]) == comparison["nadeau_bengio_p_bonferroni"]
        assert repr(float(comparison["delong_p"])) not in page.sections["tests"]
    if label == "two_seeds":
        assert [c[0] for c in page.cells["repeats-table"][0]][-2:] == ["seed 0", "seed 1"]
        assert "seeds 0, 1" in " ".join(page.sections["methods"].split())
    else:
        assert "repeats-table" not in page.cells and "seed 0" in " ".join(page.sections["methods"].split())
    provenance = " ".join(page.sections["provenance"].split())
    assert old["config_sha256"] in provenance and data.roi_set_sha256 in provenance


def test_a_stored_record_with_a_bad_field_is_refused_with_its_path(workspace):
    """On SQLite and PostgreSQL: the report, the analyses and the explorer read the typed record, so a damaged
    stored record is refused with the experiment and the path of the bad field, and nothing is written."""
    from cadx.errors import CadxInputError
    from cadx.workflows.analyses import experiment_data
    from cadx.workflows.explorer import explorer_backbone, tap_aucs

    bad = copy.deepcopy(OLD["one_seed"])
    bad["results"]["methods"]["A"]["auc_mean"] = "high"
    experiment_id = _store_record(workspace, bad)
    where = rf"experiment {experiment_id}: results\.methods\.A\.auc_mean: got str 'high'"
    for read in (lambda: report_data(workspace, experiment_id), lambda: experiment_data(workspace, experiment_id),
                 lambda: tap_aucs(workspace, experiment_id)):
        with pytest.raises(CadxInputError, match=where):
            read()
    out = workspace.data_dir / "report.html"
    with pytest.raises(CadxInputError, match=where):
        write_report(workspace, experiment_id, out)
    assert not out.exists()
    bad = copy.deepcopy(OLD["one_seed"])
    bad["config"]["taps"] = "fc8"
    experiment_id = _store_record(workspace, bad)
    with pytest.raises(CadxInputError, match=rf"experiment {experiment_id}: config\.taps: got str 'fc8'.*a list"):
        explorer_backbone("alexnet", experiment_id=experiment_id, workspace=workspace)


@pytest.mark.slow
def test_a_full_disk_leaves_no_truncated_report(demo_experiment, tmp_path):
    from tests.small_fs import nearly_full_fs

    workspace, experiment_id = demo_experiment
    if workspace.engine.url.get_backend_name() != "sqlite":
        pytest.skip("the CLI test runs once, on the SQLite workspace")
    env = {"CADX_DATA_DIR": str(workspace.data_dir), "CADX_DATABASE_URL": str(workspace.engine.url)}
    with nearly_full_fs(tmp_path / "full", free_bytes=16 * 1024) as full:
        (full / "report.html").write_text("the previous report")
        result = CliRunner().invoke(app, ["report", str(experiment_id), "--out", str(full / "report.html")], env=env)
        assert result.exit_code == 1, result.output
        message = " ".join(result.output.split())
        assert "No space left on device" in message and "Nothing was half-written" in message
        assert sorted(p.name for p in full.iterdir()) == [".filler", "report.html"]  # no temporary file left
        assert (full / "report.html").read_text() == "the previous report"  # before: a truncated new one


# ------------------------------------------------------------------------- issue 24: the report states its protocol ---
def _tick_labels(svg: str, taps: list[str]) -> list[tuple[float, str, bool]]:
    return [(float(x), label, "rotate(" in rest) for x, rest, label in
            re.findall(r'<text x="([0-9.]+)"([^>]*)>([^<]*)</text>', svg) if label in taps]


def test_fig3_tap_names_never_overlap_at_the_report_width():
    """Tap names side by side at the report's width (the figure is drawn 640 px wide, narrower than the page, so it
    is never scaled): long names that would overlap are tilted 45°, and tilted ones stand at least a line height
    (12 px font: 17 px along the axis) apart; short ones stay level."""
    char_width = 0.62  # of the font size: an upper bound on Helvetica's mean advance for letters and digits

    def chart(taps: list[str]) -> str:
        return svg_line_chart([{"name": "AUC", "x": list(range(len(taps))), "y": [0.6] * len(taps)}],
                              title="Fig. 3", x_label="tap", y_label="AUC", x_range=(-0.5, len(taps) - 0.5),
                              y_range=(0.4, 1.0), x_ticks=list(enumerate(taps)))

    long = [f"features.denseblock{i}.conv" for i in range(12)]
    for taps in (long, ["conv1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8"],
                 ["stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "pool"]):
        ticks = _tick_labels(chart(taps), taps)
        assert [t[1] for t in ticks] == taps
        for (x1, a, tilted), (x2, b, _) in zip(ticks, ticks[1:], strict=False):
            if tilted:
                assert x2 - x1 >= 12 * 2 ** 0.5
            else:  # level labels: half of each estimated width on either side of its tick
                assert x2 - x1 >= (len(a) + len(b)) / 2 * char_width * 12, (a, b, x2 - x1)
    assert all(t[2] for t in _tick_labels(chart(long), long))
    assert not any(t[2] for t in _tick_labels(chart(["conv1", "conv2", "fc6"]), ["conv1", "conv2", "fc6"]))


@pytest.mark.slow
def test_report_of_a_mias_masses_experiment_states_its_protocol(tmp_path, mias_dir):
    """The paper's cohort on the shared MIAS copy (33 benign / 14 malignant masses: the guard rail lowered to 2 per
    fold), EfficientNet-Lite0's ImageNet weights, 2 seeds: the report states the cohort and its definition, the
    lowered guard rail, each SVM's degenerate Platt folds, that the backbone is not the paper's AlexNet (with the
    weights note), the source pixel size and the resampling to 0.1 mm, AUC (paper) = mean of fold AUCs ± SE with
    its t interval and the mean ± SD over seeds, the test families as shown, and a fold-level headline test."""
    import scipy.stats

    from cadx.workflows import open_workspace

    workspace = open_workspace(tmp_path / "data")
    import_mias(workspace, mias_dir, user="tester")
    loaded, note = resolve_backbone("efficientnet_lite0")
    settings = ExperimentSettings(cohort="paper", min_lesions_per_class_per_fold=2, repeats=2,
                                  taps=("stage7", "pool"), ensemble_tap="pool", seed=0)
    experiment_id = run_experiment(workspace, loaded, settings, name="MIAS masses", user="tester",
                                   weights_note=note)
    summary = experiment_summary(workspace, experiment_id)
    results = summary["results"]
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / "report-mias-masses.html"
    write_report(workspace, experiment_id, out)
    text = out.read_text()
    page = _parse(text)
    _assert_self_contained(text, page)
    assert list(page.sections) == list(SECTIONS)
    protocol = {row[0][0]: row[1][0] for row in page.cells["protocol-table"]}
    assert protocol["cohort"].startswith("paper: masses only, real data only, excluded ROIs out, 5-fold CV by lesion")
    assert "LOWERED to 2 lesions of each class per fold (--min-lesions-per-fold 2; the default is 5)" in protocol[
        "guard rail"]
    for key, name in (("A", "SVM1 (CNN)"), ("B", "SVM2 (analytic)")):
        calibration = results["methods"][key]["calibration"]
        assert calibration["n_folds"] == 10
        assert f"{name}: {calibration['n_clamped']}/10 folds (5 folds × 2 seeds)" in protocol[
            "degenerate Platt folds"]
    assert "efficientnet_lite0" in protocol["backbone"] and "NOT the paper's AlexNet" in protocol["backbone"]
    assert note and f"weights note: {note}" in protocol["backbone"]
    n_rois = results["n_rois"]
    assert protocol["pixel size"] == f"source pixels 0.2 × 0.2 mm ({n_rois} ROIs), upsampled ×2 to 0.1 mm"
    assert protocol["AUC (paper)"].startswith("the mean of the 5 fold AUCs of the first seed (0) ± its SE")
    # the Summary: AUC (paper) ± SE, its 95 % t interval (by hand), and the mean ± SD over the 2 seeds
    for key in ("A", "B", "C"):
        item = re.search(rf'<li data-method="{key}">(.*?)</li>', text).group(1)
        values = {k: float(v) for k, v in re.findall(r'data-key="(\w+)" data-value="([^"]+)"', item)}
        method, repeated = results["methods"][key], results["repeats"]["methods"][key]
        half = scipy.stats.t.ppf(0.975, 4) * method["auc_se"]
        assert values["auc"] == method["auc_mean"] and values["se"] == method["auc_se"]
        assert values["low"] == pytest.approx(method["auc_mean"] - half, abs=1e-12)
        assert values["high"] == pytest.approx(method["auc_mean"] + half, abs=1e-12)
        assert values["seeds_mean"] == repeated["auc_mean"] and values["seeds_sd"] == repeated["auc_sd_between_seeds"]
        assert "AUC (paper: mean of 5 fold AUCs, first seed)" in re.sub(r"<[^>]+>", "", item)
    methods = " ".join(page.sections["methods"].split())
    assert ("6 comparisons in 2 families, each Bonferroni-corrected within its family (p × its size, capped at 1): "
            "the paper's 3 (C vs A, C vs B, A vs B) and the z-scored ensemble's 3 (Z vs C, Z vs A, Z vs B)") in methods
    assert "source pixels 0.2 × 0.2 mm" in methods
    # the tests: a fold-level headline over both seeds' folds; the pooled-probability DeLong p-values are not shown
    rows = page.cells["tests-table"][1:]
    assert len(rows) == 6 and {r[4][0] for r in rows} == {"Nadeau-Bengio corrected t, 2 seeds × 5 folds"}
    tests_html = re.search(r'<section id="tests">(.*?)</section>', text, re.S).group(1)
    for comparison in results["comparisons"]:
        assert f'data-value="{float(comparison["delong_p"])!r}"' not in tests_html
        assert f'data-value="{float(comparison["auc_difference"])!r}"' not in text
        assert f'data-value="{float(comparison["repeated_nb_p"])!r}"' in tests_html
