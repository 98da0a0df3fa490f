"""Features for the ROIs in the database: Method A (CNN taps, in the file feature store) and Method B (analytic
features after seeded segmentation, in the ``segmentations`` table). Both are keyed by ROI content hash, so a
rerun computes only ROIs it has not seen, and an ROI whose pixels change can never be confused with its old
features.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cadx.backbones import backbone_label
from cadx.errors import UnknownNameError, WeightsUnavailableError
from cadx.labels import label_code
from cadx.roi import decode_png16
from cadx.workflows.importing import Progress
from cadx.workflows.storage import encode_mask_png, write_once, writing_files
from cadx.workflows.workspace import Workspace
from db.models import Image, Lesion, Roi, Segmentation

if TYPE_CHECKING:
    from cadx.cnn import FeatureStore, LoadedBackbone
    from cadx.gram import ChunkedMatrix
    from cadx.roicache import DecodedRoiCache

__all__ = [
    "RoiRecord",
    "ExtractionReport",
    "AnalyticReport",
    "roi_records",
    "load_roi_pixels",
    "feature_store",
    "resolve_backbone",
    "extract_cnn_features",
    "compute_analytic_features",
    "analytic_matrix",
    "cnn_tap_loader",
    "SegmentationScoreRow",
    "segmentation_scores",
    "segmentation_score_words",
]

_BATCH_COMMIT = 25  # analytic results committed in batches: a killed run keeps what it finished


@dataclass(frozen=True)
class RoiRecord:
    """What the experiments need to know about one ROI."""

    id: int
    sha256: str
    file: str
    lesion_id: int
    patient_id: int
    label: int  # 1 malignant, 0 benign
    included: bool
    is_synthetic: bool
    view: str | None


def roi_records(workspace: Workspace, *, included_only: bool = True) -> list[RoiRecord]:
    """ROIs ordered by id (the order every experiment uses); excluded ROIs left out unless asked."""
    query = (
        select(Roi.id, Roi.sha256, Roi.file, Roi.lesion_id, Lesion.patient_id, Lesion.label, Roi.included,
               Roi.is_synthetic, Image.view)
        .join(Lesion, Roi.lesion_id == Lesion.id)
        .join(Image, Roi.image_id == Image.id)
        .order_by(Roi.id)
    )
    if included_only:
        query = query.where(Roi.included.is_(True))
    with workspace.sessions() as session:
        rows = session.execute(query).all()
    return [RoiRecord(r.id, r.sha256, r.file, r.lesion_id, r.patient_id,
                      label_code(r.label, source=f"ROI {r.id}"), r.included,
                      r.is_synthetic, r.view) for r in rows]


def load_roi_pixels(workspace: Workspace, record: RoiRecord) -> np.ndarray:
    """The stored ROI, uint16 (512, 512)."""
    return decode_png16(workspace.path(record.file).read_bytes())


class _LazyRois(Mapping[str, np.ndarray]):
    """ROI hash -> pixels, decoded only when the extractor asks for them (never all in memory)."""

    def __init__(self, workspace: Workspace, records: list[RoiRecord]) -> None:
        self._workspace = workspace
        self._by_hash = {r.sha256: r for r in records}

    def __getitem__(self, sha: str) -> np.ndarray:
        return load_roi_pixels(self._workspace, self._by_hash[sha])

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_hash)

    def __len__(self) -> int:
        return len(self._by_hash)


def feature_store(workspace: Workspace) -> FeatureStore:
    """The CNN feature store of this workspace."""
    from cadx.cnn import FeatureStore

    return FeatureStore(workspace.data_dir / "features")


def resolve_backbone(name: str | None = None, *, weights: str = "default", weights_path: str | Path | None = None,
                     download: bool = True) -> tuple[LoadedBackbone, str]:
    """Load a backbone for extraction.

    ``name=None`` picks the paper's AlexNet when its ImageNet weights can be had (named file, torch cache or a
    download) and otherwise EfficientNet-Lite0, whose real ImageNet weights install offline with cadx; the
    returned note says which and why, so the app and the CLI can tell the user. ``weights="random"`` without a
    name is the control of that default run: the *same* architecture with random (untrained) weights.

    Returns
    -------
    loaded : cadx.cnn.LoadedBackbone
    note : str
    """
    from cadx.cnn import load_backbone

    if name is not None:
        loaded = load_backbone(name, weights, weights_path=weights_path, download=download)
        if weights == "random":
            return loaded, (f"{backbone_label(name)} with random (untrained) weights, seed 0: a control, "
                            "not transfer learning")
        return loaded, f"{loaded.weights.name} ({loaded.weights.source})"
    try:
        default = load_backbone("alexnet", "default", weights_path=weights_path, download=download)
    except WeightsUnavailableError as exc:
        if weights == "random":
            return load_backbone("efficientnet_lite0", "random"), (
                "EfficientNet-Lite0 with random (untrained) weights, seed 0: the control of the default run, which "
                "uses EfficientNet-Lite0's ImageNet weights because AlexNet's are not available here")
        loaded = load_backbone("efficientnet_lite0", "default")
        return loaded, ("AlexNet's ImageNet weights are not available here, so EfficientNet-Lite0 with its real "
                        f"ImageNet weights is used instead. To use AlexNet as in the paper: {exc}")
    if weights == "random":
        return load_backbone("alexnet", "random"), (
            "AlexNet with random (untrained) weights, seed 0: the control of the default run (AlexNet with ImageNet "
            "weights, as in the paper)")
    if weights != "default":
        default = load_backbone("alexnet", weights, weights_path=weights_path, download=download)
    return default, f"AlexNet ImageNet weights ({default.weights.source}), as in the paper"




@dataclass(frozen=True)
class ExtractionReport:
    backbone: str
    weights_name: str
    weights_sha256: str
    weights_source: str
    n_rois: int
    n_extracted: int
    seconds: float
    precision: str = "fp32"
    n_decoded_into_cache: int = 0
    timings: dict[str, float] | None = None  # seconds per stage (cadx.cnn.extract_features), when asked for
    # bf16/fp16 only: per tap, the sample's features against fp32 (cadx.precision.FeatureAgreement.to_record())
    precision_check: dict[str, Any] | None = None


def decoded_roi_cache(workspace: Workspace) -> DecodedRoiCache:
    """The decoded-ROI cache of this workspace (uint16 memory maps; safe to delete)."""
    from cadx.roicache import DecodedRoiCache

    return DecodedRoiCache(workspace.data_dir / "cache" / "decoded-rois")


def extract_cnn_features(workspace: Workspace, loaded: LoadedBackbone, *, taps: Iterable[str] | None = None,
                         batch_size: int = 16, chunk_rows: int = 64,
                         records: list[RoiRecord] | None = None,
                         progress: Progress | None = None, num_workers: int = 0, precision: str = "fp32",
                         decoded_cache: bool = False, device: str | None = None,
                         timings: bool = False, check_sample: int | None = None,
                         pooling: str = "flatten") -> ExtractionReport:
    """Extract the CNN taps of every ROI (included or not; or of ``records``, e.g. a cohort's) that the store
    lacks; returns what was done.

    Rows are committed to the store every ``chunk_rows`` ROIs, so a killed run resumes from the last chunk.
    ``num_workers`` processes decode and resize ROIs ahead of the network; ``precision`` (``fp32``, ``bf16``,
    ``fp16``) selects autocast and keys the store (precisions never mix); ``decoded_cache`` first decodes the
    ROIs once into the workspace's :func:`decoded_roi_cache` and then reads memory-mapped arrays instead of PNGs;
    ``timings`` records the seconds per stage in the report; ``pooling`` (``cadx.cnn.TAP_POOLINGS``) reduces each
    convolutional map to its channels before it is stored (and keys the store: poolings never mix).

    At ``bf16``/``fp16`` the loss is never silent: the first ``check_sample`` ROIs (default 16; 0 skips it) are
    also run at fp32, in memory, and the report's ``precision_check`` holds each tap's relative error and
    correlation against fp32 (:func:`cadx.precision.sample_check`), whether or not anything was extracted.
    """
    from cadx.cnn import extract_to_store

    sample = (16 if precision != "fp32" else 0) if check_sample is None else check_sample
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        raise ValueError(f"check_sample must be an integer >= 0 (0: no check against fp32); got {check_sample!r}")
    records = roi_records(workspace, included_only=False) if records is None else records
    start = time.perf_counter()
    rois: Mapping[str, np.ndarray] = _LazyRois(workspace, records)
    n_cached = 0
    stages: dict[str, float] | None = {} if timings else None
    # As a writer: a killed extraction's `.tmp-*` chunk folder is then removed at the next opening (cadx.workflows.gc)
    with writing_files(workspace.data_dir):
        if decoded_cache:
            cache = decoded_roi_cache(workspace)
            n_cached = cache.add([r.sha256 for r in records], rois.__getitem__, progress=progress)
            rois = cache
        n = extract_to_store(rois, feature_store(workspace), backbone=loaded, taps=taps, batch_size=batch_size,
                             chunk_rows=chunk_rows, progress=progress, num_workers=num_workers, precision=precision,
                             device=device, timings=stages, pooling=pooling)
    check = None
    if precision != "fp32" and sample > 0 and records:
        from cadx.precision import sample_check

        picked = list(dict.fromkeys(r.sha256 for r in records))[:sample]
        check = {tap: agreement.to_record() for tap, agreement in sample_check(
            [rois[sha] for sha in picked], backbone=loaded, precision=precision,
            taps=None if taps is None else list(taps), batch_size=batch_size, device=device).items()}
    return ExtractionReport(loaded.name, loaded.weights.name, loaded.weights.sha256, loaded.weights.source,
                            len({r.sha256 for r in records}), n, time.perf_counter() - start, precision, n_cached,
                            stages, check)


def cnn_tap_loader(workspace: Workspace, loaded: LoadedBackbone, tap: str, hashes: list[str], *,
                   precision: str = "fp32", pooling: str = "flatten") -> ChunkedMatrix:
    """One tap's (n, features) matrix for ``hashes`` as a lazy :class:`cadx.gram.ChunkedMatrix` over the store's
    files (the classifiers read column tiles; workers open the files from shared storage)."""
    from cadx.cnn import feature_preprocessing

    return feature_store(workspace).open(tap, hashes, backbone=loaded.name, weights_sha256=loaded.weights.sha256,
                                         preprocessing=feature_preprocessing(precision, pooling=pooling))


# ---------------------------------------------------------------------------------------------------- Method B ---
@dataclass(frozen=True)
class AnalyticReport:
    version: str
    n_rois: int
    n_computed: int
    n_failed: int
    seconds: float


def compute_analytic_features(workspace: Workspace, *, records: list[RoiRecord] | None = None,
                              progress: Progress | None = None) -> AnalyticReport:
    """Segment every ROI (or every one of ``records``, e.g. a cohort's) not yet analysed with the current feature
    version and store masks and features."""
    with writing_files(workspace.data_dir):  # mask files are written before their rows: `cadx gc` waits
        return _compute_analytic_features(workspace, records, progress)


def _compute_analytic_features(workspace: Workspace, records: list[RoiRecord] | None,
                               progress: Progress | None) -> AnalyticReport:
    from cadx.analytic import FEATURES_VERSION, analyse_roi

    records = roi_records(workspace, included_only=False) if records is None else records
    unique = list({r.sha256: r for r in records}.values())
    with workspace.sessions() as session:
        done = set(session.scalars(select(Segmentation.roi_sha256).where(Segmentation.version == FEATURES_VERSION)))
    todo = [r for r in unique if r.sha256 not in done]
    start = time.perf_counter()
    n_failed = 0
    pending: list[Segmentation] = []
    for index, record in enumerate(todo):
        if progress is not None:
            progress(index, len(todo), f"segmenting ROI {record.id}")
        began = time.perf_counter()
        pixels = load_roi_pixels(workspace, record)
        segmentation, features = analyse_roi(pixels, pixel_size_mm=0.1)
        mask_file = None
        if segmentation.mask is not None and segmentation.mask.any():
            mask_file = f"segmentations/{record.sha256[:2]}/{record.sha256}-{FEATURES_VERSION}.png"
            write_once(workspace.path(mask_file), functools.partial(encode_mask_png, segmentation.mask))
        n_failed += segmentation.quality == "failed"
        pending.append(Segmentation(
            roi_sha256=record.sha256, version=FEATURES_VERSION, quality=segmentation.quality,
            reason=segmentation.reason or None, mask_file=mask_file,
            features={k: (None if not np.isfinite(v) else float(v)) for k, v in features.items()},
            seconds=time.perf_counter() - began,
        ))
        if len(pending) >= _BATCH_COMMIT or index == len(todo) - 1:
            _store_new_segmentations(workspace, pending, FEATURES_VERSION)
            pending = []
    if progress is not None:
        progress(len(todo), len(todo), "analytic features done")
    return AnalyticReport(FEATURES_VERSION, len(unique), len(todo), n_failed, time.perf_counter() - start)


def _store_new_segmentations(workspace: Workspace, rows: list[Segmentation], version: str) -> None:
    """Insert the rows that no other process (e.g. a `cadx features` beside the app's worker) stored meanwhile.

    Segmentation is deterministic for a features version, so a row stored by someone else is the same result.
    """
    for attempt in range(3):
        try:
            with workspace.sessions.begin() as session:
                stored = set(session.scalars(select(Segmentation.roi_sha256).where(
                    Segmentation.version == version, Segmentation.roi_sha256.in_([r.roi_sha256 for r in rows]))))
                session.add_all([r for r in rows if r.roi_sha256 not in stored])
            return
        except IntegrityError:  # stored by another process between our check and our insert: check again
            if attempt == 2:  # (the rolled-back rows are transient again, ready for the next try)
                raise


def analytic_matrix(workspace: Workspace, hashes: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Method B features of ``hashes`` as an (n, n_features) matrix, NaN where the segmentation failed.

    Returns
    -------
    X : ndarray of shape (n, n_features)
    names : list of str
        Feature names (columns of X).
    quality : list of str
        Segmentation quality per row.
    """
    from cadx.analytic import FEATURE_NAMES, FEATURES_VERSION

    with workspace.sessions() as session:
        rows = {s.roi_sha256: s for s in session.scalars(
            select(Segmentation).where(Segmentation.version == FEATURES_VERSION,
                                       Segmentation.roi_sha256.in_(set(hashes))))}
    missing = [h for h in hashes if h not in rows]
    if missing:
        raise UnknownNameError("analytic features", f"{len(missing)} ROI(s) have no analytic features yet",
                               "run `cadx features` first")
    X = np.array([[np.nan if rows[h].features.get(name) is None else rows[h].features[name]
                   for name in FEATURE_NAMES] for h in hashes], dtype=np.float64)
    return X, list(FEATURE_NAMES), [rows[h].quality for h in hashes]


# ------------------------------------------------------------------------------- Method B against the expert ---
@dataclass(frozen=True)
class SegmentationScoreRow:
    """Method B's segmentation of one ROI scored against the ROI's reference outline (:mod:`cadx.segscore`)."""

    roi_id: int
    lesion_key: str
    reference: str  # "expert outline" or "synthetic phantom truth"
    quality: str  # of the segmentation
    dice: float
    boundary_mm: float | None
    segmented_mm2: float
    reference_mm2: float

    def to_dict(self) -> dict[str, Any]:
        return {"roi_id": self.roi_id, "lesion": self.lesion_key, "reference": self.reference,
                "quality": self.quality, "dice": self.dice, "boundary_mm": self.boundary_mm,
                "segmented_mm2": self.segmented_mm2, "reference_mm2": self.reference_mm2}


def segmentation_score_words(workspace: Workspace, roi_id: int) -> str | None:
    """Method B's score against one ROI's reference outline in words, for the pages beside the outline (e.g.
    ``"Method B against the expert outline: Dice 0.63, mean boundary distance 5.28 mm"``); None when the ROI has no
    reference outline or is not segmented with the current version yet."""
    scores = segmentation_scores(workspace, [roi_id])
    if not scores:
        return None
    score = scores[0]
    boundary = ("no boundary distance (no segmentation)" if score.boundary_mm is None
                else f"mean boundary distance {score.boundary_mm:.2f} mm")
    return f"Method B against the {score.reference}: Dice {score.dice:.2f}, {boundary}"


def segmentation_scores(workspace: Workspace, roi_ids: Iterable[int] | None = None, *,
                        version: str | None = None) -> list[SegmentationScoreRow]:
    """Dice and mean boundary distance of Method B's segmentation against the reference outline, for every ROI
    (of ``roi_ids``, default all) that has one and has been segmented with ``version`` (default: the current
    ``cadx.analytic.FEATURES_VERSION``). ROIs without a reference outline or not segmented yet are left out.

    A failed segmentation (no mask) scores Dice 0 and no boundary distance: it still counts, as the expert saw a
    lesion there.
    """
    from cadx.analytic import FEATURES_VERSION
    from cadx.outline import decode_mask_png
    from cadx.roi import ROI_PIXEL_MM
    from cadx.segscore import score_segmentation

    version = version or FEATURES_VERSION
    query = (select(Roi.id, Roi.truth_mask_file, Roi.is_synthetic, Lesion.key, Segmentation.quality,
                    Segmentation.mask_file)
             .join(Lesion, Roi.lesion_id == Lesion.id)
             .join(Segmentation, (Segmentation.roi_sha256 == Roi.sha256) & (Segmentation.version == version))
             .where(Roi.truth_mask_file.is_not(None)).order_by(Roi.id))
    wanted = None if roi_ids is None else {int(i) for i in roi_ids}
    with workspace.sessions() as session:
        rows = [r for r in session.execute(query).all() if wanted is None or r[0] in wanted]
    out = []
    for roi_id, truth_file, synthetic, lesion_key, quality, mask_file in rows:
        reference = decode_mask_png(workspace.path(str(truth_file)).read_bytes())
        assert reference is not None  # no shape asked for: always a mask
        if mask_file:
            mask = decode_mask_png(workspace.path(mask_file).read_bytes(), shape=reference.shape)
            if mask is None:
                raise ValueError(f"ROI {roi_id}: its segmentation and its reference outline differ in size")
        else:
            mask = np.zeros_like(reference)
        score = score_segmentation(mask, reference, pixel_size_mm=ROI_PIXEL_MM)
        out.append(SegmentationScoreRow(roi_id, lesion_key,
                                        "synthetic phantom truth" if synthetic else "expert outline", quality,
                                        score.dice, score.boundary_mm, score.segmented_mm2, score.reference_mm2))
    return out
