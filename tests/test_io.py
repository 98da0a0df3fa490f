"""Tests of cadx.io: DICOM presentation values, pixel spacing, de-identification, compressed syntaxes, bad input,
rasters (the real MIAS PGM, 16-bit PNG/TIFF) and the uint16 mapping. Every DICOM is written here with pydicom."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from cadx.errors import CadxInputError, ImageReadError
from cadx.io import (
    DEIDENTIFIED_TAGS,
    Mammogram,
    pseudonymise,
    read_dicom,
    read_image,
    read_image_bytes,
    read_raster,
    require_pixel_spacing,
    to_uint16,
)
from tests.dicom_factory import cut_codestream

KEY = b"k" * 32


# ----------------------------------------------------------------------------------------------------------------
# helpers


def make_ds(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    **attrs: object,
) -> FileDataset:
    """A minimal Digital Mammography dataset holding `pixels` (uncompressed, explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("test.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.set_pixel_data(pixels, photometric, bits_stored)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: FileDataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def linear_window(x: np.ndarray, center: float, width: float, y_min: float, y_max: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), written out by hand."""
    x = np.asarray(x, dtype=np.float64)
    c, w = center - 0.5, width - 1.0
    y = ((x - c) / w + 0.5) * (y_max - y_min) + y_min
    y = np.where(x <= c - w / 2, y_min, y)
    return np.where(x > c + w / 2, y_max, y)


def assert_read_error(exc_info: pytest.ExceptionInfo[ImageReadError], name: str) -> None:
    err = exc_info.value
    assert isinstance(err, ImageReadError) and isinstance(err, CadxInputError)
    assert name in str(err)
    assert err.fix and "Fix:" in str(err)


@pytest.fixture
def img12() -> np.ndarray:
    # 12-bit stored values, including both ends of the range and values below/inside/above the window
    return np.array([[0, 100, 500, 1000], [1900, 2048, 2100, 4095]], dtype=np.uint16)


# ----------------------------------------------------------------------------------------------------------------
# presentation values


def test_monochrome2_rescale_and_window_exact(tmp_path: Path, img12: np.ndarray) -> None:
    ds = make_ds(img12, bits_stored=12, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=4000.5, WindowWidth=4097)
    m = read_dicom(save(ds, tmp_path / "m2.dcm"), pixel_spacing_mm=0.1)
    modality = img12.astype(np.float64) * 2 - 100
    # output range of the window: the stored range 0..4095 through the rescale (pydicom's and cadx's convention)
    y_min, y_max = 0 * 2 - 100.0, 4095 * 2 - 100.0
    expected = linear_window(modality, 4000.5, 4097, y_min, y_max)
    assert m.pixels.dtype == np.float32 and m.pixels.shape == (2, 4)
    np.testing.assert_array_equal(m.pixels, expected.astype(np.float32))
    # values below, inside and above the window are all present
    assert expected.min() == y_min and expected.max() == y_max and ((expected > y_min) & (expected < y_max)).any()
    assert m.value_range == (y_min, y_max)
    assert m.photometric == "MONOCHROME2" and m.source_format == "dicom" and m.modality == "MG"
    assert not m.pixels.flags.writeable


def test_monochrome1_is_inverted(tmp_path: Path, img12: np.ndarray) -> None:
    kw = dict(bits_stored=12, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=4000.5, WindowWidth=4097)
    m2 = read_dicom(save(make_ds(img12, **kw), tmp_path / "m2.dcm"))
    m1 = read_dicom(save(make_ds(img12, photometric="MONOCHROME1", **kw), tmp_path / "m1.dcm"))
    y_min, y_max = -100.0, 8090.0
    expected = (y_min + y_max) - linear_window(img12 * 2.0 - 100, 4000.5, 4097, y_min, y_max)
    np.testing.assert_array_equal(m1.pixels, expected.astype(np.float32))
    np.testing.assert_array_equal(m1.pixels, (y_min + y_max) - m2.pixels)
    assert m1.value_range == (y_min, y_max) and m1.photometric == "MONOCHROME1"
    # stored 0 is the brightest (least dense) value for MONOCHROME1: after inversion it is the highest
    assert m1.pixels[0, 0] == y_max and m1.pixels[1, 3] == y_min


def test_no_window_keeps_modality_range(tmp_path: Path, img12: np.ndarray) -> None:
    m = read_dicom(save(make_ds(img12, bits_stored=12), tmp_path / "raw.dcm"))
    np.testing.assert_array_equal(m.pixels, img12.astype(np.float32))
    assert m.value_range == (0.0, 4095.0)  # from BitsStored, not from the image's own min/max
    m = read_dicom(save(make_ds(img12, bits_stored=12, RescaleSlope=0.5, RescaleIntercept=10), tmp_path / "r.dcm"))
    np.testing.assert_array_equal(m.pixels, (img12 * 0.5 + 10).astype(np.float32))
    assert m.value_range == (10.0, 4095 * 0.5 + 10)


def test_voi_lut_sequence(tmp_path: Path) -> None:
    stored = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.uint16)
    ds = make_ds(stored, bits_stored=3, WindowCenter=4, WindowWidth=8)
    item = Dataset()
    lut = [100, 90, 300, 400, 500, 600, 700, 1000]
    item.add_new("LUTDescriptor", "US", [len(lut), 0, 16])
    item.add_new("LUTData", "US", lut)
    ds.VOILUTSequence = [item]
    m = read_dicom(save(ds, tmp_path / "voi.dcm"))
    np.testing.assert_array_equal(m.pixels, np.array(lut, dtype=np.float32).reshape(2, 4))
    assert m.value_range == (90.0, 1000.0)  # (min, max) of the LUT output, the LUT wins over the window


def test_to_uint16() -> None:
    np.testing.assert_array_equal(
        to_uint16(np.array([[-5.0, 0.0, 127.5, 255.0, 300.0]]), (0, 255)), [[0, 0, 32768, 65535, 65535]]
    )
    px = np.array([[0, 1, 65535]], dtype=np.float32)
    np.testing.assert_array_equal(to_uint16(px, (0, 65535)), [[0, 1, 65535]])
    assert to_uint16(px, (0, 65535)).dtype == np.uint16
    for bad in [(1, 1), (2, 1), (0, float("nan"))]:
        with pytest.raises(ValueError):
            to_uint16(px, bad)


# ----------------------------------------------------------------------------------------------------------------
# pixel spacing


def test_pixel_spacing_sources(tmp_path: Path, img12: np.ndarray) -> None:
    both = make_ds(img12, PixelSpacing=[0.07, 0.08], ImagerPixelSpacing=[0.1, 0.1])
    m = read_dicom(save(both, tmp_path / "both.dcm"))
    assert m.pixel_spacing_mm == (0.07, 0.08) and m.pixel_spacing_source == "PixelSpacing"
    imager = make_ds(img12, ImagerPixelSpacing=[0.085, 0.085])
    m = read_dicom(save(imager, tmp_path / "imager.dcm"))
    assert m.pixel_spacing_mm == (0.085, 0.085) and m.pixel_spacing_source == "ImagerPixelSpacing"
    m = read_dicom(tmp_path / "both.dcm", pixel_spacing_mm=0.05)
    assert m.pixel_spacing_mm == (0.05, 0.05) and m.pixel_spacing_source == "user"
    m = read_image(tmp_path / "imager.dcm", pixel_spacing_mm=(0.05, 0.06))
    assert m.pixel_spacing_mm == (0.05, 0.06) and m.pixel_spacing_source == "user"
    assert require_pixel_spacing(m, "imager.dcm") == (0.05, 0.06)


def test_pixel_spacing_missing(tmp_path: Path, img12: np.ndarray) -> None:
    path = save(make_ds(img12), tmp_path / "nospacing.dcm")
    m = read_dicom(path)
    assert m.pixel_spacing_mm is None and m.pixel_spacing_source is None
    with pytest.raises(ImageReadError) as exc_info:
        require_pixel_spacing(m, str(path))
    assert_read_error(exc_info, "nospacing.dcm")
    assert "--pixel-size-mm" in exc_info.value.fix


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), 5.0, 0.001, (0.1,), (0.1, 0.1, 0.1), "0.1"])
def test_bad_user_spacing(tmp_path: Path, img12: np.ndarray, bad: object) -> None:
    path = save(make_ds(img12), tmp_path / "s.dcm")
    with pytest.raises(ImageReadError) as exc_info:
        read_dicom(path, pixel_spacing_mm=bad)  # type: ignore[arg-type]
    assert_read_error(exc_info, "s.dcm")


