"""Curation with known answers: planted label flips ranked first (and cleanlab's own call on the same matrix), label
disputes as audited review events, planted duplicate images found, classified and warned about across folds, blocked
top-k search equal to brute force, similar cases in a tap's stored features."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from PIL import Image as PILImage
from PIL import PngImagePlugin
from scipy.ndimage import gaussian_filter
from sqlalchemy import select
from streamlit.testing.v1 import AppTest  # noqa: F401  (loaded: conftest serves the app under test on loopback)
from typer.testing import CliRunner

from cadx import curation
from cadx.cli import app
from cadx.errors import CadxInputError
from cadx.workflows import import_demo, import_manifest, open_workspace
from cadx.workflows.curation import (
    dispute_label,
    duplicate_pairs,
    fold_leaks,
    label_disputes,
    similar_cases,
    suspect_labels,
)
from cadx.workflows.features import feature_store, roi_records
from db.models import AuditEvent, Experiment, Lesion, Prediction, ReviewEvent, Roi

runner = CliRunner()


# ------------------------------------------------------------------------------------------------- core: labels ---
def _planted(n: int = 60, flips: tuple[int, ...] = (3, 11, 24, 37, 52), seed: int = 0):
    """Lesions whose out-of-fold p(malignant) follows the true label (0.2 / 0.8, SD 0.08), with the labels of
    ``flips`` swapped afterwards (the classifier saw the truth, the label table is wrong there)."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2
    p = np.clip(np.where(truth == 1, 0.8, 0.2) + rng.normal(0, 0.08, n), 0.01, 0.99)
    labels = truth.copy()
    labels[list(flips)] = 1 - labels[list(flips)]
    return labels, p, set(flips)


def test_planted_label_flips_are_the_top_ranks_and_equal_cleanlabs_own_call():
    labels, p, flips = _planted()
    ranked = curation.rank_suspect_labels(labels, p)
    top5 = {s.index for s in ranked[:5]}
    assert len(top5 & flips) >= 4  # at least 4 of the 5 planted flips in the top 5 (here: all 5)
    assert top5 == flips
    assert [s.rank for s in ranked] == list(range(1, len(labels) + 1))
    # the same matrix through cleanlab directly: the scores and the flagged set are cleanlab's
    pred_probs = np.column_stack([1 - p, p])
    scores = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    by_index = {s.index: s for s in ranked}
    assert [by_index[i].score for i in range(len(labels))] == pytest.approx(scores)
    assert {s.index for s in ranked if s.flagged} == set(np.flatnonzero(find_label_issues(
        labels, pred_probs, filter_by="prune_by_noise_rate")))
    # self-confidence is the probability of the given label, and ranks ascend by it
    assert by_index[3].score == pytest.approx(p[3] if labels[3] == 1 else 1 - p[3])
    assert [s.score for s in ranked] == sorted(s.score for s in ranked)


def test_reason_names_the_label_the_probability_and_the_class_threshold():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.91, 0.7, 0.8, 0.9, 0.6])
    ranked = curation.rank_suspect_labels(labels, p)
    top = ranked[0]
    assert top.index == 3 and top.flagged
    # malignant threshold: mean p(malignant) of the lesions labelled malignant = (0.7+0.8+0.9+0.6)/4 = 0.75
    assert top.reason == ("labelled benign, out-of-fold p(malignant) 0.91 — above the malignant class threshold 0.75 "
                          "(mean p(malignant) of the lesions labelled malignant): confident learning counts it as a "
                          "likely label error")
    assert next(s for s in ranked if s.index == 0).reason.endswith("not flagged")
    with pytest.raises(CadxInputError, match="at least 2 lesions of each label"):
        curation.rank_suspect_labels(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9]))


