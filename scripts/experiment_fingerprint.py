"""Fingerprint of two small experiments, to check that a refactoring leaves the numbers alone.

Runs, with whatever cadx is on PYTHONPATH, two experiments on the SYNTHETIC demo set (AlexNet, random weights: one
seed with one tap; two seeds with three taps) and writes their config, config SHA-256, results (timings dropped) and
every out-of-fold prediction as JSON. Compare the files of two checkouts::

    PYTHONPATH=/path/to/old  python scripts/experiment_fingerprint.py old.json
    PYTHONPATH=$PWD          python scripts/experiment_fingerprint.py new.json

(about 2 minutes each on a 2-core machine).
"""
import json
import sys
import tempfile
from pathlib import Path

import cadx.cohorts

cadx.cohorts.MIN_LESIONS_PER_CLASS_PER_FOLD = 1
from sqlalchemy import select  # noqa: E402

from cadx.workflows import import_demo, open_workspace  # noqa: E402
from cadx.workflows.experiments import ExperimentSettings, experiment_summary, run_experiment  # noqa: E402
from cadx.workflows.features import resolve_backbone  # noqa: E402
from db.models import Prediction  # noqa: E402


def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in ("seconds",)}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v

d = Path(tempfile.mkdtemp(prefix="cmp-"))
ws = open_workspace(d / "data", f"sqlite:///{d}/cadx.db")
import_demo(ws, n_lesions=12, seed=5)
loaded, _ = resolve_backbone("alexnet", weights="random")
out = {}
for label, settings in {"one": ExperimentSettings(taps=("fc8",), ensemble_tap="fc8", n_folds=5, seed=0, repeats=1),
                        "two": ExperimentSettings(taps=("fc6", "fc7", "fc8"), ensemble_tap="fc7", n_folds=3, seed=4,
                                                  repeats=2, min_lesions_per_class_per_fold=1)}.items():
    eid = run_experiment(ws, loaded, settings, name=label, user="tester")
    s = experiment_summary(ws, eid)
    with ws.sessions() as session:
        preds = [(p.roi_id, p.repeat, p.fold, p.decision1, p.p1, p.decision2, p.p2, p.p3, p.pz)
                 for p in session.scalars(select(Prediction).where(Prediction.experiment_id == eid)
                                          .order_by(Prediction.repeat, Prediction.roi_id))]
    out[label] = {"config": s["config"], "config_sha256": s["config_sha256"], "kind": s["kind"],
                  "results": strip(s["results"]), "predictions": preds}
Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True))
print("ok")