def test_bad_file_spacing(tmp_path: Path, img12: np.ndarray) -> None:
    path = save(make_ds(img12, PixelSpacing=[0, 0]), tmp_path / "zero.dcm")
    with pytest.raises(ImageReadError) as exc_info:
        read_dicom(path)
    assert_read_error(exc_info, "zero.dcm")
    assert "PixelSpacing" in str(exc_info.value)
    assert read_dicom(path, pixel_spacing_mm=0.1).pixel_spacing_mm == (0.1, 0.1)  # the user's value overrides


# ----------------------------------------------------------------------------------------------------------------
# de-identification


PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-778899",
    "PatientBirthDate": "19610203",
    "AccessionNumber": "ACC4455667",
    "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "Smith^Johnathan",
    "StudyDate": "20240517",
    "StudyTime": "134501",
    "OperatorsName": "Operator^Olga",
    "DeviceSerialNumber": "SN-99887766",
    "StudyDescription": "Screening Jane Doe",
    "StationName": "MAMMO-ROOM-7",
}


def test_header_has_no_phi(tmp_path: Path, img12: np.ndarray) -> None:
    ds = make_ds(
        img12,
        bits_stored=12,
        PixelSpacing=[0.1, 0.1],
        ViewPosition="MLO",
        ImageLaterality="L",
        Manufacturer="ACME Imaging",
        BurnedInAnnotation="YES",
        WindowCenter=2048,
        WindowWidth=4096,
        **PHI,
    )
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    block = ds.private_block(0x0011, "ACME PRIVATE", create=True)
    block.add_new(0x01, "LO", "PrivateSecret-123")
    other = Dataset()
    other.PatientName = "Hidden^InSequence"
    other.PatientID = "SEQ-ID-42"
    ds.OtherPatientIDsSequence = [other]
    path = save(ds, tmp_path / "phi.dcm")

    m = read_dicom(path, pseudonym_key=KEY)
    dumped = json.dumps(m.metadata())  # JSON-serialisable as it is
    texts = [repr(m.header), dumped, repr(m.metadata())]
    secrets = [*PHI.values(), "Doe", "Jane", "PrivateSecret-123", "Hidden", "SEQ-ID-42", "19610203", "20240517"]
    secrets += [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into the Mammogram"
    assert set(m.header) <= set(DEIDENTIFIED_TAGS)
    for value in m.header.values():
        items = value if isinstance(value, list) else [value]
        assert all(type(v) in (str, int, float) for v in items)
    assert m.header["Manufacturer"] == "ACME Imaging" and m.header["Rows"] == 2
    assert m.header["PixelSpacing"] == [0.1, 0.1]
    assert m.header["TransferSyntaxUID"] == ExplicitVRLittleEndian
    assert m.view == "MLO" and m.laterality == "L" and m.burned_in_annotation is True

    expected_key = hmac.new(KEY, b"PID-778899", hashlib.sha256).hexdigest()[:16]
    assert m.patient_key == expected_key == pseudonymise("PID-778899", key=KEY)
    assert read_dicom(path, pseudonym_key=KEY).patient_key == expected_key  # stable
    assert read_dicom(path, pseudonym_key=b"x" * 32).patient_key != expected_key
    assert read_dicom(path).patient_key is None
    assert m.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_whitelist_is_known_keywords() -> None:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    for keyword in DEIDENTIFIED_TAGS:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        assert dictionary_VR(tag) not in ("PN", "DA", "TM", "DT", "SQ", "UI") or keyword == "TransferSyntaxUID"


def test_pseudonymise_checks_key() -> None:
    assert pseudonymise("a", key=KEY) != pseudonymise("b", key=KEY)
    assert re.fullmatch(r"[0-9a-f]{16}", pseudonymise("a", key=KEY))
    with pytest.raises(ValueError):
        pseudonymise("a", key=b"short")
    with pytest.raises(TypeError):
        pseudonymise("a", key="not-bytes" * 4)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# compressed transfer syntaxes


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda u: u.name)
def test_lossless_compressed_roundtrip(tmp_path: Path, syntax: pydicom.uid.UID) -> None:
    encoder = get_encoder(syntax)
    if not encoder.is_available:
        pytest.skip(f"no {syntax.name} encoder installed ({'; '.join(encoder.missing_dependencies)})")
    rng = np.random.default_rng(0)
    original = rng.integers(0, 65536, size=(48, 40), dtype=np.uint16)
    original[0, :4] = [0, 1, 65534, 65535]
    ds = make_ds(original, bits_stored=16, PixelSpacing=[0.1, 0.1])
    ds.compress(syntax)
    path = save(ds, tmp_path / "c.dcm")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    m = read_image(path)
    np.testing.assert_array_equal(m.pixels, original.astype(np.float32))
    assert m.value_range == (0.0, 65535.0)
    np.testing.assert_array_equal(to_uint16(m.pixels, m.value_range), original)
    assert m.header["TransferSyntaxUID"] == syntax


