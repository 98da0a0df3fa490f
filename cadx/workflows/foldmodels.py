"""An experiment's fitted per-fold classifiers, stored with it (table ``fold_models``) and applied without a refit.

``run_experiment`` keeps the first seed's fold models of every swept tap (SVM1 at each tap) and of Method B (SVM2)
and stores them in the experiment's transaction (:func:`fold_model_rows`). Readers get them back with
:func:`load_fold_models` (``None`` for an experiment recorded before models were stored: callers fall back to a
refit and say so), score an ROI of the experiment at a tap with :func:`score_roi` (checked against the ROI's own
stored out-of-fold decision value) and read a tap's out-of-fold scores of every ROI with :func:`tap_oof_scores`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from cadx.errors import CadxInputError
from cadx.foldmodel import FoldModel, FoldModelError, read_test_scores
from cadx.workflows.workspace import Workspace
from db.models import FoldModelRecord

__all__ = ["ANALYTIC", "CNN", "RoiScore", "fold_model_rows", "has_fold_models", "load_fold_models",
           "load_oof_scores", "score_roi", "stored_taps", "tap_oof_scores"]

CNN = "cnn"
ANALYTIC = "analytic"
_REPRODUCE_ATOL = 1e-10  # absolute, in decision-value units (scaled by max(1, |f|))


def fold_model_rows(experiment_id: int, cnn: dict[str, Any], analytic: Any = None) -> list[FoldModelRecord]:
    """Rows for the first seed's fold models: ``cnn`` maps each swept tap to its first-seed ``CvResult``;
    ``analytic`` is Method B's (or None). Results without models (``keep_models`` off) add nothing."""
    rows = []
    for classifier, tap, result in [*((CNN, t, r) for t, r in cnn.items()), *([(ANALYTIC, "", analytic)]
                                                                               if analytic is not None else [])]:
        for fold, model in enumerate(result.models or ()):
            rows.append(FoldModelRecord(experiment_id=experiment_id, classifier=classifier, tap=tap, fold=fold,
                                        payload=model.to_bytes(), scores=model.test_scores_bytes()))
    return rows


def has_fold_models(workspace: Workspace, experiment_id: int) -> bool:
    """Whether the experiment was stored with its fold models."""
    with workspace.sessions() as session:
        return session.scalar(select(FoldModelRecord.id).where(FoldModelRecord.experiment_id == experiment_id)
                              .limit(1)) is not None


def load_fold_models(workspace: Workspace, experiment_id: int, *, tap: str = "",
                     classifier: str = CNN) -> list[FoldModel] | None:
    """The fold models of one tap (``classifier="cnn"``) or of Method B (``classifier="analytic"``), by fold;
    ``None`` when the experiment has none stored for it.

    Raises
    ------
    CadxInputError
        When a stored payload is malformed (e.g. a tampered restore): naming the experiment, tap and fold.
    """
    rows = _fold_rows(workspace, experiment_id, classifier, tap, FoldModelRecord.payload)
    if not rows:
        return None
    if [f for f, _ in rows] != list(range(len(rows))):
        raise CadxInputError(f"experiment {experiment_id} {classifier} {tap}", "its stored folds are incomplete",
                             "run the experiment again")
    where = f"experiment {experiment_id} {classifier} {tap or 'analytic'}"
    try:
        return [FoldModel.from_bytes(payload, where=f"{where} fold {fold}") for fold, payload in rows]
    except FoldModelError as exc:
        raise CadxInputError(where, str(exc), "run the experiment again (the stored model is not usable)") from exc


def _fold_rows(workspace: Workspace, experiment_id: int, classifier: str, tap: str,
               column: Any) -> list[tuple[int, bytes]]:
    """(fold, ``column``) of one classifier and tap of an experiment, in fold order."""
    with workspace.sessions() as session:
        rows = session.execute(
            select(FoldModelRecord.fold, column)
            .where(FoldModelRecord.experiment_id == experiment_id, FoldModelRecord.classifier == classifier,
                   FoldModelRecord.tap == tap).order_by(FoldModelRecord.fold)).all()
    return [(int(fold), value) for fold, value in rows]


