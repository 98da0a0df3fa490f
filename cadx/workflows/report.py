"""Gathering an experiment's study report (``cadx report``, the ROC page's download): the typed record is read with
``load_experiment`` and its results at the report's level with ``cadx.workflows.results``, the cohort counted from the
database for the experiment's own ROI set, and everything handed to ``cadx.report.render_report`` as one
``cadx.report.ReportData``.

PDF: rendered by headless Chromium (``CADX_CHROMIUM`` or ``/usr/bin/chromium``, the browser the end-to-end tests
use) printing the same HTML; no extra Python package.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

import cadx
from cadx.errors import CadxInputError
from cadx.labels import LABELS
from cadx.private import make_private_dirs, open_private
from cadx.records import ExperimentRecord, LevelResults, json_safe
from cadx.report import CohortSummary, LabelCounts, ReportData, render_report, roi_set_sha256
from cadx.workflows.experiments import load_experiment
from cadx.workflows.results import (
    comparison_table,
    experiment_results,
    method_table,
    repeats_table,
    sweep_table,
)
from cadx.workflows.workspace import Workspace
from db.models import Image, Lesion, Roi

__all__ = ["cohort_summary", "report_data", "report_html", "report_pdf", "write_report", "html_to_pdf",
           "chromium_path"]

_LABELS = LABELS  # cadx.labels


def cohort_summary(workspace: Workspace, roi_ids: list[int], excluded_roi_ids: list[int]) -> CohortSummary:
    """Patients, lesions and ROIs of an ROI set by label, ROIs by view, lesions by lesion type, the excluded
    ROIs by their exclusion reason (the reason recorded now), and ROIs by source-image and ROI pixel size."""
    ids = [int(i) for i in roi_ids]
    rows: list[Any] = []
    with workspace.sessions() as session:
        for start in range(0, len(ids), 500):  # bounded IN lists
            chunk = ids[start:start + 500]
            rows += session.execute(
                select(Roi.id, Lesion.id, Lesion.patient_id, Lesion.label, Lesion.lesion_type, Image.view,
                       Image.pixel_spacing_row_mm, Image.pixel_spacing_col_mm, Roi.pixel_size_mm)
                .join(Lesion, Roi.lesion_id == Lesion.id).join(Image, Roi.image_id == Image.id)
                .where(Roi.id.in_(chunk))).all()
        reasons: dict[str, int] = {}
        for start in range(0, len(excluded_roi_ids), 500):
            chunk = [int(i) for i in excluded_roi_ids[start:start + 500]]
            for (reason,) in session.execute(select(Roi.exclusion_reason).where(Roi.id.in_(chunk))).all():
                reasons[reason or "unspecified"] = reasons.get(reason or "unspecified", 0) + 1
    missing = len(set(ids)) - len({r[0] for r in rows})
    labels = sorted({r[3] for r in rows} | set(_LABELS), key=lambda x: (x not in _LABELS, x))
    by_label = {label: LabelCounts(patients=len({r[2] for r in rows if r[3] == label}),
                                   lesions=len({r[1] for r in rows if r[3] == label}),
                                   rois=sum(1 for r in rows if r[3] == label)) for label in labels}
    by_view: dict[str, dict[str, int]] = {}
    for r in rows:
        view = by_view.setdefault(r[5] or "unknown", dict.fromkeys(labels, 0))
        view[r[3]] += 1
    lesion_type = {r[1]: (r[4] or "unknown", r[3]) for r in rows}
    by_type: dict[str, dict[str, int]] = {}
    for kind, label in lesion_type.values():
        by_type.setdefault(kind, dict.fromkeys(labels, 0))[label] += 1
    source_pixels: dict[tuple[float, float], int] = {}
    roi_pixels: dict[float, int] = {}
    for r in rows:
        spacing = (round(float(r[6]), 6), round(float(r[7]), 6))
        source_pixels[spacing] = source_pixels.get(spacing, 0) + 1
        roi_pixels[round(float(r[8]), 6)] = roi_pixels.get(round(float(r[8]), 6), 0) + 1
    return CohortSummary(patients=len({r[2] for r in rows}), lesions=len({r[1] for r in rows}), rois=len(rows),
                         rois_deleted_since=missing, label_names=labels, by_label=by_label,
                         lesions_by_label={k: v.lesions for k, v in by_label.items()},
                         rois_by_view=dict(sorted(by_view.items())), lesions_by_type=dict(sorted(by_type.items())),
                         excluded_by_reason=dict(sorted(reasons.items())),
                         source_pixel_mm=dict(sorted(source_pixels.items())),
                         roi_pixel_mm=dict(sorted(roi_pixels.items())))


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]
    records: list[dict[str, Any]] = json_safe(rows)
    return records


def report_data(workspace: Workspace, experiment_id: int, *, level: str = "roi",
                results: LevelResults | None = None) -> ReportData:
    """Everything the report shows, read from the stored record (nothing recomputed except the lesion level,
    which ``experiment_results`` computes from the stored predictions; a caller that has it passes ``results``).
    An unknown experiment, or a stored record with a bad field, is a :class:`~cadx.errors.CadxInputError`."""
    if level not in ("roi", "lesion"):
        raise CadxInputError("level", f"unknown level {level!r}", "use 'roi' or 'lesion'")
    experiment = load_experiment(workspace, experiment_id)
    config = experiment.config
    if results is None:
        results = experiment_results(workspace, experiment_id, "roi" if level == "roi" else "lesion")
    elif results.level != level:
        raise ValueError(f"results are at {results.level!r} level, the report asked for {level!r}")
    roi_set = config.roi_set_sha256 or (roi_set_sha256(config.roi_sha256) if config.roi_sha256 else None)
    significance = _significance(workspace, experiment)
    return ReportData(
        experiment=experiment,
        results=results,
        cohort=cohort_summary(workspace, config.roi_ids, config.excluded_roi_ids),
        sweep=_records(sweep_table(workspace, [experiment_id])),
        table1=_records(method_table(results)),
        tests=_records(comparison_table(results)),
        repeats=_records(repeats_table(results)),
        roi_set_sha256=roi_set,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        generator=f"cadx {cadx.__version__}",
        segmentation=_segmentation(workspace, experiment),
        **significance,
    )


def _segmentation(workspace: Workspace, experiment: ExperimentRecord) -> dict[str, Any] | None:
    """Method B against the reference outlines over the experiment's ROIs, with its feature version (issue 27.3)."""
    from cadx.segscore import score_summary
    from cadx.workflows.features import segmentation_scores

    version = experiment.config.analytic_version
    if version is None:
        return None
    scores = segmentation_scores(workspace, experiment.config.roi_ids, version=version)
    by_reference: dict[str, int] = {}
    for score in scores:
        by_reference[score.reference] = by_reference.get(score.reference, 0) + 1
    return {"version": version, "by_reference": by_reference,
            **score_summary([s.dice for s in scores], [s.boundary_mm for s in scores])}


