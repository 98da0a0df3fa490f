"""The layer explorer: activations against a direct forward pass, the safe cache, each tap's score against the stored
out-of-fold values, and the page (AppTest) — on real MIAS ROIs (../shared/data) with AlexNet's architecture and random
weights (its ImageNet file is not available offline; the explorer does not depend on the weights)."""

from __future__ import annotations

import io
import stat

import numpy as np
import pytest
import streamlit as st

from cadx.explorer import ActivationCacheError, RoiActivations, mosaic, roi_activations, score_position, to_uint8
from tests.apptest_support import open_page, point_app_at  # (loads streamlit.testing: the app runs on loopback)

pytestmark = pytest.mark.slow


def test_score_position_by_hand():
    out = score_position(0.5, np.array([0.0, 0.5, 1.0, 0.2]), np.array([1.0, 2.0]))
    assert out == {"below_benign": pytest.approx((2 + 0.5) / 4), "below_malignant": 0.0, "nearer": "benign"}
    assert score_position(1.9, np.array([0.0]), np.array([1.0, 2.0]))["nearer"] == "malignant"


def test_to_uint8_and_mosaic_layout():
    assert to_uint8(np.array([[0.0, 1.0], [2.0, 4.0]])).tolist() == [[0, 64], [128, 255]]
    assert to_uint8(np.ones((2, 2))).max() == 0
    from cadx.explorer import TapActivations

    maps = np.zeros((5, 4, 4), np.float32)
    maps[1, 0, 0] = 2.0
    tap = TapActivations("t", (9, 4, 4), np.arange(5), maps, np.zeros(9, np.float32))
    image = mosaic(tap, columns=4, tile=8, gap=2)  # 2 rows x 4 columns of 8-pixel tiles
    assert image.shape == (2 * 8 + 2, 4 * 8 + 3 * 2)
    assert image[0, 10] == 255 and image[0, 0] == 0  # map 1's bright corner; map 0 dark (one scale per tap)
    vector = TapActivations("fc", (10,), np.arange(10), np.arange(10, dtype=np.float32).reshape(1, 1, 10),
                            np.arange(10, dtype=np.float32))
    assert mosaic(vector, tile=8).shape[0] == mosaic(vector, tile=8).shape[1]  # folded into a square


@pytest.fixture(scope="module")
def mias(tmp_path_factory, mias_dir):
    """Real MIAS imported; an AlexNet (random weights) experiment on two taps without Method B."""
    from cadx.workflows import import_mias, open_workspace
    from cadx.workflows.experiments import ExperimentSettings, run_experiment
    from cadx.workflows.features import resolve_backbone

    data = tmp_path_factory.mktemp("explorer-mias") / "data"
    ws = open_workspace(data)
    import_mias(ws, mias_dir, user="tester")
    loaded, note = resolve_backbone("alexnet", weights="random")
    experiment_id = run_experiment(ws, loaded, ExperimentSettings(taps=("pool5", "fc8"), ensemble_tap="fc8",
                                                                  analytic=False, repeats=1),
                                   name="MIAS explorer", user="tester", weights_note=note)
    yield ws, loaded, experiment_id
    ws.engine.dispose()


def test_activations_equal_a_direct_forward_pass_on_mias(mias):
    from cadx.cnn import extract_features, preprocess_rois, tap_shapes
    from cadx.workflows.explorer import explorer_rois
    from cadx.workflows.features import load_roi_pixels, roi_records

    ws, loaded, experiment_id = mias
    rois = explorer_rois(ws, experiment_id)
    roi_id = int(rois["roi_id"].iloc[0])
    record = next(r for r in roi_records(ws) if r.id == roi_id)
    pixels = load_roi_pixels(ws, record)
    acts = roi_activations(loaded, pixels, roi_sha256=record.sha256, top=5)
    # the input is cadx.cnn's own preprocessing of the stored ROI (256 x 256, the weights' normalisation)
    expected_input = preprocess_rois([pixels], mean=loaded.spec.mean, std=loaded.spec.std)[0].numpy()
    np.testing.assert_array_equal(acts.network_input, expected_input)
    assert acts.network_input.shape == (3, 256, 256)
    direct = extract_features(pixels[None], backbone=loaded, batch_size=1, device="cpu")
    assert list(acts.taps) == list(loaded.backbone.taps)
    for tap, t in acts.taps.items():
        values = direct[tap][0].reshape(tap_shapes("alexnet")[tap])
        if t.spatial:
            means = values.mean(axis=(1, 2))
            np.testing.assert_allclose(t.channel_mean, means, rtol=1e-6)
            assert len(t.channels) == 5 and np.all(np.diff(means[t.channels]) <= 0)  # strongest first
            assert means[t.channels].min() >= np.sort(means)[-5]  # and they are the five strongest
            np.testing.assert_array_equal(t.maps, values[t.channels])
        else:
            np.testing.assert_array_equal(t.channel_mean, values.reshape(-1))
    again = RoiActivations.from_bytes(acts.to_bytes(), expected=acts.key())
    for tap in acts.taps:
        np.testing.assert_array_equal(again.taps[tap].maps, acts.taps[tap].maps)


