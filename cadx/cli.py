"""The ``cadx`` command line: batch import, demo data and dataset statistics over the same workflows as the app."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cadx import words
from cadx.errors import CadxError, CadxInputError
from cadx.permutation import DEFAULT_PERMUTATIONS, chance_sentence, monte_carlo_se
from cadx.planning import duration_words
from cadx.records import ExperimentRecord
from cadx.workflows import (
    ImportReport,
    Workspace,
    dataset_stats,
    exclude_roi,
    import_cbis_ddsm,
    import_ddsm,
    import_demo,
    import_dicom_folder,
    import_manifest,
    import_mias,
    include_roi,
    open_workspace,
)
from cadx.workflows.experiments import MAX_REPEATS, SWEEP_PRESETS, ExperimentSettings

__all__ = ["app"]

app = typer.Typer(help="cadx: breast-lesion CADx from mammograms (Huynh, Li & Giger 2016).", no_args_is_help=True)
import_app = typer.Typer(help="Import images and lesions into the database.", no_args_is_help=True)
app.add_typer(import_app, name="import")
export_app = typer.Typer(help="Export review decisions and segmentations as standard DICOM (SR, SEG) and send DICOM "
                              "files to a PACS (DICOMweb STOW-RS).", no_args_is_help=True)
app.add_typer(export_app, name="export")

# soft_wrap: an error is one line whatever the terminal width, so it can be read, grepped and copied whole.
# markup=False: what is printed holds user text (experiment, cohort and file names, notes, reasons, error messages
# quoting input), shown as typed; with markup on, a name like "[/x]" made rich raise after the experiment was stored,
# and "[red]" restyled the output. Styles are given with _styled, never as [bold] tags (table cells included).
_console = Console(stderr=True, soft_wrap=True, markup=False)
_out = Console(soft_wrap=True, markup=False)


def _styled(*parts: str | tuple[str, str]) -> Text:
    """Console text from plain parts and ``(text, style)`` pairs: the one way the CLI styles what it prints."""
    return Text.assemble(*parts)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", envvar="CADX_DATA_DIR", help="Data directory (default ~/.cadx).")
]
User = Annotated[str | None, typer.Option("--user", help="Who does this (recorded together with the OS account "
                                                             "that runs the command). Default: the OS account.")]
SkipErrors = Annotated[
    bool,
    typer.Option("--skip-errors", help="Write the good items even when some fail (default: any error writes nothing)."),
]
AllowBurnedIn = Annotated[bool, typer.Option(
    "--allow-burned-in", help="Import DICOMs marked BurnedInAnnotation=YES, flagged for review (default: refuse).")]
ReportPath = Annotated[Path | None, typer.Option("--report", help="Also write the full report as JSON here.")]


def _workspace(data_dir: Path | None) -> Workspace:
    workspace = _run(lambda: open_workspace(data_dir))
    if workspace.collected is not None and workspace.collected.removed:
        _console.print(f"Removed {len(workspace.collected.removed)} orphan file(s) left by an interrupted "
                       "import or sweep (no committed row used them).", style="orange1")
    return workspace


def _user(user: str | None) -> str:
    """Who is recorded: ``--user`` together with the OS account that ran the command (see ``cli_actor``)."""
    from cadx.workflows.accounts import cli_actor

    return cli_actor(user)


class _ProgressBar:
    """A rich progress bar fed by the workflows' ``progress(done, total, message)`` callback."""

    def __enter__(self):
        self._progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=_console,
        )
        self._progress.__enter__()
        self._task = self._progress.add_task("starting", total=None)
        return self

    def __call__(self, done: int, total: int | None, message: str) -> None:
        self._progress.update(self._task, completed=done, total=total, description=message[:60])

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)


def _finish(report: ImportReport, report_path: Path | None) -> None:
    table = Table(title=f"{report.kind} import: {report.source}", show_lines=False)
    table.add_column("item")
    table.add_column("status")
    table.add_column("reason / QC flags")
    colours = {"imported": "green", "skipped": "yellow", "error": "red"}
    for item in report.items:
        reason = (", ".join(words.with_code(f.strip()) for f in item.reason.split(",")) if item.status == "imported"
                  and item.reason else item.reason)  # QC flags in words, with their codes
        table.add_row(item.name, _styled((item.status, colours[item.status])), reason)
    _out.print(table)
    if report_path is not None:
        report_path.write_text(json.dumps(report.to_dict(), indent=2))
    if report.committed:
        _out.print(f"{report.n_imported} imported, {report.n_skipped} skipped, {report.n_errors} errors", style="bold")
    else:
        _out.print(_styled((f"Nothing was written: {report.n_errors} error(s).", "bold red"), " Fix them, or rerun "
                           "with --skip-errors to import the rest."))
    if report.n_errors:
        raise typer.Exit(2 if not report.committed else 1)


def _fail(error: CadxError) -> NoReturn:
    _console.print(_styled(("Error:", "bold red"), f" {error}"))
    raise typer.Exit(2) from error


def _run(action):
    try:
        return action()
    except CadxError as exc:
        _fail(exc)
    except OSError as exc:  # disk full, permissions, a vanished mount: the workflows have rolled back by now
        where = f" {exc.filename}" if exc.filename else ""
        _console.print(_styled(("Error:", "bold red"), f" could not read or write{where}: {exc.strerror or exc}. "
                               "Nothing was half-written. Fix: check the free space and permissions of the data "
                               "directory and the inputs, then run the command again."))
        raise typer.Exit(1) from exc


@import_app.command("mias")
def import_mias_command(folder: Annotated[Path, typer.Argument(help="MIAS folder with Info.txt and mdbNNN.pgm")],
                        data_dir: DataDir = None, user: User = None, skip_errors: SkipErrors = False,
                        report: ReportPath = None) -> None:
    """Import the original MIAS distribution (Info.txt truth table + mdbNNN.pgm images)."""
    workspace = _workspace(data_dir)
    with _ProgressBar() as bar:
        result = _run(lambda: import_mias(workspace, folder, user=_user(user), skip_errors=skip_errors, progress=bar))
    _finish(result, report)


@import_app.command("cbis-ddsm")
def import_cbis_command(
    folder: Annotated[Path, typer.Argument(help="Root of the CBIS-DDSM DICOM tree (as downloaded from TCIA)")],
    csv: Annotated[list[Path], typer.Option("--csv", help="A case-description CSV (repeat for several).")],
    pixel_size_mm: Annotated[float | None, typer.Option(help="Pixel size for files whose header has none.")] = None,
    data_dir: DataDir = None, user: User = None, skip_errors: SkipErrors = False, report: ReportPath = None,
    allow_burned_in: AllowBurnedIn = False,
) -> None:
    """Import CBIS-DDSM: lesions from the case-description CSVs, centres from the ROI masks."""
    workspace = _workspace(data_dir)
    with _ProgressBar() as bar:
        result = _run(lambda: import_cbis_ddsm(workspace, folder, csv, user=_user(user), pixel_size_mm=pixel_size_mm,
                                               skip_errors=skip_errors, allow_burned_in=allow_burned_in,
                                               progress=bar))
    _finish(result, report)


@import_app.command("ddsm")
def import_ddsm_command(
    folder: Annotated[Path, typer.Argument(help="Folder of DDSM case folders (each: C-NNNN-N.ics, the views' JPEGs "
                                           "and their .OVERLAY outlines), as in mini-DDSM")],
    data_dir: DataDir = None, user: User = None, skip_errors: SkipErrors = False, report: ReportPath = None,
) -> None:
    """Import DDSM in its own format: .ics case files, views and .OVERLAY outlines (stored as reference outlines)."""
    workspace = _workspace(data_dir)
    with _ProgressBar() as bar:
        result = _run(lambda: import_ddsm(workspace, folder, user=_user(user), skip_errors=skip_errors,
                                          progress=bar))
    _finish(result, report)


@import_app.command("csv")
def import_csv_command(manifest: Annotated[Path, typer.Argument(help="CSV manifest, one row per ROI")],
                       data_dir: DataDir = None, user: User = None, skip_errors: SkipErrors = False,
                       report: ReportPath = None, allow_burned_in: AllowBurnedIn = False) -> None:
    """Import images listed in a CSV manifest.

    Columns: image, patient, lesion, label, centre_x, centre_y (pixels, origin top-left), pixel_size_mm
    (optional for DICOM), view, laterality, lesion_type, lesion_size_mm (optional).
    """
    workspace = _workspace(data_dir)
    with _ProgressBar() as bar:
        result = _run(lambda: import_manifest(workspace, manifest, user=_user(user), skip_errors=skip_errors,
                                              allow_burned_in=allow_burned_in, progress=bar))
    _finish(result, report)


@import_app.command("dicom")
def import_dicom_command(folder: Annotated[Path, typer.Argument(help="Folder of DICOM files")],
                         labels: Annotated[Path, typer.Option("--labels", help="CSV: file, lesion, label, centre_x, "
                                                              "centre_y [, patient, view, laterality, ...]")],
                         data_dir: DataDir = None, user: User = None, skip_errors: SkipErrors = False,
                         report: ReportPath = None, allow_burned_in: AllowBurnedIn = False) -> None:
    """Import a folder of DICOM mammograms with a labels file (patient, view and side come from the headers)."""
    workspace = _workspace(data_dir)
    with _ProgressBar() as bar:
        result = _run(lambda: import_dicom_folder(workspace, folder, labels, user=_user(user),
                                                  skip_errors=skip_errors, allow_burned_in=allow_burned_in,
                                                  progress=bar))
    _finish(result, report)


Credentials = Annotated[Path | None, typer.Option(
    "--credentials", help="File with one line: user:password, or a bearer token (keep it chmod 600). Default: "
    "CADX_DICOMWEB_USER + CADX_DICOMWEB_PASSWORD, or CADX_DICOMWEB_TOKEN. Never stored, never printed.")]
Insecure = Annotated[bool, typer.Option(
    "--insecure", help="Do NOT verify the server's TLS certificate (only for a test server you trust).")]


def _tls(insecure: bool) -> bool:
    """Whether to verify TLS; says so loudly when not."""
    if insecure:
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # warned once here, not per request
        _console.print("WARNING: --insecure: the server's TLS certificate is NOT verified; anyone between here and "
                       "the server can read the images and the credentials, or pose as the server.",
                       style="bold red")
    return not insecure


