"""The backbone registry: names, display labels, taps, default taps and the ensemble's default tap of each CNN.

This is the one place that says which backbones exist and what their taps are called. It imports neither torch nor
torchvision, so the CLI's help, the pages and the job runner can read it without loading a network;
:mod:`cadx.cnn` joins each entry to its model builder and weights (``cadx.cnn.BACKBONES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["BACKBONE_SPECS", "BackboneSpec", "backbone_label", "ensemble_tap"]


@dataclass(frozen=True)
class BackboneSpec:
    """What cadx knows about a backbone without building it.

    Attributes
    ----------
    name : str
        Registry name (``"alexnet"``, ...).
    label : str
        Display name (``"AlexNet"``).
    taps : Mapping[str, str]
        Public tap name -> ``create_feature_extractor`` node name, in network order.
    default_taps : tuple of str
        Taps extracted (and swept) when the caller names none.
    ensemble_tap : str
        The tap used for Method A in the ensemble when the caller names none (the paper used AlexNet's fc6).
    description : str
        One line for humans.
    """

    name: str
    label: str
    taps: Mapping[str, str]
    default_taps: tuple[str, ...]
    ensemble_tap: str
    description: str

    def __post_init__(self) -> None:
        unknown = [t for t in (*self.default_taps, self.ensemble_tap) if t not in self.taps]
        if unknown:  # a programming error in the registry below
            raise ValueError(f"backbone {self.name}: taps {unknown} are not among its taps {list(self.taps)}")


_ALEXNET_TAPS = {
    "conv1": "features.1", "pool1": "features.2", "conv2": "features.4", "pool2": "features.5",
    "conv3": "features.7", "conv4": "features.9", "conv5": "features.11", "pool5": "features.12",
    "fc6": "classifier.2", "fc7": "classifier.5", "fc8": "classifier.6",
}  # fmt: skip
_VGG16_TAPS = {
    "conv1_2": "features.3", "pool1": "features.4", "conv2_2": "features.8", "pool2": "features.9",
    "conv3_3": "features.15", "pool3": "features.16", "conv4_3": "features.22", "pool4": "features.23",
    "conv5_3": "features.29", "pool5": "features.30",
    "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6",
}  # fmt: skip
_RESNET50_TAPS = {
    "stem": "relu", "maxpool": "maxpool", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3",
    "layer4": "layer4", "avgpool": "avgpool", "fc": "fc",
}  # fmt: skip
_LITE0_TAPS = {
    "stem": "stem", **{f"stage{i + 1}": f"blocks.{i}" for i in range(7)},
    "head": "head", "pool": "pool", "classifier": "classifier",
}  # fmt: skip

BACKBONE_SPECS: Mapping[str, BackboneSpec] = MappingProxyType({
    "alexnet": BackboneSpec(
        "alexnet", "AlexNet", _ALEXNET_TAPS, tuple(_ALEXNET_TAPS), "fc6",
        "torchvision AlexNet (one-weird-trick variant); the paper's 11 taps",
    ),
    "vgg16": BackboneSpec(
        "vgg16", "VGG16", _VGG16_TAPS, ("pool1", "pool2", "pool3", "pool4", "pool5", "fc6", "fc7", "fc8"), "fc6",
        "torchvision VGG16 (no BN); last conv of each block, pools, fc6-fc8",
    ),
    "resnet50": BackboneSpec(
        "resnet50", "ResNet-50", _RESNET50_TAPS, tuple(_RESNET50_TAPS), "avgpool",
        "torchvision ResNet-50; stem, each stage, global pool, fc",
    ),
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", "EfficientNet-Lite0", _LITE0_TAPS, tuple(_LITE0_TAPS), "pool",
        "EfficientNet-Lite0; stem, 7 stages, head, pool, classifier",
    ),
})  # fmt: skip
"""Registry of backbones by name (``cadx.cnn.BACKBONES`` has the same keys, with builders and weights)."""


def backbone_label(name: str) -> str:
    """The display name of a backbone (``"alexnet"`` -> ``"AlexNet"``); an unknown name is shown as given."""
    spec = BACKBONE_SPECS.get(name)
    return name if spec is None else spec.label


def ensemble_tap(name: str) -> str | None:
    """The ensemble's default Method-A tap of a backbone (fc6 for AlexNet, as in the paper); None when unknown."""
    spec = BACKBONE_SPECS.get(name)
    return None if spec is None else spec.ensemble_tap
