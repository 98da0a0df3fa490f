"""Experiments: the paper's layer sweep (Fig. 3), Methods A and B and their ensemble (Fig. 4, Table 1), recorded as
frozen, reproducible records with per-ROI out-of-fold predictions.

An experiment's config holds everything that determines its numbers: backbone, weights checksum, preprocessing
and feature versions, taps, grid, folds, seeds, the cohort (its definition) and the exact ROI set it resolved to
(hashes, their SHA-256, and the ids left out by review) and the code version. Running the same config on the same
database gives the same numbers. The record's schema (config and results) is ``cadx.records``.

``run_experiment`` is a pipeline of five stages, each a function of the frozen outputs of the ones before it:
:func:`select_cohort` (:class:`CohortStage`) -> :func:`prepare_features` (:class:`FeatureStage`, with the config and
its SHA-256) -> :func:`cross_validate` (:class:`CvStage`) -> :func:`experiment_statistics`
(``cadx.records.ExperimentResults``) -> :func:`store_experiment` (one transaction).

With the job runner's checkpoints, every stage's output survives a killed worker: the cohort is read again (it
names the data, so it is never restored), features stay in their stores, each finished (tap, seed, fold) of the
cross-validation is a checkpoint unit, and the statistics are a checkpoint of their own (JSON of the typed
record, read back validated), all under :attr:`FeatureStage.scope`; storing is one transaction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

import cadx
from cadx import stats
from cadx.cohorts import MIN_LESIONS_PER_CLASS_PER_FOLD, CohortDefinition
from cadx.errors import CadxInputError
from cadx.methods import METHODS, comparison_families, fusions
from cadx.planning import TimeRange, scaled_estimate
from cadx.records import (
    Binormal,
    Calibration,
    CohortRecord,
    Comparison,
    ExperimentConfig,
    ExperimentRecord,
    ExperimentResults,
    MethodRecord,
    RepeatedMethod,
    Repeats,
    RocPoints,
    SvmEngineRecord,
    SweepLayer,
    WeightsRecord,
    config_sha256,
    experiment_name,
    from_json,
    json_safe,
    read_config,
    read_results,
    to_json,
)
from cadx.workflows.accounts import record_audit
from cadx.workflows.cohorts import ResolvedCohort, resolve_cohort
from cadx.workflows.features import (
    ExtractionReport,
    RoiRecord,
    analytic_matrix,
    cnn_tap_loader,
    compute_analytic_features,
    extract_cnn_features,
)
from cadx.workflows.foldmodels import fold_model_rows
from cadx.workflows.importing import Progress
from cadx.workflows.workspace import Workspace
from db.models import Experiment, Prediction, Roi

if TYPE_CHECKING:  # cadx.svm loads scikit-learn: imported where the work is done, so pages start faster
    from cadx.svm import CvResult, SweepResult

__all__ = ["DEFAULT_FOLDS", "DEFAULT_REPEATS", "MAX_REPEATS", "SWEEP_PRESETS", "CohortStage", "CvStage",
           "ExperimentSettings",
           "FeatureStage", "PROGRESS_SCALE", "StageMeter", "SweepEstimate", "calibrate", "calibration_record",
           "code_version", "cohort_sha256", "compare_methods", "estimate_experiment", "measured_ratios",
           "cross_validate", "experiment_statistics", "experiment_summary", "json_safe",
           "load_experiment", "method_statistics", "prepare_features", "read_statistics", "record_of",
           "repeated_cv_summary", "run_experiment", "select_cohort", "statistics_payload", "store_experiment"]

_CURVE_POINTS = 101
_CV_GROUPS = "patient (a patient's lesions stay together; each lesion's ROIs always do)"

DEFAULT_REPEATS = 5
"""Seeds of the repeated cross-validation when the user names none (CLI, pages and job runner read it here): one
fold assignment is luck (EfficientNet ``stage6`` on MIAS: 0.629 on seed 0, 0.537 over 5 seeds)."""

MAX_REPEATS = 20
"""The most seeds one experiment may repeat its cross-validation with."""

SWEEP_PRESETS: dict[str, int] = {"quick": 1, "full": DEFAULT_REPEATS}
"""Seeds of each preset: ``quick`` (one seed, for a live demo: one split's luck) and ``full`` (the repeated
cross-validation whose numbers are the ones to quote); the sweep page and ``cadx sweep --quick`` read them here."""

DEFAULT_FOLDS: int = CohortDefinition.n_folds
"""The folds a form offers first: the presets' (``ExperimentSettings.n_folds=None`` takes the cohort's own)."""


@dataclass(frozen=True)
class ExperimentSettings:
    """What the user chooses; the backbone and its weights come already loaded (see ``resolve_backbone``).

    ``taps=None`` sweeps every default tap of the backbone; ``taps=()`` runs no sweep, only the ensemble tap.
    ``repeats > 1`` (default :data:`DEFAULT_REPEATS`) repeats the whole cross-validation with seeds ``seed, seed+1,
    ...``: the sweep averages over all of them and gives each tap's SD between seeds, and the results gain a
    ``repeats`` table (each classifier's AUC per seed and its spread between seeds);
    Table 1, the ROC curves, the tests and the Predictions page stay those of the first seed, so one experiment
    always has one set of out-of-fold predictions per ROI to show (every seed's are stored, with their fold ids).

    ``cohort`` names the ROIs to use (a preset such as ``"paper"`` or a saved cohort; ``None``: ``"all"``);
    ``n_folds=None`` takes the cohort's folds (5 for the presets). Before any work the cohort must have both
    classes and at least ``min_lesions_per_class_per_fold`` lesions of each class per fold (the guard rail; lower it
    only to exercise the pipeline on a tiny set: the record keeps the value).
    """

    taps: tuple[str, ...] | None = None
    ensemble_tap: str | None = None  # default: cadx.backbones (fc6 for AlexNet, as in the paper)
    analytic: bool = True
    n_folds: int | None = None
    n_inner: int = 5
    seed: int = 0
    repeats: int = DEFAULT_REPEATS
    grid: dict[str, list[Any]] | None = None
    n_jobs: int = 1
    cohort: str | None = None
    min_lesions_per_class_per_fold: int | None = None  # None: cadx.cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD (5)
    extra: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # CNN forward arithmetic (cadx.cnn.PRECISIONS); keys the features used
    tap_pooling: str = "flatten"  # conv map -> vector (cadx.cnn.TAP_POOLINGS); keys the features used
    svm_engine: str = "exact"  # cadx.svm.SVM_ENGINES: exact, approx or auto (cadx.svm.resolve_svm_engine)
    sketch_components: int | None = None  # the approximate engine's sketch size (None: cadx.sketch default)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ExperimentSettings:
        """The settings of a job's ``params`` (JSON from the sweep page or ``submit_job``); missing keys take the
        defaults above, the one place they are written. Keys that are not settings (``backbone``, ``weights``,
        ``name``...) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in params.items() if k in names}
        if values.get("taps") is not None:
            values["taps"] = tuple(values["taps"])
        return cls(**values)

    def to_params(self) -> dict[str, Any]:
        """The settings as job ``params`` (JSON; :meth:`from_params` reads them back)."""
        params = asdict(self)
        if params["taps"] is not None:
            params["taps"] = list(params["taps"])
        return params


def code_version() -> str:
    """cadx's version and, in a git checkout, the commit (``-dirty`` when the tree has changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return f"{cadx.__version__}+{commit}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return cadx.__version__


# Cost model of the progress bar, in seconds of this project's 2-core reference CPU (only ratios matter: the job
# runner measures the real rate for the ETA). A fold costs about n_train^2 x (tap width + _SVM_WIDTH_EQUIVALENT)
# multiply-adds (the Gram matrices, then the grid search's SVM fits); the full AlexNet sweep at paper scale
# (607 ROIs, 55 folds) took 148 s, i.e. _SECONDS_PER_GRAM_UNIT.
_SECONDS_PER_GRAM_UNIT = 1.6e-10
_SVM_WIDTH_EQUIVALENT = 20_000
_SECONDS_PER_EXTRACTED_ROI = 0.011
_SECONDS_PER_SEGMENTED_ROI = 0.3
_SECONDS_PER_FOLD = 0.2  # a fold's fixed cost (grid search bookkeeping, Platt fit), whatever its size
_SECONDS_STATISTICS = 2.0
PROGRESS_SCALE = 10_000  # progress is reported as (done, PROGRESS_SCALE): parts per ten thousand of the work


def _fold_cost(n_train: float, width: int) -> float:
    return _SECONDS_PER_FOLD + float(n_train) ** 2 * (width + _SVM_WIDTH_EQUIVALENT) * _SECONDS_PER_GRAM_UNIT


def _silent(done: int, total: int | None, message: str) -> None:
    return None


# ------------------------------------------------------------------------------------------------------ stages ---
# run_experiment = select_cohort -> prepare_features -> cross_validate -> experiment_statistics -> store_experiment.
# Each stage takes the frozen outputs of the ones before it, so a caller (a test, the job runner) may run one alone.


@dataclass(frozen=True)
class CohortStage:
    """Stage 1: the ROIs of the experiment, their labels and groups, the folds and the taps.

    ``y``, ``lesions``, ``patients`` are in ROI-id order (the order of ``records``); ``sweep_taps`` are the taps to
    cross-validate in network order (the ensemble tap included).
    """

    cohort: ResolvedCohort
    records: tuple[RoiRecord, ...]
    y: np.ndarray
    lesions: np.ndarray
    patients: np.ndarray
    n_folds: int
    backbone: str
    sweep_taps: tuple[str, ...]
    ensemble_tap: str

    @property
    def hashes(self) -> list[str]:
        """The ROIs' SHA-256 (the keys of their features)."""
        return [r.sha256 for r in self.records]

    @property
    def n_train(self) -> float:
        """ROIs in a training fold, on average (the progress bar's cost model)."""
        n = len(self.records)
        return n * (self.n_folds - 1) / self.n_folds


@dataclass(frozen=True)
class FeatureStage:
    """Stage 2: the features are in the store; the config (and its SHA-256) that names the experiment's numbers.

    ``cohort_sha256``: the SHA-256 of the cohort's ROIs as the numbers use them (:func:`cohort_sha256`: id,
    pixel hash, label, lesion, patient); ``scope``: the SHA-256 of ``config_sha256``, ``cohort_sha256`` and the
    code version, under which the job runner keeps finished folds and stage outputs (a changed ROI set, label or
    grouping is another scope, never restored from).
    """

    extraction: ExtractionReport
    analytic_version: str | None
    config: ExperimentConfig
    config_sha256: str
    code_version: str
    cohort_sha256: str

    @property
    def scope(self) -> str:
        return hashlib.sha256(f"{self.config_sha256} {self.cohort_sha256} {self.code_version}".encode()).hexdigest()


def cohort_sha256(records: Sequence[RoiRecord]) -> str:
    """The SHA-256 of what the numbers use of each ROI, in order: id, pixel SHA-256, label, lesion and patient.

    The config holds the ROI ids and hashes and the cohort's counts, but not each ROI's label or grouping: two
    lesions whose labels were swapped would keep its SHA-256. This digest is part of the checkpoints' scope."""
    lines = "\n".join(f"{r.id} {r.sha256} {int(r.label)} {r.lesion_id} {r.patient_id}" for r in records)
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass(frozen=True)
class CvStage:
    """Stage 3: out-of-fold results. ``sweep``: every tap (``cadx.svm.SweepResult``); ``runs_a``/``runs_b``: SVM1
    on the ensemble tap and SVM2, one ``CvResult`` per seed (``runs_b`` empty without analytic features);
    ``runs_fused``: each fusion's scores per seed; ``segmentation_quality``: Method B's segmentations' qualities."""

    sweep: SweepResult
    runs_a: tuple[CvResult, ...]
    runs_b: tuple[CvResult, ...]
    runs_fused: Mapping[str, tuple[np.ndarray, ...]]
    segmentation_quality: tuple[str, ...]


class StageMeter:
    """Progress by work done: each stage's share of the total is its estimated cost (ROIs to extract or segment,
    folds x taps weighted by n_train^2 x width); never moves backwards. ``report(done, PROGRESS_SCALE, message)``."""

    def __init__(self, report: Progress, parts: dict[str, float]) -> None:
        self._report = report
        self.total = dict(parts)
        self.done = dict.fromkeys(parts, 0.0)
        self._last = 0
        # When an estimate is revised (e.g. the sweep's, once extraction has told the real tap widths), the bar keeps
        # what it shows and spreads what is left over the work that is left: it never moves back, and it never stalls
        # until the work done catches up with a larger estimate (the old bar sat still through a whole wide tap).
        self._anchor_shown = 0.0
        self._anchor_done = 0.0

    @classmethod
    def for_cohort(cls, report: Progress | None, cohort: CohortStage, settings: ExperimentSettings) -> StageMeter:
        """The cost model of an experiment on ``cohort`` (``report``: None reports nothing)."""
        n = len(cohort.records)
        n_units = len(cohort.sweep_taps) * settings.repeats * cohort.n_folds
        return cls(report or _silent, {
            "extract": n * _SECONDS_PER_EXTRACTED_ROI,
            "analytic": n * _SECONDS_PER_SEGMENTED_ROI if settings.analytic else 0.0,
            "sweep": n_units * _fold_cost(cohort.n_train, 4096),  # refined once the tap widths are known
            "B": settings.repeats * cohort.n_folds * _fold_cost(cohort.n_train, 21) if settings.analytic else 0.0,
            "statistics": _SECONDS_STATISTICS,
        })

    def _fraction(self) -> float:
        done = sum(self.done.values())
        left = sum(self.total.values()) - self._anchor_done
        if left <= 0:
            return 1.0
        return self._anchor_shown + (1.0 - self._anchor_shown) * max(done - self._anchor_done, 0.0) / left

    def _reanchor(self) -> None:
        """After a revised estimate: from what the bar shows (or the true share done, when larger), on."""
        whole, done = sum(self.total.values()), sum(self.done.values())
        self._anchor_shown = min(max(self._last / PROGRESS_SCALE, done / whole if whole > 0 else 1.0), 1.0)
        self._anchor_done = done

    def set_total(self, part: str, cost: float) -> None:
        self.total[part] = max(float(cost), 0.0)
        self.done[part] = min(self.done[part], self.total[part])
        self._reanchor()

    def advance(self, part: str, done_cost: float, message: str) -> None:
        self.done[part] = min(max(float(done_cost), 0.0), self.total[part])
        self.emit(message)

    def finish(self, part: str, message: str) -> None:
        self.total[part] = self.done[part] if self.done[part] > 0 else 0.0
        self._reanchor()
        self.emit(message)

    def emit(self, message: str) -> None:
        self._last = max(self._last, min(int(self._fraction() * PROGRESS_SCALE), PROGRESS_SCALE))
        self._report(self._last, PROGRESS_SCALE, message)


def _check_scale_options(settings: ExperimentSettings) -> None:
    """The pooling, engine and sketch size, refused in the words of the CLI option before any work."""
    from cadx.cnn import TAP_POOLINGS
    from cadx.svm import SVM_ENGINES

    if settings.tap_pooling not in TAP_POOLINGS:
        raise CadxInputError("tap_pooling (--tap-pooling)", f"got {settings.tap_pooling!r}",
                             f"use one of {', '.join(TAP_POOLINGS)}")
    if settings.svm_engine not in SVM_ENGINES:
        raise CadxInputError("svm_engine (--svm-engine)", f"got {settings.svm_engine!r}",
                             f"use one of {', '.join(SVM_ENGINES)}")
    k = settings.sketch_components
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 16 <= k <= 65536):
        raise CadxInputError("sketch_components (--sketch-components)", f"got {k!r}",
                             "give a whole number from 16 to 65536 (default: cadx.sketch.DEFAULT_COMPONENTS)")


