"""Experiments: the paper's layer sweep (Fig. 3), Methods A and B and their ensemble (Fig. 4, Table 1), recorded as
frozen, reproducible records with per-ROI out-of-fold predictions.

An experiment's config holds everything that determines its numbers: backbone, weights checksum, preprocessing
and feature versions, taps, grid, folds, seeds, the cohort (its definition) and the exact ROI set it resolved to
(hashes, their SHA-256, and the ids left out by review) and the code version. Running the same config on the same
database gives the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

import cadx
from cadx import stats
from cadx.cohorts import MIN_LESIONS_PER_CLASS_PER_FOLD
from cadx.errors import CadxInputError
from cadx.methods import METHODS, comparison_families, fusions
from cadx.workflows.accounts import record_audit
from cadx.workflows.cohorts import resolve_cohort
from cadx.workflows.features import (
    analytic_matrix,
    cnn_tap_loader,
    compute_analytic_features,
    extract_cnn_features,
)
from cadx.workflows.foldmodels import fold_model_rows
from cadx.workflows.importing import Progress
from cadx.workflows.workspace import Workspace
from db.models import Experiment, Prediction, Roi

__all__ = ["DEFAULT_REPEATS", "ExperimentSettings", "run_experiment", "PROGRESS_SCALE", "calibration_record",
           "experiment_summary", "code_version", "method_statistics",
           "compare_methods", "repeated_cv_summary", "json_safe"]

_CURVE_POINTS = 101

DEFAULT_REPEATS = 5
"""Seeds of the repeated cross-validation when the user names none (CLI, pages and job runner read it here): one
fold assignment is luck (EfficientNet ``stage6`` on MIAS: 0.629 on seed 0, 0.537 over 5 seeds)."""


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
    grid: dict[str, list] | None = None
    n_jobs: int = 1
    cohort: str | None = None
    min_lesions_per_class_per_fold: int | None = None  # None: cadx.cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD (5)
    extra: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # CNN forward arithmetic (cadx.cnn.PRECISIONS); keys the features used


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


class _Meter:
    """Progress by work done: each stage's share of the total is its estimated cost (ROIs to extract or segment,
    folds x taps weighted by n_train^2 x width); never moves backwards."""

    def __init__(self, report: Progress, parts: dict[str, float]) -> None:
        self._report = report
        self.total = dict(parts)
        self.done = dict.fromkeys(parts, 0.0)
        self._last = 0

    def set_total(self, part: str, cost: float) -> None:
        self.total[part] = max(float(cost), 0.0)
        self.done[part] = min(self.done[part], self.total[part])

    def advance(self, part: str, done_cost: float, message: str) -> None:
        self.done[part] = min(max(float(done_cost), 0.0), self.total[part])
        self.emit(message)

    def finish(self, part: str, message: str) -> None:
        self.total[part] = self.done[part] if self.done[part] > 0 else 0.0
        self.emit(message)

    def emit(self, message: str) -> None:
        whole = sum(self.total.values())
        fraction = sum(self.done.values()) / whole if whole > 0 else 0.0
        self._last = max(self._last, min(int(fraction * PROGRESS_SCALE), PROGRESS_SCALE))
        self._report(self._last, PROGRESS_SCALE, message)


def _fold_cost(n_train: int, width: int) -> float:
    return _SECONDS_PER_FOLD + float(n_train) ** 2 * (width + _SVM_WIDTH_EQUIVALENT) * _SECONDS_PER_GRAM_UNIT


def run_experiment(workspace: Workspace, loaded, settings: ExperimentSettings = ExperimentSettings(), *,
                   name: str, user: str, weights_note: str = "", progress: Progress | None = None,
                   checkpoints: Any = None) -> int:
    """Extract what is missing, cross-validate, compute the statistics and store the experiment; returns its id.

    ``progress(done, total, message)`` reports work done as parts of ``PROGRESS_SCALE`` (stages weighted by their
    estimated cost). ``checkpoints``, when given (the job runner's ``JobCheckpoints``), keeps every finished
    (tap, seed, fold) of the sweep and of Method B under the SHA-256 of the experiment's config, so a run
    interrupted and started again redoes only the folds that were not finished and stores exactly the numbers
    of an uninterrupted run.
    """
    from cadx.cnn import feature_preprocessing
    from cadx.svm import cross_validate_repeats, fold_auc, sweep_layers

    report = progress or (lambda done, total, message: None)
    started = time.perf_counter()
    _check_repeats(settings.repeats)
    cohort = resolve_cohort(workspace, settings.cohort)
    n_folds = settings.n_folds or cohort.definition.n_folds
    cohort.check(n_folds=n_folds, minimum_per_fold=settings.min_lesions_per_class_per_fold)
    records = cohort.records
    _check_dataset(records, n_folds)
    hashes = [r.sha256 for r in records]
    y = np.array([r.label for r in records])
    lesions = np.array([r.lesion_id for r in records])
    patients = np.array([r.patient_id for r in records])
    backbone = loaded.name
    taps = tuple(loaded.backbone.default_taps) if settings.taps is None else tuple(settings.taps)
    ensemble_tap = settings.ensemble_tap or loaded.backbone.ensemble_tap
    for tap in (*taps, ensemble_tap):
        if tap not in loaded.backbone.taps:
            raise CadxInputError("taps", f"{backbone} has no tap {tap!r}", f"use one of {list(loaded.backbone.taps)}")
    wanted = {*taps, ensemble_tap}
    sweep_taps = tuple(t for t in loaded.backbone.taps if t in wanted)  # in network order, as in Fig. 3

    n = len(records)
    n_train = n * (n_folds - 1) / n_folds
    n_units = len(sweep_taps) * settings.repeats * n_folds
    meter = _Meter(report, {
        "extract": n * _SECONDS_PER_EXTRACTED_ROI,
        "analytic": n * _SECONDS_PER_SEGMENTED_ROI if settings.analytic else 0.0,
        "sweep": n_units * _fold_cost(n_train, 4096),  # refined once the tap widths are known
        "B": settings.repeats * n_folds * _fold_cost(n_train, 21) if settings.analytic else 0.0,
        "statistics": _SECONDS_STATISTICS,
    })

    def extracting(done: int, total: int, message: str) -> None:
        meter.set_total("extract", total * _SECONDS_PER_EXTRACTED_ROI)
        meter.advance("extract", done * _SECONDS_PER_EXTRACTED_ROI, f"extracting CNN features: {done}/{total} ROIs")

    meter.emit("extracting CNN features (only ROIs not in the store)")
    extraction = extract_cnn_features(workspace, loaded, taps=sweep_taps, precision=settings.precision,
                                      records=records, progress=extracting)
    meter.finish("extract", "CNN features ready")
    analytic_version = None
    if settings.analytic:
        def segmenting(done: int, total: int, message: str) -> None:
            meter.set_total("analytic", total * _SECONDS_PER_SEGMENTED_ROI)
            meter.advance("analytic", done * _SECONDS_PER_SEGMENTED_ROI, f"analytic features: {done}/{total} ROIs")

        meter.emit("analytic features (only ROIs not analysed yet)")
        analytic_version = compute_analytic_features(workspace, records=records, progress=segmenting).version
        meter.finish("analytic", "analytic features ready")

    with workspace.sessions() as session:
        excluded = sorted(session.scalars(select(Roi.id).where(Roi.included.is_(False))))
    config = {
        "backbone": backbone,
        "weights": {"name": loaded.weights.name, "sha256": loaded.weights.sha256, "source": loaded.weights.source},
        "preprocessing": feature_preprocessing(settings.precision),  # fp32: PREPROCESSING_VERSION itself
        "taps": list(sweep_taps),
        "ensemble_tap": ensemble_tap,
        "analytic_version": analytic_version,
        "n_folds": n_folds,
        "n_inner": settings.n_inner,
        "seed": settings.seed,
        "grid": settings.grid or "cadx.svm.default_grid",
        "cv_groups": "patient (a patient's lesions stay together; each lesion's ROIs always do)",
        "cohort": cohort.to_record(),
        "roi_set_sha256": cohort.roi_set_sha256,
        "roi_ids": [r.id for r in records],
        "roi_sha256": hashes,
        "excluded_roi_ids": excluded,
        # a single cross-validation keeps the config (and its SHA-256) of the records made before repeats existed
        **({"repeats": settings.repeats} if settings.repeats > 1 else {}),
        **({"min_lesions_per_class_per_fold": settings.min_lesions_per_class_per_fold}
           if settings.min_lesions_per_class_per_fold not in (None, MIN_LESIONS_PER_CLASS_PER_FOLD) else {}),
        **settings.extra,
    }
    version = code_version()
    config_sha = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()

    common = dict(patients=patients, n_folds=n_folds, n_inner=settings.n_inner, grid=settings.grid,
                  seed=settings.seed, repeats=settings.repeats, n_jobs=settings.n_jobs)
    sources = {tap: cnn_tap_loader(workspace, loaded, tap, hashes, precision=settings.precision)
               for tap in sweep_taps}
    unit_cost = {tap: _fold_cost(n_train, int(sources[tap].shape[1])) for tap in sweep_taps}
    meter.set_total("sweep", sum(unit_cost.values()) * settings.repeats * n_folds)
    scope = hashlib.sha256(f"{config_sha} {version}".encode()).hexdigest()  # the numbers depend on both
    sweep_store = None if checkpoints is None else checkpoints.scoped(scope, "sweep")
    restored = 0.0 if sweep_store is None else sum(unit_cost.get(u.split("/")[0], 0.0) for u in sweep_store.units())
    swept = {"cost": 0.0}

    def sweeping(done: int, total: int, message: str) -> None:
        if " fold " in message:
            swept["cost"] += unit_cost.get(message.split(" fold ")[0], 0.0)
        else:  # the units restored from checkpoints, reported at once
            swept["cost"] += restored
        meter.advance("sweep", swept["cost"], f"sweep: {done}/{total} folds x taps fitted ({message})")

    sweep = sweep_layers(sources, y, lesions, progress=sweeping, checkpoint=sweep_store, keep_models=True,
                         **common)
    meter.finish("sweep", "sweep done")
    runs_a = list(sweep.layers[ensemble_tap].results)  # one CvResult per seed; the first is the primary
    method_a = runs_a[0]
    runs_b: list = []
    runs_fused: dict[str, list[np.ndarray]] = {}  # fusion key -> scores per seed
    if settings.analytic:
        meter.emit("Method B: analytic-feature SVM")
        X_b, _names, quality = analytic_matrix(workspace, hashes)
        b_cost = _fold_cost(n_train, X_b.shape[1])
        runs_b = cross_validate_repeats(
            X_b, y, lesions, checkpoint=None if checkpoints is None else checkpoints.scoped(scope, "B"),
            keep_models=True,
            progress=lambda d, t, m: meter.advance("B", d * b_cost, f"Method B: {d}/{t} folds fitted"), **common)
        meter.finish("B", "Method B done")
        for method in fusions():  # same seed, same folds
            runs_fused[method.key] = [method.combine(a, b) for a, b in zip(runs_a, runs_b, strict=True)]
    results = {
        "n_rois": len(records),
        "n_lesions": int(len(set(lesions))),
        "n_patients": int(len(set(patients))),
        "n_malignant_rois": int(y.sum()),
        "cohort": cohort.name,
        "roi_set_sha256": cohort.roi_set_sha256,
        "weights_note": weights_note,
        "extraction": asdict(extraction),
        "sweep": {
            tap: {
                "n_features": layer.n_features,
                "n_features_nonconstant": layer.n_features_nonconstant,
                "auc_mean": layer.auc_mean,
                "auc_sd": layer.auc_sd,
                "auc_se": layer.auc_se,
                "fold_aucs": [float(a) for a in layer.results[0].fold_auc],
                **({"fold_aucs_by_seed": [[float(a) for a in r.fold_auc] for r in layer.results],
                    "auc_mean_by_seed": [r.auc_mean for r in layer.results],
                    "auc_sd_between_seeds": float(np.std([r.auc_mean for r in layer.results], ddof=1))}
                   if settings.repeats > 1 else {}),
                "seconds": layer.seconds,
            }
            for tap, layer in sweep.layers.items()
        },
        "methods": {},
        "comparisons": [],
    }
    scores = {"A": method_a.proba}
    results["methods"]["A"] = method_statistics(f"SVM1 (CNN {backbone} {ensemble_tap})", method_a.proba, method_a,
                                                y, lesions, settings.seed, sweep.layers[ensemble_tap].seconds)
    results["methods"]["A"]["calibration"] = calibration_record(runs_a)
    if settings.analytic:
        b = runs_b[0]
        scores["B"] = b.proba
        results["methods"]["B"] = method_statistics(METHODS["B"].title, b.proba, b, y, lesions,
                                                    settings.seed, b.seconds)
        results["methods"]["B"]["segmentation_quality"] = {q: quality.count(q) for q in sorted(set(quality))}
        results["methods"]["B"]["calibration"] = calibration_record(runs_b)
        for key, runs in runs_fused.items():
            scores[key] = runs[0]
            results["methods"][key] = method_statistics(
                METHODS[key].title, runs[0], None, y, lesions, settings.seed, method_a.seconds + b.seconds,
                fold_aucs=fold_auc(runs[0], y, method_a.fold))
        results["comparisons"] = compare_methods(results["methods"], scores, y, method_a.fold, n_folds,
                                                 lesions=lesions)
    if settings.repeats > 1:
        results["repeats"] = repeated_cv_summary(results["methods"], runs_a, runs_b, runs_fused, y,
                                                 seeds=[r.seed for r in runs_a])
    seconds = time.perf_counter() - started
    meter.advance("statistics", _SECONDS_STATISTICS, "saving the experiment")
    with workspace.sessions.begin() as session:
        experiment = Experiment(
            name=name, kind="sweep" if len(sweep_taps) > 1 else "evaluate", config=config, config_sha256=config_sha,
            code_version=version, results=json_safe(results), seconds=seconds,
            uses_synthetic_data=any(r.is_synthetic for r in records),
            uses_random_weights=loaded.weights.source == "random", created_by=user,
        )
        session.add(experiment)
        session.flush()
        record_audit(session, user=user, action="experiment_run", target=f"experiment {experiment.id}",
                     detail={"name": name, "config_sha256": config_sha, "code_version": version})
        session.add_all(fold_model_rows(experiment.id, {t: layer.results[0] for t, layer in sweep.layers.items()},
                                        runs_b[0] if runs_b else None))  # cadx.workflows.foldmodels
        for repeat, a in enumerate(runs_a):
            b = runs_b[repeat] if runs_b else None
            fused = {METHODS[key].column: runs[repeat] for key, runs in runs_fused.items()}
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
        return experiment.id


_MAX_REPEATS = 20


def _check_repeats(repeats: int) -> None:
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or not 1 <= repeats <= _MAX_REPEATS:
        raise CadxInputError("repeats", f"got {repeats!r}",
                             f"give a whole number from 1 (one cross-validation) to {_MAX_REPEATS} (seeds)")


def repeated_cv_summary(methods: dict, runs_a: list, runs_b: list, runs_fused: dict[str, list], y: np.ndarray, *,
                        seeds: list[int]) -> dict[str, Any]:
    """Each classifier's fold-mean AUC under every seed of a repeated cross-validation, with the mean and SD over
    seeds: how much of a difference between classifiers is the luck of one fold assignment.

    ``runs_fused`` maps each fusion's key (``cadx.methods``) to its out-of-fold scores per seed."""
    from cadx.svm import fold_auc

    per_seed: dict[str, list[float]] = {"A": [float(np.mean(r.fold_auc)) for r in runs_a]}
    if runs_b:
        per_seed["B"] = [float(np.mean(r.fold_auc)) for r in runs_b]
        for key, runs in runs_fused.items():
            per_seed[key] = [float(np.mean(fold_auc(s, y, a.fold))) for a, s in zip(runs_a, runs, strict=True)]
    return {
        "seeds": list(seeds),
        "methods": {
            key: {"title": methods[key]["title"], "auc_mean_by_seed": aucs, "auc_mean": float(np.mean(aucs)),
                  "auc_sd_between_seeds": float(np.std(aucs, ddof=1))}
            for key, aucs in per_seed.items()
        },
    }


def calibration_record(runs: list) -> dict[str, Any]:
    """What Platt's slope floor did in every fold of every seed of one classifier (its ``CvResult`` per seed).

    ``slope``: the free maximum-likelihood slope per seed and fold (decision-value units, before the floor);
    ``clamped``: folds where the floor was active (the classifier's probabilities are flat there, so the
    probability ensemble equals the other classifier in those folds); ``n_clamped`` of ``n_folds`` over all seeds;
    ``inner_mean``/``inner_sd``: the training-fold standardisation of the z-scored ensemble.
    """
    from cadx.svm import _PLATT_MIN_SLOPE

    clamped = [[bool(c) for c in r.platt_clamped] for r in runs]
    return {
        "seeds": [int(r.seed) for r in runs],
        "slope": [[float(a) for a in r.platt_free_slope] for r in runs],
        "slope_used": [[float(a) for a in r.platt[:, 0]] for r in runs],
        "clamped": clamped,
        "n_clamped": int(sum(map(sum, clamped))),
        "n_folds": int(sum(len(c) for c in clamped)),
        "floor": f"{_PLATT_MIN_SLOPE:g} / SD of the inner decision values",
        "inner_mean": [[float(m) for m in r.inner_decision_mean] for r in runs],
        "inner_sd": [[float(v) for v in r.inner_decision_sd] for r in runs],
    }


def _check_dataset(records, n_folds: int) -> None:
    lesions_by_label = {0: set(), 1: set()}
    for r in records:
        lesions_by_label[r.label].add(r.lesion_id)
    fewest = min(len(v) for v in lesions_by_label.values())
    if fewest < n_folds:
        raise CadxInputError(
            "dataset", f"{len(lesions_by_label[0])} benign and {len(lesions_by_label[1])} malignant lesions among "
            f"the included ROIs: too few for {n_folds}-fold cross-validation by lesion",
            f"import more cases (at least {n_folds} lesions of each label) or include excluded ROIs")


def method_statistics(title: str, proba: np.ndarray, result, y: np.ndarray, lesions: np.ndarray, seed: int,
                      seconds: float, *, fold_aucs: np.ndarray | None = None) -> dict[str, Any]:
    """Table-1 statistics of one classifier's out-of-fold probabilities (``result``: its CvResult, or None for the
    ensemble): fold AUC mean/SD/SE, pooled AUC with DeLong CI, lesion-level AUC, clustered bootstrap CI, ROC points,
    binormal fit."""
    fold_aucs = result.fold_auc if fold_aucs is None else fold_aucs
    summary = stats.fold_auc_summary(fold_aucs)
    delong = stats.delong_ci(y, proba)
    roc = stats.roc_points(y, proba)
    lesion_level = stats.lesion_level_scores(proba, lesions, y)
    out: dict[str, Any] = {
        "title": title,
        "auc_mean": summary.mean,
        "auc_sd": summary.sd,
        "auc_se": summary.se,
        "fold_aucs": list(summary.aucs),
        "pooled_auc": delong.auc,
        "pooled_ci95": [delong.lower, delong.upper],
        "lesion_auc": stats.auc(lesion_level.labels, lesion_level.scores),
        "lesion_clustered_bootstrap_ci95": _bootstrap(y, proba, lesions, seed),
        "roc": {"fpr": list(roc.fpr), "tpr": list(roc.tpr)},
        "seconds": seconds,
    }
    try:
        fit = stats.binormal_fit(y, proba)
        fpr, tpr = fit.curve(_CURVE_POINTS)
        out["binormal"] = {"a": fit.a, "b": fit.b, "auc": fit.auc, "se_auc": fit.se_auc, "converged": fit.converged,
                           "fpr": list(fpr), "tpr": list(tpr)}
    except ValueError as exc:  # e.g. perfect separation: no finite ML fit
        out["binormal"] = {"error": str(exc)}
    if result is not None:
        out["decision_value_auc"] = stats.auc(y, result.decision)
        out["fold_aucs_decision"] = [float(a) for a in result.fold_auc]
        out["fold_aucs_proba"] = [float(a) for a in result.fold_auc_proba]
        out["best_params"] = [dict(p) for p in result.best_params]
        out["n_features"] = int(result.n_features)
        out["n_features_kept"] = [int(k) for k in result.n_features_kept]
    return out


def _bootstrap(y, proba, lesions, seed) -> list[float] | None:
    try:
        ci = stats.clustered_bootstrap_auc_ci(y, proba, lesions, seed=seed, n_boot=1000)
    except ValueError:
        return None
    return [ci.lower, ci.upper]


def compare_methods(methods: dict, scores: dict, y: np.ndarray, folds: np.ndarray, n_folds: int, *,
                    lesions: np.ndarray, pairs: list[tuple[str, str]] | None = None) -> list[dict]:
    """DeLong, fold-wise paired t and Nadeau-Bengio p-values, Bonferroni-adjusted within each family of
    ``cadx.methods.comparison_families``: the paper's (C vs A, C vs B, A vs B) and the added z-ensemble's; or, with
    ``pairs``, those pairs as one family (e.g. Method D against A, B and C).

    Nadeau & Bengio's ``n_train``/``n_test`` count lesions (``stats.cv_unit_sizes``), not ROIs: the views of one
    lesion are not independent test cases.
    """
    n_train, n_test = stats.cv_unit_sizes(folds, lesions)
    rows = []
    families = comparison_families(set(scores)) if pairs is None else {"requested": list(pairs)}
    for family, family_pairs in families.items():
        block = []
        for first, second in family_pairs:
            delong = stats.delong_test(y, scores[first], scores[second])
            fa, fb = np.asarray(methods[first]["fold_aucs"]), np.asarray(methods[second]["fold_aucs"])
            paired = stats.paired_t_test(fa, fb)
            corrected = stats.corrected_resampled_t_test(fa - fb, n_train=n_train, n_test=n_test)
            block.append({
                "comparison": f"{first} vs {second}",
                "family": family,
                "auc_difference": delong.difference,
                "delong_p": delong.p_value,
                "delong_ci95": [delong.ci_lower, delong.ci_upper],
                "paired_t_p": paired.p_value,
                "nadeau_bengio_p": corrected.p_value,
                "nadeau_bengio_n_train": n_train,
                "nadeau_bengio_n_test": n_test,
            })
        for key in ("delong_p", "paired_t_p", "nadeau_bengio_p"):
            adjusted = stats.bonferroni([row[key] for row in block])
            for row, p in zip(block, adjusted.p_adjusted, strict=True):
                row[f"{key}_bonferroni"] = float(p)
        rows.extend(block)
    return rows


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars/arrays turned into plain JSON types and non-finite floats into None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return value


def experiment_summary(workspace: Workspace, experiment_id: int) -> dict[str, Any]:
    """An experiment's config and results as stored (for `--json` output and the app)."""
    with workspace.sessions() as session:
        experiment = session.get(Experiment, experiment_id)
        if experiment is None:
            raise CadxInputError(f"experiment {experiment_id}", "no such experiment",
                                 "list them with `cadx experiments`")
        return {"id": experiment.id, "name": experiment.name, "kind": experiment.kind,
                "created_at": experiment.created_at.isoformat(), "created_by": experiment.created_by,
                "code_version": experiment.code_version, "config_sha256": experiment.config_sha256,
                "uses_synthetic_data": experiment.uses_synthetic_data,
                "uses_random_weights": experiment.uses_random_weights, "seconds": experiment.seconds,
                "config": experiment.config, "results": experiment.results}
