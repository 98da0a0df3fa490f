"""The layer explorer on stored data: an ROI's activations at every tap (computed once per ROI and weights, cached in
the workspace), each tap's AUC from a chosen experiment, and the ROI's SVM score at each tap (the experiment's stored
fold models) against the classes' out-of-fold scores.

Cache: ``<data>/cache/activations/<backbone>/<weights SHA-256>/<preprocessing>/<ROI SHA-256>-top<k>.npz``, written
atomically (owner-only), read back without pickle and checked against its key; a malformed or foreign file is
recomputed. Deleting the folder is always safe.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from cadx.errors import CadxInputError
from cadx.explorer import ActivationCacheError, RoiActivations, roi_activations, score_position
from cadx.labels import label_word
from cadx.private import make_private_dirs
from cadx.workflows.experiments import load_experiment
from cadx.workflows.features import feature_store, roi_records
from cadx.workflows.workspace import Workspace
from db.models import Lesion, Roi

if TYPE_CHECKING:
    from cadx.cnn import LoadedBackbone

__all__ = ["activation_cache_path", "explorer_activations", "explorer_backbone", "explorer_rois", "explorer_start",
           "tap_aucs", "tap_scores"]

TOP_MAPS = 8


def explorer_backbone(name: str, *, experiment_id: int | None = None, workspace: Workspace | None = None,
                      weights: str = "default") -> LoadedBackbone:
    """The backbone to explore: the experiment's own (its weights checksum checked) when one is given, else
    ``name`` with ``weights`` (``"default"`` or ``"random"``), never downloading."""
    from cadx.cnn import load_backbone
    from cadx.workflows.analyses import _backbone_for

    if experiment_id is not None:
        if workspace is None:
            raise ValueError("explorer_backbone: an experiment needs its workspace")
        config = load_experiment(workspace, experiment_id).config
        if config.backbone != name:
            raise CadxInputError("backbone", f"experiment {experiment_id} ran on {config.backbone}, not {name}",
                                 f"pick {config.backbone} or another experiment")
        return _backbone_for(config)
    return load_backbone(name, weights, download=False)


def explorer_start(workspace: Workspace) -> tuple[str, int | None]:
    """Where the explorer opens: the backbone and experiment last used (the newest experiment with a stored sweep,
    i.e. with tap AUCs to show), else the backbone a default run would use here (AlexNet when its ImageNet weights
    are here, else EfficientNet-Lite0, whose weights ship with cadx; ``resolve_backbone``) and no experiment."""
    from cadx.cnn import pretrained_available
    from cadx.workflows.results import list_experiments

    for experiment in list_experiments(workspace):  # newest first
        if experiment["best_tap"] is not None and experiment["auc_A"] is not None:
            return str(experiment["backbone"]), int(experiment["id"])
    return ("alexnet" if pretrained_available("alexnet") else "efficientnet_lite0"), None


def explorer_rois(workspace: Workspace, experiment_id: int | None = None) -> pd.DataFrame:
    """The ROIs to pick from: the experiment's (in its order, with their fold) or every included ROI.

    Real ROIs come first (synthetic phantoms after them, each group in the order above), so the explorer opens on
    a real mammogram whenever there is one. Columns: roi_id, sha256, label (benign/malignant), lesion_key, view,
    synthetic, fold (1-based; NaN without experiment), index (row in the experiment; -1 without).
    """
    records = {r.id: r for r in roi_records(workspace, included_only=experiment_id is None)}
    with workspace.sessions() as session:
        keys = dict(session.execute(select(Roi.id, Lesion.key).join(Lesion, Roi.lesion_id == Lesion.id)).all())
    if experiment_id is None:
        ids, folds = sorted(records), [np.nan] * len(records)
    else:
        from cadx.workflows.results import roi_predictions

        predictions = roi_predictions(workspace, experiment_id)
        ids, folds = predictions["roi_id"].astype(int).tolist(), (predictions["fold"] + 1).tolist()
        missing = [i for i in ids if i not in records]
        if missing:
            raise CadxInputError(f"experiment {experiment_id}", f"ROIs {missing[:5]} are gone",
                                 "pick another experiment")
    frame = pd.DataFrame({
        "roi_id": ids, "sha256": [records[i].sha256 for i in ids],
        "label": [label_word(records[i].label) for i in ids],
        "lesion_key": [keys[i] for i in ids], "view": [records[i].view for i in ids],
        "synthetic": [bool(records[i].is_synthetic) for i in ids],
        "fold": folds, "index": list(range(len(ids))) if experiment_id is not None else [-1] * len(ids)})
    # a stable sort: within each group the experiment's (or the ids') order is kept
    return frame.sort_values("synthetic", kind="stable").reset_index(drop=True)


def activation_cache_path(workspace: Workspace, loaded: LoadedBackbone, roi_sha256: str, *, preprocessing: str,
                          top: int = TOP_MAPS) -> Path:
    """Where an ROI's activations under these weights are cached."""
    for part in (loaded.name, loaded.weights.sha256, preprocessing, roi_sha256):
        if not part or "/" in part or part.startswith("."):
            raise CadxInputError("activation cache", f"unusable key part {part!r}", "report this as a bug")
    return (workspace.data_dir / "cache" / "activations" / loaded.name / loaded.weights.sha256 / preprocessing
            / f"{roi_sha256}-top{int(top)}.npz")