def select_cohort(workspace: Workspace, loaded: Any, settings: ExperimentSettings) -> CohortStage:
    """Stage 1: resolve the cohort, check its size for the folds (the guard rails) and the taps."""
    _check_repeats(settings.repeats)
    _check_scale_options(settings)
    cohort = resolve_cohort(workspace, settings.cohort)
    n_folds = settings.n_folds or cohort.definition.n_folds
    cohort.check(n_folds=n_folds, minimum_per_fold=settings.min_lesions_per_class_per_fold)
    records = cohort.records
    _check_dataset(records, n_folds)
    backbone = str(loaded.name)
    taps = tuple(loaded.backbone.default_taps) if settings.taps is None else tuple(settings.taps)
    ensemble_tap = settings.ensemble_tap or loaded.backbone.ensemble_tap
    for tap in (*taps, ensemble_tap):
        if tap not in loaded.backbone.taps:
            raise CadxInputError("taps", f"{backbone} has no tap {tap!r}", f"use one of {list(loaded.backbone.taps)}")
    wanted = {*taps, ensemble_tap}
    sweep_taps = tuple(t for t in loaded.backbone.taps if t in wanted)  # in network order, as in Fig. 3
    return CohortStage(cohort=cohort, records=tuple(records), y=np.array([r.label for r in records]),
                       lesions=np.array([r.lesion_id for r in records]),
                       patients=np.array([r.patient_id for r in records]), n_folds=int(n_folds), backbone=backbone,
                       sweep_taps=sweep_taps, ensemble_tap=ensemble_tap)


