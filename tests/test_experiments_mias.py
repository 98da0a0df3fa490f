"""The whole pipeline on the real MIAS ROIs: import, CNN features with EfficientNet-Lite0's real ImageNet weights,
analytic features, a layer sweep, SVM1/SVM2/ensemble with their statistics."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from cadx.workflows import import_mias
from cadx.workflows.experiments import ExperimentSettings, experiment_summary, run_experiment
from cadx.workflows.features import resolve_backbone
from db.models import Prediction


@pytest.mark.slow
def test_sweep_runs_end_to_end_on_real_mias(tmp_path, mias_dir):
    from cadx.workflows import open_workspace

    workspace = open_workspace(tmp_path / "data")
    report = import_mias(workspace, mias_dir, user="tester")
    loaded, note = resolve_backbone("efficientnet_lite0")
    assert loaded.weights.source == "package"  # real ImageNet weights, installed offline
    settings = ExperimentSettings(taps=("stage7", "pool"), ensemble_tap="pool", seed=0, repeats=1)
    experiment_id = run_experiment(workspace, loaded, settings, name="MIAS", user="tester", weights_note=note)
    summary = experiment_summary(workspace, experiment_id)
    results = summary["results"]
    assert results["n_rois"] == report.n_imported
    assert not summary["uses_synthetic_data"] and not summary["uses_random_weights"]
    assert list(results["sweep"]) == ["stage7", "pool"]
    assert results["sweep"]["pool"]["n_features"] == 1280
    for method in ("A", "B", "C"):
        row = results["methods"][method]
        assert len(row["fold_aucs"]) == 5 and all(0.0 <= a <= 1.0 for a in row["fold_aucs"])
        assert row["auc_se"] == pytest.approx(row["auc_sd"] / np.sqrt(5))
        assert row["pooled_ci95"][0] <= row["pooled_auc"] <= row["pooled_ci95"][1]
    # the probabilities keep each fold's ranking: their fold AUCs equal the decision values'
    for method in ("A", "B"):
        row = results["methods"][method]
        assert row["fold_aucs_proba"] == pytest.approx(row["fold_aucs_decision"])
    with workspace.sessions() as session:
        predictions = session.scalars(select(Prediction).where(Prediction.experiment_id == experiment_id)).all()
    assert len(predictions) == report.n_imported
    assert all(p.p1 is not None and p.p2 is not None and p.p3 is not None for p in predictions)