@import_app.command("dicomweb")
def import_dicomweb_command(
    url: Annotated[str, typer.Argument(help="The server's DICOMweb root, e.g. https://pacs.example.org/dicom-web")],
    labels: Annotated[Path, typer.Option("--labels", help="CSV as for 'cadx import dicom', its file column holding "
                                         "each instance's SOP Instance UID")],
    patient: Annotated[str | None, typer.Option("--patient", help="Only this PatientID.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Only this Study Instance UID.")] = None,
    series: Annotated[str | None, typer.Option("--series", help="Only this Series Instance UID (must be MG).")] = None,
    date_from: Annotated[str | None, typer.Option("--date-from", help="Studies on or after YYYYMMDD.")] = None,
    date_to: Annotated[str | None, typer.Option("--date-to", help="Studies on or before YYYYMMDD.")] = None,
    credentials: Credentials = None, insecure: Insecure = False,
    data_dir: DataDir = None, user: User = None, skip_errors: SkipErrors = False, report: ReportPath = None,
    allow_burned_in: AllowBurnedIn = False,
) -> None:
    """Import mammograms (Modality MG) from a PACS over DICOMweb (QIDO-RS search, WADO-RS retrieval) with a labels
    file; de-identified, size-limited and all-or-nothing like 'cadx import dicom'."""
    from cadx.config import dicomweb_credentials
    from cadx.workflows.pacs import import_dicomweb

    secret = _run(lambda: dicomweb_credentials(credentials))
    verify = _tls(insecure)
    workspace = _workspace(data_dir)
    with _ProgressBar() as bar:
        result = _run(lambda: import_dicomweb(
            workspace, url, labels, user=_user(user), credentials=secret, verify_tls=verify, patient_id=patient,
            study_uid=study, series_uid=series, date_from=date_from, date_to=date_to, skip_errors=skip_errors,
            allow_burned_in=allow_burned_in, progress=bar))
    _finish(result, report)


@export_app.command("dicomweb")
def export_dicomweb_command(
    url: Annotated[str, typer.Argument(help="The server's DICOMweb root, e.g. https://pacs.example.org/dicom-web")],
    folder: Annotated[Path, typer.Option("--from", help="Folder whose DICOM files are sent (e.g. SR/SEG exports)")],
    credentials: Credentials = None, insecure: Insecure = False,
) -> None:
    """Store every DICOM file of a folder on a PACS over DICOMweb (STOW-RS)."""
    from cadx.config import dicomweb_credentials
    from cadx.workflows.pacs import export_dicomweb_folder

    secret = _run(lambda: dicomweb_credentials(credentials))
    verify = _tls(insecure)
    with _ProgressBar() as bar:
        stored = _run(lambda: export_dicomweb_folder(url, folder, credentials=secret, verify_tls=verify,
                                                     progress=bar))
    _out.print(f"{len(stored)} instance(s) stored")
    for uid in stored:
        _out.print(uid)


@app.command("demo")
def demo_command(lesions: Annotated[int, typer.Option(help="Number of synthetic lesions.")] = 100,
                 seed: Annotated[int, typer.Option(help="Random seed (the set is deterministic).")] = 0,
                 data_dir: DataDir = None, report: ReportPath = None) -> None:
    """Create the built-in SYNTHETIC demo data: lesion phantoms on a 1/f^beta parenchymal background."""
    workspace = _workspace(data_dir)
    with _ProgressBar() as bar:
        result = _run(lambda: import_demo(workspace, n_lesions=lesions, seed=seed, progress=bar))
    _finish(result, report)


