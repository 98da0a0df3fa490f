"""Decompression bombs: images that declare (or inflate to) far more pixels than any mammogram, and zips that
inflate far more than their size, are refused from their headers before anything big is decoded or held.

Memory is checked loosely with tracemalloc (numpy arrays, zlib output and Python bytes are traced); PIL's decoder
allocates outside tracemalloc, so for PNG/TIFF the tests assert that no pixel data was decoded at all.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from cadx.errors import ImageReadError
from cadx.io import DEFAULT_MAX_IMAGE_PIXELS, read_image, read_image_bytes
from cadx.workflows.browse import unpack_upload
from tests.dicom_factory import write_mammogram

MiB = 1024**2


def _deflated_dicom(rows: int, cols: int, *, pixel_bytes: int | None = None) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM declaring ``rows`` x ``cols`` 16-bit pixels whose pixel data is
    ``pixel_bytes`` zeros (default: what the header declares), compressed on the fly (never held inflated)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = ["0.1", "0.1"]
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    n = rows * cols * 2 if pixel_bytes is None else pixel_bytes
    compressor = zlib_compressor()
    chunks = [compressor.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n))]
    zeros = bytes(MiB)
    for _ in range(n // MiB):
        chunks.append(compressor.compress(zeros))
    chunks.append(compressor.compress(bytes(n % MiB)))
    chunks.append(compressor.flush())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    return head.getvalue() + b"".join(chunks)


def zlib_compressor():
    import zlib

    return zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)


def _peak_mib(call) -> tuple[BaseException | None, float]:
    tracemalloc.start()
    try:
        call()
        error = None
    except BaseException as exc:  # noqa: BLE001
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, peak / MiB


@pytest.mark.slow
def test_a_deflated_dicom_declaring_16000_squared_is_refused_before_inflating(monkeypatch):
    monkeypatch.delenv("CADX_MAX_IMAGE_PIXELS", raising=False)
    bomb = _deflated_dicom(16000, 16000)  # 512 MB of pixels in about half a megabyte
    assert len(bomb) < 2 * MiB
    error, peak = _peak_mib(lambda: read_image_bytes(bomb, name="bomb.dcm"))
    assert isinstance(error, ImageReadError), error
    message = " ".join(str(error).split())
    assert "16000 rows x 16000 columns" in message and "256.0 million pixels" in message
    assert f"limit of {DEFAULT_MAX_IMAGE_PIXELS / 1e6:g} million" in message and "CADX_MAX_IMAGE_PIXELS" in message
    assert peak < 40, f"peak {peak:.0f} MiB while refusing a bomb"  # before: 4.75 GB


def test_a_deflated_dicom_inflating_past_its_header_is_refused_while_streaming():
    liar = _deflated_dicom(512, 512, pixel_bytes=300 * MiB)  # declares 0.5 MB of pixels, inflates to 300 MB
    error, peak = _peak_mib(lambda: read_image_bytes(liar, name="liar.dcm"))
    assert isinstance(error, ImageReadError), error
    assert "inflates to over" in str(error) and "decompression bomb" in str(error)
    assert peak < 40, f"peak {peak:.0f} MiB"


def test_a_genuine_deflated_dicom_is_still_read():
    ok = _deflated_dicom(64, 48)
    image = read_image_bytes(ok, name="ok.dcm")
    assert image.pixels.shape == (64, 48)


def test_the_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = write_mammogram(tmp_path / "small.dcm", np.full((100, 80), 1000, dtype=np.uint16))
    monkeypatch.setenv("CADX_MAX_IMAGE_PIXELS", "5000")
    with pytest.raises(ImageReadError, match=r"100 rows x 80 columns = 0.0 million pixels, over the limit of 0.005 "
                                             r"million") as info:
        read_image(path)
    assert "CADX_MAX_IMAGE_PIXELS=10000" in str(info.value)
    monkeypatch.setenv("CADX_MAX_IMAGE_PIXELS", "8000")
    assert read_image(path).pixels.shape == (100, 80)
    monkeypatch.setenv("CADX_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="CADX_MAX_IMAGE_PIXELS"):
        read_image(path)


def _png_bomb(width: int, height: int) -> bytes:
    """An 8-bit greyscale PNG of ``width`` x ``height`` zeros, compressed row by row (never held inflated)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _tiff_bomb(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="TIFF", compression="tiff_adobe_deflate")
    return buffer.getvalue()


