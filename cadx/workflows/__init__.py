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
from cadx.workflows.opening import open_workspace
from cadx.workflows.queries import dataset_stats
from cadx.workflows.review import exclude_roi, include_roi
from cadx.workflows.workspace import Workspace

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

# Reading experiments back (app pages, CLI): sweep, Table 1, ROC curves, predictions; rename and delete.
from cadx.workflows.results import (  # noqa: E402
    METHOD_NAMES,
    backbone_choices,
    backbone_status,
    comparison_table,
    delete_experiment,
    experiment_results,
    lesion_predictions,
    list_experiments,
    method_table,
    rename_experiment,
    repeats_table,
    roc_curve_table,
    roi_overlay,
    roi_predictions,
    sweep_table,
)

__all__ += [
    "METHOD_NAMES",
    "backbone_choices",
    "backbone_status",
    "comparison_table",
    "delete_experiment",
    "experiment_results",
    "lesion_predictions",
    "list_experiments",
    "method_table",
    "rename_experiment",
    "repeats_table",
    "roc_curve_table",
    "roi_overlay",
    "roi_predictions",
    "sweep_table",
]

# Curation pages (Upload case, Review ROIs): bulk review decisions, read-only browsing, upload preview.
from cadx.workflows.browse import (  # noqa: E402
    DisplayImage,
    HistoryEntry,
    LesionChoice,
    LesionView,
    Outline,
    RoiFilters,
    RoiPage,
    RoiRow,
    UnpackedUpload,
    UploadedImage,
    browse_rois,
    display_image,
    display_to_image_rc,
    filter_options,
    get_roi,
    lesion_view,
    patient_lesions,
    preview_roi,
    read_upload,
    review_counts,
    roi_display,
    roi_history,
    roi_outline,
    roi_outline_image,
    roi_thumbnail,
    unpack_upload,
    upload_patients,
)
from cadx.workflows.review import exclude_rois, include_rois  # noqa: E402

__all__ += [
    "DisplayImage",
    "HistoryEntry",
    "LesionChoice",
    "LesionView",
    "Outline",
    "RoiFilters",
    "RoiPage",
    "RoiRow",
    "UnpackedUpload",
    "UploadedImage",
    "browse_rois",
    "display_image",
    "display_to_image_rc",
    "exclude_rois",
    "filter_options",
    "get_roi",
    "include_rois",
    "lesion_view",
    "patient_lesions",
    "preview_roi",
    "read_upload",
    "review_counts",
    "roi_display",
    "roi_history",
    "roi_outline",
    "roi_outline_image",
    "roi_thumbnail",
    "unpack_upload",
    "upload_patients",
]