@app.command("stats")
def stats_command(data_dir: DataDir = None,
                  as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Patients, lesions and ROIs (included/excluded), by label and view."""
    stats = dataset_stats(_workspace(data_dir))
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    _out.print(f"patients: {stats['patients']} ({stats['synthetic_patients']} synthetic)")
    _out.print(f"lesions: {stats['lesions']}  " + "  ".join(f"{k}: {v}" for k, v in stats["lesions_by_label"].items()))
    _out.print(f"ROIs: {stats['rois']} (included {stats['rois_included']}, excluded {stats['rois_excluded']}; "
               f"{stats['synthetic_rois']} synthetic)")
    for title, key in (("by label", "rois_by_label"), ("by view", "rois_by_view")):
        table = Table(title=f"ROIs {title}")
        table.add_column(title.split()[1])
        table.add_column("included", justify="right")
        table.add_column("excluded", justify="right")
        for name, counts in stats[key].items():
            table.add_row(name, str(counts["included"]), str(counts["excluded"]))
        _out.print(table)
    if stats["excluded_by_reason"]:
        _out.print("excluded by reason: " + ", ".join(f"{words.with_code(k)}: {v}"
                                                      for k, v in stats["excluded_by_reason"].items()))
    if stats["lesions_by_type"]:
        _out.print("lesions by type: " + ", ".join(f"{k}: {v}" for k, v in stats["lesions_by_type"].items()))
    lost = stats["findings_without_roi"]
    if lost["count"]:
        _out.print(f"findings that could not become ROIs: {lost['count']} ("
                   + "; ".join(f"{reason}: {n}" for reason, n in lost["by_reason"].items()) + ")")


@app.command("exclude")
def exclude_command(roi_id: int, reason: Annotated[str, typer.Option(help="; ".join(
                        f"{code} ({words.word(code)})" for code in words.EXCLUSION_REASONS))],
                    note: Annotated[str | None, typer.Option(help="Why (required for 'other').")] = None,
                    data_dir: DataDir = None, user: User = None) -> None:
    """Exclude an artifact ROI from experiments (a review event; the ROI is kept)."""
    event = _run(lambda: exclude_roi(_workspace(data_dir), roi_id, reason=reason, user=_user(user), note=note))
    _out.print(f"ROI {roi_id} excluded ({words.with_code(event.reason)}) by {event.user}")


@app.command("include")
def include_command(roi_id: int, note: Annotated[str | None, typer.Option()] = None,
                    data_dir: DataDir = None, user: User = None) -> None:
    """Include an excluded ROI again (a review event)."""
    event = _run(lambda: include_roi(_workspace(data_dir), roi_id, user=_user(user), note=note))
    _out.print(f"ROI {roi_id} included by {event.user}")


# ---------------------------------------------------------------------------------------------------- curation ---
CurationJson = Annotated[Path | None, typer.Option("--json", help="Also write every row as JSON here ('-' prints "
                                                                  "it instead of the table).")]
BackboneOfTap = Annotated[str | None, typer.Option(
    "--backbone", help="The backbone whose stored features to use, when the tap is stored for several.")]


def _write_json(path: Path | None, payload: object) -> bool:
    """Write ``payload`` as JSON to ``path`` ('-': stdout); True when it went to stdout (print no table then)."""
    if path is None:
        return False
    text = json.dumps(payload, indent=2, default=str)
    if str(path) == "-":
        typer.echo(text)
        return True
    path.write_text(text)
    _console.print(f"written to {path}")
    return False


def _frame_table(frame, title: str, columns: list[str]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in frame[columns].itertuples(index=False):
        table.add_row(*("" if v is None or (isinstance(v, float) and v != v) else
                        f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    return table


@app.command("suspects")
def suspects_command(
    experiment_id: Annotated[int, typer.Argument(help="The experiment (see `cadx experiments`).")],
    top: Annotated[int, typer.Option("--top", help="Show the N most suspect lesions.")] = 20,
    classifier: Annotated[str, typer.Option(help="Whose out-of-fold probability: svm1 (p1), svm2 (p2) or "
                                                 "ensemble (p3).")] = "ensemble",
    json_path: CurationJson = None, data_dir: DataDir = None,
) -> None:
    """Lesions whose label is most likely wrong (confident learning on the out-of-fold probabilities, lesion level).

    Nothing is changed: a reviewer looks at each and may `cadx dispute` its label."""
    from cadx.workflows.curation import suspect_labels

    if top < 1:
        _fail(CadxInputError("--top", f"got {top}", "use 1 or more"))
    report = _run(lambda: suspect_labels(_workspace(data_dir), experiment_id, classifier=classifier))
    if _write_json(json_path, report.to_dict()):
        return
    _out.print(f"Method: {report.method}.")
    _out.print(f"Experiment {experiment_id}, {report.classifier} ({report.column}), one row per lesion: the mean of "
               f"its ROIs' out-of-fold probability, averaged over {report.n_seeds} seed(s). {report.n_flagged} of "
               f"{len(report.rows)} lesions flagged as likely label errors; labels are never changed automatically.")
    _out.print(_frame_table(report.rows.head(top), f"The {min(top, len(report.rows))} most suspect labels",
                            ["rank", "lesion_key", "patient_key", "label", "p", "score", "flagged", "disputed"]))
    for row in report.rows.head(top).itertuples(index=False):  # the reasons whole, one line each (never folded)
        _out.print(f"{row.rank}. {row.lesion_key}: {row.reason}")


@app.command("dispute")
def dispute_command(
    lesion_key: Annotated[str, typer.Argument(help="The lesion (as `cadx suspects` lists it).")],
    reason: Annotated[str | None, typer.Option(help="Why the label looks wrong (required unless --clear).")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Withdraw the dispute.")] = False,
    patient: Annotated[str | None, typer.Option(help="The lesion's patient key, when several patients have a "
                                                     "lesion of this key.")] = None,
    data_dir: DataDir = None, user: User = None,
) -> None:
    """Mark a lesion's label as disputed (a review event on each of its ROIs; the label itself is not changed)."""
    from cadx.workflows.curation import dispute_label

    events = _run(lambda: dispute_label(_workspace(data_dir), lesion_key, user=_user(user), reason=reason,
                                        clear=clear, patient_key=patient))
    what = "dispute withdrawn" if clear else "label disputed"
    _out.print(f"lesion {lesion_key}: {what} by {events[0].user} ({len(events)} ROI(s))")


@app.command("duplicates")
def duplicates_command(
    tap: Annotated[str | None, typer.Option(help="Also compare the stored features of this CNN tap (cosine).")
                   ] = None,
    hamming: Annotated[int, typer.Option(help="Near duplicates: at most this many of the 64 pHash bits differ.")
                       ] = 6,
    k: Annotated[int, typer.Option("--k", help="With --tap: nearest neighbours kept per ROI.")] = 5,
    min_cosine: Annotated[float, typer.Option(help="With --tap: report neighbours at least this similar.")] = 0.98,
    experiment: Annotated[int | None, typer.Option(help="Warn about the pairs this experiment put in different "
                                                        "outer folds.")] = None,
    backbone: BackboneOfTap = None, json_path: CurationJson = None, data_dir: DataDir = None,
) -> None:
    """Exact and near-duplicate ROIs across the whole database, classified: views of one lesion, one image under
    two patients (a patient-key error that leaks across folds), or look-alikes."""
    from cadx.workflows.curation import duplicate_pairs, fold_leaks

    workspace = _workspace(data_dir)
    pairs = _run(lambda: duplicate_pairs(workspace, hamming=hamming, tap=tap, backbone=backbone, k=k,
                                         min_cosine=min_cosine))
    leaks = None if experiment is None else _run(lambda: fold_leaks(workspace, experiment, pairs))
    payload = {"hamming": hamming, "tap": tap, "min_cosine": min_cosine if tap else None,
               "pairs": json.loads(pairs.to_json(orient="records"))}
    if leaks is not None:
        payload["experiment"] = experiment
        payload["fold_leaks"] = json.loads(leaks.to_json(orient="records"))
    if _write_json(json_path, payload):
        return
    counts = pairs["class"].value_counts().to_dict() if not pairs.empty else {}
    _out.print(f"{len(pairs)} pair(s) (pHash within {hamming} bits" + (f", {tap} cosine ≥ {min_cosine}" if tap
                                                                        else "") + ")"
               + ("".join(f"; {n} {c}" for c, n in counts.items())))
    if not pairs.empty:
        _out.print(_frame_table(pairs, "Duplicate and look-alike ROIs",
                                ["roi_a", "roi_b", "patient_a", "patient_b", "lesion_a", "lesion_b", "view_a",
                                 "view_b", "evidence", "class"]))
    if leaks is not None:
        if leaks.empty:
            _out.print(f"Experiment {experiment}: no duplicate of different patients lies in different outer folds.")
        else:
            _out.print(_styled((f"Warning: experiment {experiment} has {len(leaks)} duplicate pair(s) of different "
                                "patients in different outer folds: the same image was trained on and tested; fix "
                                "the patient keys (or exclude one ROI) and rerun.", "bold yellow")))
            for row in leaks.itertuples(index=False):
                _out.print(f"  ROI {row.roi_a} ({row.patient_a}) / ROI {row.roi_b} ({row.patient_b}): "
                           f"{row.evidence}; folds {', '.join(row.folds)} in seed(s) "
                           f"{', '.join(str(s) for s in row.seeds)}")


@app.command("similar")
def similar_command(
    roi_id: Annotated[int, typer.Argument(help="The ROI (as the Review page or `cadx duplicates` lists it).")],
    tap: Annotated[str, typer.Option(help="The CNN tap whose stored features to compare.")],
    k: Annotated[int, typer.Option("--k", help="How many similar cases.")] = 8,
    backbone: BackboneOfTap = None, json_path: CurationJson = None, data_dir: DataDir = None,
) -> None:
    """An ROI's most similar ROIs (cosine similarity of a tap's stored features), with label and lesion."""
    from cadx.workflows.curation import similar_cases

    frame, source = _run(lambda: similar_cases(_workspace(data_dir), roi_id, tap=tap, k=k, backbone=backbone))
    if _write_json(json_path, {"roi_id": roi_id, "features": source,
                               "similar": json.loads(frame.to_json(orient="records"))}):
        return
    _out.print(_frame_table(frame, f"ROIs most similar to ROI {roi_id} ({source}, cosine)",
                            ["rank", "roi_id", "lesion_key", "patient_key", "label", "lesion_type", "view", "cosine",
                             "distance"]))


# ------------------------------------------------------------------------------------------ features, experiments ---
Backbone = Annotated[str | None, typer.Option(
    help="alexnet, vgg16, resnet50 or efficientnet_lite0. Default: AlexNet when its ImageNet weights are available, "
         "else EfficientNet-Lite0 (offline ImageNet weights).")]
Weights = Annotated[str, typer.Option(help="'default' (ImageNet) or 'random' (untrained: a control; every record "
                                           "says so). Without --backbone, 'random' keeps the architecture the "
                                           "default run would use.")]
WeightsPath = Annotated[Path | None, typer.Option(help="A weights file to use (its checksum is verified).")]


CohortOption = Annotated[str | None, typer.Option(
    "--cohort", help="The ROIs to use: a preset (paper: masses only, excluded out, 5 folds; all) or a cohort saved "
                     "with `cadx cohort create`. Default: all (real data only when real data exists).")]


def _cohort_records(workspace, cohort: str | None):
    """The ROIs of a cohort, with its counts printed (for extract and features)."""
    from cadx.workflows.cohorts import resolve_cohort

    resolved = _run(lambda: resolve_cohort(workspace, cohort))
    _console.print(f"Cohort {resolved.name}: {_counts_line(resolved)}", style="cyan")
    return resolved.records


def _counts_line(resolved) -> str:
    by_label = ", ".join(f"{k} {v}" for k, v in resolved.rois_by_label.items()) or "none"
    lesions = ", ".join(f"{k} {v}" for k, v in resolved.lesions_by_label.items()) or "none"
    return (f"{resolved.patients} patients, {resolved.lesions} lesions ({lesions}), {resolved.rois} ROIs "
            f"({by_label}); ROI set {resolved.roi_set_sha256[:12]}")


def _load_backbone(backbone, weights, weights_path):
    from cadx.workflows.features import resolve_backbone

    loaded, note = _run(lambda: resolve_backbone(backbone, weights=weights, weights_path=weights_path))
    colour = "red" if loaded.weights.source == "random" else "cyan"
    _console.print(f"Backbone: {note}", style=colour)
    return loaded, note


@app.command("extract")
def extract_command(backbone: Backbone = None, weights: Weights = "default", weights_path: WeightsPath = None,
                    taps: Annotated[str | None, typer.Option(help="Comma-separated taps (default: all).")] = None,
                    batch_size: Annotated[int, typer.Option(help="ROIs per forward pass.")] = 16,
                    workers: Annotated[int, typer.Option(help="Processes decoding and resizing ROIs ahead of the "
                                                         "network (0: none).")] = 0,
                    precision: Annotated[str, typer.Option(help="fp32 (the reference), or bf16/fp16 autocast, or "
                                                           "fp16-mixed (early layers fp32; EfficientNet-Lite0); "
                                                           "stored apart from fp32 features.")] = "fp32",
                    decoded_cache: Annotated[bool, typer.Option("--decoded-cache", help="Decode the ROI PNGs once "
                                                                "into a memory-mapped uint16 cache and read that."
                                                                )] = False,
                    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when "
                                                                  "available).")] = None,
                    timings: Annotated[bool, typer.Option("--timings", help="Print seconds per stage (read, "
                                                          "preprocess, copy, forward, write).")] = False,
                    cohort: Annotated[str | None, typer.Option(
                        "--cohort", help="Only this cohort's ROIs (default: every ROI in the database).")] = None,
                    data_dir: DataDir = None) -> None:
    """Method A: extract CNN features of every ROI not yet in the feature store (all taps in one pass)."""
    from cadx.cnn import PRECISIONS
    from cadx.precision import MIAS_VERDICT
    from cadx.workflows.features import extract_cnn_features

    if precision not in PRECISIONS:
        raise typer.BadParameter(f"{precision!r} is not one of {', '.join(PRECISIONS)}", param_hint="--precision")
    if workers < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--workers")
    workspace = _workspace(data_dir)
    records = _cohort_records(workspace, cohort) if cohort else None
    loaded, _ = _load_backbone(backbone, weights, weights_path)
    tap_list = taps.split(",") if taps else None
    with _ProgressBar() as bar:
        report = _run(lambda: extract_cnn_features(workspace, loaded, taps=tap_list, batch_size=batch_size,
                                                   records=records, progress=bar, num_workers=workers,
                                                   precision=precision,
                                                   decoded_cache=decoded_cache, device=device, timings=timings))
    _out.print(f"{report.n_extracted} of {report.n_rois} ROIs extracted ({report.n_rois - report.n_extracted} "
               f"already stored) with {report.weights_name} [sha256 {report.weights_sha256[:12]}] "
               f"in {report.seconds:.1f} s" + ("" if precision == "fp32" else f" ({precision} autocast)"))
    if report.precision_check:
        worst_tap = max(report.precision_check, key=lambda t: report.precision_check[t]["relative_error"])
        worst = report.precision_check[worst_tap]
        _console.print(f"{precision} against fp32 on a sample of {worst['n_rois']} ROIs: relative feature "
                       f"error up to {worst['relative_error']:.2%} ({worst_tap}). {precision} "
                       f"{MIAS_VERDICT.get(precision, 'was not checked on MIAS')} (see the README): fp32 stays the "
                       "reference.", style="yellow")
    if timings and report.timings:
        _out.print("seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in report.timings.items()
                                                       if k != "rois"))


@app.command("features")
def features_command(data_dir: DataDir = None,
                     report: Annotated[bool, typer.Option("--report", help="Print each feature's benign-vs-"
                                                          "malignant AUC over the cohort's ROIs.")] = False,
                     cohort: Annotated[str | None, typer.Option(
                         "--cohort", help="Only this cohort's ROIs (default: every ROI; the report uses the "
                                          "default cohort, all).")] = None,
                     json_path: Annotated[Path | None, typer.Option(
                         "--json", help="Write the segmentation scores against the reference outlines as JSON "
                                        "here (one entry per ROI with dice and boundary_mm).")] = None) -> None:
    """Method B: segment every ROI from its centre and compute analytic features (only ROIs not done yet).

    ROIs with a reference outline (DDSM and CBIS-DDSM experts, synthetic phantoms) get their segmentation scored:
    Dice and mean boundary distance in mm (--report prints them, --json writes them).
    """
    from cadx.analytic import FEATURE_NAMES, feature_aucs
    from cadx.workflows.features import analytic_matrix, compute_analytic_features

    workspace = _workspace(data_dir)
    chosen = _cohort_records(workspace, cohort) if cohort or report else None
    with _ProgressBar() as bar:
        result = _run(lambda: compute_analytic_features(workspace, records=chosen if cohort else None,
                                                        progress=bar))
    _out.print(f"{result.n_computed} of {result.n_rois} ROIs analysed ({result.n_failed} failed segmentations) "
               f"with features {result.version} in {result.seconds:.1f} s")
    if report:
        records = chosen or []
        X, names, quality = analytic_matrix(workspace, [r.sha256 for r in records])
        aucs = feature_aucs({name: X[:, j] for j, name in enumerate(names)}, [r.label for r in records])
        table = Table(title=f"Benign vs malignant AUC per feature ({len(records)} ROIs of the cohort)")
        table.add_column("feature")
        table.add_column("AUC", justify="right")
        for name in FEATURE_NAMES:
            table.add_row(name, f"{aucs[name]:.3f}")
        _out.print(table)
        _out.print("segmentation quality: " + ", ".join(f"{q}: {quality.count(q)}" for q in sorted(set(quality))))
    if report or json_path is not None:
        _segmentation_scores(workspace, [r.id for r in chosen] if chosen is not None else None,
                             printed=report, json_path=json_path)


