"""`cadx analyses ID`: the open-question analyses from the shell, checked against the stored predictions by hand
(SYNTHETIC demo set, AlexNet architecture with random weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest, spearmanr
from typer.testing import CliRunner

from cadx.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from cadx.workflows import import_demo, open_workspace
    from cadx.workflows.experiments import ExperimentSettings, run_experiment
    from cadx.workflows.features import resolve_backbone

    data = tmp_path_factory.mktemp("analyses-cli") / "data"
    ws = open_workspace(data)
    import_demo(ws, n_lesions=12, seed=2)
    loaded, note = resolve_backbone("alexnet", weights="random")
    experiment_id = run_experiment(ws, loaded, ExperimentSettings(min_lesions_per_class_per_fold=1, repeats=1,
                                                                  taps=("fc8",), ensemble_tap="fc8", n_folds=3),
                                   name="cli analyses", user="tester", weights_note=note)
    ws.engine.dispose()
    return data, experiment_id


def test_cadx_analyses_prints_and_writes_the_numbers(experiment, tmp_path):
    from cadx.workflows import lesion_predictions, open_workspace
    from cadx.workflows.experiments import load_experiment

    data, experiment_id = experiment
    out = tmp_path / "analyses.json"
    result = CliRunner().invoke(app, ["analyses", str(experiment_id), "--json", str(out), "--data-dir", str(data),
                                      "--components", "3"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Strongest correlations, fc8 components" in text and "Operating points per fold" in text
    numbers = json.loads(out.read_text())
    ws = open_workspace(data)
    try:
        frame = lesion_predictions(ws, experiment_id)
        record = load_experiment(ws, experiment_id)
    finally:
        ws.engine.dispose()
    # called at each fold's operating point, chosen on its training data and recorded with the experiment
    points = {k: np.array(record.results.methods[k].calibration.operating_point[0]) for k in ("A", "B")}
    folds, truth = frame["fold"].to_numpy(int), frame["truth"].to_numpy(int)
    right1 = (frame["decision1"].to_numpy() >= points["A"][folds]) == (truth == 1)
    right2 = (frame["decision2"].to_numpy() >= points["B"][folds]) == (truth == 1)
    assert [row["SVM1 decision ≥"] for row in numbers["agreement"]["operating_points"]] == points["A"].tolist()
    table = [[int(np.sum(right1 & right2)), int(np.sum(right1 & ~right2))],
             [int(np.sum(~right1 & right2)), int(np.sum(~right1 & ~right2))]]
    agreement = numbers["agreement"]
    assert agreement["table"] == table and agreement["n"] == len(frame)
    b, c = table[0][1], table[1][0]
    expected_p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    if agreement["refusal"] is None:
        assert agreement["mcnemar_p"] == pytest.approx(expected_p) and "McNemar exact p =" in text
    else:  # a classifier called every lesion one class: no φ or McNemar, and the output says why
        assert agreement["mcnemar_p"] is None and "not computed" in text
    fixed = CliRunner().invoke(app, ["analyses", str(experiment_id), "--threshold", "0.5", "--data-dir", str(data),
                                     "--components", "2"])
    assert fixed.exit_code == 0 and "fixed probability threshold of 0.5" in " ".join(fixed.output.split())
    assert agreement["spearman_rho"] == pytest.approx(spearmanr(frame["p1"], frame["p2"]).statistic)
    corr = numbers["correlation"]
    assert corr["tap"] == "fc8" and len(corr["components"]) == 3 and len(corr["features"]) == 21
    assert all(abs(r) <= 1.0 + 1e-12 for row in corr["r"] for r in row if r is not None)
    bad = CliRunner().invoke(app, ["analyses", str(experiment_id), "--level", "patient", "--data-dir", str(data)])
    assert bad.exit_code != 0 and "--level" in bad.output