def test_unsupported_transfer_syntax(tmp_path: Path, img12: np.ndarray) -> None:
    ds = make_ds(img12)
    ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # a valid syntax that no installed package decodes
    path = save(ds, tmp_path / "video.dcm")
    with pytest.raises(ImageReadError) as exc_info:
        read_dicom(path)
    assert_read_error(exc_info, "video.dcm")
    assert MPEG2MPML in str(exc_info.value) and "pylibjpeg" in exc_info.value.fix


# ----------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")  # pydicom warns, then cadx raises
def test_truncated_dicom(tmp_path: Path) -> None:
    good = save(make_ds(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)), tmp_path / "good.dcm")
    data = good.read_bytes()
    cut = tmp_path / "half.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as exc_info:
        read_dicom(cut)
    assert_read_error(exc_info, "half.dcm")
    with pytest.raises(ImageReadError):
        read_image(cut)
    header_only = tmp_path / "header.dcm"
    header_only.write_bytes(data[:200])
    with pytest.raises(ImageReadError) as exc_info:
        read_image(header_only)
    assert_read_error(exc_info, "header.dcm")


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")  # pydicom warns, then cadx raises
@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=lambda u: u.name)
def test_truncated_compressed_dicom(tmp_path: Path, syntax: pydicom.uid.UID) -> None:
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no {syntax.name} encoder installed")
    ds = make_ds(np.random.default_rng(1).integers(0, 4096, size=(32, 32), dtype=np.uint16), bits_stored=12)
    ds.compress(syntax)
    data = save(ds, tmp_path / "whole.dcm").read_bytes()
    for cut in (len(data) // 2, len(data) - 7):
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(data[:cut])
        with pytest.raises(ImageReadError) as exc_info:
            read_image(path)
        assert_read_error(exc_info, path.name)


def _jpeg_baseline_dicom(image: np.ndarray, path: Path) -> Path:
    """An 8-bit JPEG Baseline DICOM; pydicom has no JPEG encoder, so Pillow (libjpeg) writes the codestream."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    ds = make_ds(image, bits_stored=8, LossyImageCompression="01")
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = pydicom.encaps.encapsulate([buf.getvalue()])
    return save(ds, path)


@pytest.mark.parametrize(
    "syntax", [JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless, JPEGBaseline8Bit],
    ids=lambda u: u.name)
def test_codestream_cut_to_a_third_is_refused(tmp_path: Path, syntax: pydicom.uid.UID) -> None:
    """A valid DICOM whose compressed frame stops a third of the way: pyjpegls and libjpeg decode it without error
    into an image whose last rows are garbage or grey; it must be refused, naming the file."""
    yy, xx = np.mgrid[:64, :64]
    if syntax == JPEGBaseline8Bit:
        image = ((yy * 3 + xx * 2) % 256).astype(np.uint8)
        whole = _jpeg_baseline_dicom(image, tmp_path / "whole.dcm")
    else:
        image = ((yy * 37 + xx * 11) % 4096).astype(np.uint16)
        ds = make_ds(image, bits_stored=12)
        ds.compress(syntax, **({"jls_error": 2} if syntax == JPEGLSNearLossless else {}),
                    **({"j2k_psnr": [80]} if syntax == JPEG2000 else {}))
        whole = save(ds, tmp_path / "whole.dcm")
    assert np.abs(read_image(whole).pixels - image).max() <= 8  # the uncut file reads (lossy: within 8)
    cut = cut_codestream(whole.rename(tmp_path / "third.dcm"))
    with pytest.raises(ImageReadError) as exc_info:
        read_image(cut)
    assert_read_error(exc_info, "third.dcm")
    if syntax != RLELossless:  # RLE's decoder reports the short segment itself
        assert "end-of-image marker" in exc_info.value.problem


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")  # pydicom warns, then cadx raises
def test_jpegls_file_cut_is_refused(tmp_path: Path) -> None:
    ds = make_ds(np.random.default_rng(1).integers(0, 4096, size=(32, 32), dtype=np.uint16), bits_stored=12)
    ds.compress(JPEGLSLossless)
    data = save(ds, tmp_path / "whole.dcm").read_bytes()
    for cut in (len(data) // 3, len(data) - 7):
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(data[:cut])
        with pytest.raises(ImageReadError) as exc_info:
            read_image(path)
        assert_read_error(exc_info, path.name)


def test_pixel_data_too_short(tmp_path: Path) -> None:
    ds = make_ds(np.zeros((32, 32), dtype=np.uint16))
    ds.PixelData = ds.PixelData[: 32 * 16 * 2]  # half of Rows * Columns * 16 bits
    path = save(ds, tmp_path / "short.dcm")
    with pytest.raises(ImageReadError) as exc_info:
        read_dicom(path)
    assert_read_error(exc_info, "short.dcm")
    assert "too short" in exc_info.value.problem


def test_corrupt_compressed_pixel_data(tmp_path: Path) -> None:
    ds = make_ds(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32))
    ds.compress(JPEGLSLossless)
    frame = bytearray(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1).__next__())
    frame[2:] = bytes(len(frame) - 2)  # keep SOI, wipe the JPEG-LS header and scan
    ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
    path = save(ds, tmp_path / "garbled.dcm")
    with pytest.raises(ImageReadError) as exc_info:
        read_dicom(path)
    assert_read_error(exc_info, "garbled.dcm")


def test_empty_and_text_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    text = tmp_path / "notes.dcm"
    text.write_text("Patient notes, not an image.\n" * 20)
    for reader in (read_dicom, read_image):
        with pytest.raises(ImageReadError) as exc_info:
            reader(empty)
        assert_read_error(exc_info, "empty.dcm")
        assert "empty" in exc_info.value.problem
        with pytest.raises(ImageReadError) as exc_info:
            reader(text)
        assert_read_error(exc_info, "notes.dcm")
    with pytest.raises(ImageReadError) as exc_info:
        read_image(text)
    assert "PNG" in exc_info.value.fix and "DICOM" in exc_info.value.fix  # lists the supported formats
    with pytest.raises(ImageReadError) as exc_info:
        read_image_bytes(b"", name="upload.dcm")
    assert_read_error(exc_info, "upload.dcm")
    with pytest.raises(ImageReadError) as exc_info:
        read_image(tmp_path / "missing.dcm")
    assert_read_error(exc_info, "missing.dcm")


def test_rgb_and_multiframe_dicom(tmp_path: Path) -> None:
    rgb = make_ds(np.zeros((8, 8, 3), dtype=np.uint8), photometric="RGB", bits_stored=8)
    with pytest.raises(ImageReadError) as exc_info:
        read_dicom(save(rgb, tmp_path / "rgb.dcm"))
    assert_read_error(exc_info, "rgb.dcm")
    assert "colour" in exc_info.value.problem
    frames = make_ds(np.zeros((3, 8, 8), dtype=np.uint16), bits_stored=12)
    with pytest.raises(ImageReadError) as exc_info:
        read_dicom(save(frames, tmp_path / "tomo.dcm"))
    assert_read_error(exc_info, "tomo.dcm")
    assert "3 frames" in exc_info.value.problem


def test_missing_pixel_data(tmp_path: Path) -> None:
    ds = make_ds(np.zeros((8, 8), dtype=np.uint16))
    del ds.PixelData
    with pytest.raises(ImageReadError) as exc_info:
        read_dicom(save(ds, tmp_path / "nopix.dcm"))
    assert_read_error(exc_info, "nopix.dcm")
    assert "no pixel data" in exc_info.value.problem


def test_rgb_png(tmp_path: Path) -> None:
    rgb = np.zeros((6, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(ImageReadError) as exc_info:
        read_image(tmp_path / "colour.png", pixel_spacing_mm=0.1)
    assert_read_error(exc_info, "colour.png")
    assert "colour" in exc_info.value.problem
    grey_rgb = np.repeat(np.arange(30, dtype=np.uint8).reshape(6, 5, 1), 3, axis=2)
    Image.fromarray(grey_rgb).save(tmp_path / "grey_rgb.png")
    m = read_raster(tmp_path / "grey_rgb.png", pixel_spacing_mm=0.1)
    np.testing.assert_array_equal(m.pixels, np.arange(30, dtype=np.float32).reshape(6, 5))
    assert m.value_range == (0.0, 255.0)


# ----------------------------------------------------------------------------------------------------------------
# rasters


def test_mias_pgm(mias_dir: Path) -> None:
    path = mias_dir / "mdb001.pgm"
    data = path.read_bytes()
    match = re.match(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s", data)
    assert match is not None
    width, height, maxval = (int(g) for g in match.groups())
    assert (width, height, maxval) == (1024, 1024, 255)
    expected = np.frombuffer(data, dtype=np.uint8, count=width * height, offset=match.end()).reshape(height, width)
    m = read_image(path, pixel_spacing_mm=0.2)
    assert m.pixels.shape == (1024, 1024) and m.value_range == (0.0, 255.0)
    np.testing.assert_array_equal(m.pixels, expected.astype(np.float32))
    np.testing.assert_array_equal(m.pixels, np.asarray(Image.open(path), dtype=np.float32))  # PIL agrees
    assert m.source_format == "pgm" and m.pixel_spacing_mm == (0.2, 0.2) and m.pixel_spacing_source == "user"
    assert m.modality is None and m.patient_key is None and m.photometric == "MONOCHROME2"


def test_pgm_variants(tmp_path: Path) -> None:
    values = np.array([[0, 1, 4095], [17, 300, 2048]], dtype=np.uint16)
    p5 = b"P5\n# comment\n3 2\n4095\n" + values.astype(">u2").tobytes()
    m = read_image_bytes(p5, name="a.pgm", pixel_spacing_mm=0.05)
    np.testing.assert_array_equal(m.pixels, values)
    assert m.value_range == (0.0, 4095.0)  # maxval, not rescaled to 65535
    p2 = b"P2\n3 2\n4095\n0 1 4095\n17 300 2048\n"
    np.testing.assert_array_equal(read_image_bytes(p2, name="b.pgm").pixels, values)
    with pytest.raises(ImageReadError) as exc_info:
        read_image_bytes(p5[:-3], name="cut.pgm")
    assert_read_error(exc_info, "cut.pgm")


def test_pgm_header_must_describe_all_the_data() -> None:
    """A header giving fewer rows or columns than the data holds used to read as a crop; more, as a truncation
    error. Both are refused naming the file; one trailing line end after the raster is accepted."""
    values = np.arange(24, dtype=np.uint8).reshape(4, 6)
    raster = values.tobytes()
    assert read_image_bytes(b"P5\n6 4\n255\n" + raster + b"\n", name="ok.pgm").pixels.shape == (4, 6)
    np.testing.assert_array_equal(read_image_bytes(b"P5\n6 4\n255\n" + raster, name="ok.pgm").pixels, values)
    for header, what in ((b"P5\n6 3\n255\n", "crop"), (b"P5\n5 4\n255\n", "crop"), (b"P5\n6 5\n255\n", "truncated")):
        with pytest.raises(ImageReadError) as exc_info:
            read_image_bytes(header + raster, name="rows.pgm")
        assert_read_error(exc_info, "rows.pgm")
        assert what in exc_info.value.problem
    with pytest.raises(ImageReadError) as exc_info:
        read_image_bytes(b"P5\n6 4\n255\n" + raster + b"P5\n6 4\n255\n" + raster, name="two.pgm")
    assert_read_error(exc_info, "two.pgm")
    plain = " ".join(str(v) for v in values.ravel()).encode()
    assert read_image_bytes(b"P2\n6 4\n255\n" + plain + b"\n# end\n", name="ok.pgm").pixels.shape == (4, 6)
    for header, what in ((b"P2\n6 3\n255\n", "crop"), (b"P2\n6 5\n255\n", "truncated")):
        with pytest.raises(ImageReadError) as exc_info:
            read_image_bytes(header + plain, name="plain.pgm")
        assert_read_error(exc_info, "plain.pgm")
        assert what in exc_info.value.problem


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_raster_roundtrip(tmp_path: Path, fmt: str) -> None:
    values = np.array([[0, 1, 2, 65535], [1000, 32768, 4095, 12345]], dtype=np.uint16)
    path = tmp_path / f"img.{fmt.lower()}"
    Image.fromarray(values).save(path, format=fmt)
    m = read_raster(path, pixel_spacing_mm=(0.1, 0.1))
    np.testing.assert_array_equal(m.pixels, values.astype(np.float32))
    assert m.value_range == (0.0, 65535.0) and m.source_format == fmt.lower()
    np.testing.assert_array_equal(to_uint16(m.pixels, m.value_range), values)
    assert m.header["BitsStored"] == 16


def test_dispatch_by_content(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.uint8).reshape(3, 4)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    misnamed = tmp_path / "scan.dcm"
    misnamed.write_bytes(buf.getvalue())
    m = read_image(misnamed)
    assert m.source_format == "png" and m.value_range == (0.0, 255.0) and m.pixel_spacing_mm is None
    with pytest.raises(ImageReadError) as exc_info:
        require_pixel_spacing(m, "scan.dcm")
    assert "--pixel-size-mm" in exc_info.value.fix
    with pytest.raises(ImageReadError) as exc_info:
        read_dicom(misnamed)
    assert_read_error(exc_info, "scan.dcm")
    same = read_image_bytes(buf.getvalue(), name="upload.bin")
    np.testing.assert_array_equal(same.pixels, m.pixels)
    assert same.source_sha256 == m.source_sha256 == hashlib.sha256(buf.getvalue()).hexdigest()
    with pytest.raises(ImageReadError) as exc_info:
        read_image_bytes(b"\xff\xd8\xff\xe0" + bytes(100), name="photo.jpg")
    assert_read_error(exc_info, "photo.jpg")
    assert "JPEG" in exc_info.value.problem


def test_dicom_without_preamble(tmp_path: Path, img12: np.ndarray) -> None:
    plain = Dataset()
    plain.update(make_ds(img12, bits_stored=12))
    path = tmp_path / "raw.dcm"
    plain.save_as(path, implicit_vr=True, little_endian=True)  # no preamble, no 'DICM', no file meta
    assert path.read_bytes()[:2] == b"\x08\x00"
    np.testing.assert_array_equal(read_image(path).pixels, img12)
    np.testing.assert_array_equal(read_dicom(path).pixels, img12)


def test_mammogram_is_frozen(tmp_path: Path, img12: np.ndarray) -> None:
    m = read_dicom(save(make_ds(img12), tmp_path / "f.dcm"))
    assert isinstance(m, Mammogram)
    with pytest.raises(AttributeError):
        m.view = "CC"  # type: ignore[misc]
    with pytest.raises(ValueError):
        m.pixels[0, 0] = 1


def test_palette_png(tmp_path: Path) -> None:
    """A colour palette is refused; a grey palette reads as the grey values it maps to."""
    indices = np.arange(30, dtype=np.uint8).reshape(6, 5)
    colour = Image.fromarray(indices).convert("P")
    colour.putpalette([v for i in range(256) for v in (i, 0, 255 - i)])
    colour.save(tmp_path / "palette.png")
    with pytest.raises(ImageReadError) as exc_info:
        read_image(tmp_path / "palette.png", pixel_spacing_mm=0.1)
    assert_read_error(exc_info, "palette.png")
    grey = Image.fromarray(indices).convert("P")
    grey.putpalette([v for i in range(256) for v in (255 - i,) * 3])  # an inverted grey ramp
    grey.save(tmp_path / "grey_palette.png")
    m = read_image(tmp_path / "grey_palette.png", pixel_spacing_mm=0.1)
    np.testing.assert_array_equal(m.pixels, 255 - indices.astype(np.float32))
