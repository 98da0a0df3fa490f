"""A PACS as a source and a destination: ``cadx import dicomweb`` and ``cadx export dicomweb``.

Import is :func:`cadx.workflows.datasets.import_dicom_folder` with the folder replaced by a DICOMweb server: the
same labels file (its ``file`` column names the instance by its SOP Instance UID), the same rows, and the same
per-image path through :func:`cadx.workflows.importing.run_import` (de-identification, pixel and byte limits,
idempotency by the file's SHA-256, one transaction). Each instance is downloaded when its turn comes, into memory,
and dropped once its ROIs are cropped, so memory holds one image at a time. Only mammograms (Modality MG, in the
search and again in the file itself) are imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from cadx import io as cadx_io
from cadx.config import DicomwebCredentials
from cadx.dicomweb import UID_PATTERN, DicomwebServer, SeriesInfo
from cadx.errors import CadxInputError, ManifestError
from cadx.sources import ManifestRow, parse_manifest
from cadx.workflows.datasets import _import_rows, _opaque_name
from cadx.workflows.importing import ImportReport, Progress
from cadx.workflows.workspace import Workspace

__all__ = ["PACS_FETCH_MAX_INSTANCES", "dicom_files_under", "export_dicomweb_folder", "fetch_series_instances",
           "find_series", "import_dicomweb", "stow_instances"]

# A folder no labels row can name: rows are placed under it by UID only, so "../x" or an absolute path in the file
# column is refused instead of resolving to a real file.
_INSTANCES = Path("/cadx-dicomweb-instances")
_DATE = re.compile(r"^\d{8}$")


def find_series(url: str, *, credentials: DicomwebCredentials | None = None, verify_tls: bool = True,
                patient_id: str | None = None, study_uid: str | None = None, series_uid: str | None = None,
                date_from: str | None = None, date_to: str | None = None) -> list[SeriesInfo]:
    """The series on the server that match the filters (QIDO-RS), mammograms or not.

    Raises
    ------
    CadxInputError
        A malformed UID or date, or the server failing (see :class:`cadx.dicomweb.DicomwebServer`).
    """
    _check_filters(study_uid=study_uid, series_uid=series_uid, date_from=date_from, date_to=date_to)
    server = DicomwebServer(url, credentials=credentials, verify_tls=verify_tls)
    return server.search_series(patient_id=patient_id, study_uid=study_uid, series_uid=series_uid,
                                date_from=date_from, date_to=date_to)


def import_dicomweb(workspace: Workspace, url: str, labels: str | Path, *, user: str,
                    credentials: DicomwebCredentials | None = None, verify_tls: bool = True,
                    patient_id: str | None = None, study_uid: str | None = None, series_uid: str | None = None,
                    date_from: str | None = None, date_to: str | None = None, skip_errors: bool = False,
                    allow_burned_in: bool = False, progress: Progress | None = None) -> ImportReport:
    """Import the mammograms a QIDO-RS query finds on a DICOMweb server and a labels file describes.

    Parameters
    ----------
    workspace : the data directory and database.
    url : the server's DICOMweb root, without credentials.
    labels : the labels CSV of ``cadx import dicom``; its ``file`` column holds each instance's SOP Instance UID.
    user : who imports.
    credentials, verify_tls : how to sign in; certificate verification (on unless told otherwise).
    patient_id, study_uid, series_uid, date_from, date_to : the query (StudyDate from/to as ``YYYYMMDD``).
    skip_errors, allow_burned_in, progress : as :func:`cadx.workflows.importing.run_import` (progress is per
        instance).

    Found instances the labels file does not list are reported as skipped (and not downloaded); a series named with
    ``series_uid`` that is not MG is refused before anything is downloaded; in a wider query other modalities are
    reported as skipped. A labels row naming an instance the query did not find, or one of another modality, is an
    error.

    Raises
    ------
    CadxInputError
        Bad filters or labels file, the server unreachable or refusing the credentials, a named non-MG series.
    """
    _check_filters(study_uid=study_uid, series_uid=series_uid, date_from=date_from, date_to=date_to)
    server = DicomwebServer(url, credentials=credentials, verify_tls=verify_tls)
    rows = parse_manifest(labels, image_column="file", base_dir=_INSTANCES, progress=progress)
    for row in rows:
        _check_row(row, Path(labels).name)
    if progress is not None:
        progress(0, None, f"searching {server.url}")
    series_found = server.search_series(patient_id=patient_id, study_uid=study_uid, series_uid=series_uid,
                                        date_from=date_from, date_to=date_to)
    key = workspace.pseudonym_key()
    source = server.url[:100]
    report = ImportReport(kind="dicomweb", source=source)
    where: dict[str, SeriesInfo] = {}  # SOP Instance UID -> its series
    for series in series_found:
        if series.modality.upper() != "MG" and series_uid:
            raise CadxInputError(f"{server.url} series {series.series_uid}",
                                 f"is a {series.modality or 'unknown-modality'} series, not a mammogram (MG); "
                                 "nothing was imported", "give the Series Instance UID of a mammography (MG) series")
        for sop in server.search_instances(series):
            where.setdefault(sop, series)
    listed = {row.image.name for row in rows}
    for sop, series in sorted(where.items(), key=lambda item: item[0]):
        if sop in listed:
            continue
        if series.modality.upper() != "MG":
            report.add(_opaque_name(key, sop), "skipped", f"not a mammogram (modality {series.modality or '?'})")
        else:
            report.add(_opaque_name(key, sop), "skipped", "not listed in the labels file")
    for row in rows:
        found = where.get(row.image.name)
        name = f"labels {source} row {row.line}"
        if found is None:
            report.add(name, "error", f"instance {row.image.name} is not on {server.url} for this query. Fix: "
                                      "check the SOP Instance UID in the file column, and the query's "
                                      "--patient/--study/--series/--date-from/--date-to")
        elif found.modality.upper() != "MG":
            report.add(name, "error", f"instance {row.image.name} is in a {found.modality} series, not a "
                                      "mammogram (MG). Fix: list only mammograms in the labels file")
    importable = [row for row in rows if row.image.name in where and where[row.image.name].modality.upper() == "MG"]

    def fetch(row: ManifestRow) -> bytes:
        series = where[row.image.name]
        return server.retrieve_instance(series.study_uid, series.series_uid, row.image.name)

    def check(image: cadx_io.Mammogram) -> None:
        if (image.modality or "").upper() != "MG":
            raise CadxInputError("the retrieved instance",
                                 f"the file's Modality is {image.modality or 'missing'}, not MG (the server's search "
                                 "said MG)", "import only mammograms")

    return _import_rows(workspace, importable, kind="dicomweb", source=source, user=user, report=report,
                        skip_errors=skip_errors, allow_burned_in=allow_burned_in, progress=progress, fetch=fetch,
                        check=check)


PACS_FETCH_MAX_INSTANCES = 16  # one fetch from the app's From PACS: the images of a study or two, held in memory


def fetch_series_instances(url: str, series: Sequence[SeriesInfo], *,
                           credentials: DicomwebCredentials | None = None, verify_tls: bool = True,
                           max_instances: int = PACS_FETCH_MAX_INSTANCES) -> list[tuple[str, bytes]]:
    """The instances of the chosen MG ``series`` as ``(name, bytes)`` (WADO-RS, each within the download byte cap),
    for the app's upload path, which reads, de-identifies and stores them like uploaded files.

    Raises
    ------
    CadxInputError
        A series that is not MG, more than ``max_instances`` instances, or the server failing.
    """
    server = DicomwebServer(url, credentials=credentials, verify_tls=verify_tls)
    wanted: list[tuple[SeriesInfo, str]] = []
    for one in series:
        if one.modality != "MG":
            raise CadxInputError(f"series {one.series_uid}", f"has modality {one.modality}, not MG (mammography)",
                                 "choose a mammography series")
        wanted += [(one, uid) for uid in server.search_instances(one)]
    if len(wanted) > max_instances:
        raise CadxInputError("From PACS", f"the chosen series hold {len(wanted)} instances; at most "
                             f"{max_instances} are fetched at once", "choose fewer series, or import a whole "
                             "study with `cadx import dicomweb`")
    return [(f"PACS {one.series_uid[-12:]} #{i + 1}", server.retrieve_instance(one.study_uid, one.series_uid, uid))
            for i, (one, uid) in enumerate(wanted)]


def stow_instances(url: str, instances: Iterable[object], *, credentials: DicomwebCredentials | None = None,
                   verify_tls: bool = True) -> list[str]:
    """Store DICOM instances (pydicom datasets or the bytes of DICOM files) on a DICOMweb server (STOW-RS).

    Returns
    -------
    list of str
        The SOP Instance UIDs stored.
    """
    server = DicomwebServer(url, credentials=credentials, verify_tls=verify_tls)
    return server.store(instances)  # type: ignore[arg-type]  # store() validates each item


def dicom_files_under(folder: str | Path) -> list[Path]:
    """The DICOM files (``DICM`` at byte 128) under ``folder``, sorted; links are not followed out of it.

    Raises
    ------
    CadxInputError
        The folder does not exist, or holds no DICOM file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CadxInputError(str(folder), "is not a folder", "give the folder holding the DICOM files to send")
    root = folder.resolve()
    files = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or root not in path.resolve().parents:
            continue
        with path.open("rb") as handle:
            if handle.read(132)[128:] == b"DICM":
                files.append(path)
    if not files:
        raise CadxInputError(str(folder), "holds no DICOM file (none has DICM at byte 128)",
                             "give the folder the DICOM files (e.g. SR/SEG exports) were written to")
    return files