def test_lesion_probability_is_the_mean_over_rois_then_over_seeds():
    # lesion 7: seed 0 ROIs 0.2, 0.4 (mean 0.3); seed 1 one ROI 0.5: (0.3 + 0.5) / 2 = 0.4. lesion 2: 0.9 and 0.7
    lesions, p, labels = curation.lesion_probabilities(
        np.array([7, 7, 2, 7, 2]), np.array([0.2, 0.4, 0.9, 0.5, 0.7]), np.array([0, 0, 1, 0, 1]),
        np.array([0, 0, 0, 1, 1]))
    assert lesions.tolist() == [2, 7] and labels.tolist() == [1, 0]
    assert p.tolist() == pytest.approx([0.8, 0.4])


# --------------------------------------------------------------------------------------------- core: similarity ---
def _texture(seed: int, shape=(512, 512)) -> np.ndarray:
    field = gaussian_filter(np.random.default_rng(seed).normal(size=shape), 12)
    return ((field - field.min()) / np.ptp(field) * 50000 + 5000).astype(np.uint16)


def test_phash_keeps_an_edited_image_close_and_an_unrelated_one_far():
    image = _texture(1)
    brighter = np.clip(image.astype(float) * 1.05 + 800, 0, 65535).astype(np.uint16)
    noisy = np.clip(image + np.random.default_rng(2).normal(0, 300, image.shape), 0, 65535).astype(np.uint16)
    h = curation.phash(image)
    assert curation.phash(image.copy()) == h
    near = curation.hamming_distances(np.array([curation.phash(brighter), curation.phash(noisy)], np.uint64), h)
    assert (near <= curation.DEFAULT_HAMMING).all()
    far = curation.hamming_distances(np.array([curation.phash(_texture(s)) for s in range(3, 9)], np.uint64), h)
    assert (far > 3 * curation.DEFAULT_HAMMING).all()


def test_hash_pairs_and_blocked_topk_equal_brute_force():
    rng = np.random.default_rng(5)
    hashes = rng.integers(0, 2**63, 300, dtype=np.uint64)
    hashes[[10, 200]] = hashes[40] ^ np.uint64(0b101)  # two planted near copies of row 40 (2 bits apart)
    brute = sorted((i, j, int(bin(int(hashes[i]) ^ int(hashes[j])).count("1"))) for i in range(300)
                   for j in range(i + 1, 300) if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 20)
    assert curation.hash_pairs(hashes, max_distance=20, block=64) == brute
    assert (10, 40, 2) in curation.hash_pairs(hashes, max_distance=2) and (40, 200, 2) in brute

    x = rng.normal(size=(700, 24))
    x[5] = 0.0  # a zero vector: cosine 0 with everything, never NaN
    unit = x / np.maximum(np.linalg.norm(x, axis=1), 1e-300)[:, None]
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.lexsort((np.broadcast_to(np.arange(700), sims.shape), -sims), axis=1)[:, :7]
    got_i, got_s = curation.topk_cosine(x, 7, block=128)
    assert (got_i == expected).all()
    assert got_s == pytest.approx(np.take_along_axis(sims, expected, axis=1))
    queries = np.array([0, 5, 699])
    sub_i, sub_s = curation.topk_cosine(x, 7, queries=queries, block=50)
    assert (sub_i == expected[queries]).all() and sub_s == pytest.approx(got_s[queries])


def test_pair_classes():
    assert curation.pair_class(same_lesion=True, same_patient=True, same_image=False) == "same lesion (views)"
    assert curation.pair_class(same_lesion=False, same_patient=False, same_image=True).startswith(
        "same image under different patients")
    assert curation.pair_class(same_lesion=False, same_patient=True, same_image=True) == "look-alike"
    assert curation.pair_class(same_lesion=False, same_patient=False, same_image=False) == "look-alike"


