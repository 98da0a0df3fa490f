"""Reading experiments back for the app and the CLI: the layer sweep (Fig. 3), Table 1 and the ROC curves (Fig. 4)
at ROI or lesion level, per-ROI and per-lesion predictions, an ROI with its segmentation outline, the backbone in
use; and the two edits an experiment allows: renaming and deleting.

Everything here reads what ``run_experiment`` stored; the one computation is the lesion level, which aggregates the
stored out-of-fold ROI probabilities (a lesion's score is the mean of its ROIs' probabilities) and runs the same
statistics as the ROI level (``cadx.stats``).
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from sqlalchemy import CursorResult, delete, select, update

from cadx import stats, words
from cadx.backbones import backbone_label
from cadx.errors import CadxInputError
from cadx.labels import label_word
from cadx.methods import METHODS
from cadx.outline import decode_mask_png, draw_outline
from cadx.permutation import PermutationResult, tap_name
from cadx.records import (
    Comparison,
    ExperimentResults,
    LevelResults,
    MethodRecord,
    SweepLayer,
    experiment_name,
    read_results,
)
from cadx.roi import decode_png16
from cadx.workflows.accounts import record_audit
from cadx.workflows.experiments import compare_methods, method_statistics, record_of
from cadx.workflows.workspace import Workspace
from db.models import Experiment, Image, Job, Lesion, Patient, Prediction, Roi, Segmentation

__all__ = [
    "METHOD_NAMES",
    "Level",
    "backbone_choices",
    "backbone_status",
    "best_tap_text",
    "sweep_best_tap_text",
    "COMPARISON_COLUMNS",
    "calibration_notes",
    "comparison_table",
    "delete_experiment",
    "experiment_results",
    "headline_test_name",
    "lesion_predictions",
    "list_experiments",
    "method_table",
    "readable_cases",
    "rename_experiment",
    "repeats_table",
    "roc_curve_table",
    "roi_overlay",
    "roi_predictions",
    "sweep_table",
]

Level = Literal["roi", "lesion"]

#: Table-1 names of the classifiers (from the registry ``cadx.methods.METHODS``).
METHOD_NAMES = {key: m.name for key, m in METHODS.items()}
_SCORE_COLUMNS = [m.column for m in METHODS.values()]  # p1, p2, p3, pz


def _experiment(session: Any, experiment_id: int) -> Experiment:
    experiment: Experiment | None = session.get(Experiment, experiment_id)
    if experiment is None:
        raise CadxInputError(f"experiment {experiment_id}", "no such experiment",
                             "pick one from the Experiments page or `cadx experiments`")
    return experiment


# ------------------------------------------------------------------------------------------------- experiments ---
def list_experiments(workspace: Workspace, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Experiments, newest first, with what identifies and reproduces each (no per-ROI arrays)."""
    query = select(Experiment).order_by(Experiment.id.desc())
    if limit is not None:
        query = query.limit(limit)
    with workspace.sessions() as session:
        experiments = list(session.scalars(query))
        records = [record_of(e) for e in experiments]
    rows = []
    for r in records:
        config, results = r.config, r.results
        sweep = results.sweep
        best_tap = max(sweep, key=lambda t: _auc_or_lowest(sweep[t])) if sweep else None
        best = sweep[best_tap] if best_tap else None
        rows.append({
            "id": r.id,
            "name": r.name,
            "kind": r.kind,
            "created_at": datetime.fromisoformat(r.created_at),
            "created_by": r.created_by,
            "backbone": config.backbone,
            "weights": config.weights.name,
            "weights_source": config.weights.source,
            "weights_sha256": config.weights.sha256,
            "taps": list(config.taps),
            "ensemble_tap": config.ensemble_tap,
            "analytic": config.analytic_version is not None,
            "n_folds": config.n_folds,
            "n_inner": config.n_inner,
            "seed": config.seed,
            "repeats": config.repeats,
            "n_rois": results.n_rois,
            "n_lesions": results.n_lesions,
            "n_patients": results.n_patients,
            "n_excluded": len(config.excluded_roi_ids),
            "cohort": None if config.cohort is None else config.cohort.name,  # None: recorded before cohorts
            "roi_set_sha256": config.roi_set_sha256,
            "best_tap": best_tap,
            "best_tap_auc": None if best is None else best.auc_mean,
            "best_tap_sd_between_seeds": None if best is None else best.auc_sd_between_seeds,
            "best_tap_text": best_tap_text(best_tap, None if best is None else best.auc_mean,
                                           None if best is None else best.auc_sd_between_seeds, config.repeats),
            **{f"auc_{key}": results.methods[key].auc_mean if key in results.methods else None for key in METHODS},
            "code_version": r.code_version,
            "config_sha256": r.config_sha256,
            "seconds": r.seconds,
            "uses_synthetic_data": r.uses_synthetic_data,
            "uses_random_weights": r.uses_random_weights,
        })
    return rows


