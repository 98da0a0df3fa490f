"""The open-question analyses (``cadx.analyses``) on a stored experiment: its typed record (``load_experiment``),
its predictions and its features read back (CNN taps from the feature store under the experiment's backbone,
weights checksum and preprocessing; analytic features of its feature version), in the experiment's ROI order.

Method D (feature-level fusion) is cross-validated here with the experiment's own fold assignment: the same ROIs,
labels, lesion and patient groups, folds and seed given to ``cadx.svm.cross_validate_by_lesion`` give the same
folds (checked against the stored ones), so its tests against A, B and C are paired on the same splits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from cadx.analyses import embedding_2d, error_agreement, fused_features, pc_feature_correlation
from cadx.errors import CadxInputError
from cadx.labels import label_word
from cadx.records import ExperimentConfig, ExperimentRecord, MethodRecord, to_json
from cadx.workflows.experiments import compare_methods, load_experiment, method_statistics
from cadx.workflows.features import analytic_matrix, feature_store, roi_records
from cadx.workflows.results import lesion_predictions, roi_predictions
from cadx.workflows.workspace import Workspace
from db.models import Roi

if TYPE_CHECKING:
    from cadx.cnn import LoadedBackbone

__all__ = ["ExperimentData", "experiment_data", "agreement_analysis", "fold_operating_points",
           "correlation_analysis", "fusion_analysis",
           "embedding_analysis", "occlusion_analysis"]


@dataclass(frozen=True)
class ExperimentData:
    """An experiment's ROIs in its own order with what the analyses need: its typed record, its first-seed
    predictions (``roi_predictions``, in ``record.config.roi_ids`` order), labels, lesion and patient groups, folds
    and ROI pixel hashes."""

    record: ExperimentRecord
    predictions: pd.DataFrame
    y: np.ndarray
    lesions: np.ndarray
    patients: np.ndarray
    folds: np.ndarray
    hashes: list[str]

    @property
    def config(self) -> ExperimentConfig:
        """The experiment's config (``record.config``)."""
        return self.record.config

    @property
    def experiment_id(self) -> int:
        """The experiment's id (``record.id``)."""
        return self.record.id

    def roi_index(self, roi_id: int) -> int:
        """The row of ROI ``roi_id`` in the experiment (a clear error for an ROI it did not use)."""
        ids = self.predictions["roi_id"].astype(int).tolist()
        if int(roi_id) not in ids:
            raise CadxInputError(f"ROI {roi_id}", f"not in experiment {self.experiment_id}",
                                 "pick one of its ROIs (from its predictions)")
        return int(ids.index(int(roi_id)))


def experiment_data(workspace: Workspace, experiment_id: int) -> ExperimentData:
    """The experiment's config, first-seed predictions, labels, lesion/patient groups and folds, by ROI."""
    record = load_experiment(workspace, experiment_id)
    config = record.config
    predictions = roi_predictions(workspace, experiment_id)
    roi_ids = config.roi_ids
    if predictions["roi_id"].astype(int).tolist() != roi_ids:
        raise CadxInputError(f"experiment {experiment_id}", "its predictions do not cover its ROI set (ROIs deleted "
                             "since it ran?)", "run the experiment again")
    patient_of = {r.id: r.patient_id for r in roi_records(workspace, included_only=False)}
    return ExperimentData(record=record, predictions=predictions,
                          y=predictions["truth"].to_numpy(dtype=int),
                          lesions=predictions["lesion_id"].to_numpy(dtype=np.int64),
                          patients=np.array([patient_of[i] for i in roi_ids], dtype=np.int64),
                          folds=predictions["fold"].to_numpy(dtype=int), hashes=list(config.roi_sha256))


def _tap_matrix(workspace: Workspace, data: ExperimentData, tap: str | None) -> tuple[str, np.ndarray]:
    config = data.config
    tap = tap or config.ensemble_tap
    if tap not in config.taps:
        raise CadxInputError("tap", f"the experiment has no tap {tap!r}", f"use one of {config.taps}")
    try:
        X = feature_store(workspace).load(tap, data.hashes, backbone=config.backbone,
                                          weights_sha256=config.weights.sha256,
                                          preprocessing=config.preprocessing)
    except KeyError as exc:
        raise CadxInputError(f"tap {tap}", f"CNN features missing from the store ({exc})",
                             "run `cadx extract` with the experiment's backbone and weights") from exc
    return tap, np.asarray(X, dtype=np.float64)