def _svm_engine_record(settings: ExperimentSettings, cohort: CohortStage) -> SvmEngineRecord | None:
    """Which SVM engine runs and why; None for the exact engine asked for (the default: records made before the
    approximate engine existed keep their SHA-256)."""
    from cadx.svm import _components, resolve_svm_engine

    if settings.svm_engine == "exact" and settings.sketch_components is None:
        return None
    engine, reason = resolve_svm_engine(settings.svm_engine, math.ceil(cohort.n_train))
    return SvmEngineRecord(requested=settings.svm_engine, engine=engine, reason=reason,
                           components=_components(engine, settings.sketch_components))


def _svm_options(config: ExperimentConfig) -> dict[str, Any]:
    """The engine arguments of cadx.svm for a config (none for the exact engine: its calls stay as they were)."""
    record = config.svm_engine
    if record is None or record.engine == "gram":
        return {}
    return {"engine": record.engine, "components": record.components}


def prepare_features(workspace: Workspace, loaded: Any, settings: ExperimentSettings, cohort: CohortStage, *,
                     meter: StageMeter | None = None) -> FeatureStage:
    """Stage 2: extract the CNN taps and segment the ROIs the stores lack; the experiment's config."""
    from cadx.cnn import feature_preprocessing

    meter = meter or StageMeter.for_cohort(None, cohort, settings)
    records = list(cohort.records)

    def extracting(done: int, total: int | None, message: str) -> None:
        total = total or 0
        meter.set_total("extract", total * _SECONDS_PER_EXTRACTED_ROI)
        meter.advance("extract", done * _SECONDS_PER_EXTRACTED_ROI, f"extracting CNN features: {done}/{total} ROIs")

    meter.emit("extracting CNN features (only ROIs not in the store)")
    extraction = extract_cnn_features(workspace, loaded, taps=cohort.sweep_taps, precision=settings.precision,
                                      records=records, progress=extracting, pooling=settings.tap_pooling)
    meter.finish("extract", "CNN features ready")
    analytic_version = None
    if settings.analytic:
        def segmenting(done: int, total: int | None, message: str) -> None:
            total = total or 0
            meter.set_total("analytic", total * _SECONDS_PER_SEGMENTED_ROI)
            meter.advance("analytic", done * _SECONDS_PER_SEGMENTED_ROI, f"analytic features: {done}/{total} ROIs")

        meter.emit("analytic features (only ROIs not analysed yet)")
        analytic_version = compute_analytic_features(workspace, records=records, progress=segmenting).version
        meter.finish("analytic", "analytic features ready")

    with workspace.sessions() as session:
        excluded = sorted(session.scalars(select(Roi.id).where(Roi.included.is_(False))))
    resolved = cohort.cohort
    config = ExperimentConfig(
        backbone=cohort.backbone,
        weights=WeightsRecord(name=loaded.weights.name, sha256=loaded.weights.sha256, source=loaded.weights.source),
        preprocessing=feature_preprocessing(settings.precision, pooling=settings.tap_pooling),  # fp32, flatten:
        # PREPROCESSING_VERSION itself
        taps=list(cohort.sweep_taps),
        ensemble_tap=cohort.ensemble_tap,
        analytic_version=analytic_version,
        n_folds=cohort.n_folds,
        n_inner=settings.n_inner,
        seed=settings.seed,
        grid=settings.grid or "cadx.svm.default_grid",
        cv_groups=_CV_GROUPS,
        cohort=from_json(CohortRecord, json_safe(resolved.to_record()), where="config.cohort"),
        roi_set_sha256=resolved.roi_set_sha256,
        roi_ids=[r.id for r in records],
        roi_sha256=cohort.hashes,
        excluded_roi_ids=list(excluded),
        # a single cross-validation keeps the config (and its SHA-256) of the records made before repeats existed
        repeats=settings.repeats,
        min_lesions_per_class_per_fold=(settings.min_lesions_per_class_per_fold
                                        if settings.min_lesions_per_class_per_fold
                                        not in (None, MIN_LESIONS_PER_CLASS_PER_FOLD) else None),
        tap_pooling=settings.tap_pooling,
        svm_engine=_svm_engine_record(settings, cohort),
        extra=dict(settings.extra),
    )
    return FeatureStage(extraction=extraction, analytic_version=analytic_version, config=config,
                        config_sha256=config_sha256(config), code_version=code_version(),
                        cohort_sha256=cohort_sha256(records))