def _auc_or_lowest(layer: SweepLayer) -> float:
    return -1.0 if layer.auc_mean is None else layer.auc_mean


def sweep_best_tap_text(results: ExperimentResults, repeats: int, *,
                        permutation: PermutationResult | None = None) -> str:
    """:func:`best_tap_text` of an experiment's sweep: the tap with the highest mean AUC over
    seeds, the maximum of all the sweep's taps; "" when the experiment swept fewer than two taps."""
    if len(results.sweep) < 2:
        return ""
    best = max(results.sweep, key=lambda t: _auc_or_lowest(results.sweep[t]))
    top = results.sweep[best]
    return best_tap_text(best, top.auc_mean, top.auc_sd_between_seeds, repeats, n_taps=len(results.sweep),
                         permutation=permutation)


def best_tap_text(tap: str | None, auc_mean: float | None, sd_between_seeds: float | None, repeats: int, *,
                  n_taps: int | None = None, permutation: PermutationResult | None = None) -> str:
    """The tap with the highest mean AUC, always with its spread between seeds, e.g. ``"best tap fc6: 0.812 ±
    0.021 (SD over 5 seeds)"``; with one seed it says that no spread was measured (None or NaN: not measured).

    With ``n_taps > 1`` it says the tap is the maximum of ``n_taps`` (chosen after looking at all of them) and, with
    the experiment's ``permutation`` test, gives the selection-adjusted p (max-statistic over the taps; Bonferroni
    beside it) and one run's spread under the null (the permutation null SD of that tap), which the seed SD
    understates; without one it says that the choice is not adjusted for."""
    if tap is None or auc_mean is None or math.isnan(auc_mean):
        return ""
    if repeats > 1 and sd_between_seeds is not None and not math.isnan(sd_between_seeds):
        text = f"best tap {tap}: {auc_mean:.3f} ± {sd_between_seeds:.3f} (SD over {repeats} seeds)"
    else:
        text = (f"highest AUC at {tap}: {auc_mean:.3f} on one seed (no spread measured: repeat over seeds "
                "before calling a tap best)")
    if n_taps is None or n_taps < 2:
        return text
    text += f"; the maximum of {n_taps} taps"
    if permutation is None or permutation.best_tap_p_max is None:
        return text + (", not adjusted for choosing it (a permutation test gives the selection-adjusted p: "
                       "`cadx permutation-test`)")
    own = permutation.statistics.get(tap_name(tap))
    spread = (f"; one run's spread under the null: SD {own.null.sd:.3f} (permutation null of {tap}; the seed SD "
              "understates the uncertainty)" if own is not None and own.null.sd is not None else "")
    # Bonferroni for the tap named here (chosen by its mean over seeds; the permutations use the first seed's folds)
    bonferroni = (f"; {tap}'s own p {own.p_value:.3g} × {permutation.n_taps} taps (Bonferroni): "
                  f"{min(1.0, permutation.n_taps * own.p_value):.3g}" if own is not None else "")
    return (text + f": selection-adjusted p = {permutation.best_tap_p_max:.3g} ± "
            f"{permutation.best_tap_p_max_mc_se or 0.0:.2g} (max-statistic over {permutation.n_taps} taps, "
            f"{permutation.n_permutations} permutations{bonferroni})" + spread)