def _analytic(workspace: Workspace, data: ExperimentData) -> tuple[np.ndarray, list[str]]:
    if not data.config.analytic_version:
        raise CadxInputError("experiment", "it ran without analytic features (Method B)",
                             "pick an experiment with SVM2")
    try:
        X, names, _quality = analytic_matrix(workspace, data.hashes)
    except KeyError as exc:
        raise CadxInputError("analytic features", str(exc), "run `cadx features`") from exc
    return X, names


def fold_operating_points(record: ExperimentRecord, key: str) -> np.ndarray:
    """The first seed's per-fold operating points of SVM ``key`` (``"A"`` or ``"B"``): decision values chosen on
    each training fold (``cadx.svm.operating_point``), as recorded; a record made before they were recorded (schema
    2 or older) is refused with the fix."""
    method = record.results.methods.get(key)
    calibration = None if method is None else method.calibration
    if calibration is None or not calibration.operating_point:
        raise CadxInputError(f"experiment {record.id}", "it was recorded before each fold's operating point (chosen "
                             "on its training data) was stored", "run the experiment again, or give a fixed "
                             "probability threshold (--threshold)")
    points = np.array([np.nan if v is None else v for v in calibration.operating_point[0]], dtype=np.float64)
    if not np.isfinite(points).all():
        raise CadxInputError(f"experiment {record.id}", f"SVM {key}'s recorded operating points are not all finite",
                             "run the experiment again")
    return points


def agreement_analysis(workspace: Workspace, experiment_id: int, *, level: str = "lesion",
                       threshold: float | None = None, top: int = 10) -> dict[str, Any]:
    """Do SVM1 and SVM2 err on the same lesions (or ROIs)? The 2 × 2 table, McNemar, φ, Spearman, and the cases
    with the largest |p1 − p2|.

    ``threshold=None`` (the default) calls a case malignant where its decision value (a lesion: the mean of its
    ROIs') reaches its fold's operating point, chosen on that fold's training data only and recorded with the
    experiment (``fold_operating_points``); a number is a fixed probability threshold on p1 and p2 instead. Either
    way φ and McNemar are refused, with the reason, when a classifier calls every case one class. The result's
    ``operating_points`` gives each fold's thresholds."""
    frame = (lesion_predictions(workspace, experiment_id) if level == "lesion"
             else roi_predictions(workspace, experiment_id))
    if frame.empty or frame["p2"].isna().any():
        raise CadxInputError(f"experiment {experiment_id}", "no SVM2 probabilities (it ran SVM1 only)",
                             "pick an experiment with analytic features")
    unit = "lesions" if level == "lesion" else "ROIs"
    names = ("SVM1 (CNN)", "SVM2 (analytic)")
    folds = frame["fold"].to_numpy(dtype=int)
    if threshold is None:
        record = load_experiment(workspace, experiment_id)
        points = {key: fold_operating_points(record, key) for key in ("A", "B")}
        rule = record.results.methods["A"].calibration.operating_point_rule  # type: ignore[union-attr]
        result = error_agreement(frame["decision1"].to_numpy(float), frame["decision2"].to_numpy(float),
                                 frame["truth"].to_numpy(int), threshold=points["A"][folds],
                                 threshold2=points["B"][folds], top=top, names=names, unit=unit)
        operating = pd.DataFrame({"fold": np.arange(len(points["A"])), "SVM1 decision ≥": points["A"],
                                  "SVM2 decision ≥": points["B"]})
        called = "each fold's operating point (decision value, chosen on its training data: " + str(rule) + ")"
    else:
        result = error_agreement(frame["p1"].to_numpy(float), frame["p2"].to_numpy(float),
                                 frame["truth"].to_numpy(int), threshold=threshold, top=top, names=names, unit=unit)
        operating = pd.DataFrame({"fold": sorted(set(folds.tolist())), "SVM1 p ≥": threshold, "SVM2 p ≥": threshold})
        called = f"a fixed probability threshold of {threshold:g} (not chosen on training data)"
    frame = frame.copy()  # right/wrong as called here (the predictions' own columns use each method's fixed cut)
    truth = frame["truth"].to_numpy(int) == 1
    if threshold is None:
        frame["right_p1"] = (frame["decision1"].to_numpy(float) >= points["A"][folds]) == truth
        frame["right_p2"] = (frame["decision2"].to_numpy(float) >= points["B"][folds]) == truth
    else:
        frame["right_p1"] = (frame["p1"].to_numpy(float) >= threshold) == truth
        frame["right_p2"] = (frame["p2"].to_numpy(float) >= threshold) == truth
    columns = [c for c in ("roi_id", "lesion_id", "lesion_key", "patient_key", "view", "truth", "fold", "p1", "p2",
                           "disagreement", "right_p1", "right_p2") if c in frame.columns]
    table = pd.DataFrame(result.table, index=["SVM1 right", "SVM1 wrong"], columns=["SVM2 right", "SVM2 wrong"])
    return {"level": level, "threshold": threshold, "called_at": called, "operating_points": operating,
            "result": result, "table": table,
            "disagreeing": frame.iloc[result.most_disagreeing][columns].reset_index(drop=True)}


