"""Gram matrices ``Z Zᵀ`` of standardised features: the engines (numpy, torch on CPU, torch on CUDA) and the
streaming (out-of-core) path for data sets whose feature matrix or Gram does not fit in memory.

Engines
-------
``numpy``
    scipy's BLAS ``dsyrk`` (upper triangle, float64). The reference, and the default without CUDA.
``torch-cpu`` / ``torch-cuda``
    ``torch.addmm`` in float64 on the CPU or on the GPU (blocks are copied from pinned memory without blocking
    the host). Float64 accumulation everywhere, so the engines differ only in summation order (≈1e-15
    relative): the chosen SVM parameters and fold AUCs are the same and decision values agree to ≪ 1e-6.

:func:`resolve_gram_engine` picks the engine: an explicit ``engine=``, else ``$CADX_GRAM_ENGINE``, else ``auto``
(``torch-cuda`` when torch sees a CUDA device, ``numpy`` otherwise). It is resolved where the work runs (in each
joblib/Dask worker), so a cluster mixing GPU and CPU machines uses each one's best engine.

Streaming
---------
:func:`streaming_gram` computes ``G = Z Zᵀ`` with ``Z = (X[rows] − μ)·s`` for an ``X`` that is only ever read in
tiles (``block_rows × block_columns``) from a memory map, a ``.npy`` file or the feature store
(:class:`ChunkedMatrix`), and writes ``G`` strip by strip into ``out`` (e.g. a ``np.memmap`` on disk). Memory is
``O(block_rows · n + n · block_columns)``, never ``O(n · d)``, and never ``O(n²)`` unless ``out`` is in memory.
:func:`column_scaler` gives ``μ, s`` (the zero-variance filter and ``StandardScaler`` of the rows) in one
streaming pass, with the same formulas as the SVM engine.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.linalg.blas import dsyrk

from cadx.private import write_private

__all__ = [
    "GRAM_ENGINES",
    "ChunkedMatrix",
    "GramAccumulator",
    "column_scaler",
    "iter_gram_strips",
    "resolve_gram_engine",
    "streaming_gram",
]

GRAM_ENGINES = ("numpy", "torch-cpu", "torch-cuda")
"""Engines accepted by :func:`resolve_gram_engine` (plus ``"auto"``)."""

_EPS = np.finfo(np.float64).eps  # float64 rounding: the scaler's near-constant test (shared with cadx.svm)
_ENV = "CADX_GRAM_ENGINE"


def _cuda_available() -> bool:
    if sys.platform.startswith("linux") and not any(Path("/dev").glob("nvidia*")):
        return False  # no NVIDIA device nodes: no CUDA, and no need to import torch (≈0.3 GB per worker)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a cadx dependency
        return False
    return bool(torch.cuda.is_available())


def resolve_gram_engine(engine: str | None = None) -> str:
    """The Gram engine to use.

    Parameters
    ----------
    engine : {"auto", "numpy", "torch-cpu", "torch-cuda"} or None
        ``None`` reads ``$CADX_GRAM_ENGINE`` (default ``auto``); ``auto`` is ``torch-cuda`` when torch sees a
        CUDA device, else ``numpy``.

    Returns
    -------
    str
        One of :data:`GRAM_ENGINES`.

    Raises
    ------
    ValueError
        For an unknown name, or ``torch-cuda`` on a machine where torch sees no CUDA device.
    """
    source = "engine"
    if engine is None:
        engine, source = os.environ.get(_ENV, "") or "auto", f"${_ENV}"
    name = str(engine).strip().lower()
    if name == "auto":
        return "torch-cuda" if _cuda_available() else "numpy"
    if name not in GRAM_ENGINES:
        raise ValueError(f"{source}={engine!r} is not a Gram engine; use one of {['auto', *GRAM_ENGINES]}")
    if name == "torch-cuda" and not _cuda_available():
        raise ValueError(f"{source}={engine!r} but torch sees no CUDA device here; use 'auto', 'numpy' or "
                         "'torch-cpu'")
    return name


class GramAccumulator:
    """``G += Z Zᵀ`` over column blocks ``Z`` (n × b, float64), on the chosen engine; :meth:`result` is the
    symmetric float64 ``G`` as a C-ordered numpy array.

    Parameters
    ----------
    n : int
        Rows of every block (the Gram is n × n).
    engine : str
        One of :data:`GRAM_ENGINES` (already resolved).
    """

    def __init__(self, n: int, engine: str) -> None:
        if engine not in GRAM_ENGINES:
            raise ValueError(f"engine must be one of {list(GRAM_ENGINES)}; got {engine!r}")
        self.n, self.engine = int(n), engine
        if engine == "numpy":
            self._G: Any = np.zeros((self.n, self.n), order="F")  # a torch tensor for the torch engines
        else:
            import torch

            self._torch = torch
            self._device = torch.device("cuda" if engine == "torch-cuda" else "cpu")
            self._G = torch.zeros((self.n, self.n), dtype=torch.float64, device=self._device)

    def add(self, Z: np.ndarray) -> None:
        """Accumulate ``Z Zᵀ`` (``Z`` float64, shape (n, b))."""
        if Z.shape[0] != self.n:
            raise ValueError(f"block has {Z.shape[0]} rows; the Gram has {self.n}")
        if self.engine == "numpy":
            dsyrk(1.0, np.ascontiguousarray(Z).T, beta=1.0, c=self._G, trans=1, lower=0, overwrite_c=1)
            return
        torch = self._torch
        t = torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float64))
        if self._device.type == "cuda":
            t = t.pin_memory().to(self._device, non_blocking=True)
        self._G.addmm_(t, t.T)

    def result(self) -> np.ndarray:
        """The symmetric Gram (the upper triangle mirrored, as the numpy engine computes only that)."""
        if self.engine == "numpy":
            upper = np.triu(self._G)
        else:
            upper = np.triu(self._G.cpu().numpy())
        return np.ascontiguousarray(upper + np.triu(upper, 1).T)

    def finite(self) -> bool:
        """Whether every accumulated entry is finite."""
        if self.engine == "numpy":
            return bool(np.isfinite(self._G).all())
        return bool(self._torch.isfinite(self._G).all())


# --------------------------------------------------------------------------------------------------------------
# Lazily read feature matrices
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkedMatrix:
    """A read-only (n, d) matrix made of row pieces of ``.npy`` files, read lazily (memory-mapped) in tiles.

    This is how the feature store hands a tap to the classifiers: picklable (file names and row numbers only, so
    a joblib or Dask worker opens the files itself from shared storage), and ``M[rows, j0:j1]`` reads just that
    tile. ``np.asarray(M)`` materialises everything (the plain scikit-learn engine does that).

    Parameters
    ----------
    pieces : tuple of (str, ndarray of int)
        ``(path to a 2-D .npy file, rows of that file)``; the matrix's rows are the pieces' rows in order.
    n_features : int
    dtype_str : str
        numpy dtype string of the files (float32 ``"<f4"`` in the feature store).
    """

    pieces: tuple[tuple[str, tuple[int, ...]], ...]
    n_features: int
    dtype_str: str = "<f4"

    @classmethod
    def from_rows(cls, places: Sequence[tuple[str | os.PathLike[str], int]], n_features: int,
                  dtype: Any = np.float32) -> ChunkedMatrix:
        """From one ``(file, row)`` per matrix row (consecutive rows of one file are grouped into one piece)."""
        pieces: list[tuple[str, list[int]]] = []
        for path, row in places:
            path = str(path)
            if pieces and pieces[-1][0] == path:
                pieces[-1][1].append(int(row))
            else:
                pieces.append((path, [int(row)]))
        return cls(tuple((p, tuple(r)) for p, r in pieces), int(n_features), np.dtype(dtype).str)

    @property
    def shape(self) -> tuple[int, int]:
        return (sum(len(r) for _, r in self.pieces), self.n_features)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.dtype_str)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.shape[0]

    def _row_index(self, key: Any) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, slice):
            return np.arange(n)[key]
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"boolean row index of shape {idx.shape} for {n} rows")
            return np.flatnonzero(idx)
        if idx.ndim == 0:
            raise IndexError("ChunkedMatrix takes row slices or row index arrays, not a single row")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        return np.where(idx < 0, idx + n, idx)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows_key, cols = (key if isinstance(key, tuple) else (key, slice(None)))
        if not isinstance(cols, slice):
            raise IndexError("ChunkedMatrix takes a column slice (tiles), e.g. M[:, j0:j1]")
        rows = self._row_index(rows_key)
        width = len(range(*cols.indices(self.n_features)))
        out = np.empty((len(rows), width), dtype=self.dtype)
        starts = np.cumsum([0] + [len(r) for _, r in self.pieces])
        piece_of = np.searchsorted(starts, rows, side="right") - 1
        for p in np.unique(piece_of):
            path, file_rows = self.pieces[p]
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
            if mm.ndim != 2 or mm.shape[1] != self.n_features:
                raise ValueError(f"{path}: expected (rows, {self.n_features}) features, found shape {mm.shape}")
            sel = np.flatnonzero(piece_of == p)
            local = np.asarray(file_rows, dtype=np.int64)[rows[sel] - starts[p]]
            order = np.argsort(local, kind="stable")  # ascending rows: sequential reads of the map
            out[sel[order]] = mm[local[order], cols]
            del mm
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype, copy=False)

    def save_index(self, path: str | os.PathLike[str]) -> None:
        """Write the pieces as JSON (see :meth:`load_index`)."""
        write_private(path, json.dumps({"pieces": [[p, list(r)] for p, r in self.pieces],
                                        "n_features": self.n_features, "dtype": self.dtype_str}))

    @classmethod
    def load_index(cls, path: str | os.PathLike[str]) -> ChunkedMatrix:
        """Read a matrix written by :meth:`save_index`."""
        data = json.loads(Path(path).read_text())
        return cls(tuple((p, tuple(r)) for p, r in data["pieces"]), int(data["n_features"]), data["dtype"])


# --------------------------------------------------------------------------------------------------------------
# Streaming Gram
# --------------------------------------------------------------------------------------------------------------


def _rows_or_all(X: Any, rows: Any) -> np.ndarray:
    n = X.shape[0]
    if rows is None:
        return np.arange(n)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= n)):
        raise ValueError(f"rows must be 1-D indices into the {n} rows of X")
    return rows


def _fit_scaler(F: np.ndarray, has_nan: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero-variance filter + StandardScaler statistics of training rows ``F`` (m, b), float64.

    Returns ``keep`` (b,) bool, ``mean`` (b,), ``inv_scale`` (b,) with 0 for dropped features. Formulas follow
    ``VarianceThreshold(0)`` (variance and peak-to-peak > 0) and ``StandardScaler`` (two-pass variance with
    correction, near-constant features scaled by 1).
    """
    m = F.shape[0]
    if has_nan:
        nan = np.isnan(F)
        count = m - nan.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            total = np.nansum(F, axis=0)
            mean = total / count
            temp = F - mean
            correction = np.nansum(temp, axis=0)
            np.square(temp, out=temp)
            var = (np.nansum(temp, axis=0) - correction**2 / count) / count
            keep = (count >= 2) & (np.nanmax(F, axis=0) > np.nanmin(F, axis=0))
    else:
        count = m
        mean = F.sum(axis=0) / m
        temp = F - mean
        correction = temp.sum(axis=0)
        np.square(temp, out=temp)
        var = (temp.sum(axis=0) - correction**2 / m) / m
        keep = F.max(axis=0) > F.min(axis=0)
    with np.errstate(invalid="ignore"):
        constant = var <= count * _EPS * var + (count * mean * _EPS) ** 2
        scale = np.where(constant, 1.0, np.sqrt(np.where(var > 0, var, 1.0)))
    inv = np.where(keep, 1.0 / scale, 0.0)
    mean = np.where(keep, mean, 0.0)
    return keep, mean, inv