def calibration_notes(results: LevelResults) -> list[str]:
    """One sentence per classifier whose Platt slope was held at its floor in some folds (a *degenerate* fold: its
    probabilities are flat there, so the probability ensemble ranks by the other classifier alone), e.g. "SVM1
    carried no signal in 15/25 folds: the ensemble (p1 + p2) / 2 equals SVM2 there"."""
    methods = results.methods
    notes = []
    for key, other in (("A", "B"), ("B", "A")):
        calibration = methods[key].calibration if key in methods else None
        if calibration is None or not calibration.n_clamped:
            continue
        short, other_short = METHODS[key].name.split(" ")[0], METHODS[other].name.split(" ")[0]
        n_seeds = len(calibration.seeds)
        folds_per_seed = calibration.n_folds // n_seeds if n_seeds else calibration.n_folds
        over = f" ({folds_per_seed} folds × {n_seeds} seeds)" if n_seeds > 1 else ""
        note = (f"{short} carried no signal in {calibration.n_clamped}/{calibration.n_folds} folds{over}: its "
                "Platt slope on the inner cross-validated decision values was ≤ 0 (held at the floor "
                f"{calibration.floor}), so its probabilities are flat there")
        if "C" in methods and other in methods:
            note += (f" and the ensemble (p1 + p2) / 2 equals {other_short} there. Compare the z-scored ensemble, "
                     "which weighs both SVMs' decision values equally" if "Z" in methods else
                     f" and the ensemble (p1 + p2) / 2 equals {other_short} there")
        notes.append(note + ".")
    return notes


def rename_experiment(workspace: Workspace, experiment_id: int, name: str, *, user: str) -> None:
    """Give an experiment a new name (its config and numbers never change)."""
    name = experiment_name(name)
    with workspace.sessions.begin() as session:
        experiment = _experiment(session, experiment_id)
        record_audit(session, user=user, action="experiment_rename", target=f"experiment {experiment_id}",
                     detail={"from": experiment.name, "to": name})
        experiment.name = name


def delete_experiment(workspace: Workspace, experiment_id: int, *, user: str) -> int:
    """Delete an experiment and its predictions (features and ROIs stay); returns how many predictions went.

    The audit trail keeps what was deleted: name, config hash, code version and the headline AUCs.
    """
    with workspace.sessions.begin() as session:
        experiment = _experiment(session, experiment_id)
        record_audit(session, user=user, action="experiment_delete", target=f"experiment {experiment_id}",
                     detail={"name": experiment.name, "config_sha256": experiment.config_sha256,
                             "code_version": experiment.code_version, "created_by": experiment.created_by,
                             "aucs": {m: r.auc_mean for m, r in read_results(experiment.results).methods.items()}})
        deleted = session.execute(delete(Prediction).where(Prediction.experiment_id == experiment_id))
        n = cast("CursorResult[Any]", deleted).rowcount
        session.execute(update(Job).where(Job.experiment_id == experiment_id).values(experiment_id=None))
        session.execute(delete(Experiment).where(Experiment.id == experiment_id))
    return int(n or 0)