def correlation_analysis(workspace: Workspace, experiment_id: int, *, tap: str | None = None,
                         n_components: int = 10) -> dict[str, Any]:
    """Pearson r between a tap's top principal components and the 21 analytic features, over the experiment's
    ROIs."""
    data = experiment_data(workspace, experiment_id)
    tap, X = _tap_matrix(workspace, data, tap)
    F, names = _analytic(workspace, data)
    result = pc_feature_correlation(X, F, feature_names=names, n_components=n_components)
    frame = pd.DataFrame(result.correlation, columns=names,
                         index=[f"PC{i + 1} ({v:.1%})" for i, v in enumerate(result.explained_variance_ratio)])
    return {"tap": tap, "result": result, "frame": frame}


def fusion_analysis(workspace: Workspace, experiment_id: int, *, tap: str | None = None,
                    n_jobs: int = 1) -> dict[str, Any]:
    """Method D: the tap's CNN features and the analytic features in one SVM, cross-validated with the experiment's
    folds, seed and grid; its Table-1 statistics and its tests against A, B and C (Bonferroni over the three)."""
    from cadx.svm import cross_validate_by_lesion

    data = experiment_data(workspace, experiment_id)
    config = data.config
    tap, X_cnn = _tap_matrix(workspace, data, tap)
    X_b, _names = _analytic(workspace, data)
    grid = config.grid  # a dict, or the name of cadx's default grid
    started = time.perf_counter()
    result = cross_validate_by_lesion(fused_features(X_cnn, X_b), data.y, data.lesions, patients=data.patients,
                                      n_folds=config.n_folds, n_inner=config.n_inner,
                                      grid=grid if isinstance(grid, dict) else None, seed=config.seed,
                                      n_jobs=n_jobs)
    seconds = time.perf_counter() - started
    if not np.array_equal(result.fold, data.folds):
        raise RuntimeError("Method D's folds differ from the experiment's stored folds; its tests would not be paired")
    title = f"Fusion (CNN {config.backbone} {tap} + analytic features)"
    methods: dict[str, MethodRecord] = {
        "D": method_statistics(title, result.proba, result, data.y, data.lesions, config.seed, seconds)}
    stored = data.record.results.methods
    scores = {"D": result.proba}
    predictions = data.predictions
    for key, column in (("A", "p1"), ("B", "p2"), ("C", "p3")):
        if key in stored and not predictions[column].isna().any():
            methods[key] = stored[key]
            scores[key] = predictions[column].to_numpy(float)
    pairs: list[tuple[str, str]] = [("D", k) for k in ("A", "B", "C") if k in scores]
    comparisons = compare_methods(methods, scores, data.y, data.folds, config.n_folds, lesions=data.lesions,
                                  pairs=pairs)
    return {"tap": tap, "method": to_json(methods["D"]), "comparisons": to_json(comparisons),
            "proba": result.proba, "n_features": int(result.n_features)}