def _segmentation_scores(workspace: Workspace, roi_ids: list[int] | None, *, printed: bool,
                         json_path: Path | None) -> None:
    """Method B's segmentations against the reference outlines: a table and a summary, and/or JSON."""
    from cadx.analytic import FEATURES_VERSION
    from cadx.segscore import score_summary
    from cadx.workflows.features import segmentation_scores

    scores = _run(lambda: segmentation_scores(workspace, roi_ids))
    summary = score_summary([s.dice for s in scores], [s.boundary_mm for s in scores])
    if json_path is not None:
        json_path.write_text(json.dumps({"version": FEATURES_VERSION, "summary": summary,
                                         "rois": [s.to_dict() for s in scores]}, indent=2))
        _out.print(f"segmentation scores written to {json_path}")
    if not printed:
        return
    if not scores:
        _out.print("No ROI has a reference outline (DDSM or CBIS-DDSM expert outline, phantom truth): no "
                   "segmentation scored.")
        return
    table = Table(title=f"Method B segmentation against the reference outline ({len(scores)} ROIs)")
    for column, justify in (("ROI", "right"), ("lesion", "left"), ("reference", "left"), ("quality", "left"),
                            ("Dice", "right"), ("boundary mm", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for s in scores:
        table.add_row(str(s.roi_id), s.lesion_key, s.reference, s.quality, f"{s.dice:.3f}", _f(s.boundary_mm, ".2f"))
    _out.print(table)
    _out.print(f"Dice median {_f(summary['dice_median'])} (IQR {_f(summary['dice_q1'])}-{_f(summary['dice_q3'])}); "
               f"mean boundary distance median {_f(summary['boundary_mm_median'], '.2f')} mm "
               f"(IQR {_f(summary['boundary_mm_q1'], '.2f')}-{_f(summary['boundary_mm_q3'], '.2f')} mm)")


def _experiment(name, backbone, weights, weights_path, taps, tap, folds, seed, repeats, analytic, n_jobs, json_path,
                data_dir, user, cohort=None, min_lesions=None, *, estimate=False, tap_pooling="flatten",
                svm_engine="exact", sketch_components=None) -> None:
    from cadx.records import experiment_name, to_json
    from cadx.workflows.cohorts import resolve_cohort
    from cadx.workflows.experiments import load_experiment, run_experiment

    name = _run(lambda: experiment_name(name))  # before anything is loaded or computed
    workspace = _workspace(data_dir)
    minimum = min_lesions
    resolved = _run(lambda: resolve_cohort(workspace, cohort))
    _console.print(f"Cohort {resolved.name} ({resolved.definition.summary()}): {_counts_line(resolved)}", style="cyan")
    for note in resolved.notes:
        _console.print(note, style="orange1")
    _run(lambda: resolved.check(n_folds=folds, minimum_per_fold=minimum))  # the guard rails, before any work
    loaded, note = _load_backbone(backbone, weights, weights_path)
    settings = ExperimentSettings(taps=taps, ensemble_tap=tap, n_folds=folds, seed=seed, repeats=repeats,
                                  analytic=analytic, n_jobs=n_jobs, cohort=resolved.name,
                                  min_lesions_per_class_per_fold=minimum, tap_pooling=tap_pooling,
                                  svm_engine=svm_engine, sketch_components=sketch_components)
    if estimate:
        _print_estimate(workspace, loaded, settings, json_path)
        return
    with _ProgressBar() as bar:
        experiment_id = _run(lambda: run_experiment(workspace, loaded, settings, name=name, user=_user(user),
                                                    weights_note=note, progress=bar))
    record = load_experiment(workspace, experiment_id)
    engine = record.config.svm_engine
    _console.print(f"SVM engine: {engine.engine if engine else 'gram'} "
                   f"({engine.reason if engine else 'exact polynomial-kernel SVM (the default)'}"
                   f"{f'; sketch size {engine.components}' if engine and engine.components else ''}); "
                   f"taps: {record.config.tap_pooling}", style="cyan")
    _print_experiment(record)
    _print_power(workspace, experiment_id)
    sentence = chance_sentence({k: m.pooled_ci95 for k, m in record.results.methods.items()})
    if sentence:
        _out.print(_styled((sentence, "yellow")))
    _out.print(f"Better than chance? `cadx permutation-test {experiment_id}` reruns the nested cross-validation on "
               "permuted labels.")
    if json_path is not None:
        json_path.write_text(json.dumps(to_json(record), indent=2))
        _out.print(f"written to {json_path}")


def _print_estimate(workspace, loaded, settings, json_path) -> None:
    """``--estimate``: how long the run would take here, with its range; nothing is run or stored."""
    from cadx.workflows.experiments import estimate_experiment

    planned = _run(lambda: estimate_experiment(workspace, loaded, settings))
    data = planned.to_dict()
    if json_path is not None and str(json_path) == "-":
        _out.print_json(json.dumps(data))
        return
    _out.print(f"Estimated time on this machine: {planned.time.words()} for {planned.n_units} units of work "
               f"({settings.repeats} seed{'s' if settings.repeats != 1 else ''}); from {planned.basis}.")
    _out.print("By stage: " + ", ".join(f"{part} {duration_words(seconds)}" for part, seconds in planned.parts.items()))
    if json_path is not None:
        json_path.write_text(json.dumps(data, indent=2))
        _out.print(f"written to {json_path}")


def _f(value: float | None, spec: str = ".3f") -> str:
    """A statistic for a table ("–" where it was not finite)."""
    return "–" if value is None else format(value, spec)


def _print_experiment(record: ExperimentRecord) -> None:
    from cadx.records import LevelResults
    from cadx.workflows.results import calibration_notes, sweep_best_tap_text

    config, results = record.config, record.results
    flags: list[str | tuple[str, str]] = []
    if record.uses_synthetic_data:
        flags += [" ", ("SYNTHETIC DATA", "orange1")]
    if record.uses_random_weights:
        flags += [" ", ("RANDOM (UNTRAINED) WEIGHTS", "red")]
    _out.print(_styled(f"Experiment {record.id} '{record.name}' ({record.seconds or 0.0:.1f} s)", *flags))
    if config.cohort is not None:
        _out.print(f"cohort {config.cohort.name}: {results.n_rois} ROIs, {results.n_lesions} lesions, "
                   f"{results.n_patients} patients; ROI set sha256 {config.cohort.roi_set_sha256[:16]}")
    seeds = config.repeats
    by_seed = results.repeats.methods if results.repeats is not None else {}
    if len(results.sweep) > 1:
        spread = f"mean ± SD over {seeds} seeds" if seeds > 1 else "one seed: no spread measured"
        table = Table(title=f"Layer sweep: AUC per tap ({config.n_folds}-fold CV by lesion; {spread})")
        for column in ("tap", "length", "non-constant", "AUC", "seed SD", "fold SD", "SE", "seconds"):
            table.add_column(column, justify="right" if column != "tap" else "left")
        for tap, layer in results.sweep.items():
            seed_sd = layer.auc_sd_between_seeds
            table.add_row(tap, str(layer.n_features), str(layer.n_features_nonconstant), _f(layer.auc_mean),
                          "–" if seed_sd is None else f"±{seed_sd:.3f}", _f(layer.auc_sd), _f(layer.auc_se),
                          f"{layer.seconds:.1f}")
        _out.print(table)
        _out.print(sweep_best_tap_text(results, seeds))
    table = Table(title="Classifiers (Table 1; first seed" + (f", seed SD over {seeds} seeds)" if seeds > 1 else ")"))
    for column in ("classifier", "AUC", "seed SD", "AUC.SD", "SE", "pooled AUC [95% CI]", "lesion AUC",
                   "degenerate folds", "seconds"):
        table.add_column(column)
    for key, m in results.methods.items():
        lo, hi = m.pooled_ci95
        seed_sd = by_seed[key].auc_sd_between_seeds if key in by_seed else None
        calibration = m.calibration
        table.add_row(m.title, _f(m.auc_mean), "–" if seed_sd is None else f"±{seed_sd:.3f}",
                      _f(m.auc_sd), _f(m.auc_se), f"{_f(m.pooled_auc)} [{_f(lo)}, {_f(hi)}]", _f(m.lesion_auc),
                      f"{calibration.n_clamped}/{calibration.n_folds}" if calibration else "", f"{m.seconds:.1f}")
    _out.print(table)
    level = LevelResults(level="roi", n_cases=results.n_rois, n_positive=results.n_malignant_rois,
                         methods=results.methods, comparisons=results.comparisons, repeats=results.repeats)
    for note in calibration_notes(level):
        _out.print(note, style="yellow")
    if results.comparisons:
        table = Table(title="Comparisons (headline: Nadeau-Bengio corrected t over every seed's folds; DeLong on "
                            "within-fold ranks; ΔAUC = first - second; Bonferroni within each family of 3: the "
                            "paper's, the z-ensemble's)")
        for column in ("comparison", "family", "ΔAUC folds", "N-B p all seeds", "adj.", "fold t p", "adj.",
                       "DeLong p (ranks)", "adj."):
            table.add_column(column)
        for c in results.comparisons:
            headline = c.repeated_nb_p if c.repeated_nb_p is not None else c.nadeau_bengio_p
            headline_adj = (c.repeated_nb_p_bonferroni if c.repeated_nb_p is not None
                            else c.nadeau_bengio_p_bonferroni)
            table.add_row(c.comparison, c.family, _f(c.fold_mean_auc_difference, "+.3f"), _f(headline, ".3g"),
                          _f(headline_adj, ".3g"), _f(c.paired_t_p, ".3g"), _f(c.paired_t_p_bonferroni, ".3g"),
                          _f(c.rank_delong_p, ".3g"), _f(c.rank_delong_p_bonferroni, ".3g"))
        _out.print(table)
    if results.repeats is not None:
        seed_list = results.repeats.seeds
        table = Table(title=f"Repeated cross-validation: fold-mean AUC under seeds {seed_list[0]}..{seed_list[-1]}")
        for column in ("classifier", "mean over seeds", "SD between seeds", "per seed"):
            table.add_column(column)
        for r in results.repeats.methods.values():
            table.add_row(r.title, _f(r.auc_mean), _f(r.auc_sd_between_seeds),
                          " ".join(_f(a) for a in r.auc_mean_by_seed))
        _out.print(table)


def _print_power(workspace: Workspace, experiment_id: int) -> None:
    """The power panel (``cadx.workflows.power``): what this cohort could show at all."""
    from cadx.workflows.power import POWER_CAPTION, power_analysis

    rows = _run(lambda: power_analysis(workspace, experiment_id))
    if not rows:
        return
    table = Table(title="What could this cohort show? (80 % power, lesions)")
    for column in ("comparison", "r", "smallest ΔAUC α=0.05", "α/3", "power 0.81→0.86", "lesions needed α=0.05",
                   "α/3"):
        table.add_column(column)
    for row in rows:
        a, f = row.at_alpha, row.at_family
        table.add_row(row.comparison, f"{a.r:.2f}", f"{a.smallest_difference:.3f}", f"{f.smallest_difference:.3f}",
                      f"{a.power_for_target:.2f}", f"{a.lesions_for_target} ({a.malignant_for_target} mal.)",
                      f"{f.lesions_for_target} ({f.malignant_for_target} mal.)")
    _out.print(table)
    _out.print(POWER_CAPTION)


def _print_permutation_test(workspace: Workspace, experiment_id: int) -> None:
    from cadx.workflows.experiments import load_experiment
    from cadx.workflows.permutation import latest_permutation_test, permutation_caption, permutation_table
    from cadx.workflows.results import sweep_best_tap_text

    test = _run(lambda: latest_permutation_test(workspace, experiment_id))
    if test is None:
        return
    record = load_experiment(workspace, experiment_id)
    table = Table(title=f"Better than chance? Experiment {experiment_id} against its permutation null "
                        "(fold-mean AUC, first seed)")
    frame = permutation_table(test.result, record)
    for column in (*frame.columns[:6], "p ± Monte-Carlo SE"):
        table.add_column(column)
    for row in frame.itertuples(index=False):
        table.add_row(str(row[0]), *(_f(v) for v in row[1:6]), f"{row[6]:.3g} ± {row[7]:.2g}")
    _out.print(table)
    _out.print(permutation_caption(test))
    results = record.results
    if best_line := sweep_best_tap_text(results, record.config.repeats, permutation=test.result):
        _out.print(best_line)
    sentence = chance_sentence({k: m.pooled_ci95 for k, m in results.methods.items()}, test.result)
    if sentence:
        _out.print(_styled((sentence, "yellow")))


Folds = Annotated[int | None, typer.Option(help="Cross-validation folds (by lesion). Default: the cohort's (5).")]
MinLesions = Annotated[int | None, typer.Option(
    "--min-lesions-per-fold", help="Guard rail: refuse a cohort with fewer lesions of a class than this per fold "
                                   "(default 5). Lower it only to try the pipeline on a tiny set; the record keeps "
                                   "it.")]


def _default_taps_help() -> str:
    from cadx.backbones import BACKBONE_SPECS

    return ", ".join(f"{spec.ensemble_tap} for {name}" for name, spec in BACKBONE_SPECS.items())


_TAP_DEFAULTS = _default_taps_help()
Tap = Annotated[str | None, typer.Option(
    help=f"CNN tap for SVM1 and the ensembles. Default: the backbone's own ({_TAP_DEFAULTS}).")]
Seed = Annotated[int, typer.Option(help="Seed of the fold assignment (the run is deterministic).")]
Repeats = Annotated[int, typer.Option(help=f"Repeat the cross-validation with seeds SEED, SEED+1, ... "
                                           f"(1 to {MAX_REPEATS}): "
                                           "the sweep averages over them and shows the SD between seeds; Table 1 "
                                           "stays the first seed's. 1 = a single split (faster, but luck).")]
Jobs = Annotated[int, typer.Option("--jobs", help="Parallel processes (or set CADX_DASK_SCHEDULER).")]
JsonPath = Annotated[Path | None, typer.Option("--json", help="Write config and results as JSON here (with "
                                                               "--estimate: the estimate; '-' prints it).")]
Estimate = Annotated[bool, typer.Option("--estimate", help="Only say how long it would take on this machine, with "
                                                           "a range (from earlier runs' measured seconds, or a "
                                                           "short calibration); run nothing.")]
Quick = Annotated[bool, typer.Option("--quick", help=f"The quick preset: {SWEEP_PRESETS['quick']} seed (a live "
                                                     "demo; one split's luck), whatever --repeats says.")]
_DEFAULTS = ExperimentSettings()  # the one home of the experiment defaults (CLI, sweep page, job runner)


@app.command("sweep")
def sweep_command(name: Annotated[str, typer.Option(help="Experiment name.")] = "layer sweep",
                  backbone: Backbone = None, weights: Weights = "default", weights_path: WeightsPath = None,
                  taps: Annotated[str | None, typer.Option(help="Comma-separated taps (default: all).")] = None,
                  tap: Tap = None,
                  folds: Folds = _DEFAULTS.n_folds, seed: Seed = _DEFAULTS.seed,
                  repeats: Repeats = _DEFAULTS.repeats, jobs: Jobs = _DEFAULTS.n_jobs,
                  json_path: JsonPath = None,
                  no_analytic: Annotated[bool, typer.Option("--no-analytic",
                                                            help="Skip Method B and the ensemble.")] = False,
                  cohort: CohortOption = None, min_lesions_per_fold: MinLesions = None,
                  estimate: Estimate = False, quick: Quick = False,
                  tap_pooling: Annotated[str, typer.Option(
                      "--tap-pooling", help="flatten (the paper's whole map), avg, max or avgmax: a conv tap "
                                            "reduced to its channels (fc taps unchanged).")] = "flatten",
                  svm_engine: Annotated[str, typer.Option(
                      "--svm-engine", help="exact (the default), approx (Tensor-Sketch features and a linear SVM: "
                                           "linear in n) or auto (exact up to 5,000 training ROIs).")] = "exact",
                  sketch_components: Annotated[int | None, typer.Option(
                      "--sketch-components", help="Sketch size of the approximate engine (default 1024).")] = None,
                  data_dir: DataDir = None, user: User = None) -> None:
    """The paper's Fig. 3: an SVM per CNN tap, plus Method B and the ensemble at one tap (Fig. 4, Table 1)."""
    from cadx.cnn import TAP_POOLINGS
    from cadx.svm import SVM_ENGINES

    tap_list = tuple(taps.split(",")) if taps else None
    if quick:
        repeats = SWEEP_PRESETS["quick"]
    if tap_pooling not in TAP_POOLINGS:
        raise typer.BadParameter(f"{tap_pooling!r} is not one of {', '.join(TAP_POOLINGS)}",
                                 param_hint="--tap-pooling")
    if svm_engine not in SVM_ENGINES:
        raise typer.BadParameter(f"{svm_engine!r} is not one of {', '.join(SVM_ENGINES)}", param_hint="--svm-engine")
    _experiment(name, backbone, weights, weights_path, tap_list, tap, folds, seed, repeats, not no_analytic, jobs,
                json_path, data_dir, user, cohort, min_lesions_per_fold, estimate=estimate, tap_pooling=tap_pooling,
                svm_engine=svm_engine, sketch_components=sketch_components)


@app.command("evaluate")
def evaluate_command(name: Annotated[str, typer.Option(help="Experiment name.")] = "evaluation",
                     backbone: Backbone = None, weights: Weights = "default", weights_path: WeightsPath = None,
                     tap: Tap = None,
                     folds: Folds = _DEFAULTS.n_folds, seed: Seed = _DEFAULTS.seed,
                     repeats: Repeats = _DEFAULTS.repeats, jobs: Jobs = _DEFAULTS.n_jobs,
                     json_path: JsonPath = None, cohort: CohortOption = None,
                     min_lesions_per_fold: MinLesions = None, data_dir: DataDir = None, user: User = None) -> None:
    """SVM1 (CNN tap), SVM2 (analytic) and their ensemble: AUCs, ROC fits and significance tests."""
    _experiment(name, backbone, weights, weights_path, (), tap, folds, seed, repeats, True, jobs, json_path, data_dir,
                user, cohort, min_lesions_per_fold)


@app.command("experiments")
def experiments_command(json_path: JsonPath = None, data_dir: DataDir = None) -> None:
    """List the experiments, newest first: what ran on which data, and its AUCs."""
    from cadx.workflows import list_experiments

    experiments = _run(lambda: list_experiments(_workspace(data_dir)))
    table = Table(title=f"{len(experiments)} experiments (newest first)")
    for column in ("id", "experiment", "set-up", "AUC SVM1 / SVM2 / ensemble"):
        table.add_column(column, overflow="fold")
    for e in experiments:
        auc = " / ".join("–" if e[k] is None else f"{e[k]:.3f}" for k in ("auc_A", "auc_B", "auc_C"))
        flags = [f for f, on in (("SYNTHETIC DATA", e["uses_synthetic_data"]),
                                 ("RANDOM WEIGHTS", e["uses_random_weights"])) if on]
        table.add_row(str(e["id"]),
                      f"{e['name']}\n{e['created_at']:%Y-%m-%d %H:%M} by {e['created_by']}",
                      f"{e['backbone']} {e['ensemble_tap']}\n{e['n_folds']} folds × {e['repeats']} seed(s)\n"
                      f"{e['n_rois']} ROIs ({e['n_excluded']} excluded)\n"
                      f"cohort {e['cohort'] or '(before cohorts)'} · ROI set {(e['roi_set_sha256'] or '')[:12]}",
                      _styled(auc, *((f"\n{f}", "bold red") for f in flags)))
    _out.print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(experiments, indent=2, default=str))
        _out.print(f"written to {json_path}")


@app.command("predictions")
def predictions_command(
    experiment_id: Annotated[int, typer.Argument(help="The experiment (see `cadx experiments`).")],
    csv_path: Annotated[Path, typer.Option("--csv", help="The CSV file to write.")],
    level: Annotated[str, typer.Option(help="roi (every view) or lesion (mean of its ROIs).")] = "roi",
    all_seeds: Annotated[bool, typer.Option("--all-seeds", help="Every seed of a repeated cross-validation "
                                                                "(ROI level; adds a repeat column).")] = False,
    data_dir: DataDir = None,
) -> None:
    """Export an experiment's out-of-fold predictions (p1, p2, p3, truth, fold, right or wrong) as CSV."""
    from cadx.workflows import lesion_predictions, roi_predictions

    if level not in ("roi", "lesion"):
        _fail(CadxInputError("--level", f"got {level!r}", "use roi or lesion"))
    if all_seeds and level != "roi":
        _fail(CadxInputError("--all-seeds", "needs --level roi", "export the ROI rows and average them per lesion"))
    workspace = _workspace(data_dir)
    if level == "roi":
        frame = _run(lambda: roi_predictions(workspace, experiment_id, repeat=None if all_seeds else 0))
    else:
        frame = _run(lambda: lesion_predictions(workspace, experiment_id))
    from cadx.csvsafe import write_frame_csv

    write_frame_csv(frame, csv_path)
    _out.print(f"{len(frame)} rows ({level} level) written to {csv_path}")


@app.command("report")
def report_command(
    experiment_id: Annotated[int, typer.Argument(help="The experiment (see `cadx experiments`).")],
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write (self-contained).")],
    pdf: Annotated[Path | None, typer.Option("--pdf", help="Also print it to this PDF (headless Chromium).")
                   ] = None,
    level: Annotated[str, typer.Option(help="roi (every view) or lesion (mean of its ROIs).")] = "roi",
    data_dir: DataDir = None,
) -> None:
    """Write an experiment's study report: cohort, methods, Fig. 3, Fig. 4, Table 1, segmentation against the
    reference outlines, tests, provenance."""
    from cadx.workflows.report import write_report

    if level not in ("roi", "lesion"):
        _fail(CadxInputError("--level", f"got {level!r}", "use roi or lesion"))
    workspace = _workspace(data_dir)
    written = _run(lambda: write_report(workspace, experiment_id, out, level=level, pdf=pdf))
    for kind, path in written.items():
        _out.print(f"{kind.upper()} report written to {path}")


ExportTarget = Annotated[str, typer.Argument(
    metavar="EXPERIMENT-or-COHORT",
    help="An experiment id (`cadx experiments`: its included and excluded ROIs) or a cohort name (a preset or "
         "one saved with `cadx cohort create`).")]
ExportOut = Annotated[Path, typer.Option("--out", help="The folder to write roi-<id>.<kind>.dcm files into "
                                                      "(created if missing).")]


def _export(kind: str, target: str, out: Path, data_dir: Path | None) -> None:
    from cadx.workflows.export import export_dicom

    workspace = _workspace(data_dir)
    report = _run(lambda: export_dicom(workspace, kind, target, out))
    _out.print(f"{len(report.files)} {kind.upper()} file(s) of {report.n_rois} ROI(s) of {report.target} written "
               f"to {report.out} in {report.seconds:.1f} s")
    if report.skipped_roi_ids:
        shown = ", ".join(map(str, report.skipped_roi_ids[:20])) + ("…" if len(report.skipped_roi_ids) > 20 else "")
        _out.print(f"{len(report.skipped_roi_ids)} ROI(s) have no stored mask, so no SEG: {shown} "
                   "(run `cadx features` for Method B's segmentations)")


@export_app.command("sr")
def export_sr_command(target: ExportTarget, out: ExportOut, data_dir: DataDir = None) -> None:
    """One DICOM SR (TID 1500 measurement report) per ROI: lesion centre and outlines on the source image, finding
    site, pathology, review state and every review decision (who, when, reason, note)."""
    _export("sr", target, out, data_dir)


@export_app.command("seg")
def export_seg_command(target: ExportTarget, out: ExportOut, data_dir: DataDir = None) -> None:
    """One binary DICOM SEG per ROI on its source image: Method B's segmentation and the reference outline as
    segments (ROIs with neither are skipped)."""
    _export("seg", target, out, data_dir)


@app.command("analyses")
def analyses_command(
    experiment_id: Annotated[int, typer.Argument(help="The experiment (see `cadx experiments`).")],
    level: Annotated[str, typer.Option(help="lesion (mean of its ROIs) or roi, for the error agreement.")] = "lesion",
    threshold: Annotated[float | None, typer.Option(
        help="A fixed probability threshold for right/wrong (default: each fold's operating point, chosen on its "
             "training data and recorded with the experiment).")] = None,
    tap: Annotated[str | None, typer.Option(help="Tap for the correlations and Method D (default: SVM1's).")
                   ] = None,
    components: Annotated[int, typer.Option(help="Principal components of the tap correlated.")] = 10,
    fusion: Annotated[bool, typer.Option("--fusion", help="Also cross-validate Method D (feature fusion; slow).")
                      ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every number as JSON here.")] = None,
    data_dir: DataDir = None,
) -> None:
    """The paper's open questions on an experiment: do SVM1 and SVM2 err on the same lesions (2x2 table, McNemar,
    Spearman, most disagreeing), which tap components go with which analytic features, and Method D."""
    from cadx.workflows.analyses import agreement_analysis, correlation_analysis, fusion_analysis
    from cadx.workflows.experiments import json_safe

    if level not in ("roi", "lesion"):
        _fail(CadxInputError("--level", f"got {level!r}", "use roi or lesion"))
    if threshold is not None and not 0.0 < threshold < 1.0:
        _fail(CadxInputError("--threshold", f"got {threshold}", "give a probability strictly between 0 and 1"))
    workspace = _workspace(data_dir)
    agreement = _run(lambda: agreement_analysis(workspace, experiment_id, level=level, threshold=threshold))
    result = agreement["result"]
    table = Table(title=f"Experiment {experiment_id}: SVM1 vs SVM2 ({result.n} {level}s), called at "
                        f"{agreement['called_at']}")
    for column in ("", "SVM2 right", "SVM2 wrong"):
        table.add_column(column)
    for name, row in zip(("SVM1 right", "SVM1 wrong"), result.table.tolist(), strict=True):
        table.add_row(name, *map(str, row))
    _out.print(table)
    _out.print("Operating points per fold: " + "; ".join(
        " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        for row in agreement["operating_points"].to_dict(orient="records")))
    if result.refusal is not None:
        _out.print(_styled((f"φ and McNemar: {result.refusal}.", "yellow")))
    else:
        _out.print(f"McNemar exact p = {result.mcnemar_p:.4g} · error correlation (phi) "
                   f"{result.error_correlation:.3f}")
    _out.print(f"Both wrong {int(result.table[1][1])} (independent errors: {result.both_wrong_expected:.1f}) · "
               f"Spearman rho(p1, p2) {result.spearman_rho:.3f} (p = {result.spearman_p:.3g})")
    disagreeing = agreement["disagreeing"]
    key = "lesion_key" if "lesion_key" in disagreeing.columns else "roi_id"
    _out.print("Most disagreeing: " + "; ".join(
        f"{r[key]} ({'malignant' if r['truth'] == 1 else 'benign'}, p1 {r['p1']:.3f}, "
        f"p2 {r['p2']:.3f})" for _, r in disagreeing.head(5).iterrows()))
    corr = _run(lambda: correlation_analysis(workspace, experiment_id, tap=tap, n_components=components))
    frame = corr["frame"]
    pairs = frame.stack().rename("r").reset_index()
    pairs.columns = ["component", "feature", "r"]
    top = pairs.reindex(pairs["r"].abs().sort_values(ascending=False).index).head(8)
    _out.print(f"Strongest correlations, {corr['tap']} components x analytic features: " + "; ".join(
        f"{r['component']} ~ {r['feature']} r = {r['r']:+.2f}" for _, r in top.iterrows()))
    out = {"experiment_id": experiment_id, "agreement": {
        "level": level, "threshold": threshold, "called_at": agreement["called_at"],
        "operating_points": agreement["operating_points"].to_dict(orient="records"), "refusal": result.refusal,
        "table": result.table, "n": result.n, "mcnemar_p": result.mcnemar_p,
        "both_wrong_expected": result.both_wrong_expected, "error_correlation": result.error_correlation,
        "spearman_rho": result.spearman_rho, "spearman_p": result.spearman_p,
        "most_disagreeing": disagreeing.to_dict(orient="records")},
        "correlation": {"tap": corr["tap"], "components": list(frame.index), "features": list(frame.columns),
                        "r": frame.to_numpy()}}
    if fusion:
        d = _run(lambda: fusion_analysis(workspace, experiment_id, tap=tap))
        method = d["method"]
        _out.print(f"Method D (fusion, {d['n_features']} features, tap {d['tap']}): AUC (mean of fold AUCs) "
                   f"{method['auc_mean']:.3f} +/- {method['auc_se']:.3f} (SE); pooled AUC (probabilities pooled "
                   f"over folds) {_f(method['pooled_auc'])}")
        for row in d["comparisons"]:
            first, second = row["comparison"].split(" vs ")
            _out.print(f"  {row['comparison']}: mean-of-folds AUC({first}) - AUC({second}) "
                       f"{_f(row.get('fold_mean_auc_difference'), '+.3f')}, Nadeau-Bengio p "
                       f"{_f(row.get('repeated_nb_p'), '.3g')} "
                       f"(Bonferroni {_f(row.get('repeated_nb_p_bonferroni'), '.3g')}); DeLong on within-fold "
                       f"ranks: AUC difference {_f(row.get('rank_delong_auc_difference'), '+.3f')}, "
                       f"p {_f(row.get('rank_delong_p'), '.3g')}")
        out["fusion"] = {"tap": d["tap"], "method": method, "comparisons": d["comparisons"]}
    if json_path is not None:
        json_path.write_text(json.dumps(json_safe(out), indent=2, default=str))
        _out.print(f"written to {json_path}")


@app.command("permutation-test")
def permutation_test_command(
    experiment_id: Annotated[int, typer.Argument(help="The experiment (see `cadx experiments`).")],
    permutations: Annotated[int, typer.Option(
        help=f"Label permutations, each a rerun of the whole nested cross-validation (default "
             f"{DEFAULT_PERMUTATIONS}: Monte-Carlo SE {monte_carlo_se(0.05, DEFAULT_PERMUTATIONS):.3f} at p = 0.05; "
             "the smallest p is 1/(1 + N)).")] = DEFAULT_PERMUTATIONS,
    seed: Annotated[int, typer.Option(help="Seed of the permutations (the test is deterministic).")] = 0,
    queue: Annotated[bool, typer.Option("--queue", help="Queue it as a background job (`cadx worker` runs it; "
                                                        "resumable) instead of running it here.")] = False,
    data_dir: DataDir = None, user: User = None,
) -> None:
    """Is an experiment better than chance? Lesion labels permuted within its folds, the nested CV rerun per
    permutation: each headline AUC's permutation p (with its Monte-Carlo SE), the best tap's selection-adjusted p."""
    from cadx.workflows.jobs import submit_job
    from cadx.workflows.permutation import run_permutation_test

    workspace = _workspace(data_dir)
    if queue:
        job_id = _run(lambda: submit_job(workspace, "permutation", {
            "experiment_id": experiment_id, "permutations": permutations, "seed": seed,
            "name": f"permutation test of experiment {experiment_id}"}, user=_user(user)))
        _out.print(f"queued as job {job_id}; `cadx worker` runs it")
        return
    with _ProgressBar() as bar:
        _run(lambda: run_permutation_test(workspace, experiment_id, permutations=permutations, seed=seed,
                                          user=_user(user), progress=bar))
    _print_permutation_test(workspace, experiment_id)


@app.command("worker")
def worker_command(data_dir: DataDir = None,
                   once: Annotated[bool, typer.Option("--once", help="Run the queued jobs, then stop.")] = False,
                   idle_exit: Annotated[float | None, typer.Option(
                       help="Stop after this many seconds without work.")] = None,
                   pid_file: Annotated[str, typer.Option(
                       help="File name (in the data directory) holding this worker's PID.")] = "worker.pid") -> None:
    """Run background jobs (extraction, features, experiments) queued by the app.

    Jobs run in the order queued, at most CADX_MAX_PARALLEL_JOBS at once over all workers; a job whose worker
    died is resumed from its checkpoints by the next worker."""
    from cadx.workflows.jobs import run_worker

    if "/" in pid_file or "\\" in pid_file or pid_file.startswith("."):
        raise typer.BadParameter("give a plain file name, e.g. worker-2.pid", param_hint="--pid-file")
    run_worker(_workspace(data_dir), idle_exit_seconds=0.0 if once else idle_exit, pid_file=pid_file)


KeyFile = Annotated[Path | None, typer.Option(
    "--key-file", envvar="CADX_BACKUP_KEY_FILE",
    help="The backup key file (default: backup.key in the data directory of the installation that backs up).")]


@app.command("backup")
def backup_command(target: Annotated[Path, typer.Argument(help="The backup file to write (.tar).")],
                   with_features: Annotated[bool, typer.Option(help="Also copy the CNN feature store.")] = False,
                   without_pseudonym_key: Annotated[bool, typer.Option(
                       "--without-pseudonym-key",
                       help="Leave out the key behind DICOM patient pseudonyms (for a copy that leaves the lab; a "
                            "workspace restored from it cannot match new DICOMs to its patients).")] = False,
                   key_file: KeyFile = None, data_dir: DataDir = None) -> None:
    """Back up the database, the stored files and the pseudonym key, with a SHA-256 for each, authenticated with
    the backup key (created in the data directory on the first backup unless --key-file is given)."""
    from cadx.workflows.backup import BACKUP_KEY_FILE, backup_workspace, load_backup_key

    workspace = _workspace(data_dir)
    new_key = key_file is None and not (workspace.data_dir / BACKUP_KEY_FILE).exists() and not os.environ.get(
        "CADX_BACKUP_KEY_FILE")
    key = _run(lambda: load_backup_key(key_file)) if key_file is not None else None
    with _ProgressBar() as bar:
        manifest = _run(lambda: backup_workspace(workspace, target, include_features=with_features,
                                                 include_pseudonym_key=not without_pseudonym_key, key=key,
                                                 progress=bar))
    rows = sum(t["rows"] for t in manifest["tables"].values())
    pseudonym = "the pseudonym key" if "pseudonym_key_sha256" in manifest else "no pseudonym key"
    _out.print(f"{rows} rows, {len(manifest['files'])} files and {pseudonym} backed up to {target}, signed with "
               f"backup key {manifest['key_id']}")
    if new_key:
        _console.print(_styled(("New backup key:", "bold orange1"), f" {workspace.data_dir / BACKUP_KEY_FILE}. "
                               "Restoring needs it (`cadx restore --key-file`): keep a copy away from the backups and "
                               "this machine, e.g. in the lab's password manager."))


@app.command("restore")
def restore_command(source: Annotated[Path, typer.Argument(help="A file made by `cadx backup`.")],
                    key_file: KeyFile = None, data_dir: DataDir = None) -> None:
    """Restore a backup into an empty workspace, verifying its backup-key signature and every hash before writing."""
    from cadx.workflows.backup import load_backup_key, restore_workspace

    workspace = _workspace(data_dir)
    key = _run(lambda: load_backup_key(key_file)) if key_file is not None else None
    with _ProgressBar() as bar:
        manifest = _run(lambda: restore_workspace(workspace, source, key=key, progress=bar))
    rows = sum(t["rows"] for t in manifest["tables"].values())
    _out.print(f"{rows} rows and {len(manifest['files'])} files restored and verified")
    if not manifest["pseudonym_key_restored"]:
        _console.print(_styled(("Warning:", "bold orange1"), " the backup has no pseudonym key, so this workspace has "
                               "a new one: a DICOM of a patient already here will get a new pseudonym (a second "
                               "patient). Copy the original installation's pseudonym.key into the data directory "
                               "before importing DICOMs."))


cohort_app = typer.Typer(help="Cohorts: named, saved selections of the ROIs an experiment uses.", no_args_is_help=True)
app.add_typer(cohort_app, name="cohort")
Many = list[str] | None


@cohort_app.command("create")
def cohort_create_command(
    name: Annotated[str, typer.Argument(help="The cohort's name (letters, digits, spaces, _.+-).")],
    source: Annotated[Many, typer.Option("--source",
                                         help="Dataset: mias, cbis-ddsm, ddsm, local, demo (repeat).")] = None,
    synthetic: Annotated[str, typer.Option(help="auto (real only when real data exists), real, synthetic, or both "
                                                "(pool real and synthetic: explicit only).")] = "auto",
    lesion_type: Annotated[Many, typer.Option("--lesion-type", help="masses, calcifications, or a type: CIRC, SPIC, "
                                              "MISC, CALC, ARCH, ASYM, mass, calcification, unknown (repeat).")] = None,
    label: Annotated[Many, typer.Option("--label", help="benign or malignant (repeat).")] = None,
    view: Annotated[Many, typer.Option("--view", help="CC, MLO, ... (repeat).")] = None,
    laterality: Annotated[Many, typer.Option("--laterality", help="L or R.")] = None,
    qc: Annotated[str, typer.Option(help="any, or unflagged (only ROIs without QC flags).")] = "any",
    exclude_qc_flag: Annotated[Many, typer.Option("--exclude-qc-flag", help="Leave out ROIs with this QC flag "
                                                  "(repeat).")] = None,
    review: Annotated[str, typer.Option(help="included (default), excluded, or all.")] = "included",
    import_run: Annotated[list[int] | None, typer.Option("--import-run", help="Only ROIs of this import run "
                                                            "(repeat).")] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds by lesion for experiments on it.")] = 5,
    description: Annotated[str, typer.Option(help="A note for people.")] = "",
    replace: Annotated[bool, typer.Option("--replace", help="Replace a saved cohort of the same name.")] = False,
    data_dir: DataDir = None, user: User = None,
) -> None:
    """Save a cohort, then print what it selects now (patients, lesions, ROIs by label)."""
    from cadx.cohorts import CohortDefinition
    from cadx.workflows.cohorts import save_cohort

    definition = _run(lambda: CohortDefinition(
        sources=tuple(source or ()), synthetic=synthetic, lesion_types=tuple(lesion_type or ()),
        labels=tuple(label or ()), views=tuple(view or ()), lateralities=tuple(laterality or ()), qc=qc,
        exclude_qc_flags=tuple(exclude_qc_flag or ()), review=review, import_runs=tuple(import_run or ()),
        n_folds=folds, description=description))
    workspace = _workspace(data_dir)
    info = _run(lambda: save_cohort(workspace, name, definition, user=_user(user), replace=replace))
    _out.print(f"cohort {info.name} saved: {info.definition.summary()}")
    _show_cohort(workspace, info.name)


@cohort_app.command("list")
def cohort_list_command(data_dir: DataDir = None,
                        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The presets and the saved cohorts, with what each selects now."""
    from cadx.workflows.cohorts import list_cohorts, resolve_cohort

    workspace = _workspace(data_dir)
    rows = []
    for info in _run(lambda: list_cohorts(workspace)):
        resolved = _run(lambda name=info.name: resolve_cohort(workspace, name))
        rows.append((info, resolved))
    if as_json:
        typer.echo(json.dumps([{"name": i.name, "preset": i.preset, "definition": i.definition.to_dict(),
                                "counts": r.counts(), "roi_set_sha256": r.roi_set_sha256} for i, r in rows],
                              indent=2))
        return
    table = Table(title=f"{len(rows)} cohorts")
    for column in ("cohort", "selection", "patients", "lesions (B/M)", "ROIs (B/M)"):
        table.add_column(column, overflow="fold")
    for info, r in rows:
        table.add_row(info.name + (" (preset)" if info.preset else ""), info.definition.summary(), str(r.patients),
                      f"{r.lesions} ({r.lesions_by_label.get('benign', 0)}/{r.lesions_by_label.get('malignant', 0)})",
                      f"{r.rois} ({r.rois_by_label.get('benign', 0)}/{r.rois_by_label.get('malignant', 0)})")
    _out.print(table)
    from cadx.workflows.cohorts import cohort_options

    runs = cohort_options(workspace)["import_runs"]
    if runs:
        _out.print("import runs (for --import-run): " + "; ".join(
            f"{r['id']}: {r['kind']} {r['source']} ({r['n_imported']} ROIs)" for r in runs))


def _show_cohort(workspace, name: str, as_json: bool = False) -> None:
    from cadx.errors import CadxInputError as _InputError
    from cadx.workflows.cohorts import resolve_cohort

    resolved = _run(lambda: resolve_cohort(workspace, name))
    try:
        resolved.check()
        verdict = f"usable for {resolved.definition.n_folds}-fold cross-validation by lesion"
    except _InputError as exc:
        verdict = f"REFUSED for experiments: {exc.problem}. Fix: {exc.fix}"
    if as_json:
        typer.echo(json.dumps({"name": resolved.name, "definition": resolved.definition.to_dict(),
                               "counts": resolved.counts(), "synthetic_used": resolved.synthetic_used,
                               "roi_set_sha256": resolved.roi_set_sha256, "notes": resolved.notes,
                               "guard_rails": verdict}, indent=2))
        return
    _out.print(_styled((resolved.name, "bold"), f": {resolved.definition.summary()}"))
    if resolved.definition.description:
        _out.print(resolved.definition.description)
    _out.print(_counts_line(resolved))
    _out.print("patients by label: " + ", ".join(f"{k} {v}" for k, v in resolved.patients_by_label.items()))
    _out.print("lesions by type: " + ", ".join(f"{k} {v}" for k, v in resolved.lesions_by_type.items()))
    _out.print("ROIs by source: " + ", ".join(f"{k} {v}" for k, v in resolved.rois_by_source.items())
               + f" ({'SYNTHETIC' if resolved.synthetic_used in ('synthetic', 'both') else resolved.synthetic_used})")
    for note in resolved.notes:
        _out.print(note, style="orange1")
    _out.print(verdict)


@cohort_app.command("show")
def cohort_show_command(name: Annotated[str, typer.Argument(help="A preset (paper, all) or a saved cohort.")],
                        data_dir: DataDir = None,
                        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """A cohort's definition and what it selects now: counts, ROI-set hash and the guard rails' verdict."""
    _show_cohort(_workspace(data_dir), name, as_json)


@cohort_app.command("delete")
def cohort_delete_command(name: str, data_dir: DataDir = None, user: User = None) -> None:
    """Delete a saved cohort (experiments keep their copy of its definition)."""
    from cadx.workflows.cohorts import delete_cohort

    _run(lambda: delete_cohort(_workspace(data_dir), name, user=_user(user)))
    _out.print(f"cohort {name} deleted")
@app.command("gc")
def gc_command(dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
               data_dir: DataDir = None, user: User = None) -> None:
    """Remove stored ROI, outline and segmentation files that no committed row uses (left by a killed import or
    sweep); files in use, and files a running import is writing, are never touched."""
    from cadx.workflows.gc import collect_garbage

    report = _run(lambda: collect_garbage(_workspace(data_dir), dry_run=dry_run, user=_user(user)))
    if report.busy:
        _console.print(_styled(("Busy:", "bold red"), " an import or sweep is writing files right now. Fix: run "
                               "`cadx gc` again when it has finished."))
        raise typer.Exit(1)
    for relative in report.orphans + report.temporaries:
        typer.echo(f"{'would remove' if dry_run else 'removed'} {relative}")  # one line each, never wrapped
    verb = "would be removed" if dry_run else "removed"
    _out.print(f"{len(report.orphans)} orphan file(s) and {len(report.temporaries)} temporary file(s) {verb}; "
               f"{report.in_use} file(s) in use kept")


user_app = typer.Typer(help="Local accounts and roles (viewer, reviewer, admin).", no_args_is_help=True)
app.add_typer(user_app, name="user")
audit_app = typer.Typer(help="The append-only audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _new_password(password_stdin: bool) -> str:
    if password_stdin:
        return typer.get_text_stream("stdin").readline().rstrip("\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


PasswordStdin = Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard input.")]


@user_app.command("add")
def user_add_command(username: str, role: Annotated[str, typer.Option(help="viewer, reviewer or admin")] = "reviewer",
                     password_stdin: PasswordStdin = False, data_dir: DataDir = None, user: User = None) -> None:
    """Add an account. Once one exists, the app asks everyone to log in (CADX_AUTH=auto)."""
    from cadx.workflows.accounts import add_user

    password = _new_password(password_stdin)
    _run(lambda: add_user(_workspace(data_dir), username, password, role=role, by=_user(user)))
    _out.print(f"user {username} added with role {role}")


@user_app.command("passwd")
def user_passwd_command(username: str, password_stdin: PasswordStdin = False, data_dir: DataDir = None,
                        user: User = None) -> None:
    """Set an account's password."""
    from cadx.workflows.accounts import set_password

    password = _new_password(password_stdin)
    _run(lambda: set_password(_workspace(data_dir), username, password, by=_user(user)))
    _out.print(f"password of {username} changed")


@user_app.command("role")
def user_role_command(username: str, role: str, data_dir: DataDir = None, user: User = None) -> None:
    """Change an account's role."""
    from cadx.workflows.accounts import set_role

    _run(lambda: set_role(_workspace(data_dir), username, role, by=_user(user)))
    _out.print(f"{username} is now {role}")


@user_app.command("disable")
def user_disable_command(username: str, data_dir: DataDir = None, user: User = None) -> None:
    """Disable an account: it cannot sign in, and its open sessions end at once."""
    from cadx.workflows.accounts import set_disabled

    _run(lambda: set_disabled(_workspace(data_dir), username, True, by=_user(user)))
    _out.print(f"{username} is disabled and signed out everywhere")


@user_app.command("enable")
def user_enable_command(username: str, data_dir: DataDir = None, user: User = None) -> None:
    """Enable a disabled account again."""
    from cadx.workflows.accounts import set_disabled

    _run(lambda: set_disabled(_workspace(data_dir), username, False, by=_user(user)))
    _out.print(f"{username} is enabled")


@user_app.command("logout-all")
def user_logout_all_command(username: Annotated[str | None, typer.Argument(
                                help="The account (default: every account).")] = None,
                            data_dir: DataDir = None, user: User = None) -> None:
    """End the open sign-in sessions of an account (or of everyone): they sign in again."""
    from cadx.workflows.accounts import logout_all

    n = _run(lambda: logout_all(_workspace(data_dir), username, by=_user(user)))
    _out.print(f"{n} session(s) ended")


@user_app.command("list")
def user_list_command(data_dir: DataDir = None) -> None:
    """List the accounts."""
    from cadx.workflows.accounts import list_users

    for account in list_users(_workspace(data_dir)):
        _out.print(f"{account.username}\t{account.role}{' (disabled)' if account.disabled else ''}")


IdentityNumber = Annotated[int | None, typer.Option("--identity", help="The identity's number (cadx user oidc-list).")]
Issuer = Annotated[str | None, typer.Option(help="The provider's issuer (the ID token's iss claim).")]
Subject = Annotated[str | None, typer.Option(help="The user's id at the provider (the ID token's sub claim).")]


@user_app.command("link-oidc")
def user_link_oidc_command(username: str, identity: IdentityNumber = None, issuer: Issuer = None,
                           subject: Subject = None, data_dir: DataDir = None, user: User = None) -> None:
    """Link a single sign-on identity to an account: its users then get the account's name and role.

    Identities are matched by issuer and subject only (never by e-mail or name, which users can edit at many
    providers). One appears in `cadx user oidc-list` at its first sign-in; --issuer/--subject link it before.
    """
    from cadx.workflows.accounts import link_oidc

    number = _run(lambda: link_oidc(_workspace(data_dir), username, identity=identity, issuer=issuer,
                                    subject=subject, by=_user(user)))
    _out.print(f"single sign-on identity #{number} is linked to {username}")


@user_app.command("unlink-oidc")
def user_unlink_oidc_command(identity: IdentityNumber = None, issuer: Issuer = None, subject: Subject = None,
                             data_dir: DataDir = None, user: User = None) -> None:
    """Unlink a single sign-on identity from its account: it may then only view."""
    from cadx.workflows.accounts import unlink_oidc

    _run(lambda: unlink_oidc(_workspace(data_dir), identity=identity, issuer=issuer, subject=subject,
                             by=_user(user)))
    _out.print("single sign-on identity unlinked")


@user_app.command("oidc-list")
def user_oidc_list_command(data_dir: DataDir = None) -> None:
    """List the single sign-on identities seen or linked: number, issuer, subject, linked account, claimed name."""
    from cadx.workflows.accounts import list_oidc_identities

    for row in list_oidc_identities(_workspace(data_dir)):
        typer.echo(f"#{row['id']}\t{row['issuer']}\t{row['subject']}\t{row['account'] or '(not linked)'}\t"
                   f"{row['claimed_name'] or ''}")  # one line each, never wrapped


@audit_app.command("export")
def audit_export_command(target: Annotated[Path, typer.Argument(help="CSV file to write.")],
                         data_dir: DataDir = None) -> None:
    """Export the whole audit trail (uploads, imports, review decisions, runs, deletions, logins) as CSV."""
    from cadx.workflows.accounts import export_audit_csv

    count = export_audit_csv(_workspace(data_dir), target)
    _out.print(f"{count} audit events written to {target}")


@audit_app.command("verify")
def audit_verify_command(data_dir: DataDir = None) -> None:
    """Check the audit trail's hash chain; exits 1 naming the first event where it breaks."""
    from cadx.workflows.audit import verify_audit_chain

    count, broken = _run(lambda: verify_audit_chain(_workspace(data_dir)))
    if broken is not None:
        _console.print(_styled((f"The audit trail is broken at audit event {broken[0]}:", "bold red"),
                               f" {broken[1]}. Events before it ({count} checked) are intact. Fix: compare with a "
                               "backup (`cadx restore` into a new data directory checks its trail too) and find out "
                               "who changed it."))
        raise typer.Exit(1)
    _out.print(f"{count} audit events, hash chain intact")


if __name__ == "__main__":
    app()