# ------------------------------------------------------------------------------------------------------ sweep ---
def sweep_table(workspace: Workspace, experiment_ids: list[int]) -> pd.DataFrame:
    """Fig. 3 as rows: one per (experiment, tap), taps in network order, with feature lengths and time.

    Columns: experiment_id, experiment, backbone, weights_source, depth (0 = first tap, 1 = last), order, tap,
    n_features, n_features_nonconstant, auc_mean, auc_sd, auc_se, auc_sd_between_seeds (SD over seeds of the
    fold-mean AUC; None with one seed), seconds, n_folds, repeats (seeds; with several, the AUC is the mean over
    all their folds and SD/SE are averaged over seeds).
    """
    rows = []
    with workspace.sessions() as session:
        for experiment_id in experiment_ids:
            r = record_of(_experiment(session, experiment_id))
            taps = [t for t in r.config.taps if t in r.results.sweep]
            for order, tap in enumerate(taps):
                layer = r.results.sweep[tap]
                rows.append({
                    "experiment_id": r.id,
                    "experiment": f"#{r.id} {r.name}",
                    "backbone": r.config.backbone,
                    "weights_source": r.config.weights.source,
                    "depth": order / (len(taps) - 1) if len(taps) > 1 else 1.0,
                    "order": order,
                    "tap": tap,
                    "n_features": layer.n_features,
                    "n_features_nonconstant": layer.n_features_nonconstant,
                    "auc_mean": layer.auc_mean,
                    "auc_sd": layer.auc_sd,
                    "auc_se": layer.auc_se,
                    "auc_sd_between_seeds": layer.auc_sd_between_seeds,
                    "seconds": layer.seconds,
                    "n_folds": len(layer.fold_aucs),
                    "repeats": r.config.repeats,
                })
    columns = ["experiment_id", "experiment", "backbone", "weights_source", "depth", "order", "tap", "n_features",
               "n_features_nonconstant", "auc_mean", "auc_sd", "auc_se", "auc_sd_between_seeds", "seconds", "n_folds",
               "repeats"]
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------- methods and ROC ---
def experiment_results(workspace: Workspace, experiment_id: int, level: Level = "roi") -> LevelResults:
    """Methods A/B/C and their comparisons at ROI level (as stored) or lesion level (computed here).

    Returns a ``cadx.records.LevelResults`` (methods and comparisons typed as in the stored record); ``repeats``
    (ROI level, as stored;
    None without repeated cross-validation) is the same at both levels. At lesion level a lesion's score is the mean of
    its ROIs' out-of-fold probabilities; every lesion lies in one fold, so fold AUCs, DeLong, the binormal fit,
    the paired and Nadeau-Bengio t-tests are all computed on lesions.
    """
    if level not in ("roi", "lesion"):
        raise CadxInputError("level", f"unknown level {level!r}", "use 'roi' or 'lesion'")
    with workspace.sessions() as session:
        record = record_of(_experiment(session, experiment_id))
    results, config = record.results, record.config
    if level == "roi":
        return LevelResults(level="roi", n_cases=results.n_rois, n_positive=results.n_malignant_rois,
                            methods=dict(results.methods), comparisons=list(results.comparisons),
                            repeats=results.repeats)
    from cadx.svm import fold_auc  # loaded only here: the pages that never need it start faster

    lesions = lesion_predictions(workspace, experiment_id)
    y = lesions["truth"].to_numpy(dtype=int)
    folds = lesions["fold"].to_numpy(dtype=int)
    ids = lesions["lesion_id"].to_numpy()
    methods: dict[str, MethodRecord] = {}
    scores: dict[str, np.ndarray] = {}
    for key, method in METHODS.items():
        stored, column = results.methods.get(key), method.column
        if stored is None or column not in lesions or lesions[column].isna().any():
            continue
        s = lesions[column].to_numpy(dtype=float)
        fold_aucs = fold_auc(s, y, folds)
        fold_aucs = fold_aucs[np.isfinite(fold_aucs)]
        methods[key] = dataclasses.replace(  # the calibration is a property of the folds, the same at both levels
            method_statistics(stored.title, s, None, y, ids, config.seed, stored.seconds, fold_aucs=fold_aucs),
            calibration=stored.calibration)
        scores[key] = s
    comparisons = []
    if {"A", "B", "C"} <= methods.keys():
        # the headline test runs over every seed's folds: each seed's lesion scores and folds
        seeds = [lesions] + [lesion_predictions(workspace, experiment_id, repeat=r) for r in range(1, config.repeats)]
        if any(not (frame["lesion_id"].to_numpy() == ids).all() for frame in seeds):
            raise RuntimeError("the seeds' lesion predictions cover different lesions")
        by_seed = {key: [list(fold_auc(frame[METHODS[key].column].to_numpy(dtype=float), y,
                                       frame["fold"].to_numpy(dtype=int))) for frame in seeds] for key in methods}
        comparisons = compare_methods(methods, scores, y, folds, config.n_folds, lesions=ids,
                                      fold_aucs_by_seed=by_seed,
                                      folds_by_seed=[frame["fold"].to_numpy(dtype=int) for frame in seeds])
    return LevelResults(level="lesion", n_cases=int(len(y)), n_positive=int(y.sum()), methods=methods,
                        comparisons=comparisons, repeats=results.repeats)