def embedding_analysis(workspace: Workspace, experiment_id: int, *, tap: str | None = None, perplexity: float = 30.0,
                       seed: int = 0) -> pd.DataFrame:
    """A t-SNE map of a tap's features over the experiment's ROIs, with each ROI's label, QC flags, whether it is
    QC flags, review status now (included / flagged / excluded since), lesion and p1: one row per ROI (columns x, y,
    roi_id, lesion_key, label, flagged, ...)."""
    data = experiment_data(workspace, experiment_id)
    tap, X = _tap_matrix(workspace, data, tap)
    xy = embedding_2d(X, perplexity=perplexity, seed=seed)
    with workspace.sessions() as session:
        flags = dict(session.execute(select(Roi.id, Roi.qc_flags)).all())
    frame = data.predictions[["roi_id", "lesion_key", "patient_key", "view", "truth", "p1", "included_now"]].copy()
    frame.insert(0, "y", xy[:, 1])
    frame.insert(0, "x", xy[:, 0])
    frame["label"] = [label_word(t) for t in frame["truth"]]
    frame["qc_flags"] = [", ".join(flags.get(int(i)) or []) for i in frame["roi_id"]]
    frame["status"] = [("excluded since" if not included else "flagged" if qc else "included")
                       for included, qc in zip(frame["included_now"].astype(bool), frame["qc_flags"], strict=True)]
    frame["tap"] = tap
    return frame


# ------------------------------------------------------------------------------------------------ occlusion ---
def _backbone_for(config: ExperimentConfig, loaded: LoadedBackbone | None = None) -> LoadedBackbone:
    from cadx.cnn import load_backbone

    weights = config.weights
    if loaded is None:
        loaded = load_backbone(config.backbone, "random" if weights.source == "random" else "default",
                               download=False)
    if loaded.name != config.backbone or loaded.weights.sha256 != weights.sha256:
        raise CadxInputError("weights", f"the loaded {loaded.name} weights ({loaded.weights.sha256[:12]}…) are not "
                             f"the experiment's ({config.backbone}, {weights.sha256[:12]}…)",
                             "load the experiment's weights (e.g. --weights-path with the same file)")
    return loaded


_Scorer = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray], float, int]


def _stored_scorer(workspace: Workspace, data: ExperimentData, index: int, tap: str) -> _Scorer | None:
    """The fold's stored SVM1 (None for an experiment recorded before fold models were stored): a scorer of raw tap
    features, the ROI's decision value through it and the fold."""
    from cadx.workflows.foldmodels import load_fold_models, score_roi

    models = load_fold_models(workspace, data.experiment_id, tap=tap)
    if models is None:
        return None
    config = data.config
    store = feature_store(workspace)

    def features(rows: Any) -> np.ndarray:
        return store.load(tap, [data.hashes[int(i)] for i in rows], backbone=config.backbone,
                          weights_sha256=config.weights.sha256, preprocessing=config.preprocessing)

    score = score_roi(models, index, features, tap=tap)
    model = models[score.fold]
    support_X = np.asarray(features(model.support), dtype=np.float64)
    return (lambda X: model.decision_function(X, support_X)), model.proba, score.decision, score.fold