def cross_validate(workspace: Workspace, loaded: Any, settings: ExperimentSettings, cohort: CohortStage,
                   features: FeatureStage, *, meter: StageMeter | None = None, checkpoints: Any = None) -> CvStage:
    """Stage 3: the layer sweep (SVM1 on every tap, ``settings.repeats`` seeds), SVM2 on the analytic features and
    the fusions, all on the same folds. ``checkpoints`` (the job runner's ``JobCheckpoints``) keeps each finished
    (tap, seed, fold) under ``features.scope``."""
    from cadx.svm import cross_validate_by_lesion, sweep_layers

    meter = meter or StageMeter.for_cohort(None, cohort, settings)
    hashes = cohort.hashes
    n_folds, n_train = cohort.n_folds, cohort.n_train
    common: dict[str, Any] = dict(patients=cohort.patients, n_folds=n_folds, n_inner=settings.n_inner,
                                  grid=settings.grid, seed=settings.seed, repeats=settings.repeats,
                                  n_jobs=settings.n_jobs, **_svm_options(features.config))
    sources = {tap: cnn_tap_loader(workspace, loaded, tap, hashes, precision=settings.precision,
                                   pooling=settings.tap_pooling)
               for tap in cohort.sweep_taps}
    unit_cost = {tap: _fold_cost(n_train, int(sources[tap].shape[1])) for tap in cohort.sweep_taps}
    meter.set_total("sweep", sum(unit_cost.values()) * settings.repeats * n_folds)
    sweep_store = None if checkpoints is None else checkpoints.scoped(features.scope, "sweep")
    restored = 0.0 if sweep_store is None else sum(unit_cost.get(u.split("/")[0], 0.0) for u in sweep_store.units())
    swept = {"cost": 0.0}

    def sweeping(done: int, total: int | None, message: str) -> None:
        if " fold " in message:
            swept["cost"] += unit_cost.get(message.split(" fold ")[0], 0.0)
        else:  # the units restored from checkpoints, reported at once
            swept["cost"] += restored
        meter.advance("sweep", swept["cost"], f"sweep: {done}/{total} folds x taps fitted ({message})")

    sweep = sweep_layers(sources, cohort.y, cohort.lesions, progress=sweeping, checkpoint=sweep_store,
                         keep_models=True, **common)
    meter.finish("sweep", "sweep done")
    runs_a = tuple(sweep.layers[cohort.ensemble_tap].results)  # one CvResult per seed; the first is the primary
    runs_b: tuple[CvResult, ...] = ()
    runs_fused: dict[str, tuple[np.ndarray, ...]] = {}  # fusion key -> scores per seed
    quality: list[str] = []
    if settings.analytic:
        meter.emit("Method B: analytic-feature SVM")
        X_b, _names, quality = analytic_matrix(workspace, hashes)
        b_cost = _fold_cost(n_train, X_b.shape[1])
        result_b = cross_validate_by_lesion(
            X_b, cohort.y, cohort.lesions,
            checkpoint=None if checkpoints is None else checkpoints.scoped(features.scope, "B"), keep_models=True,
            progress=lambda d, t, m: meter.advance("B", d * b_cost, f"Method B: {d}/{t} folds fitted"), **common)
        meter.finish("B", "Method B done")
        runs_b = result_b.runs
        for method in fusions():  # same seed, same folds
            combine = method.combine
            if combine is not None:
                runs_fused[method.key] = tuple(combine(a, b) for a, b in zip(runs_a, runs_b, strict=True))
    return CvStage(sweep=sweep, runs_a=runs_a, runs_b=runs_b, runs_fused=runs_fused,
                   segmentation_quality=tuple(quality))


def experiment_statistics(settings: ExperimentSettings, cohort: CohortStage, features: FeatureStage, cv: CvStage, *,
                          weights_note: str = "") -> ExperimentResults:
    """Stage 4: the record's results (no database, no files): the sweep table (Fig. 3), Table 1 and the ROC curves
    of every method (Fig. 4), the tests of ``cadx.methods.comparison_families`` and, with repeats, each method's
    AUC per seed."""
    from cadx.svm import fold_auc

    y, lesions = cohort.y, cohort.lesions
    repeated = settings.repeats > 1
    sweep = {
        tap: SweepLayer(
            n_features=int(layer.n_features), n_features_nonconstant=int(layer.n_features_nonconstant),
            auc_mean=_number(layer.auc_mean), auc_sd=_number(layer.auc_sd), auc_se=_number(layer.auc_se),
            fold_aucs=_numbers(layer.results[0].fold_auc),
            fold_aucs_by_seed=[_numbers(r.fold_auc) for r in layer.results] if repeated else None,
            auc_mean_by_seed=[_number(r.auc_mean) for r in layer.results] if repeated else None,
            auc_sd_between_seeds=(_number(np.std([r.auc_mean for r in layer.results], ddof=1)) if repeated
                                  else None),
            seconds=float(layer.seconds),
        )
        for tap, layer in cv.sweep.layers.items()
    }
    method_a = cv.runs_a[0]
    scores = {"A": method_a.proba}
    methods: dict[str, MethodRecord] = {
        "A": dataclasses.replace(
            method_statistics(f"SVM1 (CNN {cohort.backbone} {cohort.ensemble_tap})", method_a.proba, method_a, y,
                              lesions, settings.seed, cv.sweep.layers[cohort.ensemble_tap].seconds),
            calibration=calibration_record(list(cv.runs_a)))}
    comparisons: list[Comparison] = []
    if cv.runs_b:
        b = cv.runs_b[0]
        scores["B"] = b.proba
        quality = list(cv.segmentation_quality)
        methods["B"] = dataclasses.replace(
            method_statistics(METHODS["B"].title, b.proba, b, y, lesions, settings.seed, b.seconds),
            segmentation_quality={q: quality.count(q) for q in sorted(set(quality))},
            calibration=calibration_record(list(cv.runs_b)))
        for key, runs in cv.runs_fused.items():
            scores[key] = runs[0]
            methods[key] = method_statistics(METHODS[key].title, runs[0], None, y, lesions, settings.seed,
                                             method_a.seconds + b.seconds,
                                             fold_aucs=fold_auc(runs[0], y, method_a.fold))
        by_seed: dict[str, list[list[float | None]]] = {
            "A": [_numbers(r.fold_auc) for r in cv.runs_a], "B": [_numbers(r.fold_auc) for r in cv.runs_b],
            **{key: [_numbers(fold_auc(s, y, a.fold)) for a, s in zip(cv.runs_a, runs, strict=True)]
               for key, runs in cv.runs_fused.items()}}
        comparisons = compare_methods(methods, scores, y, method_a.fold, cohort.n_folds, lesions=lesions,
                                      fold_aucs_by_seed=by_seed, folds_by_seed=[r.fold for r in cv.runs_a])
    repeats = None
    if repeated:
        repeats = repeated_cv_summary(methods, list(cv.runs_a), list(cv.runs_b),
                                      {k: list(v) for k, v in cv.runs_fused.items()}, y,
                                      seeds=[r.seed for r in cv.runs_a])
    return ExperimentResults(
        n_rois=len(cohort.records), n_lesions=int(len(set(lesions))), n_patients=int(len(set(cohort.patients))),
        n_malignant_rois=int(y.sum()), cohort=cohort.cohort.name, roi_set_sha256=cohort.cohort.roi_set_sha256,
        weights_note=weights_note, extraction=json_safe(asdict(features.extraction)), sweep=sweep, methods=methods,
        comparisons=comparisons, repeats=repeats)