def method_table(results: LevelResults) -> pd.DataFrame:
    """Table 1 from ``experiment_results``: AUC (mean of fold AUCs), AUC.SD, SE, pooled AUC with its DeLong 95 %
    CI, lesion-level AUC, fitted binormal AUC and time, one row per classifier; with repeated cross-validation the
    SD of the (ROI-level) AUC between seeds; for SVM1 and SVM2 the degenerate folds ("15/25": folds where the Platt
    slope was held at its floor, over all seeds; see ``calibration_notes``)."""
    rows = []
    by_seed = results.repeats.methods if results.repeats is not None else {}
    for key, m in results.methods.items():
        calibration = m.calibration
        rows.append({
            "method": key,
            "classifier": METHOD_NAMES.get(key, key),
            "detail": m.title,
            "AUC": m.auc_mean,
            "AUC.SD": m.auc_sd,
            "SE": m.auc_se,
            "seed SD": by_seed[key].auc_sd_between_seeds if key in by_seed else None,
            "pooled AUC": m.pooled_auc,
            "CI95 low": m.pooled_ci95[0],
            "CI95 high": m.pooled_ci95[1],
            "lesion AUC": m.lesion_auc,
            "binormal AUC": m.binormal.auc,
            "binormal a": m.binormal.a,
            "binormal b": m.binormal.b,
            "time (s)": m.seconds,
            "degenerate folds": (f"{calibration.n_clamped}/{calibration.n_folds}" if calibration else None),
        })
    return pd.DataFrame(rows, columns=["method", "classifier", "detail", "AUC", "AUC.SD", "SE", "seed SD",
                                       "pooled AUC", "CI95 low", "CI95 high", "lesion AUC", "binormal AUC",
                                       "binormal a", "binormal b", "time (s)", "degenerate folds"])


def repeats_table(results: LevelResults) -> pd.DataFrame:
    """The repeated cross-validation of ``experiment_results``: per classifier, the fold-mean AUC under each seed,
    their mean and SD between seeds (empty without repeats)."""
    repeats = results.repeats
    seeds = [] if repeats is None else repeats.seeds
    rows = [{"classifier": METHOD_NAMES.get(key, key), "mean over seeds": m.auc_mean,
             "SD between seeds": m.auc_sd_between_seeds,
             **{f"seed {s}": a for s, a in zip(seeds, m.auc_mean_by_seed, strict=True)}}
            for key, m in ({} if repeats is None else repeats.methods).items()]
    return pd.DataFrame(rows, columns=["classifier", "mean over seeds", "SD between seeds",
                                       *(f"seed {s}" for s in seeds)])


COMPARISON_COLUMNS = [
    "comparison", "family", "AUCs subtracted", "ΔAUC (mean of fold AUCs)", "headline test",
    "headline ΔAUC (mean over folds)", "headline p", "headline p (Bonferroni)", "paired t p (first seed)",
    "paired t p (first seed, Bonferroni)", "Nadeau-Bengio p (first seed)", "Nadeau-Bengio p (first seed, Bonferroni)",
    "DeLong ΔAUC (within-fold ranks)", "DeLong CI95 low", "DeLong CI95 high", "DeLong p (within-fold ranks)",
    "DeLong p (within-fold ranks, Bonferroni)"]
"""The columns of :func:`comparison_table` (the report and the ROC page show them under these names)."""


def headline_test_name(c: Comparison, n_folds: int) -> str:
    """The name of a comparison's headline test, with the resamples it ran over, e.g. "Nadeau-Bengio corrected t,
    5 seeds × 5 folds" (a record of schema 2 or older: the first seed's folds only, as recorded)."""
    if c.repeated_nb_p is None or c.repeated_nb_n_seeds is None or c.repeated_nb_n_folds is None:
        return f"Nadeau-Bengio corrected t, 1 seed × {n_folds} folds (as recorded; rerun for every seed's folds)"
    seeds = c.repeated_nb_n_seeds
    per_seed = c.repeated_nb_n_folds // seeds if seeds else c.repeated_nb_n_folds
    return f"Nadeau-Bengio corrected t, {seeds} seed{'s' if seeds != 1 else ''} × {per_seed} folds"