def export_dicomweb_folder(url: str, folder: str | Path, *, credentials: DicomwebCredentials | None = None,
                           verify_tls: bool = True, progress: Progress | None = None) -> list[str]:
    """Send every DICOM file under ``folder`` to the server (STOW-RS), one request per file so that progress is
    per file and a refusal names its file. Returns the SOP Instance UIDs stored."""
    files = dicom_files_under(folder)
    server = DicomwebServer(url, credentials=credentials, verify_tls=verify_tls)
    stored: list[str] = []
    for done, path in enumerate(files):
        if progress is not None:
            progress(done, len(files), f"sending {PurePosixPath(path.relative_to(folder))}")
        try:
            stored.extend(server.store([path.read_bytes()]))
        except CadxInputError as exc:
            raise CadxInputError(f"{path} -> {exc.source}", exc.problem, exc.fix) from None
    if progress is not None:
        progress(len(files), len(files), "sent")
    return stored


def _check_filters(*, study_uid: str | None, series_uid: str | None, date_from: str | None,
                   date_to: str | None) -> None:
    for option, uid in (("--study", study_uid), ("--series", series_uid)):
        if uid and not UID_PATTERN.match(uid):
            raise CadxInputError(option, f"{uid[:70]!r} is not a DICOM UID", "give a UID of digits and dots")
    for option, date in (("--date-from", date_from), ("--date-to", date_to)):
        if date and not _DATE.match(date):
            raise CadxInputError(option, f"{date[:20]!r} is not a date YYYYMMDD", "give a date like 20240301")
    if date_from and date_to and date_from > date_to:
        raise CadxInputError("--date-from", f"{date_from} is after --date-to {date_to}", "swap the dates")


def _check_row(row: ManifestRow, labels_name: str) -> None:
    """A labels row names an instance by its SOP Instance UID (nothing else: no path, no other file)."""
    name = row.image.name
    if row.image.parent != _INSTANCES or not UID_PATTERN.match(name):
        raise ManifestError(f"{labels_name}, row {row.line}, column 'file'",
                            "is not a SOP Instance UID (digits and dots)",
                            "for a DICOMweb import, give each instance's SOP Instance UID in the file column")