@pytest.mark.parametrize("make, size", [(_png_bomb, (10000, 9000)), (_png_bomb, (20000, 20000)),
                                        (_tiff_bomb, (10000, 9000))])
def test_png_and_tiff_bombs_are_refused_from_their_header(make, size, monkeypatch):
    monkeypatch.delenv("CADX_MAX_IMAGE_PIXELS", raising=False)
    bomb = make(*size)
    assert len(bomb) < 2 * MiB
    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original_load(self))
    with pytest.raises(ImageReadError, match="over the limit of 80 million") as info:
        read_image_bytes(bomb, name="bomb.img")
    assert "CADX_MAX_IMAGE_PIXELS" in str(info.value)
    assert not decoded  # refused before PIL decoded any pixel


def test_a_pgm_declaring_a_huge_size_is_refused_before_parsing():
    with pytest.raises(ImageReadError, match="30000 rows x 30000 columns"):
        read_image_bytes(b"P5\n30000 30000\n65535\n" + bytes(1000), name="bomb.pgm")


def _zip_of_zeros(n: int, size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        zeros = bytes(size)
        for i in range(n):
            archive.writestr(f"study/{i}.dcm", zeros)
    return buffer.getvalue()


def test_a_zip_of_many_small_zero_files_is_refused_whatever_each_ratio(monkeypatch):
    """Each entry is at the 1 MiB floor under which the per-entry ratio is not applied: before, 499 of them were
    all unpacked (523 MB held in memory)."""
    monkeypatch.delenv("CADX_MAX_UPLOAD_MB", raising=False)
    bomb = _zip_of_zeros(499, MiB)
    assert len(bomb) < 3 * MiB
    result = {}
    error, peak = _peak_mib(lambda: result.setdefault("out", unpack_upload([("study.zip", bomb)])))
    assert error is None, error
    out = result["out"]
    assert not out.images and len(out.refused) == 1
    assert out.refused[0][0] == "study.zip" and "zip bomb" in out.refused[0][1]
    assert peak < 40, f"peak {peak:.0f} MiB"


def test_a_zip_over_the_upload_limit_is_refused_from_its_directory(monkeypatch):
    monkeypatch.setenv("CADX_MAX_UPLOAD_MB", "2")
    study = _zip_of_zeros(3, MiB)
    out = unpack_upload([("study.zip", study)], max_ratio=10**6)
    assert not out.images and "over the 2 MB limit for one upload" in out.refused[0][1]
    assert "CADX_MAX_UPLOAD_MB" in out.refused[0][1]
    monkeypatch.setenv("CADX_MAX_UPLOAD_MB", "4")
    assert len(unpack_upload([("study.zip", study)], max_ratio=10**6).images) == 3


def test_a_zip_whose_directory_understates_sizes_is_caught_while_unpacking():
    """A forged central directory (sizes patched down) passes the directory checks; the streaming read stops."""
    real = _zip_of_zeros(1, 4 * MiB)
    forged = bytearray(real)
    cd = forged.rindex(b"PK\x01\x02")
    struct.pack_into("<I", forged, cd + 24, 1000)  # uncompressed size in the central directory
    local = forged.index(b"PK\x03\x04")
    struct.pack_into("<I", forged, local + 22, 1000)  # and in the local header
    error, peak = _peak_mib(lambda: unpack_upload([("forged.zip", bytes(forged))]))
    out = unpack_upload([("forged.zip", bytes(forged))])
    assert not out.images and len(out.refused) == 1
    assert peak < 20


# ------------------------------------------------------------------------------------------- fold models ---
def _fold_model():
    from cadx.foldmodel import FoldModel

    return FoldModel(keep=np.ones(4, bool), mean=np.zeros(4), scale=np.ones(4), support=np.arange(3),
                     dual_coef=np.array([1.0, -1.0, 0.5]), intercept=0.1, gamma=0.25, coef0=0.0, degree=3, C=1.0,
                     platt_a=-1.0, platt_b=0.0, test=np.arange(3), test_decision=np.zeros(3), test_proba=np.full(3, .5))


def _npz_with_member(base: bytes, name: str, header_shape: tuple[int, ...], n_zero_bytes: int) -> bytes:
    """``base``'s members, with ``name`` (added or replaced) as a float64 ``.npy`` whose header declares
    ``header_shape`` and whose data is ``n_zero_bytes`` zeros, deflated on the fly (never held inflated)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename != name:
                dst.writestr(info, src.read(info))
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with dst.open(info, "w", force_zip64=True) as member:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                          "shape": header_shape})
            member.write(header.getvalue())
            zeros = bytes(MiB)
            for _ in range(n_zero_bytes // MiB):
                member.write(zeros)
            member.write(bytes(n_zero_bytes % MiB))
    return out.getvalue()


@pytest.fixture(scope="module")
def fold_model_bomb() -> bytes:
    """A fold model whose ``mean`` inflates to 300 MiB from about 300 KB."""
    return _npz_with_member(_fold_model().to_bytes(), "mean.npy", (300 * MiB // 8,), 300 * MiB)


def test_a_fold_model_member_too_big_is_refused_from_the_zip_directory(fold_model_bomb):
    """Before, np.load inflated every member (300 MiB here; 2 GB as easily) and only then checked names and sizes."""
    from cadx.foldmodel import FoldModel, FoldModelError, read_test_scores

    assert len(fold_model_bomb) < MiB
    error, peak = _peak_mib(lambda: FoldModel.from_bytes(fold_model_bomb, where="experiment 3 fold 1"))
    assert peak < 20, f"peak {peak:.0f} MiB while refusing a bomb"
    assert isinstance(error, FoldModelError), error
    assert "experiment 3 fold 1" in str(error) and "mean.npy inflates to" in str(error)
    error, peak = _peak_mib(lambda: read_test_scores(fold_model_bomb, where="scores"))
    assert peak < 20, f"peak {peak:.0f} MiB"
    assert isinstance(error, FoldModelError) and "mean.npy" in str(error), error
    assert FoldModel.from_bytes(_fold_model().to_bytes()).degree == 3  # a genuine one still loads


def test_a_fold_model_member_of_unknown_name_is_refused_before_inflating(fold_model_bomb):
    from cadx.foldmodel import FoldModel, FoldModelError

    renamed = fold_model_bomb.replace(b"mean.npy", b"evil.npy")  # the local header's and the directory's name
    assert renamed.count(b"evil.npy") == 2
    error, peak = _peak_mib(lambda: FoldModel.from_bytes(renamed, where="restored model"))
    assert peak < 20, f"peak {peak:.0f} MiB while refusing a bomb"
    assert isinstance(error, FoldModelError), error
    assert "unknown or repeated members ['evil.npy']" in str(error)


def test_a_fold_model_npy_header_claiming_a_huge_shape_is_refused_before_allocating():
    """A 300-byte member whose .npy header declares 200 million float64 values: np.load allocated 1.6 GB first."""
    from cadx.foldmodel import FoldModel, FoldModelError

    forged = _npz_with_member(_fold_model().to_bytes(), "support.npy", (200_000_000,), 24)
    error, peak = _peak_mib(lambda: FoldModel.from_bytes(forged, where="restored model"))
    assert peak < 20, f"peak {peak:.0f} MiB"
    assert isinstance(error, FoldModelError), error
    assert "support.npy" in str(error) and "does not fit its" in str(error)


def test_a_fold_model_whose_directory_claims_more_than_deflate_can_give_is_refused():
    from cadx.foldmodel import FoldModel, FoldModelError

    real = bytearray(_fold_model().to_bytes())
    cd = real.index(b"PK\x01\x02")  # the first member's central-directory entry
    struct.pack_into("<I", real, cd + 24, 50 * MiB)  # its uncompressed size: far beyond 1032 x its stored size
    with pytest.raises(FoldModelError, match="forged zip directory"):
        FoldModel.from_bytes(bytes(real))