def comparison_table(results: LevelResults) -> pd.DataFrame:
    """The significance tests of ``experiment_results``, one row per comparison, every p-value with its
    Bonferroni-adjusted one within its family (``paper``: the paper's 3 comparisons; ``added``: the z-scored
    ensemble's 3; ``requested``: Method D's).

    The **headline** is fold-level: Nadeau-Bengio's corrected t over every seed's folds (Bouckaert & Frank's
    corrected repeated k-fold t-test). Beside it the fold-wise paired t and Nadeau-Bengio tests on the first seed's
    folds and DeLong's test on within-fold ranks (comparable across folds). DeLong on the probabilities pooled
    over folds is not shown: those probabilities are on fold-specific scales (a Platt slope held at its floor
    makes a whole fold one constant at its own level), so their pooled AUC difference is not a finding; it stays
    in the record. Every difference is the first classifier's AUC minus the second's ("AUCs subtracted")."""
    rows = []
    methods = results.methods
    for c in results.comparisons:
        first, second = c.pair
        fold_mean = c.fold_mean_auc_difference
        if fold_mean is None and first in methods and second in methods:  # a record of schema 2 or older
            fa = np.asarray(methods[first].fold_aucs, dtype=float)
            fb = np.asarray(methods[second].fold_aucs, dtype=float)
            fold_mean = float(np.mean(fa - fb)) if fa.shape == fb.shape else None
        repeated = c.repeated_nb_p is not None
        n_folds = len(methods[first].fold_aucs) if first in methods else 0
        rank_ci = c.rank_delong_ci95 or [None, None]
        rows.append({
            "comparison": f"{METHOD_NAMES.get(first, first)} vs {METHOD_NAMES.get(second, second)}",
            "family": c.family,
            "AUCs subtracted": f"AUC({METHODS[first].short if first in METHODS else first}) − "
                               f"AUC({METHODS[second].short if second in METHODS else second})",
            "ΔAUC (mean of fold AUCs)": fold_mean,
            "headline test": headline_test_name(c, n_folds),
            "headline ΔAUC (mean over folds)": c.repeated_nb_mean_difference if repeated else fold_mean,
            "headline p": c.repeated_nb_p if repeated else c.nadeau_bengio_p,
            "headline p (Bonferroni)": c.repeated_nb_p_bonferroni if repeated else c.nadeau_bengio_p_bonferroni,
            "paired t p (first seed)": c.paired_t_p,
            "paired t p (first seed, Bonferroni)": c.paired_t_p_bonferroni,
            "Nadeau-Bengio p (first seed)": c.nadeau_bengio_p,
            "Nadeau-Bengio p (first seed, Bonferroni)": c.nadeau_bengio_p_bonferroni,
            "DeLong ΔAUC (within-fold ranks)": c.rank_delong_auc_difference,
            "DeLong CI95 low": rank_ci[0],
            "DeLong CI95 high": rank_ci[1],
            "DeLong p (within-fold ranks)": c.rank_delong_p,
            "DeLong p (within-fold ranks, Bonferroni)": c.rank_delong_p_bonferroni,
        })
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def roc_curve_table(results: LevelResults) -> pd.DataFrame:
    """Every point of the empirical and fitted binormal ROC curves (long format: method, curve, fpr, tpr)."""
    frames = []
    for key, m in results.methods.items():
        for curve, fpr, tpr in (("empirical", m.roc.fpr, m.roc.tpr), ("binormal", m.binormal.fpr, m.binormal.tpr)):
            if fpr is not None and tpr is not None:
                frames.append(pd.DataFrame({"method": key, "classifier": METHOD_NAMES.get(key, key),
                                            "curve": curve, "fpr": fpr, "tpr": tpr}))
    if not frames:
        return pd.DataFrame(columns=["method", "classifier", "curve", "fpr", "tpr"])
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------------ predictions ---
def roi_predictions(workspace: Workspace, experiment_id: int, *, repeat: int | None = 0) -> pd.DataFrame:
    """One row per ROI: out-of-fold p1 (CNN), p2 (analytic), p3 (ensemble), pz (z-scored ensemble), truth, fold,
    |p1 - p2| and whether each classifier is right at its threshold (0.5 for probabilities, 0 for pz; None where a
    classifier did not run).

    ``repeat`` picks the seed of a repeated cross-validation (0: the first, as on every page); ``None`` gives every
    seed's rows with a ``repeat`` column.
    """
    query = (
        select(Prediction.roi_id, Prediction.lesion_id, Lesion.key.label("lesion_key"),
               Patient.key.label("patient_key"), Image.view, Image.laterality, Prediction.fold, Prediction.truth,
               *(getattr(Prediction, c) for c in _SCORE_COLUMNS), Prediction.decision1, Prediction.decision2,
               Prediction.roi_sha256, Roi.included)
        .join(Roi, Prediction.roi_id == Roi.id)
        .join(Lesion, Prediction.lesion_id == Lesion.id)
        .join(Patient, Lesion.patient_id == Patient.id)
        .join(Image, Roi.image_id == Image.id)
        .add_columns(Prediction.repeat)
        .where(Prediction.experiment_id == experiment_id)
        .order_by(Prediction.repeat, Prediction.roi_id)
    )
    if repeat is not None:
        query = query.where(Prediction.repeat == repeat)
    with workspace.sessions() as session:
        _experiment(session, experiment_id)
        rows = session.execute(query).all()
    frame = pd.DataFrame([r._asdict() for r in rows],
                         columns=["roi_id", "lesion_id", "lesion_key", "patient_key", "view", "laterality", "fold",
                                  "truth", *_SCORE_COLUMNS, "decision1", "decision2", "roi_sha256", "included",
                                  "repeat"])
    frame = frame.rename(columns={"included": "included_now"})
    if repeat is not None:
        frame = frame.drop(columns="repeat")
    return _add_outcomes(frame)