def stored_taps(workspace: Workspace, experiment_id: int) -> list[str]:
    """The CNN taps whose fold models the experiment stored."""
    with workspace.sessions() as session:
        return sorted(set(session.scalars(select(FoldModelRecord.tap).where(
            FoldModelRecord.experiment_id == experiment_id, FoldModelRecord.classifier == CNN))))


def load_oof_scores(workspace: Workspace, experiment_id: int, n_rois: int, *, tap: str = "",
                    classifier: str = CNN) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A tap's out-of-fold decision values, probabilities and folds of every ROI, as its stored fold models
    recorded them (only their test rows are read); ``None`` when the experiment stored none."""
    rows = _fold_rows(workspace, experiment_id, classifier, tap, FoldModelRecord.scores)
    if not rows:
        return None
    decision, proba, fold = np.full(n_rois, np.nan), np.full(n_rois, np.nan), np.full(n_rois, -1, dtype=np.int64)
    where = f"experiment {experiment_id} {classifier} {tap or 'analytic'}"
    for k, payload in rows:
        try:
            test, d, p = read_test_scores(payload, where=f"{where} fold {k}")
        except FoldModelError as exc:
            raise CadxInputError(where, str(exc), "run the experiment again") from exc
        if len(test) and test.max() >= n_rois:
            raise CadxInputError(where, "test rows outside the experiment's ROI set", "run the experiment again")
        decision[test], proba[test], fold[test] = d, p, k
    return decision, proba, fold


def tap_oof_scores(models: list[FoldModel], n_rois: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold decision values, probabilities and fold of every ROI (experiment order), from the models' test
    rows."""
    decision, proba, fold = np.full(n_rois, np.nan), np.full(n_rois, np.nan), np.full(n_rois, -1, dtype=np.int64)
    for k, model in enumerate(models):
        if len(model.test) and model.test.max() >= n_rois:
            raise CadxInputError(f"fold {k} model", "its test rows lie outside the experiment's ROI set",
                                 "run the experiment again")
        decision[model.test], proba[model.test], fold[model.test] = model.test_decision, model.test_proba, k
    return decision, proba, fold


@dataclass(frozen=True)
class RoiScore:
    """An experiment ROI scored at one tap by the stored model of the fold in which it was a test ROI."""

    tap: str
    fold: int
    decision: float
    proba: float
    decision_stored: float


def score_roi(models: list[FoldModel], roi_index: int, features: Any, *, tap: str) -> RoiScore:
    """Score the experiment's ROI number ``roi_index`` with its fold's stored model.

    ``features(rows)`` returns the raw features of the given experiment rows at the tap (e.g. a feature-store load
    of their hashes). The result must reproduce the ROI's stored out-of-fold decision value (to 1e-10 relative to
    max(1, |f|)); a changed feature store or model raises.
    """
    for k, model in enumerate(models):
        hit = np.flatnonzero(model.test == roi_index)
        if len(hit):
            rows = np.concatenate([[roi_index], model.support])
            X = np.asarray(features(rows), dtype=np.float64)
            decision = float(model.decision_function(X[:1], X[1:])[0])
            stored = float(model.test_decision[hit[0]])
            if not abs(decision - stored) <= _REPRODUCE_ATOL * max(1.0, abs(stored)):
                raise CadxInputError(f"tap {tap} fold {k}", f"the stored model gives {decision!r} for the ROI, the "
                                     f"experiment recorded {stored!r}: the feature store changed since it ran",
                                     "extract the features again with the experiment's weights, or rerun it")
            return RoiScore(tap=tap, fold=k, decision=decision, proba=float(model.proba(np.asarray(decision))),
                            decision_stored=stored)
    raise CadxInputError(f"ROI #{roi_index}", f"not a test ROI of any stored fold of tap {tap}",
                         "pick an ROI of the experiment")
