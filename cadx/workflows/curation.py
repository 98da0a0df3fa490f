"""Curation over the database: suspect labels of an experiment, disputing a lesion's label, duplicate and
look-alike ROIs (and the fold leaks they make), and the similar cases of an ROI.

The computation is ``cadx.curation``; this module reads the stored out-of-fold predictions, ROIs, lesions, patients
and CNN features and writes the one thing curation writes: a *dispute* of a lesion's label, a review event of each
of the lesion's ROIs (``dispute_label`` / ``undispute_label``, the reason as its note, audited). A label is never
changed here: disputing marks it for a reviewer, and the ROI stays included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from cadx import curation
from cadx.errors import CadxInputError
from cadx.labels import label_word
from cadx.workflows.accounts import record_audit
from cadx.workflows.features import feature_store, load_roi_pixels, roi_records
from cadx.workflows.results import roi_predictions
from cadx.workflows.review import _serialised
from cadx.workflows.workspace import Workspace
from db.models import Experiment, Image, Lesion, Patient, ReviewEvent, Roi

__all__ = [
    "CLASSIFIERS",
    "DISPUTE_ACTIONS",
    "SUSPECT_COLUMNS",
    "PAIR_COLUMNS",
    "SIMILAR_COLUMNS",
    "SuspectReport",
    "dispute_label",
    "duplicate_pairs",
    "fold_leaks",
    "label_disputes",
    "similar_cases",
    "stored_taps",
    "suspect_labels",
    "tap_features",
]

Classifier = Literal["svm1", "svm2", "ensemble"]
#: ``--classifier`` -> the stored out-of-fold probability it ranks by (cadx.methods: p1 SVM1, p2 SVM2, p3 their mean)
CLASSIFIERS = {"svm1": "p1", "svm2": "p2", "ensemble": "p3"}
DISPUTE_ACTIONS = ("dispute_label", "undispute_label")
SUSPECT_COLUMNS = ("rank", "lesion_id", "lesion_key", "patient_key", "label", "p", "score", "flagged", "disputed",
                   "n_rois", "reason")
PAIR_COLUMNS = ("roi_a", "roi_b", "patient_a", "patient_b", "lesion_a", "lesion_b", "view_a", "view_b", "evidence",
                "hamming", "cosine", "class")
SIMILAR_COLUMNS = ("rank", "roi_id", "lesion_key", "patient_key", "label", "lesion_type", "view", "cosine",
                   "distance")
_MAX_REASON = 2000


# --------------------------------------------------------------------------------------------- suspect labels ---
@dataclass(frozen=True)
class SuspectReport:
    """The ranked lesions of one experiment (:data:`SUSPECT_COLUMNS`, most suspect first) and how they were found."""

    experiment_id: int
    classifier: str
    column: str
    n_seeds: int
    method: str
    rows: pd.DataFrame = field(repr=False)

    @property
    def n_flagged(self) -> int:
        return int(self.rows["flagged"].sum())

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        rows = self.rows if top is None else self.rows.head(top)
        return {"experiment_id": self.experiment_id, "classifier": self.classifier, "probability": self.column,
                "n_seeds": self.n_seeds, "n_lesions": len(self.rows), "n_flagged": self.n_flagged,
                "method": self.method, "rows": json.loads(rows.to_json(orient="records"))}


def suspect_labels(workspace: Workspace, experiment_id: int, *, classifier: str = "ensemble") -> SuspectReport:
    """An experiment's lesions ranked by how likely their label is wrong (``cadx.curation.rank_suspect_labels``).

    One row per lesion: the mean of its ROIs' out-of-fold probability of ``classifier`` (``svm1``: p1, ``svm2``:
    p2, ``ensemble``: p3, the default) per seed, averaged over every seed the experiment ran; the label is the one
    the experiment was run with; ``disputed`` is whether a reviewer disputes it now (:func:`dispute_label`).
    """
    if classifier not in CLASSIFIERS:
        raise CadxInputError("--classifier", f"got {classifier!r}", f"use one of {', '.join(CLASSIFIERS)}")
    column = CLASSIFIERS[classifier]
    rois = roi_predictions(workspace, experiment_id, repeat=None)
    if rois.empty:
        raise CadxInputError(f"experiment {experiment_id}", "has no stored predictions", "run it again")
    if rois[column].isna().all():
        raise CadxInputError("--classifier", f"experiment {experiment_id} has no {classifier} probabilities "
                             f"({column}: it ran without {'Method B' if column != 'p1' else 'SVM1'})",
                             "pick svm1, or an experiment with Method B")
    lesions, p, labels = curation.lesion_probabilities(rois["lesion_id"].to_numpy(), rois[column].to_numpy(float),
                                                       rois["truth"].to_numpy(), rois["repeat"].to_numpy())
    ranked = curation.rank_suspect_labels(labels, p)
    first = rois.groupby("lesion_id").first()
    n_rois = rois[rois["repeat"] == rois["repeat"].min()].groupby("lesion_id").size()
    disputes = label_disputes(workspace)
    rows = []
    for s in ranked:
        lesion = int(lesions[s.index])
        rows.append({"rank": s.rank, "lesion_id": lesion, "lesion_key": first.at[lesion, "lesion_key"],
                     "patient_key": first.at[lesion, "patient_key"], "label": label_word(s.label), "p": s.p,
                     "score": s.score, "flagged": s.flagged, "disputed": lesion in disputes,
                     "n_rois": int(n_rois.get(lesion, 0)), "reason": s.reason})
    method = f"{curation.CONFIDENT_LEARNING} (cleanlab {curation.cleanlab_version()})"
    return SuspectReport(experiment_id, classifier, column, int(rois["repeat"].nunique()), method,
                         pd.DataFrame(rows, columns=list(SUSPECT_COLUMNS)))


# ------------------------------------------------------------------------------------------------- disputes ---
def _lesion(session: Session, lesion_key: str, patient_key: str | None) -> Lesion:
    query = select(Lesion).join(Patient, Lesion.patient_id == Patient.id).where(Lesion.key == lesion_key.strip())
    if patient_key:
        query = query.where(Patient.key == patient_key.strip())
    found = list(session.scalars(query.order_by(Lesion.id)))
    if not found:
        raise CadxInputError(f"lesion {lesion_key!r}", "no such lesion" + (f" of patient {patient_key}"
                                                                           if patient_key else ""),
                             "use a lesion key from `cadx suspects` or the Review page")
    if len(found) > 1:
        patients = sorted(lesion.patient.key for lesion in found)
        raise CadxInputError(f"lesion {lesion_key!r}", f"{len(found)} patients have a lesion of this key "
                             f"({', '.join(patients[:5])})", "say which with --patient")
    lesion: Lesion = found[0]
    return lesion


def dispute_label(workspace: Workspace, lesion_key: str, *, user: str, reason: str | None = None,
                  clear: bool = False, patient_key: str | None = None) -> list[ReviewEvent]:
    """Dispute a lesion's label (``reason`` required), or withdraw the dispute (``clear=True``): one review event
    per ROI of the lesion (action ``dispute_label`` / ``undispute_label``, the reason as the note) and one audit
    event, in one transaction. The label itself is never changed, and the ROIs stay included.

    A lesion key is unique within a patient only: when several patients have ``lesion_key``, ``patient_key``
    says which.
    """
    if not user or not user.strip():
        raise CadxInputError("user", "no reviewer name", "say who disputes the label")
    reason = reason.strip() if reason and reason.strip() else None
    if not clear and reason is None:
        raise CadxInputError("--reason", "a dispute needs a reason", "say why the label looks wrong")
    if reason is not None and len(reason) > _MAX_REASON:
        raise CadxInputError("--reason", f"{len(reason)} characters", f"keep it under {_MAX_REASON}")
    action = DISPUTE_ACTIONS[1] if clear else DISPUTE_ACTIONS[0]
    with _serialised(workspace) as session:
        lesion = _lesion(session, lesion_key, patient_key)
        rois = list(session.scalars(select(Roi).where(Roi.lesion_id == lesion.id).order_by(Roi.id)
                                    .with_for_update()))
        if not rois:
            raise CadxInputError(f"lesion {lesion_key!r}", "has no ROIs", "nothing to dispute")
        disputed = lesion.id in _disputes(session, [lesion.id])
        if clear and not disputed:
            raise CadxInputError(f"lesion {lesion_key!r}", "its label is not disputed", "nothing to clear")
        events = [ReviewEvent(roi=roi, user=user.strip(), action=action, reason=None, note=reason) for roi in rois]
        session.add_all(events)
        record_audit(session, user=user.strip(), action=action, target=f"lesion {lesion.id}",
                     detail={"lesion_id": lesion.id, "lesion_key": lesion.key, "patient_key": lesion.patient.key,
                             "label": lesion.label, "roi_ids": [r.id for r in rois], "reason": reason})
        session.flush()
    return events


def _disputes(session: Any, lesion_ids: list[int] | None = None) -> dict[int, dict[str, Any]]:
    query = (select(Roi.lesion_id, ReviewEvent.action, ReviewEvent.user, ReviewEvent.at, ReviewEvent.note)
             .join(Roi, ReviewEvent.roi_id == Roi.id).where(ReviewEvent.action.in_(DISPUTE_ACTIONS))
             .order_by(ReviewEvent.id))
    if lesion_ids is not None:
        query = query.where(Roi.lesion_id.in_(lesion_ids))
    state: dict[int, dict[str, Any]] = {}
    for lesion_id, action, user, at, note in session.execute(query):
        if action == DISPUTE_ACTIONS[0]:
            state[lesion_id] = {"user": user, "at": at, "reason": note}
        else:
            state.pop(lesion_id, None)
    return state


def label_disputes(workspace: Workspace) -> dict[int, dict[str, Any]]:
    """Lesion id -> the standing dispute of its label (``user``, ``at``, ``reason``): the newest dispute event of a
    lesion that no later ``undispute_label`` withdrew."""
    with workspace.sessions() as session:
        return _disputes(session)


# ------------------------------------------------------------------------------------------------ duplicates ---
def _roi_table(workspace: Workspace) -> pd.DataFrame:
    with workspace.sessions() as session:
        rows = session.execute(
            select(Roi.id.label("roi_id"), Roi.sha256, Roi.file, Roi.lesion_id, Lesion.key.label("lesion_key"),
                   Lesion.label, Lesion.lesion_type, Lesion.patient_id, Patient.key.label("patient_key"), Image.view,
                   Roi.image_id)
            .join(Lesion, Roi.lesion_id == Lesion.id).join(Patient, Lesion.patient_id == Patient.id)
            .join(Image, Roi.image_id == Image.id).order_by(Roi.id)).all()
    return pd.DataFrame([r._asdict() for r in rows],
                        columns=["roi_id", "sha256", "file", "lesion_id", "lesion_key", "label", "lesion_type",
                                 "patient_id", "patient_key", "view", "image_id"])


def _stored_sets(workspace: Workspace) -> list[dict[str, Any]]:
    from cadx.cnn import PREPROCESSING_VERSION

    out = []
    for manifest in sorted(feature_store(workspace).root.glob(f"*/*/{PREPROCESSING_VERSION}/chunks/*/manifest.json")):
        if manifest.parent.name.startswith("."):  # a chunk still being written
            continue
        try:
            out.append(json.loads(manifest.read_text()))
        except (OSError, ValueError):
            continue
    return out


def stored_taps(workspace: Workspace) -> list[tuple[str, str]]:
    """``(backbone, tap)`` of every CNN tap with stored fp32 features (what :func:`similar_cases` can use)."""
    return sorted({(info["backbone"], tap) for info in _stored_sets(workspace) for tap in info.get("taps", {})})


def tap_features(workspace: Workspace, tap: str, hashes: list[str], *, backbone: str | None = None
                 ) -> tuple[np.ndarray, list[str], str]:
    """The stored fp32 features of ``tap`` for those of ``hashes`` (unique ROI hashes) the store has.

    The backbone and weights are the feature sets that hold ``tap``; ``backbone`` picks one when several do.

    Returns
    -------
    matrix : ndarray, shape (n_found, d)
    found : list of str
        The hashes of the matrix's rows.
    source : str
        ``"backbone tap (weights sha256[:12])"``.
    """
    store = feature_store(workspace)
    sets: dict[tuple[str, str], set[str]] = {}
    for info in _stored_sets(workspace):
        if tap in info.get("taps", {}) and (backbone is None or info.get("backbone") == backbone):
            sets.setdefault((info["backbone"], info["weights_sha256"]), set()).update(info["rois"])
    if not sets:
        raise CadxInputError("--tap", f"no stored features of tap {tap!r}" + (f" of {backbone}" if backbone else ""),
                             "extract them first (`cadx extract --taps ...`) or pick a stored tap")
    if len(sets) > 1:
        names = sorted(f"{b} ({w[:12]})" for b, w in sets)
        raise CadxInputError("--tap", f"tap {tap!r} is stored for several backbones or weights: {', '.join(names)}",
                             "say which with --backbone")
    (name, weights), stored = next(iter(sets.items()))
    found = [h for h in dict.fromkeys(hashes) if h in stored]
    matrix = np.asarray(store.load(tap, found, backbone=name, weights_sha256=weights), dtype=np.float32)
    return matrix, found, f"{name} {tap} ({weights[:12]})"


def _phashes(workspace: Workspace, rois: pd.DataFrame) -> dict[str, int]:
    by_sha = rois.drop_duplicates("sha256")
    records = {r.sha256: r for r in roi_records(workspace, included_only=False)}
    return {sha: curation.phash(load_roi_pixels(workspace, records[sha])) for sha in by_sha["sha256"]}


def duplicate_pairs(workspace: Workspace, *, hamming: int = curation.DEFAULT_HAMMING, tap: str | None = None,
                    backbone: str | None = None, k: int = 5, min_cosine: float = 0.98) -> pd.DataFrame:
    """Pairs of ROIs across the whole database that look like one image (:data:`PAIR_COLUMNS`).

    * ``exact``: the same pixels (ROI sha256);
    * ``phash``: 64-bit DCT pHashes at most ``hamming`` bits apart (``cadx.curation.DEFAULT_HAMMING``);
    * ``cosine`` (with ``tap``): among each ROI's ``k`` nearest in the tap's stored features, those with cosine
      similarity at least ``min_cosine`` (``cadx.curation.topk_cosine``: blocked, no n x n matrix).

    One row per ROI pair with the strongest evidence, both ROIs' patients, lesions and views, and the class
    (``cadx.curation.pair_class``); sorted by class, then evidence.
    """
    if not -1.0 <= min_cosine <= 1.0:
        raise CadxInputError("--min-cosine", f"got {min_cosine}", "use a cosine similarity in [-1, 1]")
    if k < 1:
        raise CadxInputError("--k", f"got {k}", "use 1 or more")
    rois = _roi_table(workspace)
    found: dict[tuple[int, int], dict[str, Any]] = {}
    index = {sha: i for i, sha in enumerate(rois.drop_duplicates("sha256")["sha256"])}
    by_sha: dict[str, list[int]] = {}
    for row in rois.itertuples():
        by_sha.setdefault(row.sha256, []).append(int(row.Index))

    def add(a: int, b: int, **evidence: Any) -> None:
        key = (min(a, b), max(a, b))
        entry = found.setdefault(key, {"hamming": None, "cosine": None, "exact": False})
        for name, value in evidence.items():
            if value is not None:
                entry[name] = value

    for members in by_sha.values():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                add(a, b, exact=True, hamming=0)
    hashes = _phashes(workspace, rois)
    shas = list(index)
    for i, j, distance in curation.hash_pairs(np.array([hashes[s] for s in shas], dtype=np.uint64),
                                              max_distance=hamming):
        for a in by_sha[shas[i]]:
            for b in by_sha[shas[j]]:
                add(a, b, hamming=distance)
    if tap is not None:
        matrix, stored, _ = tap_features(workspace, tap, shas, backbone=backbone)
        if len(stored) > 1:
            near, sims = curation.topk_cosine(matrix, k)
            for i in range(len(stored)):
                for j, s in zip(near[i], sims[i], strict=True):
                    if s >= min_cosine:
                        for a in by_sha[stored[i]]:
                            for b in by_sha[stored[int(j)]]:
                                if a != b:
                                    add(a, b, cosine=round(float(s), 6))
    rows = []
    for (a, b), evidence in found.items():
        ra, rb = rois.iloc[a], rois.iloc[b]
        same_image = evidence["exact"] or (evidence["hamming"] is not None and evidence["hamming"] <= hamming)
        if evidence["exact"]:
            words = "identical pixels (ROI sha256)"
        elif evidence["hamming"] is not None:
            words = f"pHash {evidence['hamming']} of 64 bits apart"
        else:
            words = f"cosine {evidence['cosine']:.3f}"
        if evidence["cosine"] is not None and not words.startswith("cosine"):
            words += f"; cosine {evidence['cosine']:.3f}"
        rows.append({"roi_a": int(ra.roi_id), "roi_b": int(rb.roi_id), "patient_a": ra.patient_key,
                     "patient_b": rb.patient_key, "lesion_a": ra.lesion_key, "lesion_b": rb.lesion_key,
                     "view_a": ra.view, "view_b": rb.view, "evidence": words, "hamming": evidence["hamming"],
                     "cosine": evidence["cosine"],
                     "class": curation.pair_class(same_lesion=bool(ra.lesion_id == rb.lesion_id),
                                                  same_patient=bool(ra.patient_id == rb.patient_id),
                                                  same_image=bool(same_image))})
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    if frame.empty:
        return frame
    order = {c: i for i, c in enumerate(curation.PAIR_CLASSES)}
    frame["_class"] = frame["class"].map(lambda c: (1 - order[c]) % 3)  # patient-key errors first, then views
    frame["_h"] = frame["hamming"].fillna(65)
    frame["_c"] = -frame["cosine"].fillna(-2.0)
    return (frame.sort_values(["_class", "_h", "_c", "roi_a", "roi_b"]).drop(columns=["_class", "_h", "_c"])
            .reset_index(drop=True))


def fold_leaks(workspace: Workspace, experiment_id: int, pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs of :func:`duplicate_pairs` that leak across an experiment's outer folds: the two ROIs belong to
    different patients, look like one image (exact or pHash within the threshold; cosine-only look-alikes are left
    out), and the experiment put them in different outer folds in at least one seed.

    Returns the pairs with ``seeds`` (the seeds where their folds differ) and ``folds`` (``"a/b"`` per seed,
    1-based).
    """
    columns = [*PAIR_COLUMNS, "seeds", "folds"]
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    with workspace.sessions() as session:
        if session.get(Experiment, experiment_id) is None:
            raise CadxInputError(f"experiment {experiment_id}", "no such experiment", "see `cadx experiments`")
    predictions = roi_predictions(workspace, experiment_id, repeat=None)
    fold = {(int(r.roi_id), int(r.repeat)): int(r.fold) for r in predictions.itertuples()}
    seeds = sorted(int(s) for s in predictions["repeat"].unique())
    rows = []
    for row in pairs.to_dict("records"):
        if row["patient_a"] == row["patient_b"] or row["hamming"] is None or pd.isna(row["hamming"]):
            continue
        differ = [s for s in seeds if (row["roi_a"], s) in fold and (row["roi_b"], s) in fold
                  and fold[(row["roi_a"], s)] != fold[(row["roi_b"], s)]]
        if differ:
            rows.append({**{c: row[c] for c in PAIR_COLUMNS}, "seeds": differ,
                         "folds": [f"{fold[(row['roi_a'], s)] + 1}/{fold[(row['roi_b'], s)] + 1}" for s in differ]})
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------- similar cases ---
def similar_cases(workspace: Workspace, roi_id: int, *, tap: str, k: int = 8, backbone: str | None = None
                  ) -> tuple[pd.DataFrame, str]:
    """ROI ``roi_id``'s ``k`` nearest ROIs by cosine similarity in ``tap``'s stored features
    (:data:`SIMILAR_COLUMNS`; ``distance`` = 1 - cosine), ROIs of identical pixels collapsed into one.

    Returns the table and the feature source (``backbone tap (weights)``)."""
    if k < 1 or k > 100:
        raise CadxInputError("--k", f"got {k}", "use 1 to 100")
    rois = _roi_table(workspace)
    match = rois[rois["roi_id"] == roi_id]
    if match.empty:
        raise CadxInputError(f"ROI {roi_id}", "no such ROI", "pick one from the Review page or `cadx stats`")
    shas = list(dict.fromkeys(rois["sha256"]))
    matrix, stored, source = tap_features(workspace, tap, shas, backbone=backbone)
    own = match.iloc[0].sha256
    if own not in stored:
        raise CadxInputError(f"ROI {roi_id}", f"has no stored {tap} features", "extract them (`cadx extract`)")
    near, sims = curation.topk_cosine(matrix, k, queries=np.array([stored.index(own)]))
    first = rois.drop_duplicates("sha256").set_index("sha256")
    rows = []
    for rank, (j, s) in enumerate(zip(near[0], sims[0], strict=True), start=1):
        r = first.loc[stored[int(j)]]
        rows.append({"rank": rank, "roi_id": int(r.roi_id), "lesion_key": r.lesion_key,
                     "patient_key": r.patient_key, "label": r.label, "lesion_type": r.lesion_type, "view": r.view,
                     "cosine": float(s), "distance": 1.0 - float(s)})
    return pd.DataFrame(rows, columns=list(SIMILAR_COLUMNS)), source
