"""Tests of cadx.gram: the Gram engines agree (numpy vs torch on the CPU), the streaming (out-of-core) Gram equals
the in-memory one, and the feature matrix is only ever read in tiles."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_selection import VarianceThreshold
from sklearn.preprocessing import StandardScaler

import cadx.gram as gram
from cadx.gram import ChunkedMatrix, GramAccumulator, column_scaler, resolve_gram_engine, streaming_gram
from cadx.svm import cross_validate_by_lesion, sweep_layers

torch = pytest.importorskip("torch")


def _lesion_data(n_lesions=60, widths=(300, 1200), seed=0):
    """Sweep-like synthetic data (labelled synthetic): lesions of 1-4 ROIs, a latent lesion factor carrying the
    class, ReLU sparsity and dead (constant) units, as in benchmarks/bench_sweep.py."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_lesions)
    lesions = np.repeat(np.arange(n_lesions), sizes)
    label = np.resize([0, 1], n_lesions)
    rng.shuffle(label)
    y = label[lesions]
    rank = 12
    latent = rng.standard_normal((n_lesions, rank))[lesions] + 0.6 * rng.standard_normal((len(y), rank))
    latent[:, :3] += 1.0 * (2 * y[:, None] - 1)
    layers = {}
    for t, p in enumerate(widths):
        W = rng.standard_normal((rank, p)) / np.sqrt(rank)
        bias = rng.normal(-0.3, 0.5, p)
        bias[rng.random(p) < 0.07] = -50.0
        layers[f"tap{t}"] = np.maximum(latent @ W + bias + rng.standard_normal((len(y), p)), 0).astype(np.float32)
    return layers, y, lesions