# ---------------------------------------------------------------------------------------- workflow: suspects ---
def _experiment(ws, fold_of, p_of, repeats: int = 2) -> int:
    """An experiment row with stored out-of-fold predictions: ROI -> fold and lesion -> p (same in every seed,
    jittered per ROI by ±0.01 so the per-ROI mean matters)."""
    records = roi_records(ws, included_only=False)
    with ws.sessions.begin() as session:
        experiment = Experiment(name="planted", kind="evaluate", config={}, config_sha256="0" * 64,
                                code_version="test", results={}, created_by="tester")
        session.add(experiment)
        session.flush()
        for repeat in range(repeats):
            for n, r in enumerate(records):
                p = p_of(r)
                p1 = None if p is None else min(0.99, max(0.01, p + (0.01 if n % 2 else -0.01)))
                session.add(Prediction(experiment_id=experiment.id, roi_id=r.id, roi_sha256=r.sha256,
                                       lesion_id=r.lesion_id, truth=r.label, repeat=repeat,
                                       fold=fold_of(r, repeat), p1=p1, p2=p1, p3=p1))
        return experiment.id


@pytest.fixture
def demo(workspace_cache, workspace):
    workspace_cache.fill(workspace, import_demo, n_lesions=20, seed=3)
    return workspace


def test_planted_flips_in_a_cohort_are_ranked_first_and_can_be_disputed(demo):
    records = roi_records(demo)
    lesions = sorted({r.lesion_id for r in records})
    planted = set(lesions[:2])  # their stored label is wrong: the classifier says the other class
    _experiment_id = _experiment(demo, lambda r, s: (r.lesion_id + s) % 3,
                                 lambda r: (0.15 if r.label else 0.85) if r.lesion_id in planted
                                 else (0.85 if r.label else 0.15) + 0.002 * (r.lesion_id % 7))
    report = suspect_labels(demo, _experiment_id)
    assert report.classifier == "ensemble" and report.column == "p3" and report.n_seeds == 2
    assert "Northcutt, Jiang & Chuang 2021" in report.method and "JAIR" in report.method
    assert len(report.rows) == len(lesions)
    assert set(report.rows["lesion_id"].head(2)) == planted
    assert report.rows["flagged"].head(2).all() and report.n_flagged == 2
    first = report.rows.iloc[0]
    with demo.sessions() as session:  # both seeds stored the same: the lesion's p is the mean of its ROIs' p3
        stored = list(session.scalars(select(Prediction.p3).where(Prediction.lesion_id == int(first["lesion_id"]),
                                                                  Prediction.repeat == 0)))
    assert first["p"] == pytest.approx(np.mean(stored), abs=1e-12)
    assert abs(first["p"] - (0.15 if first["label"] == "malignant" else 0.85)) <= 0.01

    key = first["lesion_key"]
    events = dispute_label(demo, key, user="rev", reason="looks like a cyst, not a carcinoma")
    with demo.sessions() as session:
        lesion = session.scalars(select(Lesion).where(Lesion.key == key)).one()
        rois = list(session.scalars(select(Roi).where(Roi.lesion_id == lesion.id)))
        label_before = lesion.label
        assert len(events) == len(rois) >= 1 and all(r.included for r in rois)
        stored = list(session.scalars(select(ReviewEvent).where(ReviewEvent.action == "dispute_label")))
        assert {e.roi_id for e in stored} == {r.id for r in rois}
        assert stored[0].note == "looks like a cyst, not a carcinoma" and stored[0].user == "rev"
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "dispute_label")).one()
        assert audit.detail["lesion_key"] == key and audit.detail["reason"] == stored[0].note
    assert set(label_disputes(demo)) == {lesion.id}
    assert bool(suspect_labels(demo, _experiment_id).rows.iloc[0]["disputed"]) is True
    with pytest.raises(CadxInputError, match="needs a reason"):
        dispute_label(demo, key, user="rev")
    dispute_label(demo, key, user="rev2", clear=True)
    assert label_disputes(demo) == {}
    with pytest.raises(CadxInputError, match="not disputed"):
        dispute_label(demo, key, user="rev2", clear=True)
    with demo.sessions() as session:
        assert session.get(Lesion, lesion.id).label == label_before  # never changed automatically
    with pytest.raises(CadxInputError, match="no such lesion"):
        dispute_label(demo, "no-such-lesion", user="rev", reason="x")
    with pytest.raises(CadxInputError, match="--classifier"):
        suspect_labels(demo, _experiment_id, classifier="svm3")


