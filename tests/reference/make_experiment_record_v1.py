"""Writes tests/reference/experiment_record_v1.json: real records of schema 1, made by cadx at commit 8f5172c.

Run it with that commit's code (it is not meant for the current cadx)::

    mkdir /tmp/old-cadx && git archive 8f5172c | tar -x -C /tmp/old-cadx
    PYTHONPATH=/tmp/old-cadx python tests/reference/make_experiment_record_v1.py tests/reference/experiment_record_v1.json

SYNTHETIC demo data and random CNN weights: the file pins a record *shape*, not a result.
"""

import json
import sys
import tempfile
from pathlib import Path

from cadx.workflows import import_demo
from cadx.workflows.experiments import ExperimentSettings, experiment_summary, run_experiment
from cadx.workflows.features import resolve_backbone
from cadx.workflows.workspace import open_workspace

folder = Path(tempfile.mkdtemp(prefix="old-cadx-"))
ws = open_workspace(folder / "data", f"sqlite:///{folder}/cadx.db")
import_demo(ws, n_lesions=12, seed=5)
loaded, _ = resolve_backbone("alexnet", weights="random")
records = {}
for label, repeats in (("one_seed", 1), ("two_seeds", 2)):
    settings = ExperimentSettings(taps=("fc7", "fc8"), ensemble_tap="fc8", n_folds=3, seed=0, repeats=repeats)
    experiment_id = run_experiment(ws, loaded, settings, name=f"old-{repeats}", user="tester")
    records[label] = json.loads(json.dumps(experiment_summary(ws, experiment_id), default=str))
provenance = ("Written by cadx at commit 8f5172c (2026-11-27: before cohorts, Platt calibration records, the "
              "z-ensemble and comparison families; schema 1, no schema_version) with "
              "tests/reference/make_experiment_record_v1.py: import_demo(n_lesions=12, seed=5), AlexNet with random "
              "weights, taps fc7+fc8, ensemble tap fc8, 3 folds, seed 0; one_seed: repeats=1, two_seeds: "
              "repeats=2. SYNTHETIC data: a record shape, not a result.")
Path(sys.argv[1]).write_text(json.dumps({"provenance": provenance, **records}, indent=1) + "\n")