def lesion_predictions(workspace: Workspace, experiment_id: int, *, repeat: int = 0) -> pd.DataFrame:
    """One row per lesion: the mean of its ROIs' p1, p2, p3, pz and decision values (computed with
    ``cadx.stats.lesion_level_scores``), its truth, fold and number of ROIs, |p1 - p2| and right-or-wrong at each
    method's fixed threshold; ``repeat`` picks the seed (0: the first)."""
    rois = roi_predictions(workspace, experiment_id, repeat=repeat)
    columns = ["lesion_id", "lesion_key", "patient_key", "n_rois", "fold", "truth", *_SCORE_COLUMNS, "decision1",
               "decision2"]
    if rois.empty:
        return _add_outcomes(pd.DataFrame(columns=columns))
    first = rois.groupby("lesion_id", sort=True).first()
    folds = rois.groupby("lesion_id")["fold"].nunique()
    if (folds > 1).any():  # cannot happen with cross-validation by lesion; refuse rather than mislead
        raise ValueError(f"lesions {list(folds[folds > 1].index)} lie in more than one fold")
    frame = pd.DataFrame({"lesion_id": first.index.to_numpy(), "lesion_key": first["lesion_key"].to_numpy(),
                          "patient_key": first["patient_key"].to_numpy(), "fold": first["fold"].to_numpy()})
    groups = rois["lesion_id"].to_numpy()
    truth = rois["truth"].to_numpy(dtype=int)
    for column in (*_SCORE_COLUMNS, "decision1", "decision2"):
        values = rois[column]
        if values.isna().any():
            frame[column] = np.nan
            continue
        lesion = stats.lesion_level_scores(values.to_numpy(dtype=float), groups, truth)
        if not (lesion.groups == frame["lesion_id"].to_numpy()).all():
            raise RuntimeError("lesion-level scores came back in another lesion order than the table's")
        frame[column] = lesion.scores
        frame["n_rois"] = lesion.n_rois
        frame["truth"] = lesion.labels
    if "truth" not in frame:
        frame["truth"] = rois.groupby("lesion_id")["truth"].max().to_numpy()
        frame["n_rois"] = rois.groupby("lesion_id").size().to_numpy()
    return _add_outcomes(frame[columns])


def readable_cases(frame: pd.DataFrame, *, n_folds: int, seed: int) -> pd.DataFrame:
    """Per-case rows (from :func:`roi_predictions`, :func:`lesion_predictions` or an analysis built on them) as
    every page shows and exports them: the truth in words (``cadx.labels``), the fold as ``cadx.words.fold_text``
    (1-based, of ``n_folds``, of the cross-validation with ``seed``) and readable column names
    (``cadx.words.CASE_COLUMNS``). Empty values stay empty (pages show them as ``cadx.words.EMPTY``)."""
    shown = frame.copy()
    if "truth" in shown:
        shown["truth"] = [label_word(t) for t in shown["truth"]]
    if "fold" in shown:
        shown["fold"] = [words.fold_text(f, n_folds=n_folds, seed=seed) for f in shown["fold"]]
    return shown.rename(columns=words.column_word)