def store_experiment(workspace: Workspace, loaded: Any, cohort: CohortStage, features: FeatureStage, cv: CvStage,
                     results: ExperimentResults, *, name: str, user: str, seconds: float) -> int:
    """Stage 5: the experiment, its audit event and every seed's out-of-fold predictions, in one transaction;
    returns the experiment's id."""
    records = cohort.records
    with workspace.sessions.begin() as session:
        experiment = Experiment(
            name=name, kind="sweep" if len(cohort.sweep_taps) > 1 else "evaluate", config=to_json(features.config),
            config_sha256=features.config_sha256, code_version=features.code_version, results=to_json(results),
            seconds=seconds, uses_synthetic_data=any(r.is_synthetic for r in records),
            uses_random_weights=loaded.weights.source == "random", created_by=user,
        )
        session.add(experiment)
        session.flush()
        record_audit(session, user=user, action="experiment_run", target=f"experiment {experiment.id}",
                     detail={"name": name, "config_sha256": features.config_sha256,
                             "code_version": features.code_version})
        session.add_all(fold_model_rows(  # the first seed's fold models (cadx.workflows.foldmodels)
            experiment.id, {t: layer.results[0] for t, layer in cv.sweep.layers.items()},
            cv.runs_b[0] if cv.runs_b else None))
        for repeat, a in enumerate(cv.runs_a):
            b = cv.runs_b[repeat] if cv.runs_b else None
            fused = {METHODS[key].column: runs[repeat] for key, runs in cv.runs_fused.items()}
            session.add_all(
                Prediction(
                    experiment_id=experiment.id, roi_id=r.id, roi_sha256=r.sha256, lesion_id=r.lesion_id,
                    truth=r.label, repeat=repeat, fold=int(a.fold[i]), decision1=float(a.decision[i]),
                    p1=float(a.proba[i]),
                    decision2=None if b is None else float(b.decision[i]),
                    p2=None if b is None else float(b.proba[i]),
                    **{column: float(values[i]) for column, values in fused.items()},
                )
                for i, r in enumerate(records)
            )
        return int(experiment.id)


def run_experiment(workspace: Workspace, loaded: Any, settings: ExperimentSettings = ExperimentSettings(), *,
                   name: str, user: str, weights_note: str = "", progress: Progress | None = None,
                   checkpoints: Any = None) -> int:
    """Extract what is missing, cross-validate, compute the statistics and store the experiment; returns its id.

    The stages, in order: :func:`select_cohort`, :func:`prepare_features`, :func:`cross_validate`,
    :func:`experiment_statistics`, :func:`store_experiment`. ``progress(done, total, message)`` reports work done as
    parts of ``PROGRESS_SCALE`` (stages weighted by their estimated cost). ``checkpoints``, when given (the job
    runner's ``JobCheckpoints``), keeps every finished (tap, seed, fold) of the sweep and of Method B under the
    scope (:attr:`FeatureStage.scope`: config, cohort and code version), and the statistics once computed (stage
    ``"statistics"``), so a run interrupted and started again redoes only the folds that were not finished, does not
    compute the statistics again when they were, and stores exactly the record of an uninterrupted run. The stages
    not checkpointed keep their output elsewhere (features in their stores) or name the data (the cohort).
    """
    name = experiment_name(name)  # before any work: the record could not be stored
    started = time.perf_counter()
    cohort = select_cohort(workspace, loaded, settings)
    meter = StageMeter.for_cohort(progress, cohort, settings)
    features = prepare_features(workspace, loaded, settings, cohort, meter=meter)
    cv = cross_validate(workspace, loaded, settings, cohort, features, meter=meter, checkpoints=checkpoints)
    results = None if checkpoints is None else checkpoints.load_stage(features.scope, _STATISTICS, read_statistics)
    if results is None:
        meter.emit("statistics: ROC curves, binormal fits, DeLong and bootstrap CIs, tests")
        results = experiment_statistics(settings, cohort, features, cv, weights_note=weights_note)
        if checkpoints is not None:
            checkpoints.save_stage(features.scope, _STATISTICS, statistics_payload(results))
        saving = "saving the experiment"
    else:
        saving = "statistics restored from checkpoint; saving the experiment"
    seconds = time.perf_counter() - started
    meter.advance("statistics", _SECONDS_STATISTICS, saving)
    return store_experiment(workspace, loaded, cohort, features, cv, results, name=name, user=user, seconds=seconds)


_STATISTICS = "statistics"  # the name of the statistics stage's checkpoint


# ------------------------------------------------------------------------------------------------ estimate ---
_HISTORY = 20  # the newest experiments whose measured seconds calibrate an estimate
_CALIBRATION_ROIS = 80  # the short calibration's random training set (one real nested CV of 2 folds)
_CALIBRATION_WIDTH = 1024


@dataclass(frozen=True)
class SweepEstimate:
    """How long an experiment will take on this machine, before it starts (``estimate_experiment``).

    ``time``: the most likely seconds and a range; ``parts``: the most likely seconds of each stage (``extract``,
    ``analytic``, ``sweep``, ``B``, ``statistics``); ``n_units``: the checkpointed units (tap x seed x fold, and
    Method B's folds); ``basis``: in words, what the rates of this machine were measured on."""

    time: TimeRange
    parts: dict[str, float]
    n_units: int
    basis: str

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.time.seconds, "low": self.time.low, "high": self.time.high,
                "parts": dict(self.parts), "n_units": self.n_units, "basis": self.basis}


def _model_parts(n_rois: int, n_train: float, n_folds: int, repeats: int, widths: Mapping[str, int], *,
                 n_extract: int, n_segment: int, analytic: bool) -> dict[str, float]:
    """Seconds of each stage on the reference machine (the progress bar's cost model, with the real widths)."""
    return {
        "extract": n_extract * _SECONDS_PER_EXTRACTED_ROI,
        "analytic": n_segment * _SECONDS_PER_SEGMENTED_ROI if analytic else 0.0,
        "sweep": sum(repeats * n_folds * _fold_cost(n_train, w) for w in widths.values()),
        "B": repeats * n_folds * _fold_cost(n_train, 21) if analytic else 0.0,
        "statistics": _SECONDS_STATISTICS,
    }


def measured_ratios(workspace: Workspace, *, backbone: str | None = None) -> dict[str, list[float]]:
    """This machine's measured / modelled seconds, from the records of the newest experiments: one ratio per
    swept tap (its cross-validation's seconds over all seeds and folds; under ``"sweep"`` and, by the tap's
    width, ``"sweep:<width>"``: the cost model misprices some widths, and the same width costs the same again),
    one per Method B (its wall time), one per extraction of at least 8 ROIs with ``backbone``, and one for the
    newest segmentations."""
    from db.models import Segmentation

    ratios: dict[str, list[float]] = {"sweep": [], "extract": [], "analytic": []}
    with workspace.sessions() as session:
        rows = session.execute(select(Experiment.config, Experiment.results)
                               .order_by(Experiment.id.desc()).limit(_HISTORY)).all()
        segmentations = list(session.scalars(select(Segmentation.seconds).order_by(Segmentation.id.desc())
                                             .limit(200)))
    for config, results in rows:
        try:
            n_folds, repeats = int(config["n_folds"]), int(config.get("repeats") or 1)
            n_train = int(results["n_rois"]) * (n_folds - 1) / n_folds
            for layer in (results.get("sweep") or {}).values():
                width = int(layer["n_features"])
                model = repeats * n_folds * _fold_cost(n_train, width)
                if float(layer.get("seconds") or 0.0) > 0:
                    ratios["sweep"].append(float(layer["seconds"]) / model)
                    ratios.setdefault(f"sweep:{width}", []).append(float(layer["seconds"]) / model)
            b_seconds = float(((results.get("methods") or {}).get("B") or {}).get("seconds") or 0.0)
            if b_seconds > 0:  # the wall time of Method B's cross-validation, every seed
                ratios.setdefault("B", []).append(b_seconds / (repeats * n_folds * _fold_cost(n_train, 21)))
            extraction = results.get("extraction") or {}
            if backbone in (None, config.get("backbone")) and int(extraction.get("n_extracted") or 0) >= 8:
                ratios["extract"].append(float(extraction["seconds"])
                                         / (int(extraction["n_extracted"]) * _SECONDS_PER_EXTRACTED_ROI))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):  # a record from before these fields
            continue
    timed = [float(t) for t in segmentations if t and t > 0]
    if len(timed) >= 8:
        ratios["analytic"].append(float(np.mean(timed)) / _SECONDS_PER_SEGMENTED_ROI)
    if "B" not in ratios:
        ratios["B"] = list(ratios["sweep"])
    return {part: values for part, values in ratios.items() if values}