def test_resolve_engine_explicit_env_and_auto(monkeypatch):
    monkeypatch.delenv("CADX_GRAM_ENGINE", raising=False)
    monkeypatch.setattr(gram, "_cuda_available", lambda: False)
    assert resolve_gram_engine() == "numpy"
    assert resolve_gram_engine("auto") == "numpy"
    monkeypatch.setattr(gram, "_cuda_available", lambda: True)
    assert resolve_gram_engine() == "torch-cuda"
    monkeypatch.setenv("CADX_GRAM_ENGINE", "torch-cpu")
    assert resolve_gram_engine() == "torch-cpu"
    assert resolve_gram_engine("numpy") == "numpy"  # the explicit option beats the environment
    monkeypatch.setattr(gram, "_cuda_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_gram_engine("torch-cuda")
    monkeypatch.setenv("CADX_GRAM_ENGINE", "gpu")
    with pytest.raises(ValueError, match=r"\$CADX_GRAM_ENGINE='gpu'"):
        resolve_gram_engine()
    with pytest.raises(ValueError, match="gram_engine must be one of"):
        cross_validate_by_lesion(np.zeros((10, 3)), [0, 1] * 5, range(10), gram_engine="cuda")


def test_accumulator_engines_agree():
    rng = np.random.default_rng(1)
    blocks = [rng.standard_normal((50, b)) for b in (7, 64, 1)]
    results = {}
    for engine in ("numpy", "torch-cpu"):
        acc = GramAccumulator(50, engine)
        for Z in blocks:
            acc.add(Z)
        results[engine] = acc.result()
    Z = np.hstack(blocks)
    want = Z @ Z.T
    for G in results.values():
        np.testing.assert_array_equal(G, G.T)
        np.testing.assert_allclose(G, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


def test_torch_cpu_engine_gives_the_numpy_sweep(monkeypatch):
    """The torch path, run on the CPU device, on a sweep-like problem: the same chosen (a, c, d) in every fold,
    identical fold AUCs, decision values within 1e-6 relative."""
    monkeypatch.delenv("CADX_GRAM_ENGINE", raising=False)
    layers, y, lesions = _lesion_data()
    ref = sweep_layers(layers, y, lesions, gram_engine="numpy")
    monkeypatch.setenv("CADX_GRAM_ENGINE", "torch-cpu")  # the environment route selects the engine
    got = sweep_layers(layers, y, lesions)
    for name in layers:
        a, b = ref.layers[name].results[0], got.layers[name].results[0]
        assert a.gram_engine == "numpy" and b.gram_engine == "torch-cpu"
        assert a.best_params == b.best_params
        np.testing.assert_array_equal(a.fold_auc, b.fold_auc)
        np.testing.assert_allclose(b.decision, a.decision, rtol=1e-6, atol=1e-6 * np.abs(a.decision).max())
        np.testing.assert_array_equal(a.fold, b.fold)
        assert 0.6 < a.auc_mean  # the synthetic class signal is found (not a degenerate problem)


class _TileSpy:
    """Wraps a memory map; fails when a read asks for more than ``budget`` values at once."""

    def __init__(self, X, budget):
        self._X, self.budget, self.largest = X, budget, 0
        self.shape, self.dtype = X.shape, X.dtype

    def __getitem__(self, key):
        tile = np.asarray(self._X[key])
        self.largest = max(self.largest, tile.size)
        assert tile.size <= self.budget, f"read {tile.shape}: more than a tile"
        return tile


def _reference_gram(X, rows):
    Xr = np.asarray(X, dtype=np.float64)[rows]
    Z = StandardScaler().fit_transform(VarianceThreshold(0.0).fit_transform(Xr))
    return Z @ Z.T


@pytest.mark.parametrize("engine", ["numpy", "torch-cpu"])
def test_streaming_gram_equals_in_memory_gram(tmp_path, engine):
    layers, _, _ = _lesion_data(n_lesions=50, widths=(700,), seed=3)
    X = layers["tap0"]
    n, d = X.shape
    path = tmp_path / "x.npy"
    np.save(path, X)
    rows = np.random.default_rng(0).permutation(n)[: n - 9]  # a subset, shuffled (like an outer fold)
    spy = _TileSpy(np.load(path, mmap_mode="r"), budget=n * 64)
    mean, inv = column_scaler(spy, rows=rows, block_columns=64)
    out = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.float64, shape=(len(rows),) * 2)
    G = streaming_gram(spy, rows=rows, mean=mean, inv_scale=inv, block_rows=37, block_columns=64, out=out,
                       engine=engine)
    assert spy.largest <= n * 64 < X.size / 10  # never the whole matrix, only tiles
    want = _reference_gram(X, rows)
    np.testing.assert_array_equal(G, G.T)
    assert np.abs(G - want).max() <= 1e-10 * np.abs(want).max()
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"), want, rtol=0, atol=1e-10 * np.abs(want).max())


def test_chunked_matrix_reads_tiles_from_several_files(tmp_path):
    rng = np.random.default_rng(2)
    parts = [rng.standard_normal((k, 30)).astype(np.float32) for k in (11, 5, 17)]
    for i, part in enumerate(parts):
        np.save(tmp_path / f"c{i}.npy", part)
    # rows: all of c2 reversed, then c0 rows 3..10, then c1 row 4
    places = ([(tmp_path / "c2.npy", r) for r in range(16, -1, -1)] + [(tmp_path / "c0.npy", r) for r in range(3, 11)]
              + [(tmp_path / "c1.npy", 4)])
    M = ChunkedMatrix.from_rows(places, 30)
    want = np.vstack([parts[2][::-1], parts[0][3:11], parts[1][4:5]])
    assert M.shape == want.shape and M.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(M), want)
    np.testing.assert_array_equal(M[:, 5:9], want[:, 5:9])
    idx = np.array([25, 0, 17, 3])
    np.testing.assert_array_equal(M[idx, 2:3], want[idx, 2:3])
    M.save_index(tmp_path / "m.json")
    assert ChunkedMatrix.load_index(tmp_path / "m.json") == M
    with pytest.raises(IndexError):
        M[:, [1, 2]]
    rows = np.arange(3, 26)
    G = streaming_gram(M, rows=rows, mean=np.zeros(30), inv_scale=np.ones(30), block_rows=8, block_columns=7)
    Xr = want[rows].astype(np.float64)
    np.testing.assert_allclose(G, Xr @ Xr.T, rtol=1e-12, atol=1e-12)
    # and the SVM's Gram engine reads it like any array
    y = np.resize([0, 1], 26)
    res = cross_validate_by_lesion(M, y, np.arange(26) // 2, n_folds=2, n_inner=2,
                                   grid={"gamma": [0.01], "coef0": [1.0], "degree": [1]})
    ref = cross_validate_by_lesion(want, y, np.arange(26) // 2, n_folds=2, n_inner=2,
                                   grid={"gamma": [0.01], "coef0": [1.0], "degree": [1]})
    np.testing.assert_array_equal(res.decision, ref.decision)