def _add_outcomes(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["disagreement"] = (frame["p1"] - frame["p2"]).abs()
    for method in METHODS.values():
        column = method.column
        called = frame[column] >= method.threshold
        right = called == (frame["truth"] == 1)
        frame[f"right_{column}"] = right.where(frame[column].notna(), None)
    return frame


# -------------------------------------------------------------------------------------------------- ROI image ---
def roi_overlay(workspace: Workspace, roi_id: int, *, experiment_id: int | None = None
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """An ROI as an RGB image with its Method B segmentation outline (yellow) and, for synthetic phantoms, the
    true lesion outline (cyan).

    The segmentation is the one of the experiment's feature version (else the newest for the ROI's pixels).

    Returns
    -------
    rgb : ndarray of uint8, shape (512, 512, 3)
    info : dict
        ``segmentation_quality``, ``segmentation_reason``, ``has_outline``, ``has_truth_outline``,
        ``truth_outline`` (what the reference outline is, in words: a synthetic phantom's truth or the dataset
        expert's outline), ``segmentation_version``.
    """
    with workspace.sessions() as session:
        roi = session.get(Roi, roi_id)
        if roi is None:
            raise CadxInputError(f"ROI {roi_id}", "no such ROI", "pick an ROI from the predictions table")
        version = None
        if experiment_id is not None:
            version = record_of(_experiment(session, experiment_id)).config.analytic_version
        query = select(Segmentation).where(Segmentation.roi_sha256 == roi.sha256)
        query = query.where(Segmentation.version == version) if version else query.order_by(Segmentation.id.desc())
        segmentation = session.scalars(query.limit(1)).first()
        roi_file, truth_file, synthetic = roi.file, roi.truth_mask_file, roi.is_synthetic
        seg = None if segmentation is None else (segmentation.quality, segmentation.reason, segmentation.mask_file,
                                                 segmentation.version)
    pixels = decode_png16(workspace.path(roi_file).read_bytes()).astype(np.float64)
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    grey = np.clip((pixels - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    info: dict[str, Any] = {"segmentation_quality": None, "segmentation_reason": None,
                            "segmentation_version": None, "has_outline": False, "has_truth_outline": False}
    if truth_file and workspace.path(truth_file).exists():
        truth = decode_mask_png(workspace.path(truth_file).read_bytes(), shape=rgb.shape[:2])
        info["has_truth_outline"] = draw_outline(rgb, truth, "truth")
        info["truth_outline"] = ("true outline of the synthetic phantom" if synthetic
                                 else "the expert's outline from the dataset (reference segmentation)")
    if seg is not None:
        quality, reason, mask_file, seg_version = seg
        info.update(segmentation_quality=quality, segmentation_reason=reason, segmentation_version=seg_version)
        if mask_file and workspace.path(mask_file).exists():
            mask = decode_mask_png(workspace.path(mask_file).read_bytes(), shape=rgb.shape[:2])
            info["has_outline"] = draw_outline(rgb, mask, "segmentation")
    return rgb, info


# ---------------------------------------------------------------------------------------------------- backbone ---
def backbone_status(*, download: bool = False) -> dict[str, Any]:
    """Which backbone and weights an experiment gets by default (``resolve_backbone(None)``), and why.

    ``fallback`` is True when AlexNet's ImageNet weights are missing and EfficientNet-Lite0 is used instead.
    Loads the weights once (seconds): callers should cache the answer.
    """
    from cadx.workflows.features import resolve_backbone

    loaded, note = resolve_backbone(None, download=download)
    return {"backbone": loaded.name, "label": backbone_label(loaded.name),
            "weights": loaded.weights.name, "source": loaded.weights.source,
            "sha256": loaded.weights.sha256, "note": note, "fallback": loaded.name != "alexnet",
            "description": loaded.backbone.description}


def backbone_choices() -> dict[str, dict[str, Any]]:
    """Every registered backbone: its taps in network order, default taps, default ensemble tap, description."""
    from cadx.cnn import BACKBONES

    return {name: {"taps": list(b.taps), "default_taps": list(b.default_taps),
                   "ensemble_tap": b.ensemble_tap,
                   "description": b.description}
            for name, b in BACKBONES.items()}