def occlusion_analysis(workspace: Workspace, experiment_id: int, roi_id: int, *, patch: int = 64, stride: int = 32,
                       loaded: LoadedBackbone | None = None) -> dict[str, Any]:
    """Occlusion sensitivity of p1 for one ROI of an experiment.

    The ROI's fold SVM1 is the one stored with the experiment (``cadx.workflows.foldmodels``; it reproduces the
    ROI's stored decision value to 1e-10). For an experiment recorded before fold models were stored, the fold's
    SVM1 is refitted from the stored features of the fold's training ROIs with the fold's stored (a, c, d) (checked
    against the stored decision value) and the fold's Platt sigmoid is recovered exactly from the stored
    (decision value, p1) pairs of the fold's test ROIs; ``model_source`` says which. Each occluded copy is run
    through the backbone to the SVM1 tap and scored.

    Returns a dict with ``map`` (:class:`cadx.occlusion.OcclusionMap`, in p1 units), ``p1_stored``, ``p1``
    (recomputed), ``decision_stored``, ``decision``, ``fold``, ``tap``, ``patch``, ``stride``, ``model_source``
    (``"stored"`` or ``"refit"``), ``platt_clamped`` (the fold's SVM1 Platt slope was held at its floor in the
    first seed, whose folds the predictions are; False when the record predates calibration records) and
    ``scale`` (:class:`cadx.occlusion.OcclusionScale`: the colour scale in p units and whether the map is
    degenerate).
    """
    from cadx.cnn import extract_features
    from cadx.occlusion import occlusion_map, occlusion_scale
    from cadx.roi import decode_png16

    data = experiment_data(workspace, experiment_id)
    config = data.config
    index = data.roi_index(roi_id)
    loaded = _backbone_for(config, loaded)
    tap = config.ensemble_tap
    decision_stored = float(data.predictions["decision1"].iloc[index])
    stored = _stored_scorer(workspace, data, index, tap)
    if stored is not None:
        decide, to_p1, decision, fold = stored
        source = "stored"
    else:
        decide, to_p1, decision, fold = _refitted_scorer(workspace, data, index, tap)
        source = "refit"
    if not np.isclose(decision, decision_stored, rtol=1e-6, atol=1e-6):
        raise RuntimeError(f"the fold-{fold} SVM gives {decision} for ROI {roi_id}, the record {decision_stored}: "
                           "the stored features or parameters do not reproduce the experiment")

    with workspace.sessions() as session:
        roi = session.get(Roi, int(roi_id))
        if roi is None:
            raise CadxInputError(f"ROI {roi_id}", "no such ROI (deleted since the experiment ran?)",
                                 "pick another ROI of the experiment")
        roi_file = roi.file
    pixels = decode_png16(workspace.path(roi_file).read_bytes())

    def score(stack: np.ndarray) -> np.ndarray:
        features = extract_features(stack, backbone=loaded, taps=[tap], batch_size=len(stack))[tap]
        return np.asarray(to_p1(decide(np.asarray(features, dtype=np.float64))))

    result = occlusion_map(pixels, score, patch=patch, stride=stride, batch_size=16)
    clamped = _fold_clamped(data, fold)
    return {"map": result, "platt_clamped": clamped,
            "scale": occlusion_scale(result.sensitivity, platt_clamped=clamped), "p1": result.base_score,
            "p1_stored": float(data.predictions["p1"].iloc[index]),
            "decision": decision, "decision_stored": decision_stored, "fold": fold, "tap": tap, "patch": patch,
            "stride": stride, "model_source": source}


def _fold_clamped(data: ExperimentData, fold: int) -> bool:
    """Whether SVM1's Platt slope was held at its floor in ``fold`` of the first seed (the record's calibration)."""
    method = data.record.results.methods.get("A")
    calibration = None if method is None else method.calibration
    if calibration is None or not calibration.clamped:
        return False
    first = calibration.clamped[0]
    return bool(first[fold]) if 0 <= fold < len(first) else False


def _refitted_scorer(workspace: Workspace, data: ExperimentData, index: int, tap: str) -> _Scorer:
    """The fallback for experiments without stored fold models: refit the fold's SVM1 with its stored (a, c, d)
    and recover its sigmoid from the fold's stored (decision value, p1) pairs."""
    from cadx.svm import make_svm_pipeline

    fold = int(data.folds[index])
    params = data.record.results.methods["A"].best_params
    if not params:
        raise CadxInputError(f"experiment {data.experiment_id}", "its record has no per-fold SVM parameters",
                             "run the experiment again")
    _tap, X = _tap_matrix(workspace, data, tap)
    train = data.folds != fold
    model = make_svm_pipeline(**params[fold]).fit(X[train], data.y[train])
    test = ~train
    f_test = data.predictions["decision1"].to_numpy(float)[test]
    p_test = np.clip(data.predictions["p1"].to_numpy(float)[test], 1e-15, 1 - 1e-15)
    if np.ptp(f_test) == 0:
        raise CadxInputError(f"fold {fold}", "its decision values are all equal: no sigmoid to recover",
                             "use another experiment")
    slope, intercept = np.polyfit(f_test, np.log(p_test / (1 - p_test)), 1)
    decision = float(model.decision_function(X[index:index + 1])[0])

    def to_p1(f: np.ndarray) -> np.ndarray:
        return np.asarray(1.0 / (1.0 + np.exp(-(slope * np.asarray(f) + intercept))))

    return model.decision_function, to_p1, decision, fold
