"""The ``cadx`` command line: batch import, demo data and dataset statistics over the same workflows as the app."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cadx.errors import CadxInputError
from cadx.workflows import (
    ImportReport,
    Workspace,
    dataset_stats,
    exclude_roi,
    import_cbis_ddsm,
    import_demo,
    import_dicom_folder,
    import_manifest,
    import_mias,
    include_roi,
    open_workspace,
)

__all__ = ["app"]

app = typer.Typer(help="cadx: breast-lesion CADx from mammograms (Huynh, Li & Giger 2016).", no_args_is_help=True)
import_app = typer.Typer(help="Import images and lesions into the database.", no_args_is_help=True)
app.add_typer(import_app, name="import")

_console = Console(stderr=True)
_out = Console()

DataDir = Annotated[
    Optional[Path], typer.Option("--data-dir", envvar="CADX_DATA_DIR", help="Data directory (default ~/.cadx).")
]
User = Annotated[Optional[str], typer.Option("--user", help="Who runs the import (recorded). Default: login name.")]
SkipErrors = Annotated[
    bool,
    typer.Option("--skip-errors", help="Write the good items even when some fail (default: any error writes nothing)."),
]
ReportPath = Annotated[Optional[Path], typer.Option("--report", help="Also write the full report as JSON here.")]


def _workspace(data_dir: Path | None) -> Workspace:
    return open_workspace(data_dir)


def _user(user: str | None) -> str:
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "cli"


class _ProgressBar:
    """A rich progress bar fed by the workflows' ``progress(done, total, message)`` callback."""

    def __enter__(self):
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=_console
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
        table.add_row(item.name, f"[{colours[item.status]}]{item.status}[/]", item.reason)
    _out.print(table)
    if report_path is not None:
        report_path.write_text(json.dumps(report.to_dict(), indent=2))
    if report.committed:
        _out.print(f"[bold]{report.n_imported} imported, {report.n_skipped} skipped, {report.n_errors} errors[/]")
    else:
        _out.print(f"[bold red]Nothing was written: {report.n_errors} error(s).[/] Fix them, or rerun with "
                   "--skip-errors to import the rest.")
    if report.n_errors:
        raise typer.Exit(2 if not report.committed else 1)


def _run(action):
    try:
        return action()
    except CadxInputError as exc:
        _console.print(f"[bold red]Error:[/] {exc}")
        raise typer.Exit(2) from exc


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
    pixel_size_mm: Annotated[Optional[float], typer.Option(help="Pixel size for files whose header has none.")] = None,
    data_dir: DataDir = None, user: User = None, skip_errors: SkipErrors = False, report: ReportPath = None,
) -> None:
    """Import CBIS-DDSM: lesions from the case-description CSVs, centres from the ROI masks."""
    workspace = _workspace(data_dir)
    with _ProgressBar() as bar:
        result = _run(lambda: import_cbis_ddsm(workspace, folder, csv, user=_user(user), pixel_size_mm=pixel_size_mm,
                                               skip_errors=skip_errors, progress=bar))
    _finish(result, report)


@import_app.command("csv")
def import_csv_command(manifest: Annotated[Path, typer.Argument(help="CSV manifest, one row per ROI")],
                       data_dir: DataDir = None, user: User = None, skip_errors: SkipErrors = False,
                       report: ReportPath = None) -> None:
    """Import images listed in a CSV manifest.

    Columns: image, patient, lesion, label, centre_x, centre_y (pixels, origin top-left), pixel_size_mm
    (optional for DICOM), view, laterality, lesion_type, lesion_size_mm (optional).
    """
    workspace = _workspace(data_dir)
    with _ProgressBar() as bar:
        result = _run(lambda: import_manifest(workspace, manifest, user=_user(user), skip_errors=skip_errors,
                                              progress=bar))
    _finish(result, report)


@import_app.command("dicom")
def import_dicom_command(folder: Annotated[Path, typer.Argument(help="Folder of DICOM files")],
                         labels: Annotated[Path, typer.Option("--labels", help="CSV: file, lesion, label, centre_x, "
                                                              "centre_y [, patient, view, laterality, ...]")],
                         data_dir: DataDir = None, user: User = None, skip_errors: SkipErrors = False,
                         report: ReportPath = None) -> None:
    """Import a folder of DICOM mammograms with a labels file (patient, view and side come from the headers)."""
    workspace = _workspace(data_dir)
    with _ProgressBar() as bar:
        result = _run(lambda: import_dicom_folder(workspace, folder, labels, user=_user(user),
                                                  skip_errors=skip_errors, progress=bar))
    _finish(result, report)


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
        _out.print("excluded by reason: " + ", ".join(f"{k}: {v}" for k, v in stats["excluded_by_reason"].items()))


@app.command("exclude")
def exclude_command(roi_id: int, reason: Annotated[str, typer.Option(help="compression_paddle, location_marker, other")],
                    note: Annotated[Optional[str], typer.Option(help="Why (required for 'other').")] = None,
                    data_dir: DataDir = None, user: User = None) -> None:
    """Exclude an artifact ROI from experiments (a review event; the ROI is kept)."""
    event = _run(lambda: exclude_roi(_workspace(data_dir), roi_id, reason=reason, user=_user(user), note=note))
    _out.print(f"ROI {roi_id} excluded ({event.reason}) by {event.user}")


@app.command("include")
def include_command(roi_id: int, note: Annotated[Optional[str], typer.Option()] = None,
                    data_dir: DataDir = None, user: User = None) -> None:
    """Include an excluded ROI again (a review event)."""
    event = _run(lambda: include_roi(_workspace(data_dir), roi_id, user=_user(user), note=note))
    _out.print(f"ROI {roi_id} included by {event.user}")


if __name__ == "__main__":
    app()
