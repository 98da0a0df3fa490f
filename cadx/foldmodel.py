"""A fitted fold model of :mod:`cadx.svm`, kept so that an experiment's classifiers can score new inputs without a
refit (occlusion maps, the layer explorer), in a safe format: ``.npz`` loaded with ``allow_pickle=False`` and
checked field by field (backups are untrusted; a pickle or joblib file would run code when loaded).

A fold model is the outer-training fit of one (tap, outer fold): the zero-variance filter and scaler of the
training rows (``keep``, ``mean``, ``scale``), the polynomial kernel ``(gamma·zᵀz' + coef0)^degree`` and the SVM's
dual coefficients and intercept over its support vectors, and the fold's Platt sigmoid ``(A, B)``.

The support vectors are stored **by reference**: their row indices into the experiment's ROI set, whose features the
content-addressed feature store keeps (ROI hash, backbone, weights SHA-256, preprocessing). Storing them by value
would copy ``n_support × width`` floats per fold and tap (an 11-tap AlexNet sweep: ≈ 1 GB per fold); by reference a
fold model holds ``2 × width + n_support`` numbers. Whoever applies it passes the support rows' raw features, and
checks the result on a row whose stored out-of-fold decision value is known (:meth:`FoldModel.decision_function`
reproduces it to rounding, ~1e-13).
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["FORMAT_VERSION", "FoldModel", "FoldModelError", "read_test_scores"]

FORMAT_VERSION = 1
_FLOAT_FIELDS = ("mean", "scale", "dual_coef", "test_decision", "test_proba")
_INT_FIELDS = ("support", "test")
_FIELDS = frozenset({"format_version", "keep", "scalars", *_FLOAT_FIELDS, *_INT_FIELDS})
_SCORE_FIELDS = ("test", "test_decision", "test_proba")
# Payloads come from backups (untrusted), so the zip directory and each member's .npy header are checked before any
# member is inflated. A model holds 2 x width + n_support + 3 x n_test numbers: 64 MiB per member is 8 million
# float64 values, twice the widest tap of any registered backbone (VGG16 conv1_2 at 256 x 256: 4.2 million).
_MAX_MEMBER_BYTES = 64 * 1024**2
_MAX_TOTAL_BYTES = 256 * 1024**2
# Deflate cannot shrink data more than 1032:1; a directory claiming more (above a small floor) is forged.
_MAX_DEFLATE_RATIO = 1032
_RATIO_FLOOR_BYTES = 64 * 1024


def _npz_bytes(arrays: dict[str, np.ndarray], *, compress: bool) -> bytes:
    """``.npz`` bytes that depend on the arrays only (``np.savez`` stamps each member with the current time)."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


class FoldModelError(ValueError):
    """A stored fold model is malformed (wrong fields, shapes or types) or does not fit the given features."""