def _significance(workspace: Workspace, experiment: ExperimentRecord) -> dict[str, Any]:
    """The report's *Better than chance?* and *What could this cohort show?* inputs (issue 24)."""
    from cadx.workflows.permutation import latest_permutation_test, permutation_caption, permutation_table
    from cadx.workflows.power import power_analysis
    from cadx.workflows.results import sweep_best_tap_text

    test = latest_permutation_test(workspace, experiment.id)
    results = experiment.results
    best_line = sweep_best_tap_text(results, experiment.config.repeats,
                                    permutation=None if test is None else test.result)
    return {"permutation": None if test is None else test.result,
            "permutation_rows": [] if test is None else _records(permutation_table(test.result, experiment)),
            "permutation_caption": "" if test is None else permutation_caption(test),
            "best_tap_line": best_line,
            "power": [(r.at_alpha, r.at_family) for r in power_analysis(workspace, experiment.id)]}


def report_html(workspace: Workspace, experiment_id: int, *, level: str = "roi",
                results: LevelResults | None = None) -> str:
    """The study report of an experiment as one self-contained HTML string."""
    return render_report(report_data(workspace, experiment_id, level=level, results=results))


def report_pdf(workspace: Workspace, experiment_id: int, *, level: str = "roi",
               results: LevelResults | None = None) -> bytes:
    """The study report printed to PDF (:func:`html_to_pdf`: headless Chromium), as bytes for a download; raises
    :class:`cadx.errors.CadxInputError` when there is no Chromium (:func:`chromium_path` is None)."""
    text = report_html(workspace, experiment_id, level=level, results=results)
    with tempfile.TemporaryDirectory(prefix="cadx-report-pdf-") as tmp:
        return html_to_pdf(text, Path(tmp) / "report.pdf").read_bytes()


def chromium_path() -> Path | None:
    """The Chromium used for PDFs: ``$CADX_CHROMIUM``, else ``/usr/bin/chromium``, else one on PATH; None if none."""
    for candidate in (os.environ.get("CADX_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def html_to_pdf(html_text: str, out: Path, *, timeout: float = 120.0) -> Path:
    """Print HTML to PDF with headless Chromium (the print CSS repeats the synthetic banner on every page)."""
    browser = chromium_path()
    if browser is None:
        raise CadxInputError("--pdf", "no Chromium found for printing the PDF",
                             "apt-get install chromium (or set CADX_CHROMIUM), or write the HTML only")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="cadx-report-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(html_text, encoding="utf-8")
        target = Path(tmp) / "report.pdf"
        command = [str(browser), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-dev-shm-usage", f"--user-data-dir={tmp}/profile", "--no-pdf-header-footer",
                   f"--print-to-pdf={target}", page.as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not target.exists() or target.stat().st_size == 0:
            raise CadxInputError("--pdf", f"Chromium could not print the report (exit {done.returncode}): "
                                 f"{done.stderr.strip()[-300:]}", "write the HTML only and print it from a browser")
        def copy(handle: Any) -> None:
            with target.open("rb") as printed:
                shutil.copyfileobj(printed, handle)

        _write_replacing(out, copy)
    return out


def _write_replacing(out: Path, write: Callable[[Any], object]) -> None:
    """Write ``out`` through ``write(handle)`` into a temporary file beside it, renamed over ``out`` when complete
    and removed when not (a full disk leaves neither a truncated report nor the temporary file). Unlike the data
    directory's files, a report is owner-only (0600) too: it names patients' pseudonyms and the cohort; share it
    on purpose (chmod, copy), never by a umask."""
    make_private_dirs(out.parent)
    partial = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
    try:
        with open_private(partial, "wb", exclusive=True) as handle:
            write(handle)
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_report(workspace: Workspace, experiment_id: int, out: Path, *, level: str = "roi",
                 pdf: Path | None = None) -> dict[str, Path]:
    """Write the HTML report (and optionally its PDF); returns the paths written."""
    text = report_html(workspace, experiment_id, level=level)
    out = Path(out)
    _write_replacing(out, lambda handle: handle.write(text.encode("utf-8")))
    written = {"html": out}
    if pdf is not None:
        written["pdf"] = html_to_pdf(text, pdf)
    return written
