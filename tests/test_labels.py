"""Tests of cadx.labels: the one codec of benign/malignant, every accepted spelling, a clear error otherwise."""

import numpy as np
import pytest

from cadx import analytic, stats, svm
from cadx.errors import CadxInputError, ManifestError
from cadx.labels import BENIGN, LABELS, MALIGNANT, label_code, label_codes, label_name, label_word
from cadx.sources import normalise_label

BENIGN_SPELLINGS = ["benign", "BENIGN", " Benign ", "b", "B", "0", "BENIGN_WITHOUT_CALLBACK", "benign_without_callback",
                    0, 0.0, False, np.int64(0), np.float32(0.0), np.bool_(False), np.str_("benign")]
MALIGNANT_SPELLINGS = ["malignant", "MALIGNANT", "Malignant\n", "m", "M", "1", 1, 1.0, True, np.int8(1),
                       np.float64(1.0), np.bool_(True)]
REFUSED = ["", "  ", "probably bad", "2", "-1", "bening", "mal", 2, -1, 0.5, float("nan"), None, b"benign", [0]]


def test_words_and_codes_agree():
    assert LABELS == ("benign", "malignant")
    assert (BENIGN, MALIGNANT) == (0, 1)
    assert LABELS[BENIGN] == "benign" and LABELS[MALIGNANT] == "malignant"


@pytest.mark.parametrize("value", BENIGN_SPELLINGS)
def test_every_benign_spelling(value):
    assert label_code(value, source="x") == 0
    assert label_name(value, source="x") == "benign"
    assert label_word(value) == "benign"
    assert normalise_label(value, source="x") == "benign"


@pytest.mark.parametrize("value", MALIGNANT_SPELLINGS)
def test_every_malignant_spelling(value):
    assert label_code(value, source="x") == 1
    assert label_name(value, source="x") == "malignant"
    assert normalise_label(value, source="x") == "malignant"


@pytest.mark.parametrize("value", REFUSED)
def test_other_values_are_a_clear_error_naming_the_source(value):
    with pytest.raises(ManifestError, match="unknown label") as info:
        label_code(value, source="labels.csv, row 3, column 'label'")
    assert info.value.source == "labels.csv, row 3, column 'label'"
    assert "benign or malignant" in info.value.fix


def test_empty_value_is_named_as_such():
    with pytest.raises(ManifestError, match="unknown label an empty value"):
        label_name("  ", source="row 1")


def test_label_codes_of_mixed_spellings():
    codes = label_codes(["benign", "M", 1, 0.0, True, "BENIGN_WITHOUT_CALLBACK"])
    assert codes.dtype == np.int8
    assert codes.tolist() == [0, 1, 1, 0, 1, 0]
    assert label_codes(np.array([[0, 1], [1, 0]])).tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("values", [["benign", "maybe"], [0, 1, 2], [0.0, np.nan], ["a", "b"]])
def test_label_codes_refuse_other_values_naming_them(values):
    with pytest.raises(CadxInputError, match=r"only 0 \(benign\) and 1 \(malignant\); received values \[") as info:
        label_codes(values, name="y_true")
    assert info.value.source == "y_true"
    assert "not benign or malignant" in info.value.problem


def test_every_reader_uses_the_codec():
    """The analytic AUCs, the ROC statistics and the SVMs accept the same words and refuse the same values."""
    words = ["benign", "malignant", "benign", "malignant", "benign", "malignant"]
    scores = [0.1, 0.8, 0.3, 0.6, 0.5, 0.4]
    assert stats.auc(words, scores) == pytest.approx(stats.auc([0, 1, 0, 1, 0, 1], scores))
    feature_auc = analytic.feature_aucs({"f": np.asarray(scores)}, words)["f"]
    assert feature_auc == pytest.approx(stats.auc([0, 1, 0, 1, 0, 1], scores))
    assert svm._check_labels(np.array(["B", "m", "b"])).tolist() == [0, 1, 0]
    for bad in (["benign", "unknown"] * 3,):
        with pytest.raises(CadxInputError, match="not benign or malignant"):
            stats.auc(bad, scores)
        with pytest.raises(CadxInputError, match="not benign or malignant"):
            analytic.feature_aucs({"f": np.asarray(scores)}, bad)
        with pytest.raises(CadxInputError, match="not benign or malignant"):
            svm._check_labels(np.array(bad))