def calibrate(workspace: Workspace, loaded: Any, settings: ExperimentSettings, cohort: CohortStage, *,
              parts: Sequence[str]) -> dict[str, list[float]]:
    """A short calibration of the ``parts`` no earlier run measured (a few seconds): one real nested
    cross-validation (2 outer folds) on random features for ``sweep`` and ``B``, 16 ROIs through the backbone
    for ``extract``, two of the cohort's ROIs segmented for ``analytic``; measured / modelled seconds each."""
    ratios: dict[str, list[float]] = {}
    if {"sweep", "B"} & set(parts):
        from cadx.svm import cross_validate_by_lesion

        rng = np.random.default_rng(0)
        n, width = _CALIBRATION_ROIS, _CALIBRATION_WIDTH
        y = np.arange(n) % 2
        X = (rng.standard_normal((n, width)) + 0.3 * y[:, None]).astype(np.float32)
        began = time.perf_counter()
        cross_validate_by_lesion(X, y, np.arange(n), n_folds=2, n_inner=settings.n_inner, grid=settings.grid,
                                 seed=0)
        ratio = (time.perf_counter() - began) / (2 * _fold_cost(n / 2, width))
        ratios["sweep"] = ratios["B"] = [ratio]
    if "extract" in parts:
        from cadx.cnn import extract_features

        rois = np.random.default_rng(0).integers(0, 4096, size=(16, 512, 512), dtype=np.uint16)
        began = time.perf_counter()
        extract_features(rois, backbone=loaded, taps=cohort.sweep_taps, batch_size=16,
                         precision=settings.precision)
        ratios["extract"] = [(time.perf_counter() - began) / (16 * _SECONDS_PER_EXTRACTED_ROI)]
    if "analytic" in parts and cohort.records:
        from cadx.analytic import analyse_roi
        from cadx.workflows.features import load_roi_pixels

        sample = cohort.records[:2]
        began = time.perf_counter()
        for record in sample:
            analyse_roi(load_roi_pixels(workspace, record), pixel_size_mm=0.1)
        ratios["analytic"] = [(time.perf_counter() - began) / (len(sample) * _SECONDS_PER_SEGMENTED_ROI)]
    return ratios


_CALIBRATION_KEEP_S = 600.0  # a calibration stands for this long (a page re-estimates on every changed field)
_calibrations: dict[tuple[Any, ...], tuple[float, dict[str, list[float]]]] = {}


def _recent_calibration(workspace: Workspace, loaded: Any, settings: ExperimentSettings, cohort: CohortStage,
                        parts: Sequence[str]) -> dict[str, list[float]]:
    """:func:`calibrate`, or its result of the last ``_CALIBRATION_KEEP_S`` seconds for the same work."""
    key = (str(workspace.data_dir), loaded.name, loaded.weights.sha256, settings.precision, settings.tap_pooling,
           settings.svm_engine, settings.n_inner,
           json.dumps(settings.grid, sort_keys=True), cohort.sweep_taps, tuple(sorted(parts)))
    now = time.monotonic()
    kept = _calibrations.get(key)
    if kept is None or now - kept[0] > _CALIBRATION_KEEP_S:
        kept = (now, calibrate(workspace, loaded, settings, cohort, parts=parts))
        _calibrations[key] = kept
    return kept[1]


def estimate_experiment(workspace: Workspace, loaded: Any, settings: ExperimentSettings) -> SweepEstimate:
    """How long :func:`run_experiment` with ``settings`` will take on this machine, with a range, before it runs.

    The cost model of the progress bar (seconds on the reference machine per stage, with the taps' real widths
    and only the ROIs whose features are not stored yet) times the rates this machine measured: the seconds that
    the newest experiments recorded per tap, extraction and segmentation (:func:`measured_ratios`), or, for a
    stage no earlier run measured, a short calibration (:func:`calibrate`). The range is the spread of those
    rates (``cadx.planning.scaled_estimate``). Refuses (``CadxInputError``) what ``run_experiment`` would refuse."""
    from cadx.analytic import FEATURES_VERSION
    from cadx.cnn import feature_preprocessing, tap_widths
    from cadx.workflows.features import feature_store
    from db.models import Segmentation

    _check_repeats(settings.repeats)
    cohort = select_cohort(workspace, loaded, settings)
    all_widths = tap_widths(cohort.backbone, pooling=settings.tap_pooling)
    widths = {tap: all_widths[tap] for tap in cohort.sweep_taps}
    hashes = cohort.hashes
    n_extract = len(feature_store(workspace).missing(
        hashes, backbone=cohort.backbone, weights_sha256=loaded.weights.sha256, taps=cohort.sweep_taps,
        preprocessing=feature_preprocessing(settings.precision, pooling=settings.tap_pooling)))
    n_segment = 0
    if settings.analytic:
        with workspace.sessions() as session:
            done = set(session.scalars(select(Segmentation.roi_sha256)
                                       .where(Segmentation.version == FEATURES_VERSION)))
        n_segment = len(set(hashes) - done)
    model = _model_parts(len(hashes), cohort.n_train, cohort.n_folds, settings.repeats, widths,
                         n_extract=n_extract, n_segment=n_segment, analytic=settings.analytic)
    measured = measured_ratios(workspace, backbone=cohort.backbone)
    needed = [part for part, cost in model.items() if cost > 0 and part != "statistics" and part not in measured]
    calibrated = _recent_calibration(workspace, loaded, settings, cohort, needed) if needed else {}
    ratios = {**calibrated, **measured}
    # the sweep tap by tap: a width measured before takes its own rate, another the rate of every tap measured
    del model["sweep"]
    for width in widths.values():
        key = f"sweep:{width}"
        model[key] = model.get(key, 0.0) + settings.repeats * cohort.n_folds * _fold_cost(cohort.n_train, width)
        ratios.setdefault(key, list(ratios["sweep"]))
    parts: dict[str, float] = {}
    for part, cost in model.items():
        if cost > 0:
            name = part.split(":")[0]
            parts[name] = parts.get(name, 0.0) + scaled_estimate({part: cost}, ratios).seconds
    n_runs = len(measured.get("sweep", []))
    basis = []
    if measured:
        basis.append(f"the seconds measured by earlier experiments on this machine ({n_runs} taps swept"
                     + (", extraction" if "extract" in measured else "")
                     + (", segmentation" if "analytic" in measured else "") + ")")
    if calibrated:
        basis.append(f"a short calibration now ({', '.join(sorted(calibrated))})")
    n_units = (len(cohort.sweep_taps) + (1 if settings.analytic else 0)) * settings.repeats * cohort.n_folds
    return SweepEstimate(time=scaled_estimate(model, ratios), parts=parts, n_units=n_units,
                         basis=" and ".join(basis))


def statistics_payload(results: ExperimentResults) -> bytes:
    """The statistics stage's output as a checkpoint: its JSON (``cadx.records.to_json``; no pickle)."""
    return json.dumps(to_json(results), allow_nan=False).encode()


