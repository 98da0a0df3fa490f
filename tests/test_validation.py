"""Tests of cadx.validation (shared input checks), the backbone registry and the error policy."""

import math

import numpy as np
import pytest

from cadx import io as cadx_io
from cadx import roi as cadx_roi
from cadx import validation
from cadx.backbones import BACKBONE_SPECS, backbone_label, ensemble_tap
from cadx.errors import CadxInputError, ImageReadError, RoiError, UnknownNameError


@pytest.mark.parametrize("value", [0.01, 0.05, 0.2, 2.0, (0.1, 0.2), [0.05, 0.05], np.float32(0.1), np.array([0.1, 0.1])])
def test_pixel_spacing_accepts_one_number_or_a_pair_in_range(value):
    row, col = validation.pixel_spacing(value, source="x")
    assert validation.PIXEL_SPACING_RANGE_MM[0] <= row <= validation.PIXEL_SPACING_RANGE_MM[1]
    assert (row, col) == ((float(value), float(value)) if np.ndim(value) == 0 else tuple(float(v) for v in value))


@pytest.mark.parametrize("value", [0, -0.1, 0.005, 2.5, 5.0, math.nan, math.inf, (0.1,), (0.1, 0.1, 0.1), "0.1",
                                   True, None, (0.1, "a")])
def test_pixel_spacing_refuses_the_same_values_for_every_reader(value):
    with pytest.raises(CadxInputError, match="pixel"):
        validation.pixel_spacing(value, source="x", what="pixel spacing")
    # the DICOM/PNG reader and the ROI crop apply the one rule, each with its own error class
    with pytest.raises(ImageReadError):
        cadx_io._check_spacing(value, "a.png", "the given pixel size", "fix")
    with pytest.raises(RoiError, match="pixel spacing"):
        cadx_roi.crop_roi(np.zeros((50, 50)), centre_rc=(25, 25), pixel_spacing_mm=value, value_range=(0, 1))


def test_numbers_name_the_field_and_what_is_allowed():
    assert validation.positive(3, name="diameter") == 3.0
    assert validation.fraction(1, name="f") == 1.0
    assert validation.in_range("2.5", name="beta", low=2, high=4) == 2.5
    with pytest.raises(CadxInputError) as info:
        validation.positive(-1, name="diameter")
    assert (info.value.source, info.value.problem) == ("diameter", "-1 is not a number > 0")
    with pytest.raises(RoiError) as info:
        validation.finite(math.nan, name="lesion diameter", source="scan.dcm", error=RoiError)
    assert info.value.source == "scan.dcm" and info.value.problem == "lesion diameter nan is not a finite number"
    for bad in (True, "x", None, [1], "nan"):
        with pytest.raises(CadxInputError):
            validation.finite(bad, name="v")
    with pytest.raises(CadxInputError, match="not one of a, b"):
        validation.choice("c", name="kind", choices=("a", "b"))


def test_backbone_registry_names_labels_and_default_taps():
    assert set(BACKBONE_SPECS) == {"alexnet", "vgg16", "resnet50", "efficientnet_lite0"}
    for name, spec in BACKBONE_SPECS.items():
        assert spec.name == name and spec.ensemble_tap in spec.taps
        assert list(spec.default_taps) == [t for t in spec.taps if t in spec.default_taps]  # network order
    assert backbone_label("alexnet") == "AlexNet" and backbone_label("mystery") == "mystery"
    assert ensemble_tap("alexnet") == "fc6" and ensemble_tap("resnet50") == "avgpool" and ensemble_tap("x") is None


def test_unknown_names_are_input_errors_and_key_errors():
    error = UnknownNameError("backbone", "unknown backbone 'x'; known: alexnet", "use alexnet")
    assert isinstance(error, CadxInputError) and isinstance(error, KeyError) and isinstance(error, ValueError)
    assert str(error) == "backbone: unknown backbone 'x'; known: alexnet. Fix: use alexnet"  # not KeyError's quotes
