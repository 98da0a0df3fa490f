"""The one layer that joins cadx's computation with the database; the CLI and the app both call it."""

from cadx.workflows.datasets import (
    import_cbis_ddsm,
    import_demo,
    import_dicom_folder,
    import_manifest,
    import_mias,
    import_upload,
)
from cadx.workflows.importing import Finding, ImportItem, ImportReport, run_import
from cadx.workflows.queries import dataset_stats
from cadx.workflows.review import exclude_roi, include_roi
from cadx.workflows.workspace import Workspace, open_workspace

__all__ = [
    "Finding",
    "ImportItem",
    "ImportReport",
    "Workspace",
    "dataset_stats",
    "exclude_roi",
    "import_cbis_ddsm",
    "import_demo",
    "import_dicom_folder",
    "import_manifest",
    "import_mias",
    "import_upload",
    "include_roi",
    "open_workspace",
    "run_import",
]