def explorer_activations(workspace: Workspace, loaded: LoadedBackbone, roi_id: int, *, top: int = TOP_MAPS,
                         preprocessing: str | None = None) -> tuple[RoiActivations, bool]:
    """An ROI's activations at every tap of ``loaded``: from the cache when there (``True``), else computed and
    cached (``False``)."""
    from cadx.cnn import PREPROCESSING_VERSION
    from cadx.workflows.features import load_roi_pixels

    preprocessing = preprocessing or PREPROCESSING_VERSION
    record = next((r for r in roi_records(workspace, included_only=False) if r.id == int(roi_id)), None)
    if record is None:
        raise CadxInputError(f"ROI {roi_id}", "no such ROI", "pick one from the list")
    path = activation_cache_path(workspace, loaded, record.sha256, preprocessing=preprocessing, top=top)
    expected = {"backbone": loaded.name, "weights_sha256": loaded.weights.sha256, "preprocessing": preprocessing,
                "roi_sha256": record.sha256}
    if path.is_file():
        try:
            return RoiActivations.from_bytes(path.read_bytes(), expected=expected, where=str(path)), True
        except ActivationCacheError:
            pass  # malformed or foreign: computed again and replaced
    result = roi_activations(loaded, load_roi_pixels(workspace, record), roi_sha256=record.sha256, top=top,
                             preprocessing=preprocessing)
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(result.to_bytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result, False


def tap_aucs(workspace: Workspace, experiment_id: int) -> pd.DataFrame:
    """Each swept tap's AUC (the paper's: mean of fold AUCs) with its SD and SE, in network order."""
    sweep = load_experiment(workspace, experiment_id).results.sweep
    rows = [{"tap": tap, "auc_mean": v.auc_mean, "auc_sd": v.auc_sd, "auc_se": v.auc_se,
             "auc_sd_between_seeds": v.auc_sd_between_seeds, "n_features": v.n_features}
            for tap, v in sweep.items()]
    return pd.DataFrame(rows, columns=["tap", "auc_mean", "auc_sd", "auc_se", "auc_sd_between_seeds", "n_features"])


def tap_scores(workspace: Workspace, experiment_id: int, roi_id: int, *, verify: bool = False) -> dict[str, Any]:
    """The ROI's SVM decision value at every swept tap of the experiment, as computed by the stored model of the fold
    in which it was a test ROI, against every ROI's out-of-fold values by class.

    With ``verify``, each tap's value is computed again from the stored model and the feature store and must
    reproduce the recorded one to 1e-10 (reads the support ROIs' features: seconds for wide taps).

    Returns ``{"frame": one row per tap (tap, fold, decision, proba, below_benign, below_malignant, nearer, sd,
    verified), "distributions": one row per (tap, ROI) (tap, label, decision, z = decision / sd), "source": "stored"
    or "predictions", "note": str}``. An experiment recorded before fold models were stored has out-of-fold values
    at its ensemble tap only (SVM1's predictions): ``source="predictions"`` and the note says so.
    """
    from cadx.workflows.analyses import experiment_data
    from cadx.workflows.foldmodels import load_fold_models, load_oof_scores, score_roi

    data = experiment_data(workspace, experiment_id)
    config = data.config
    ids = data.predictions["roi_id"].astype(int).tolist()
    index = data.roi_index(roi_id)
    store = feature_store(workspace)
    labels = np.array([label_word(code) for code in data.y])
    rows, dists, source, note = [], [], "stored", ""
    for tap in config.taps:
        stored = load_oof_scores(workspace, experiment_id, len(ids), tap=tap)
        if stored is None:
            continue
        decision, proba, fold = stored
        verified = False
        if verify:
            def features(rows_: Any, tap: str = tap) -> np.ndarray:
                return store.load(tap, [data.hashes[int(i)] for i in rows_], backbone=config.backbone,
                                  weights_sha256=config.weights.sha256, preprocessing=config.preprocessing)

            models = load_fold_models(workspace, experiment_id, tap=tap)
            if models is not None:
                score_roi(models, index, features, tap=tap)  # raises if they do not reproduce the stored value
            verified = models is not None
        rows.append({**_score_row(tap, int(fold[index]), float(decision[index]), float(proba[index]), decision,
                                  labels), "verified": verified})
        dists.append(_dist(tap, decision, labels))
    if not rows:  # an experiment recorded before fold models were stored
        source = "predictions"
        tap = config.ensemble_tap
        note = (f"This experiment was recorded before fold models were stored: only its SVM1 tap ({tap}) has "
                "out-of-fold scores (the stored predictions). Run it again for every tap.")
        decision = data.predictions["decision1"].to_numpy(float)
        proba = data.predictions["p1"].to_numpy(float)
        rows.append({**_score_row(tap, int(data.folds[index]), float(decision[index]), float(proba[index]), decision,
                                  labels), "verified": False})
        dists.append(_dist(tap, decision, labels))
    return {"frame": pd.DataFrame(rows), "distributions": pd.concat(dists, ignore_index=True), "source": source,
            "note": note}


def _sd(decision: np.ndarray) -> float:
    sd = float(np.nanstd(decision))
    return sd if np.isfinite(sd) and sd > 0 else 1.0


def _score_row(tap: str, fold: int, value: float, proba: float, decision: np.ndarray,
               labels: np.ndarray) -> dict[str, Any]:
    position = score_position(value, decision[labels == "benign"], decision[labels == "malignant"])
    return {"tap": tap, "fold": fold + 1, "decision": value, "proba": proba, **position, "sd": _sd(decision)}


def _dist(tap: str, decision: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"tap": tap, "label": labels, "decision": decision, "z": decision / _sd(decision)})