def _poly(G: np.ndarray, gamma: float, coef0: float, degree: int) -> np.ndarray:
    """``(gamma·G + coef0)^degree`` with libsvm's ``powi`` multiplication order."""
    base = G * gamma
    base += coef0
    result: np.ndarray | None = None
    power, t = base, int(degree)
    while t > 0:
        if t % 2 == 1:
            result = power.copy() if result is None else result * power
        t //= 2
        if t > 0:
            power = power * power
    return np.ones_like(base) if result is None else result  # degree 0: base ** 0


def _check_block(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _read(X: Any, rows: np.ndarray, j0: int, j1: int) -> np.ndarray:
    """``X[rows, j0:j1]`` as float64, reading only that tile (rows ascending within the read)."""
    if isinstance(X, ChunkedMatrix):
        return np.asarray(X[rows, j0:j1], dtype=np.float64)
    contiguous = len(rows) and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1)
    if contiguous:
        return np.asarray(X[rows[0]:rows[-1] + 1, j0:j1], dtype=np.float64)
    order = np.argsort(rows, kind="stable")
    tile = np.empty((len(rows), j1 - j0))
    tile[order] = np.asarray(X[rows[order], j0:j1], dtype=np.float64)
    return tile


def column_scaler(X: Any, *, rows: Any = None, block_columns: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Zero-variance filter + ``StandardScaler`` statistics of ``X[rows]``, reading column blocks.

    Parameters
    ----------
    X : array-like (n, d), np.memmap or :class:`ChunkedMatrix`
    rows : array of int, optional
        Rows the scaler is fitted on (default all).
    block_columns : int
        Columns read at a time (memory ``len(rows) · block_columns`` float64).

    Returns
    -------
    mean, inv_scale : ndarray of shape (d,)
        ``z = (x − mean) · inv_scale``; 0 for features constant on ``rows`` (dropped), exactly as the SVM
        engine standardises (:mod:`cadx.svm`).
    """
    rows = _rows_or_all(X, rows)
    b = _check_block("block_columns", block_columns)
    d = X.shape[1]
    mean, inv = np.zeros(d), np.zeros(d)
    for j0 in range(0, d, b):
        j1 = min(d, j0 + b)
        F = _read(X, rows, j0, j1)
        _, mean[j0:j1], inv[j0:j1] = _fit_scaler(F, bool(np.isnan(F).any()))
    return mean, inv


def _standardised(X, rows, j0, j1, mean, inv):
    Z = _read(X, rows, j0, j1)
    Z -= mean[j0:j1]
    Z *= inv[j0:j1]
    np.copyto(Z, 0.0, where=np.isnan(Z))  # the imputer's standardised mean
    return Z


def iter_gram_strips(X: Any, *, rows: Any = None, mean: Any = None, inv_scale: Any = None, block_rows: int = 4096,
                     block_columns: int = 4096, engine: str | None = None,
                     ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield the upper block-row strips of ``G = Z Zᵀ``: ``(i0, i1, G[i0:i1, i0:])``.

    Each strip reads ``X`` once, in ``(n − i0) × block_columns`` tiles; its cost is ``(i1 − i0)·(n − i0)·d``
    multiply-adds, so the first strips are the most expensive (useful for timing a part and extrapolating).
    Parameters as for :func:`streaming_gram`.
    """
    rows = _rows_or_all(X, rows)
    n, d = len(rows), X.shape[1]
    r, b = _check_block("block_rows", block_rows), _check_block("block_columns", block_columns)
    mean = np.zeros(d) if mean is None else np.asarray(mean, dtype=np.float64)
    inv = np.ones(d) if inv_scale is None else np.asarray(inv_scale, dtype=np.float64)
    if mean.shape != (d,) or inv.shape != (d,):
        raise ValueError(f"mean and inv_scale must have shape ({d},); got {mean.shape} and {inv.shape}")
    name = resolve_gram_engine(engine)
    if name != "numpy":
        import torch

        device = torch.device("cuda" if name == "torch-cuda" else "cpu")
    for i0 in range(0, n, r):
        i1 = min(n, i0 + r)
        m = i1 - i0
        if name == "numpy":
            strip = np.zeros((m, n - i0))
            for j0 in range(0, d, b):
                j1 = min(d, j0 + b)
                Z = _standardised(X, rows[i0:], j0, j1, mean, inv)  # rows i0.. (the strip's rows come first)
                strip += Z[:m] @ Z.T
        else:
            acc = torch.zeros((m, n - i0), dtype=torch.float64, device=device)
            for j0 in range(0, d, b):
                j1 = min(d, j0 + b)
                Z = torch.from_numpy(_standardised(X, rows[i0:], j0, j1, mean, inv))
                if device.type == "cuda":
                    Z = Z.pin_memory().to(device, non_blocking=True)
                acc.addmm_(Z[:m], Z.T)
            strip = acc.cpu().numpy()
        diagonal = strip[:, :m]  # mirror the upper triangle: G exactly symmetric, as the numpy engine's
        strip[:, :m] = np.triu(diagonal) + np.triu(diagonal, 1).T
        if not np.isfinite(strip).all():
            raise ValueError("features contain infinite values (or overflow float64 after standardisation)")
        yield i0, i1, strip


def streaming_gram(X: Any, *, rows: Any = None, mean: Any = None, inv_scale: Any = None, block_rows: int = 4096,
                   block_columns: int = 4096, out: np.ndarray | None = None, engine: str | None = None) -> np.ndarray:
    """``G = Z Zᵀ`` with ``Z = (X[rows] − mean) · inv_scale`` (NaN → 0), never holding ``X`` in memory.

    Parameters
    ----------
    X : array-like (n, d), np.memmap, or :class:`ChunkedMatrix` (e.g. ``FeatureStore.open``)
        Raw features, read in ``block_rows × block_columns`` tiles (converted to float64 per tile).
    rows : array of int, optional
        Rows of ``X`` in the Gram, in this order (default all).
    mean, inv_scale : array of shape (d,), optional
        Standardisation (default none: ``mean = 0``, ``inv_scale = 1``); see :func:`column_scaler`.
    block_rows, block_columns : int
        Tile size. Memory ≈ ``8 · (block_rows · n + 2 · n · block_columns)`` bytes besides ``out``.
    out : ndarray of shape (n, n), optional
        Where ``G`` goes, e.g. ``np.lib.format.open_memmap(path, "w+", float64, (n, n))`` when ``n²`` float64
        does not fit in memory; default a new in-memory array.
    engine : str, optional
        Gram engine (see :func:`resolve_gram_engine`).

    Returns
    -------
    ndarray of shape (n, n)
        ``out`` (full symmetric matrix, float64).
    """
    n = len(_rows_or_all(X, rows))
    if out is None:
        out = np.empty((n, n))
    elif out.shape != (n, n):
        raise ValueError(f"out must have shape ({n}, {n}); got {out.shape}")
    for i0, i1, strip in iter_gram_strips(X, rows=rows, mean=mean, inv_scale=inv_scale, block_rows=block_rows,
                                          block_columns=block_columns, engine=engine):
        out[i0:i1, i0:] = strip
        out[i0:, i0:i1] = strip.T
    if isinstance(out, np.memmap):
        out.flush()
    return out