# -------------------------------------------------------------------------------------- workflow: duplicates ---
def _png(path: Path, pixels: np.ndarray, *, note: str | None = None) -> None:
    info = None
    if note is not None:  # other bytes, same pixels (a re-export)
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", note)
    PILImage.fromarray(pixels).save(path, pnginfo=info)


def _planted_duplicates(folder: Path) -> Path:
    """Five images: A (patient P1), A re-saved under P2 (same pixels), A slightly brighter and noisier under P3,
    and two unrelated images under P4 and P5."""
    folder.mkdir(parents=True, exist_ok=True)
    a = _texture(11, (400, 400))
    _png(folder / "a.png", a)
    _png(folder / "a-copy.png", a, note="re-exported")
    edited = np.clip(a.astype(float) * 1.04 + 500 + np.random.default_rng(0).normal(0, 200, a.shape), 0, 65535)
    _png(folder / "a-edit.png", edited.astype(np.uint16))
    _png(folder / "b.png", _texture(12, (400, 400)))
    _png(folder / "c.png", _texture(13, (400, 400)))
    rows = [("a.png", "P1", "benign"), ("a-copy.png", "P2", "benign"), ("a-edit.png", "P3", "malignant"),
            ("b.png", "P4", "benign"), ("c.png", "P5", "malignant")]
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", "patient", "lesion", "label", "centre_x", "centre_y",
                                         "pixel_size_mm", "view", "laterality"])
        writer.writeheader()
        for image, patient, label in rows:
            writer.writerow({"image": image, "patient": patient, "lesion": "L1", "label": label, "centre_x": 199.5,
                             "centre_y": 199.5, "pixel_size_mm": 0.1, "view": "CC", "laterality": "L"})
    return manifest


def test_planted_duplicates_are_found_classified_and_their_fold_leak_warned(workspace, tmp_path):
    report = import_manifest(workspace, _planted_duplicates(tmp_path / "in"), user="tester")
    assert report.committed and report.n_imported == 5
    with workspace.sessions() as session:
        roi_of = {roi.lesion.patient.key: roi.id for roi in session.scalars(select(Roi))}
    pairs = duplicate_pairs(workspace)
    found = {(r.roi_a, r.roi_b): r for r in pairs.itertuples(index=False)}

    def pair(a: str, b: str) -> tuple[int, int]:
        return tuple(sorted((roi_of[a], roi_of[b])))

    exact = pair("P1", "P2")
    assert set(found) == {exact, pair("P1", "P3"), pair("P2", "P3")}
    assert found[exact].evidence == "identical pixels (ROI sha256)" and found[exact].hamming == 0
    assert all(r["class"] == "same image under different patients (patient-key error; leaks across folds)"
               for r in pairs.to_dict("records"))
    edit = found[pair("P1", "P3")]  # other pixels, the same (or nearly the same) perceptual hash
    assert edit.evidence.startswith("pHash ") and edit.hamming <= curation.DEFAULT_HAMMING
    # the unrelated images stay apart even at twice the threshold
    assert len(duplicate_pairs(workspace, hamming=2 * curation.DEFAULT_HAMMING)) == 3

    # an experiment that put P1 and P3 in one fold, P2 in another: P1/P2 and P2/P3 leak, in seed 0 only
    folds = {roi_of["P1"]: 0, roi_of["P2"]: 1, roi_of["P3"]: 0, roi_of["P4"]: 1, roi_of["P5"]: 0}
    experiment_id = _experiment(workspace, lambda r, s: folds[r.id] if s == 0 else 0, lambda r: 0.5)
    leaks = fold_leaks(workspace, experiment_id, pairs)
    assert {(r.roi_a, r.roi_b) for r in leaks.itertuples()} == {exact, pair("P2", "P3")}
    assert leaks["seeds"].tolist() == [[0], [0]]
    assert {tuple(f) for f in leaks["folds"]} == {(f"{folds[a] + 1}/{folds[b] + 1}",) for a, b in
                                                  (exact, pair("P2", "P3"))}