def test_the_activation_cache_is_keyed_safe_and_private(mias):
    from cadx.workflows.explorer import activation_cache_path, explorer_activations, explorer_rois

    ws, loaded, experiment_id = mias
    roi_id, sha = explorer_rois(ws, experiment_id)[["roi_id", "sha256"]].iloc[1]
    first, cached = explorer_activations(ws, loaded, int(roi_id))
    assert not cached
    path = activation_cache_path(ws, loaded, sha, preprocessing=first.preprocessing)
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sha in path.name and loaded.weights.sha256 in str(path)
    second, cached = explorer_activations(ws, loaded, int(roi_id))
    assert cached and np.array_equal(second.taps["conv1"].maps, first.taps["conv1"].maps)
    # another ROI's file under this name, a truncated file, a pickle: refused and computed again
    with pytest.raises(ActivationCacheError, match="computed from"):
        RoiActivations.from_bytes(path.read_bytes(), expected={**first.key(), "roi_sha256": "0" * 64})
    buffer = io.BytesIO()
    np.savez(buffer, header=np.array([{"format": 1}], dtype=object))
    for bad in (path.read_bytes()[:1000], buffer.getvalue()):
        with pytest.raises(ActivationCacheError):
            RoiActivations.from_bytes(bad)
        path.write_bytes(bad)
        recomputed, cached = explorer_activations(ws, loaded, int(roi_id))
        assert not cached and np.array_equal(recomputed.taps["fc8"].channel_mean, first.taps["fc8"].channel_mean)


def test_tap_scores_are_the_stored_out_of_fold_values_on_mias(mias):
    from cadx.workflows.analyses import experiment_data
    from cadx.workflows.explorer import explorer_rois, tap_aucs, tap_scores

    ws, _loaded, experiment_id = mias
    data = experiment_data(ws, experiment_id)
    rois = explorer_rois(ws, experiment_id)
    assert (rois["label"] == "malignant").sum() == int(data.y.sum()) and len(rois) == len(data.y)
    index = 7
    out = tap_scores(ws, experiment_id, int(rois["roi_id"].iloc[index]), verify=True)
    assert out["source"] == "stored" and out["note"] == ""
    frame = out["frame"].set_index("tap")
    assert list(frame.index) == ["pool5", "fc8"] and frame["verified"].all()
    decision1 = data.predictions["decision1"].to_numpy(float)
    assert frame.loc["fc8", "decision"] == decision1[index]  # SVM1 at its tap: the stored prediction itself
    assert frame.loc["fc8", "fold"] == data.folds[index] + 1
    benign = decision1[data.y == 0]
    below = (np.sum(benign < decision1[index]) + 0.5 * np.sum(benign == decision1[index])) / len(benign)
    assert frame.loc["fc8", "below_benign"] == pytest.approx(below)
    dist = out["distributions"]
    assert len(dist) == 2 * len(data.y) and dist["decision"].notna().all()
    aucs = tap_aucs(ws, experiment_id).set_index("tap")
    assert list(aucs.index) == ["pool5", "fc8"] and aucs["auc_mean"].between(0, 1).all()


@pytest.fixture
def use(monkeypatch):
    def use(data):
        return point_app_at(data, monkeypatch)

    yield use
    st.cache_resource.clear()
    st.cache_data.clear()


def test_explorer_page_on_mias(mias, use):
    ws, _loaded, experiment_id = mias
    use(ws.data_dir)
    at = open_page("pages/explorer.py", timeout=300)
    at.selectbox(key="lx_backbone").set_value("alexnet").run()
    at.selectbox(key="lx_experiment_alexnet").set_value(experiment_id).run()
    assert not at.exception, at.exception
    text = "\n".join(m.value for m in at.markdown)
    assert "**conv1** 64×63×63" in text and "not in this sweep" in text
    assert "**fc8** 1000 · AUC" in text and "**pool5** 256×7×7 · AUC" in text
    headers = [h.value for h in at.subheader]
    assert headers == ["What the CNN receives", "Strongest activation maps, tap by tap",
                       "This ROI's SVM score at each tap, against the classes"]
    table = [d.value for d in at.dataframe if "below_benign" in d.value.columns][0]
    assert list(table["tap"]) == ["pool5", "fc8"]
    at.selectbox(key="lx_experiment_alexnet").set_value(0).run()  # no experiment: maps only, weights to choose
    if any("alexnet" in e.value.lower() for e in at.error):  # the pretrained file is not here: said, not a crash
        at.radio(key="lx_weights").set_value("random").run()
    assert not at.exception and not at.error and any("Pick an experiment" in i.value for i in at.info)
    assert "**conv1** 64×63×63" in "\n".join(m.value for m in at.markdown)


def test_explorer_starts_on_the_newest_swept_experiment_and_real_rois_first(workspace_cache, workspace):
    """Known answers: with no experiment, the backbone a default run would use and none; with experiments, the
    newest with a sweep; ROIs marked real come before the synthetic ones, each group in its own order."""
    from sqlalchemy import update

    from cadx.cnn import pretrained_available
    from cadx.workflows import import_demo
    from cadx.workflows.explorer import explorer_rois, explorer_start
    from db.models import Roi

    workspace_cache.fill(workspace, import_demo, n_lesions=4, seed=1)
    assert explorer_start(workspace) == ("alexnet" if pretrained_available("alexnet") else "efficientnet_lite0",
                                         None)
    ids = explorer_rois(workspace)["roi_id"].tolist()
    assert ids == sorted(ids) and len(ids) >= 4
    real = [ids[2], ids[-1]]
    with workspace.sessions() as session, session.begin():
        session.execute(update(Roi).where(Roi.id.in_(real)).values(is_synthetic=False))
    rois = explorer_rois(workspace)
    assert rois["roi_id"].tolist() == real + [i for i in ids if i not in real]
    assert rois["synthetic"].tolist() == [False, False] + [True] * (len(ids) - 2)


def test_explorer_start_is_the_newest_experiment_with_a_sweep(mias):
    from cadx.workflows.explorer import explorer_start

    ws, _loaded, experiment_id = mias
    assert explorer_start(ws) == ("alexnet", experiment_id)
