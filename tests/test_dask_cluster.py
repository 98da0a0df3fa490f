"""The layer sweep on a real multi-process Dask cluster (``dask scheduler`` + two ``dask worker`` processes started
as subprocesses on loopback) gives exactly the joblib results; features are read by the workers from the files
(shared storage), not shipped."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cadx.cnn import FeatureStore
from cadx.svm import sweep_layers
from tests.dask_cluster import dask_cluster
from tests.test_gram import _lesion_data

pytestmark = [pytest.mark.dask, pytest.mark.slow]
GRID = {"gamma": [0.3 / 300, 3.0 / 300], "coef0": [0.0, 1.0], "degree": [1, 2]}


def test_sweep_on_a_real_dask_cluster_equals_joblib(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    layers, y, lesions = _lesion_data(n_lesions=40, widths=(300, 900))
    # one tap as a .npy file, one through the feature store (chunked files, read lazily)
    np.save(tmp_path / "tap0.npy", layers["tap0"])
    store = FeatureStore(tmp_path / "features")
    hashes = [hashlib.sha256(f"synthetic-{i}".encode()).hexdigest() for i in range(len(y))]
    key = {"backbone": "synthetic", "weights_sha256": "ab" * 32}
    with store.writer(hashes, {"tap1": 900}, chunk_rows=50, **key) as sink:
        sink(range(len(y)), {"tap1": layers["tap1"]})
    sources = {"tap0": str(tmp_path / "tap0.npy"), "tap1": store.open("tap1", hashes, **key)}
    monkeypatch.delenv("CADX_DASK_SCHEDULER", raising=False)
    local = sweep_layers(sources, y, lesions, grid=GRID, n_jobs=2)
    assert local.backend == "loky"
    with dask_cluster(2, workdir=tmp_path / "cluster") as address:
        monkeypatch.setenv("CADX_DASK_SCHEDULER", address)
        from distributed import Client

        remote = sweep_layers(sources, y, lesions, grid=GRID)
        with Client(address, set_as_default=False) as client:
            workers = client.scheduler_info()["workers"]
            assert len(workers) == 2
    assert remote.backend == "dask"
    for name in sources:
        a, b = local.layers[name].results[0], remote.layers[name].results[0]
        np.testing.assert_array_equal(a.decision, b.decision)
        np.testing.assert_array_equal(a.proba, b.proba)
        np.testing.assert_array_equal(a.fold_auc, b.fold_auc)
        assert a.best_params == b.best_params
        assert a.auc_mean > 0.6