def _read_members(payload: bytes, *, where: str, wanted: tuple[str, ...] | frozenset[str]) -> dict[str, np.ndarray]:
    """The arrays ``wanted`` of an ``.npz`` payload whose members are all named in :data:`_FIELDS`, checked from
    the zip directory (names, sizes, compression, ratio) and from each member's ``.npy`` header (no object dtype;
    shape x item size = the member's size) before anything is inflated. ``np.load`` would inflate a member of any
    size, and allocate whatever shape a header claims."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
        infos = archive.infolist()
    except Exception as exc:  # not a zip, or its directory is broken
        raise FoldModelError(f"{where}: not a readable fold model ({type(exc).__name__}: {exc})") from exc
    with archive:
        names = [info.filename for info in infos]
        fields = [name.removesuffix(".npy") for name in names]
        unknown = sorted(n for n, f in zip(names, fields, strict=True) if f not in _FIELDS or not n.endswith(".npy"))
        if unknown or len(set(names)) != len(names):
            raise FoldModelError(f"{where}: not a fold model: unknown or repeated members {unknown or sorted(names)}")
        missing = sorted(set(wanted) - set(fields))
        if missing:
            raise FoldModelError(f"{where}: fields {sorted(fields)}; missing {missing}")
        total = 0
        for info in infos:
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise FoldModelError(f"{where}: member {info.filename} uses zip compression {info.compress_type}; "
                                     "fold models are stored or deflated")
            if info.file_size > _MAX_MEMBER_BYTES:
                raise FoldModelError(f"{where}: member {info.filename} inflates to {info.file_size} bytes, over the "
                                     f"{_MAX_MEMBER_BYTES} a fold model's field can need")
            if (info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size) or (
                    info.file_size > _RATIO_FLOOR_BYTES
                    and info.file_size > _MAX_DEFLATE_RATIO * max(info.compress_size, 1)):
                raise FoldModelError(f"{where}: member {info.filename} claims {info.file_size} bytes from "
                                     f"{info.compress_size} stored: a forged zip directory (zip bomb)")
            total += info.file_size
        if total > _MAX_TOTAL_BYTES:
            raise FoldModelError(f"{where}: the members inflate to {total} bytes, over the {_MAX_TOTAL_BYTES} a "
                                 "fold model can need (zip bomb)")
        arrays = {}
        for info, field in zip(infos, fields, strict=True):
            if field not in wanted:
                continue
            try:
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f".npy format version {version} (fold models are written as 1.0)")
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                    header = member.tell()
                    if dtype.hasobject:
                        raise ValueError("an object array (it would need pickle)")
                    if header + math.prod(shape) * dtype.itemsize != info.file_size:
                        raise ValueError(f"its header declares shape {shape} of {dtype}, which does not fit its "
                                         f"{info.file_size} bytes")
                with archive.open(info) as member:
                    arrays[field] = np.lib.format.read_array(member, allow_pickle=False)
            except Exception as exc:  # truncated, CRC mismatch, malformed header
                raise FoldModelError(f"{where}: not a readable fold model: member {info.filename}: "
                                     f"{type(exc).__name__}: {exc}") from exc
    return arrays


@dataclass(frozen=True)
class FoldModel:
    """One outer fold's fitted classifier (see the module docstring).

    Attributes
    ----------
    keep : ndarray of bool, shape (n_features,)
        Features kept by the zero-variance filter on the training rows.
    mean, scale : ndarray of float64, shape (n_features,)
        The scaler: ``z = (x - mean) / scale`` on kept features (NaN -> 0, the imputed standardised mean).
    support : ndarray of int64, shape (n_support,)
        Support vectors as row indices into the data set the model was cross-validated on.
    dual_coef : ndarray of float64, shape (n_support,)
        ``y_i α_i`` of the support vectors, signed so that ``decision > 0`` means class 1 (scikit-learn's
        ``SVC.dual_coef_`` of a binary problem).
    intercept : float
    gamma, coef0 : float
    degree : int
    C : float
    platt_a, platt_b : float
        The fold's sigmoid ``p = 1 / (1 + exp(-(A·f + B)))``.
    test : ndarray of int64
        The fold's test rows (indices into the data set).
    test_decision, test_proba : ndarray of float64
        Their out-of-fold decision values and probabilities, as the cross-validation computed them.
    """

    keep: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    support: np.ndarray
    dual_coef: np.ndarray
    intercept: float
    gamma: float
    coef0: float
    degree: int
    C: float
    platt_a: float
    platt_b: float
    test: np.ndarray
    test_decision: np.ndarray
    test_proba: np.ndarray

    @property
    def n_features(self) -> int:
        """Raw width of the features the model takes."""
        return int(self.keep.shape[0])

    def standardize(self, X: np.ndarray) -> np.ndarray:
        """``(X - mean) / scale`` on kept features, 0 on dropped ones and for missing values (float64)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise FoldModelError(f"features of shape {X.shape} given to a model of {self.n_features} features")
        inv = np.where(self.keep, 1.0 / self.scale, 0.0)
        Z: np.ndarray = (X - self.mean) * inv
        Z[np.isnan(Z)] = 0.0
        return Z

    def decision_function(self, X: np.ndarray, support_X: np.ndarray) -> np.ndarray:
        """Decision values of rows ``X`` (n, n_features), given the raw features of the support rows
        ``support_X`` (n_support, n_features)."""
        support_X = np.asarray(support_X)
        if support_X.shape != (len(self.support), self.n_features):
            raise FoldModelError(f"support features of shape {support_X.shape}; the model needs "
                                 f"({len(self.support)}, {self.n_features})")
        from cadx.gram import _poly  # libsvm's multiplication order for the power

        G = self.standardize(X) @ self.standardize(support_X).T
        decision: np.ndarray = _poly(G, self.gamma, self.coef0, self.degree) @ self.dual_coef + self.intercept
        return decision

    def proba(self, decision: np.ndarray) -> np.ndarray:
        """The fold's Platt probabilities of decision values."""
        z = self.platt_a * np.asarray(decision, dtype=np.float64) + self.platt_b
        return 0.5 * (1.0 + np.tanh(0.5 * z))

    # ------------------------------------------------------------------------------------------ safe format ---
    def to_bytes(self) -> bytes:
        """The model as ``.npz`` bytes (plain numeric arrays, no object arrays: loadable without pickle); the same
        model always gives the same bytes."""
        return _npz_bytes({
            "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64), "keep": self.keep.astype(np.bool_),
            **{k: np.asarray(getattr(self, k), dtype=np.float64) for k in _FLOAT_FIELDS},
            **{k: np.asarray(getattr(self, k), dtype=np.int64) for k in _INT_FIELDS},
            "scalars": np.array([self.intercept, self.gamma, self.coef0, self.degree, self.C, self.platt_a,
                                 self.platt_b], dtype=np.float64)}, compress=True)

    def test_scores_bytes(self) -> bytes:
        """Only the test rows and their out-of-fold scores as ``.npz`` bytes (read by :func:`read_test_scores`)."""
        return _npz_bytes({"test": self.test.astype(np.int64), "test_decision": self.test_decision.astype(np.float64),
                           "test_proba": self.test_proba.astype(np.float64)}, compress=False)

    @classmethod
    def from_bytes(cls, payload: bytes, *, where: str = "fold model") -> FoldModel:
        """Load :meth:`to_bytes` output, refusing pickled objects and checking every field's type and shape.

        Raises
        ------
        FoldModelError
            Naming ``where`` and the field at fault.
        """
        arrays = _read_members(payload, where=where, wanted=_FIELDS)
        if arrays["format_version"].shape != () or int(arrays["format_version"]) != FORMAT_VERSION:
            raise FoldModelError(f"{where}: format version {arrays['format_version']!r}, not {FORMAT_VERSION}")
        kinds = {"keep": "b", **dict.fromkeys(_FLOAT_FIELDS, "f"), **dict.fromkeys(_INT_FIELDS, "i"),
                 "scalars": "f"}
        for key, kind in kinds.items():
            if arrays[key].dtype.kind != kind or arrays[key].ndim != 1:
                raise FoldModelError(f"{where}: field {key!r} has dtype {arrays[key].dtype} and shape "
                                     f"{arrays[key].shape}; expected a 1-D {kind!r} array")
        p = len(arrays["keep"])
        if len(arrays["mean"]) != p or len(arrays["scale"]) != p:
            raise FoldModelError(f"{where}: keep, mean and scale differ in length")
        if len(arrays["dual_coef"]) != len(arrays["support"]) or not len(arrays["support"]):
            raise FoldModelError(f"{where}: support and dual_coef differ in length (or are empty)")
        if not (len(arrays["test"]) == len(arrays["test_decision"]) == len(arrays["test_proba"])):
            raise FoldModelError(f"{where}: test rows and their decision values differ in length")
        if len(arrays["scalars"]) != 7 or not np.isfinite(arrays["scalars"]).all():
            raise FoldModelError(f"{where}: malformed scalars {arrays['scalars']!r}")
        if (arrays["support"] < 0).any() or (arrays["test"] < 0).any():
            raise FoldModelError(f"{where}: negative row index")
        if not (np.isfinite(arrays["scale"]).all() and (arrays["scale"] > 0).all()):
            raise FoldModelError(f"{where}: scale must be finite and > 0")
        intercept, gamma, coef0, degree, C, a, b = (float(v) for v in arrays["scalars"])
        if not float(degree).is_integer() or degree < 1:
            raise FoldModelError(f"{where}: degree {degree} is not an integer >= 1")
        return cls(keep=arrays["keep"], mean=arrays["mean"], scale=arrays["scale"], support=arrays["support"],
                   dual_coef=arrays["dual_coef"], intercept=intercept, gamma=gamma, coef0=coef0,
                   degree=int(degree), C=C, platt_a=a, platt_b=b, test=arrays["test"],
                   test_decision=arrays["test_decision"], test_proba=arrays["test_proba"])


def read_test_scores(payload: bytes, *, where: str = "fold model") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Only the test rows and their out-of-fold decision values and probabilities of :meth:`FoldModel.to_bytes` or
    :meth:`FoldModel.test_scores_bytes` output (an ``.npz`` is read member by member: the tap-wide scaler of a
    whole model is never decompressed)."""
    arrays = _read_members(payload, where=where, wanted=_SCORE_FIELDS)
    test, decision, proba = (arrays[k] for k in _SCORE_FIELDS)
    if not (test.dtype.kind == "i" and decision.dtype.kind == proba.dtype.kind == "f"
            and test.ndim == decision.ndim == proba.ndim == 1 and len(test) == len(decision) == len(proba)
            and (test >= 0).all()):
        raise FoldModelError(f"{where}: malformed test rows or scores")
    return test, decision, proba