def read_statistics(payload: bytes) -> ExperimentResults:
    """The statistics stage's output from its checkpoint (:func:`statistics_payload`), validated by
    ``cadx.records.from_json``; anything else raises ``CadxInputError`` naming the field."""
    where = "checkpoint of the statistics stage"
    try:
        data = json.loads(payload.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CadxInputError(where, f"not JSON ({exc})", "it is computed again") from None
    return from_json(ExperimentResults, data, where=where)


def _number(value: Any) -> float | None:
    """A statistic as stored: a float, None where not finite."""
    value = float(value)
    return value if math.isfinite(value) else None


def _numbers(values: Any) -> list[float | None]:
    return [_number(v) for v in np.asarray(values, dtype=float).ravel()]


def _check_repeats(repeats: int) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or not 1 <= repeats <= MAX_REPEATS:
        raise CadxInputError("repeats", f"got {repeats!r}",
                             f"give a whole number from 1 (one cross-validation) to {MAX_REPEATS} (seeds)")


def repeated_cv_summary(methods: Mapping[str, MethodRecord], runs_a: list[CvResult], runs_b: list[CvResult],
                        runs_fused: Mapping[str, list[np.ndarray]], y: np.ndarray, *, seeds: list[int]) -> Repeats:
    """Each classifier's fold-mean AUC under every seed of a repeated cross-validation, with the mean and SD over
    seeds: how much of a difference between classifiers is the luck of one fold assignment.

    ``runs_fused`` maps each fusion's key (``cadx.methods``) to its out-of-fold scores per seed."""
    from cadx.svm import fold_auc

    per_seed: dict[str, list[float]] = {"A": [float(np.mean(r.fold_auc)) for r in runs_a]}
    if runs_b:
        per_seed["B"] = [float(np.mean(r.fold_auc)) for r in runs_b]
        for key, runs in runs_fused.items():
            per_seed[key] = [float(np.mean(fold_auc(s, y, a.fold))) for a, s in zip(runs_a, runs, strict=True)]
    return Repeats(
        seeds=[int(s) for s in seeds],
        methods={key: RepeatedMethod(title=methods[key].title, auc_mean_by_seed=[_number(a) for a in aucs],
                                     auc_mean=_number(np.mean(aucs)),
                                     auc_sd_between_seeds=_number(np.std(aucs, ddof=1)))
                 for key, aucs in per_seed.items()},
    )


def calibration_record(runs: list[CvResult]) -> Calibration:
    """What Platt's slope floor did in every fold of every seed of one classifier (its ``CvResult`` per seed).

    ``slope``: the free maximum-likelihood slope per seed and fold (decision-value units, before the floor);
    ``clamped``: folds where the floor was active (the classifier's probabilities are flat there, so the
    probability ensemble equals the other classifier in those folds); ``n_clamped`` of ``n_folds`` over all seeds;
    ``inner_mean``/``inner_sd``: the training-fold standardisation of the z-scored ensemble; ``operating_point``:
    each fold's threshold on the decision values, chosen on its training data (``cadx.svm.operating_point``).
    """
    from cadx.svm import _PLATT_MIN_SLOPE, OPERATING_POINT_RULE

    def per_fold(name: str) -> list[list[float | None]]:
        return [_numbers(getattr(r, name)) for r in runs]

    clamped = [[bool(c) for c in _present(r.platt_clamped)] for r in runs]
    return Calibration(
        seeds=[int(r.seed) for r in runs],
        slope=per_fold("platt_free_slope"),
        slope_used=[_numbers(r.platt[:, 0]) for r in runs],
        clamped=clamped,
        n_clamped=int(sum(map(sum, clamped))),
        n_folds=int(sum(len(c) for c in clamped)),
        floor=f"{_PLATT_MIN_SLOPE:g} / SD of the inner decision values",
        inner_mean=per_fold("inner_decision_mean"),
        inner_sd=per_fold("inner_decision_sd"),
        operating_point=(per_fold("operating_point") if all(r.operating_point is not None for r in runs) else None),
        operating_point_rule=OPERATING_POINT_RULE,
    )


def _present(values: np.ndarray | None) -> np.ndarray:
    if values is None:  # results of cadx.svm always have them; only CvResults made by hand lack them
        raise ValueError("this CvResult has no Platt calibration details")
    return values


def _check_dataset(records: Sequence[RoiRecord], n_folds: int) -> None:
    lesions_by_label: dict[int, set[int]] = {0: set(), 1: set()}
    for r in records:
        lesions_by_label[r.label].add(r.lesion_id)
    fewest = min(len(v) for v in lesions_by_label.values())
    if fewest < n_folds:
        raise CadxInputError(
            "dataset", f"{len(lesions_by_label[0])} benign and {len(lesions_by_label[1])} malignant lesions among "
            f"the included ROIs: too few for {n_folds}-fold cross-validation by lesion",
            f"import more cases (at least {n_folds} lesions of each label) or include excluded ROIs")


def method_statistics(title: str, proba: np.ndarray, result: CvResult | None, y: np.ndarray, lesions: np.ndarray,
                      seed: int, seconds: float, *, fold_aucs: np.ndarray | None = None) -> MethodRecord:
    """Table-1 statistics of one classifier's out-of-fold probabilities (``result``: its CvResult, or None for the
    ensemble): fold AUC mean/SD/SE, pooled AUC with DeLong CI, lesion-level AUC, clustered bootstrap CI, ROC points,
    binormal fit."""
    if fold_aucs is None:
        if result is None:
            raise ValueError("give the fold AUCs of a classifier without a CvResult")
        fold_aucs = result.fold_auc
    summary = stats.fold_auc_summary(fold_aucs)
    delong = stats.delong_ci(y, proba)
    roc = stats.roc_points(y, proba)
    lesion_level = stats.lesion_level_scores(proba, lesions, y)
    try:
        fit = stats.binormal_fit(y, proba)
        fpr, tpr = fit.curve(_CURVE_POINTS)
        binormal = Binormal(a=_number(fit.a), b=_number(fit.b), auc=_number(fit.auc), se_auc=_number(fit.se_auc),
                            converged=bool(fit.converged), fpr=_numbers(fpr), tpr=_numbers(tpr))
    except ValueError as exc:  # e.g. perfect separation: no finite ML fit
        binormal = Binormal(error=str(exc))
    record = MethodRecord(
        title=title,
        auc_mean=_number(summary.mean),
        auc_sd=_number(summary.sd),
        auc_se=_number(summary.se),
        fold_aucs=_numbers(summary.aucs),
        pooled_auc=_number(delong.auc),
        pooled_ci95=[_number(delong.lower), _number(delong.upper)],
        lesion_auc=_number(stats.auc(lesion_level.labels, lesion_level.scores)),
        lesion_clustered_bootstrap_ci95=_bootstrap(y, proba, lesions, seed),
        roc=RocPoints(fpr=_numbers(roc.fpr), tpr=_numbers(roc.tpr)),
        seconds=float(seconds),
        binormal=binormal,
    )
    if result is None:
        return record
    return dataclasses.replace(
        record, decision_value_auc=_number(stats.auc(y, result.decision)),
        fold_aucs_decision=_numbers(result.fold_auc), fold_aucs_proba=_numbers(result.fold_auc_proba),
        best_params=[json_safe(dict(p)) for p in result.best_params], n_features=int(result.n_features),
        n_features_kept=[int(k) for k in result.n_features_kept])


def _bootstrap(y: np.ndarray, proba: np.ndarray, lesions: np.ndarray, seed: int) -> list[float | None] | None:
    try:
        ci = stats.clustered_bootstrap_auc_ci(y, proba, lesions, seed=seed, n_boot=1000)
    except ValueError:
        return None
    return [_number(ci.lower), _number(ci.upper)]


def compare_methods(methods: Mapping[str, MethodRecord | Mapping[str, Any]], scores: Mapping[str, np.ndarray],
                    y: np.ndarray, folds: np.ndarray, n_folds: int, *, lesions: np.ndarray,
                    pairs: list[tuple[str, str]] | None = None,
                    fold_aucs_by_seed: Mapping[str, Sequence[Sequence[float | None]]] | None = None,
                    folds_by_seed: Sequence[np.ndarray] | None = None) -> list[Comparison]:
    """The significance tests of each family of ``cadx.methods.comparison_families`` (the paper's C vs A, C vs B,
    A vs B and the added z-ensemble's), or, with ``pairs``, those pairs as one family (e.g. Method D against A, B
    and C); every p-value Bonferroni-adjusted within its family.

    The headline test is fold-level: Nadeau & Bengio's corrected t over every seed's folds (``repeated_nb_*``;
    Bouckaert & Frank's corrected repeated k-fold t-test), from ``fold_aucs_by_seed`` (method -> per seed, its
    fold AUCs; default: the methods' own first-seed fold AUCs) with ``folds_by_seed`` (each seed's test fold per
    case, for the lesion counts). Beside it: the paired t and Nadeau-Bengio tests on the first seed's folds, and
    DeLong's test on within-fold ranks (``stats.within_fold_ranks``), so that a fold whose scores sit at a
    fold-specific level (a Platt slope at its floor) cannot make a pooled ROC difference. DeLong on the
    probabilities pooled over folds is kept in the record (``delong_*``, ``auc_difference``) as before but is not
    a finding: those probabilities are not comparable across folds.

    ``methods`` give each method's fold AUCs (records, or their JSON form). Nadeau & Bengio's ``n_train``/``n_test``
    count lesions (``stats.cv_unit_sizes``), not ROIs: the views of one lesion are not independent test cases.
    """
    n_train, n_test = stats.cv_unit_sizes(folds, lesions)
    seed_folds = list(folds_by_seed) if folds_by_seed is not None else [folds]
    sizes = np.array([stats.cv_unit_sizes(f, lesions) for f in seed_folds])
    n_train_all, n_test_all = float(sizes[:, 0].mean()), float(sizes[:, 1].mean())
    ranks = {key: stats.within_fold_ranks(values, folds) for key, values in scores.items()}
    rows: list[Comparison] = []
    families = comparison_families(set(scores)) if pairs is None else {"requested": list(pairs)}
    for family, family_pairs in families.items():
        block = []
        for first, second in family_pairs:
            delong = stats.delong_test(y, scores[first], scores[second])
            rank_delong = stats.delong_test(y, ranks[first], ranks[second])
            fa = np.asarray(_fold_aucs(methods[first]), dtype=float)
            fb = np.asarray(_fold_aucs(methods[second]), dtype=float)
            paired = stats.paired_t_test(fa, fb)
            corrected = stats.corrected_resampled_t_test(fa - fb, n_train=n_train, n_test=n_test)
            by_seed_a = fold_aucs_by_seed[first] if fold_aucs_by_seed is not None else [fa]
            by_seed_b = fold_aucs_by_seed[second] if fold_aucs_by_seed is not None else [fb]
            diffs = np.concatenate([np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
                                    for a, b in zip(by_seed_a, by_seed_b, strict=True)])
            repeated = stats.corrected_resampled_t_test(diffs[np.isfinite(diffs)], n_train=n_train_all,
                                                        n_test=n_test_all)
            block.append((f"{first} vs {second}", delong, rank_delong, paired, corrected, repeated,
                          float(np.mean(fa - fb)), len(by_seed_a)))
        p_values: dict[str, list[float]] = {
            "delong": [b[1].p_value for b in block], "rank": [b[2].p_value for b in block],
            "paired": [b[3].p_value for b in block], "nb": [b[4].p_value for b in block],
            "repeated": [b[5].p_value for b in block]}
        adjusted = {name: stats.bonferroni(values).p_adjusted for name, values in p_values.items()}
        for i, (comparison, delong, rank_delong, paired, corrected, repeated, fold_mean, n_seeds) in enumerate(block):
            rows.append(Comparison(
                comparison=comparison, family=family, auc_difference=_number(delong.difference),
                delong_p=_number(delong.p_value), delong_ci95=[_number(delong.ci_lower), _number(delong.ci_upper)],
                paired_t_p=_number(paired.p_value), nadeau_bengio_p=_number(corrected.p_value),
                nadeau_bengio_n_train=_number(n_train), nadeau_bengio_n_test=_number(n_test),
                delong_p_bonferroni=_number(adjusted["delong"][i]),
                paired_t_p_bonferroni=_number(adjusted["paired"][i]),
                nadeau_bengio_p_bonferroni=_number(adjusted["nb"][i]),
                fold_mean_auc_difference=_number(fold_mean),
                rank_delong_auc_difference=_number(rank_delong.difference),
                rank_delong_p=_number(rank_delong.p_value),
                rank_delong_ci95=[_number(rank_delong.ci_lower), _number(rank_delong.ci_upper)],
                rank_delong_p_bonferroni=_number(adjusted["rank"][i]),
                repeated_nb_mean_difference=_number(repeated.mean_difference), repeated_nb_t=_number(repeated.t),
                repeated_nb_df=int(repeated.df), repeated_nb_p=_number(repeated.p_value),
                repeated_nb_p_bonferroni=_number(adjusted["repeated"][i]), repeated_nb_n_seeds=int(n_seeds),
                repeated_nb_n_folds=int(repeated.df + 1)))
    return rows


def _fold_aucs(method: MethodRecord | Mapping[str, Any]) -> list[float | None]:
    if isinstance(method, MethodRecord):
        return method.fold_aucs
    return list(method["fold_aucs"])


def load_experiment(workspace: Workspace, experiment_id: int) -> ExperimentRecord:
    """An experiment as stored, typed (:class:`cadx.records.ExperimentRecord`; old records upgraded on reading)."""
    with workspace.sessions() as session:
        experiment = session.get(Experiment, experiment_id)
        if experiment is None:
            raise CadxInputError(f"experiment {experiment_id}", "no such experiment",
                                 "list them with `cadx experiments`")
        return record_of(experiment)


def record_of(experiment: Experiment) -> ExperimentRecord:
    """The typed record of an ``experiments`` row (its config and results read with ``cadx.records``)."""
    where = f"experiment {experiment.id}"
    try:
        config, results = read_config(experiment.config or {}), read_results(experiment.results or {})
    except CadxInputError as exc:
        raise CadxInputError(f"{where}: {exc.source}", exc.problem, exc.fix) from exc
    return ExperimentRecord(
        id=int(experiment.id), name=experiment.name, kind=experiment.kind,
        created_at=experiment.created_at.isoformat(), created_by=experiment.created_by,
        code_version=experiment.code_version, config_sha256=experiment.config_sha256,
        uses_synthetic_data=bool(experiment.uses_synthetic_data),
        uses_random_weights=bool(experiment.uses_random_weights),
        seconds=None if experiment.seconds is None else float(experiment.seconds), config=config, results=results)


def experiment_summary(workspace: Workspace, experiment_id: int) -> dict[str, Any]:
    """An experiment's record as JSON (``--json`` output; the layout of ``docs/experiment-record.schema.json``),
    old records upgraded to the current schema."""
    summary: dict[str, Any] = to_json(load_experiment(workspace, experiment_id))
    return summary