def test_cli_suspects_dispute_duplicates_and_similar(tmp_path, workspace_cache):
    data = tmp_path / "data"
    ws = open_workspace(data)
    import_manifest(ws, _planted_duplicates(tmp_path / "in"), user="tester")
    records = roi_records(ws)
    by_id = {r.id: r for r in records}
    with ws.sessions() as session:
        patient_of = {roi.id: roi.lesion.patient.key for roi in session.scalars(select(Roi))}
    # P1 is labelled benign but scored 0.9: the one planted suspect
    p_given = {"P1": 0.9, "P2": 0.2, "P3": 0.85, "P4": 0.1, "P5": 0.8}
    p_of = {r.id: p_given[patient_of[r.id]] for r in records}
    experiment_id = _experiment(ws, lambda r, s: r.id % 2, lambda r: p_of[r.id])

    out = tmp_path / "suspects.json"
    result = runner.invoke(app, ["suspects", str(experiment_id), "--top", "2", "--json", str(out),
                                 "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Northcutt, Jiang & Chuang 2021" in text and "averaged over 2 seed(s)" in text
    payload = json.loads(out.read_text())
    assert payload["classifier"] == "ensemble" and payload["n_lesions"] == 5 and len(payload["rows"]) == 5
    top = payload["rows"][0]
    # P1 labelled benign with p(malignant) ~0.9: the most suspect
    assert top["patient_key"] == "P1" and top["label"] == "benign" and top["rank"] == 1
    assert top["p"] == pytest.approx(0.9, abs=0.0100001)  # its one ROI, jittered by 0.01
    assert top["reason"].startswith(f"labelled benign, out-of-fold p(malignant) {top['p']:.2f} — above the "
                                    "malignant class threshold")
    assert f"1. {top['lesion_key']}: labelled benign" in text

    result = runner.invoke(app, ["dispute", "L1", "--reason", "x", "--data-dir", str(data)])
    assert result.exit_code == 2 and "say which with --patient" in " ".join(result.output.split())
    result = runner.invoke(app, ["dispute", "L1", "--patient", "P1", "--reason", "pathology says malignant",
                                 "--data-dir", str(data), "--user", "rev"])
    assert result.exit_code == 0 and "label disputed by rev" in result.output
    assert runner.invoke(app, ["dispute", "L1", "--patient", "P1", "--clear", "--data-dir", str(data)]).exit_code == 0

    out = tmp_path / "dup.json"
    result = runner.invoke(app, ["duplicates", "--experiment", str(experiment_id), "--json", str(out),
                                 "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "Warning: experiment" in result.output
    payload = json.loads(out.read_text())
    assert len(payload["pairs"]) == 3 and payload["hamming"] == curation.DEFAULT_HAMMING
    # ROIs alternate folds by id: the leaking pairs are those whose ids differ in parity
    assert {(p["roi_a"], p["roi_b"]) for p in payload["fold_leaks"]} == {
        (p["roi_a"], p["roi_b"]) for p in payload["pairs"] if (p["roi_a"] - p["roi_b"]) % 2}

    # similar cases and cosine duplicates on stored features (written through the feature store's own writer)
    from cadx.cnn import PREPROCESSING_VERSION

    vectors = {r.sha256: np.array([1.0, 0.0, 0.0]) for r in records}
    roi = {patient: roi_id for roi_id, patient in patient_of.items()}
    vectors[by_id[roi["P4"]].sha256] = np.array([0.9, 0.1, 0.0])
    vectors[by_id[roi["P5"]].sha256] = np.array([0.0, 0.0, 1.0])
    hashes = list(vectors)
    store = feature_store(ws)
    store.write(hashes, {"fc6": np.stack([vectors[h] for h in hashes])}, backbone="alexnet",
                weights_sha256="ab" * 32, preprocessing=PREPROCESSING_VERSION)
    frame, source = similar_cases(ws, roi["P5"], tap="fc6", k=2)
    assert source.startswith("alexnet fc6") and len(frame) == 2
    assert frame["cosine"].tolist() == pytest.approx([0.0, 0.0])
    frame, _ = similar_cases(ws, roi["P4"], tap="fc6", k=3)
    cos = 0.9 / np.hypot(0.9, 0.1)
    # A and its re-export share pixels (one row), A's edit has A's vector, P5's is orthogonal
    assert frame["cosine"].tolist() == pytest.approx([cos, cos, 0.0])
    shown = frame["roi_id"].tolist()
    assert set(shown[:2]) == {min(roi["P1"], roi["P2"]), roi["P3"]} and shown[2] == roi["P5"]
    result = runner.invoke(app, ["similar", str(roi["P4"]), "--tap", "fc6", "--k", "2", "--json", "-",
                                 "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    similar = json.loads(result.output)["similar"]
    assert [s["rank"] for s in similar] == [1, 2] and similar[0]["cosine"] == pytest.approx(cos)
    pairs = duplicate_pairs(ws, tap="fc6", min_cosine=0.95)
    cosine_only = pairs[pairs["hamming"].isna()]
    assert set(cosine_only["class"]) == {"look-alike"} and (cosine_only["cosine"] >= 0.95).all()
    with pytest.raises(CadxInputError, match="no stored features of tap 'fc7'"):
        similar_cases(ws, roi["P1"], tap="fc7")


# ------------------------------------------------------------------------------------------ the Review page ---
@pytest.mark.slow
def test_review_page_shows_similar_cases_and_opens_one(tmp_path, monkeypatch, workspace_cache):
    import streamlit as st

    from cadx.cnn import PREPROCESSING_VERSION
    from tests.apptest_support import open_page, point_app_at

    data, _ = workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=4, seed=1)
    ws = open_workspace(data)
    records = roi_records(ws, included_only=False)
    hashes = list(dict.fromkeys(r.sha256 for r in records))
    # ROI i's vector points at angle i/10 rad: the nearest of the first are the next ones, in order
    vectors = np.array([[np.cos(i / 10), np.sin(i / 10)] for i in range(len(hashes))])
    feature_store(ws).write(hashes, {"fc6": vectors}, backbone="alexnet", weights_sha256="ab" * 32,
                            preprocessing=PREPROCESSING_VERSION)
    first = next(r for r in records if r.sha256 == hashes[0])
    point_app_at(data, monkeypatch)
    try:
        at = open_page("pages/review.py")
        at.button(key=f"review_open_{first.id}").click().run()
        assert any(s.value == f"ROI #{first.id}" for s in at.subheader)
        assert any(e.label.startswith("Similar cases (tap fc6 of alexnet)") for e in at.expander)
        at.toggle(key="review_similar_on").set_value(True).run()
        assert not at.exception, at.exception
        expected = similar_cases(ws, first.id, tap="fc6", k=6)[0]["roi_id"].tolist()
        shown = [int(str(b.key).removeprefix("review_similar_")) for b in at.button
                 if str(b.key).startswith("review_similar_")]
        assert sorted(shown) == sorted(expected) and len(shown) == min(6, len(hashes) - 1)  # laid out in 3 columns
        at.button(key=f"review_similar_{expected[0]}").click().run()
        assert at.session_state["review_open"] == expected[0]
    finally:
        st.cache_resource.clear()
