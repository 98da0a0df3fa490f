"""The layer explorer's computation: one ROI through a backbone, what every tap makes of it, and where the ROI's
score at a tap falls among the classes' out-of-fold scores.

:func:`roi_activations` runs the ROI once through every tap (the network input comes from
:func:`cadx.cnn.preprocess_rois` and the forward pass from :func:`cadx.cnn.extract_features`: the very preprocessing
and taps the features of an experiment come from) and keeps, per tap, its strongest maps: the ``top`` channels with
the largest mean activation (a 1-D tap keeps its whole vector). :class:`RoiActivations` round-trips through ``.npz``
bytes loaded without pickle and checked field by field, so a cache file can be trusted no further than its shapes.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import numpy as np

if TYPE_CHECKING:
    from cadx.cnn import LoadedBackbone

__all__ = ["ActivationCacheError", "RoiActivations", "ScorePosition", "TapActivations", "mosaic", "roi_activations",
           "score_position", "to_uint8"]

_FORMAT = 1


class ActivationCacheError(ValueError):
    """A cached activation file is malformed or is not the one asked for."""


@dataclass(frozen=True)
class TapActivations:
    """What one tap makes of an ROI.

    Attributes
    ----------
    tap : str
    shape : tuple of int
        The tap's output shape for one ROI (``(C, H, W)`` or ``(n,)``).
    channels : ndarray of int64, shape (k,)
        The strongest channels (largest mean activation first; ties by index); all units of a 1-D tap, in order.
    maps : ndarray of float32, shape (k, H, W)
        Their maps; a 1-D tap (or a 1 × 1 map) gives one (1, 1, n) "map" holding its vector.
    channel_mean : ndarray of float32, shape (C,)
        Mean activation of every channel (every unit of a 1-D tap).
    """

    tap: str
    shape: tuple[int, ...]
    channels: np.ndarray
    maps: np.ndarray
    channel_mean: np.ndarray

    @property
    def spatial(self) -> bool:
        """Whether the tap has maps (more than one position per channel)."""
        return len(self.shape) == 3 and self.shape[1] * self.shape[2] > 1


@dataclass(frozen=True)
class RoiActivations:
    """An ROI as a backbone receives it and every tap's strongest activations (see the module docstring).

    ``network_input`` is the (3, 256, 256) float32 input after resizing and the weights' normalisation.
    """

    backbone: str
    weights_sha256: str
    preprocessing: str
    roi_sha256: str
    network_input: np.ndarray
    taps: dict[str, TapActivations]

    def key(self) -> dict[str, str]:
        """What the activations were computed from (a cache entry must match it)."""
        return {"backbone": self.backbone, "weights_sha256": self.weights_sha256,
                "preprocessing": self.preprocessing, "roi_sha256": self.roi_sha256}

    def to_bytes(self) -> bytes:
        """``.npz`` bytes of plain numeric arrays and one JSON header (no object arrays: no pickle to load)."""
        header = {"format": _FORMAT, **self.key(), "taps": [[t.tap, list(t.shape)] for t in self.taps.values()]}
        arrays: dict[str, np.ndarray] = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                  "network_input": self.network_input.astype(np.float32)}
        for i, t in enumerate(self.taps.values()):
            arrays[f"t{i}_channels"] = t.channels.astype(np.int64)
            arrays[f"t{i}_maps"] = t.maps.astype(np.float32)
            arrays[f"t{i}_mean"] = t.channel_mean.astype(np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes, *, expected: dict[str, str] | None = None,
                   where: str = "activation cache") -> RoiActivations:
        """Load :meth:`to_bytes` output (``allow_pickle=False``), checking types, shapes and, when given, that it
        was computed from ``expected`` (:meth:`key`)."""
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            header = json.loads(arrays.pop("header").tobytes().decode())
        except Exception as exc:
            raise ActivationCacheError(f"{where}: unreadable ({type(exc).__name__}: {exc})") from exc
        if not isinstance(header, dict) or header.get("format") != _FORMAT:
            raise ActivationCacheError(f"{where}: not format {_FORMAT}")
        fields = ("backbone", "weights_sha256", "preprocessing", "roi_sha256")
        key = {k: v for k in fields if isinstance(v := header.get(k), str)}
        if len(key) != len(fields):
            raise ActivationCacheError(f"{where}: malformed header")
        if expected is not None and key != expected:
            raise ActivationCacheError(f"{where}: computed from {key}, not {expected}")
        taps_meta = header.get("taps")
        if not isinstance(taps_meta, list) or set(arrays) != {"network_input", *(f"t{i}_{s}" for i in range(
                len(taps_meta)) for s in ("channels", "maps", "mean"))}:
            raise ActivationCacheError(f"{where}: fields do not match its header")
        x = arrays["network_input"]
        if x.dtype != np.float32 or x.ndim != 3 or x.shape[0] != 3:
            raise ActivationCacheError(f"{where}: network input of shape {x.shape} and dtype {x.dtype}")
        taps: dict[str, TapActivations] = {}
        for i, meta in enumerate(taps_meta):
            if (not isinstance(meta, list) or len(meta) != 2 or not isinstance(meta[0], str)
                    or not all(isinstance(d, int) and d > 0 for d in meta[1])):
                raise ActivationCacheError(f"{where}: malformed tap entry {i}")
            channels, maps, mean = arrays[f"t{i}_channels"], arrays[f"t{i}_maps"], arrays[f"t{i}_mean"]
            shape = tuple(meta[1])
            ok = (channels.dtype == np.int64 and channels.ndim == 1 and maps.dtype == np.float32
                  and maps.ndim == 3 and mean.dtype == np.float32 and mean.ndim == 1)
            if ok and len(shape) == 3 and shape[1] * shape[2] > 1:
                ok = (maps.shape[1:] == shape[1:] and len(maps) == len(channels) and len(mean) == shape[0]
                      and bool(((channels >= 0) & (channels < shape[0])).all()))
            elif ok:
                ok = maps.shape == (1, 1, math.prod(shape)) and len(mean) == math.prod(shape)
            if not ok:
                raise ActivationCacheError(f"{where}: tap {meta[0]!r} has malformed arrays")
            taps[meta[0]] = TapActivations(tap=meta[0], shape=shape, channels=channels, maps=maps,
                                           channel_mean=mean)
        return cls(backbone=key["backbone"], weights_sha256=key["weights_sha256"], preprocessing=key["preprocessing"],
                   roi_sha256=key["roi_sha256"], network_input=x, taps=taps)


def roi_activations(loaded: LoadedBackbone, roi: np.ndarray, *, roi_sha256: str, top: int = 8,
                    preprocessing: str | None = None, device: str = "cpu") -> RoiActivations:
    """Run one ROI through every tap of ``loaded`` (a :class:`cadx.cnn.LoadedBackbone`) and keep each tap's
    ``top`` strongest maps.

    Parameters
    ----------
    loaded : cadx.cnn.LoadedBackbone
    roi : ndarray of shape (H, W)
        The stored ROI (uint16).
    roi_sha256 : str
        Its pixel hash (the cache key).
    top : int, default=8
        Channels kept per spatial tap.
    preprocessing : str, optional
        The feature-store preprocessing key recorded with the result (default :data:`cadx.cnn.PREPROCESSING_VERSION`).
    """
    from cadx.cnn import PREPROCESSING_VERSION, extract_features, preprocess_rois, tap_shapes

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive integer; got {top!r}")
    roi = np.asarray(roi)
    network_input = preprocess_rois([roi], mean=loaded.spec.mean, std=loaded.spec.std)[0].numpy()
    taps = tuple(loaded.backbone.taps)
    shapes = tap_shapes(loaded.name)
    features = extract_features(roi[None], backbone=loaded, taps=taps, batch_size=1, device=device)
    out: dict[str, TapActivations] = {}
    for tap in taps:
        shape = shapes[tap]
        values = features[tap][0].reshape(shape)
        if len(shape) == 3 and shape[1] * shape[2] > 1:
            means = values.mean(axis=(1, 2))
            order = np.lexsort((np.arange(len(means)), -means))[:top]
            out[tap] = TapActivations(tap=tap, shape=shape, channels=order.astype(np.int64),
                                      maps=values[order].astype(np.float32), channel_mean=means.astype(np.float32))
        else:
            vector = values.reshape(-1).astype(np.float32)
            out[tap] = TapActivations(tap=tap, shape=shape, channels=np.arange(len(vector), dtype=np.int64),
                                      maps=vector.reshape(1, 1, -1), channel_mean=vector)
    return RoiActivations(backbone=loaded.name, weights_sha256=loaded.weights.sha256,
                          preprocessing=preprocessing or PREPROCESSING_VERSION, roi_sha256=roi_sha256,
                          network_input=network_input, taps=out)


def to_uint8(image: np.ndarray, *, low: float | None = None, high: float | None = None) -> np.ndarray:
    """``image`` scaled linearly from [low, high] (default its own range) to 0–255."""
    image = np.asarray(image, dtype=np.float64)
    low = float(image.min()) if low is None else low
    high = float(image.max()) if high is None else high
    if high <= low:
        return np.zeros(image.shape, dtype=np.uint8)
    return np.clip(np.rint((image - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def mosaic(tap: TapActivations, *, columns: int = 4, tile: int = 96, gap: int = 2) -> np.ndarray:
    """One uint8 picture of a tap: its strongest maps side by side (each scaled by the tap's largest activation, so
    brightness compares between maps; nearest-neighbour upsampling to ``tile`` pixels), or a 1-D tap's vector folded
    into a near-square grid."""
    if not tap.spatial:
        vector = tap.channel_mean
        side = math.ceil(math.sqrt(len(vector)))
        grid = np.zeros(side * side, dtype=np.float32)
        grid[:len(vector)] = vector
        image = to_uint8(grid.reshape(side, side), low=min(0.0, float(vector.min())))
        scale = max(1, (tile * 2) // side)
        return np.kron(image, np.ones((scale, scale), dtype=np.uint8))
    maps = tap.maps
    k, h, w = maps.shape
    scale = max(1, tile // max(h, w))
    rows = math.ceil(k / columns)
    cols = min(k, columns)
    out = np.full((rows * (h * scale + gap) - gap, cols * (w * scale + gap) - gap), 255, dtype=np.uint8)
    top = float(maps.max())
    for i in range(k):
        r, c = divmod(i, columns)
        tile_image = np.kron(to_uint8(maps[i], low=0.0, high=top if top > 0 else 1.0),
                             np.ones((scale, scale), dtype=np.uint8))
        out[r * (h * scale + gap):r * (h * scale + gap) + h * scale,
            c * (w * scale + gap):c * (w * scale + gap) + w * scale] = tile_image
    return out


class ScorePosition(TypedDict):
    """Where a score falls among the classes' scores (:func:`score_position`)."""

    below_benign: float
    below_malignant: float
    nearer: str


def score_position(value: float, benign: np.ndarray, malignant: np.ndarray) -> ScorePosition:
    """Where ``value`` falls among each class's scores: the fraction of benign and of malignant scores below it
    (ties count half), and the class whose median it is nearer to."""
    def below(scores: np.ndarray) -> float:
        scores = np.asarray(scores, dtype=np.float64)
        scores = scores[np.isfinite(scores)]
        if not len(scores):
            return float("nan")
        return float((np.sum(scores < value) + 0.5 * np.sum(scores == value)) / len(scores))

    b, m = np.asarray(benign, dtype=np.float64), np.asarray(malignant, dtype=np.float64)
    nearer = ("malignant" if abs(value - np.nanmedian(m)) < abs(value - np.nanmedian(b)) else "benign") \
        if len(b) and len(m) else ""
    return {"below_benign": below(b), "below_malignant": below(m), "nearer": nearer}
