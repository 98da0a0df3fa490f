"""Writes small DICOM mammograms with known content for the tests (no dataset file is ever committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PHI = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "MRN-4471923",
    "PatientBirthDate": "19580214",
    "AccessionNumber": "ACC-99182734",
    "InstitutionName": "St Elsewhere Breast Centre",
    "ReferringPhysicianName": "Kildare^James",
    "StudyDate": "20240301",
}
PRIVATE_PHI = "Jane Doe private note 5551234"
SEQUENCE_PHI = "Operator^Sequence^Hidden"


def write_mammogram(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    pixel_spacing: tuple[float, float] | None = (0.1, 0.1),
    spacing_tag: str = "PixelSpacing",
    with_phi: bool = True,
    view: str = "CC",
    laterality: str = "L",
    extra: dict | None = None,
    syntax: str | None = None,
) -> Path:
    """Write ``pixels`` (uint16, shape (H, W)) as an MG DICOM, with PHI in standard and private tags; uncompressed
    unless ``syntax`` names a transfer syntax pydicom can encode (RLE, JPEG-LS, JPEG 2000)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.ViewPosition = view
    ds.ImageLaterality = laterality
    if with_phi:
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        block = ds.private_block(0x0011, "ACME PRIVATE", create=True)
        block.add_new(0x01, "LO", PRIVATE_PHI)
        item = Dataset()
        item.PersonName = SEQUENCE_PHI
        ds.RequestAttributesSequence = Sequence([item])
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if pixel_spacing is not None:
        setattr(ds, spacing_tag, [f"{pixel_spacing[0]:g}", f"{pixel_spacing[1]:g}"])
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    if syntax is not None:
        ds.compress(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def cut_codestream(path: Path, keep: float = 1 / 3) -> Path:
    """Rewrite the compressed DICOM at ``path`` with its frame's codestream cut to ``keep`` of its length: a valid
    DICOM file whose pixel data ends part-way (as a broken transfer leaves it)."""
    ds = dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: int(len(frame) * keep)]])
    ds.save_as(path, enforce_file_format=True)
    return path


def disk_image(shape: tuple[int, int], centre_rc: tuple[float, float], radius_px: float, *,
               background: int = 1000, lesion: int = 3000) -> np.ndarray:
    """uint16 image: a flat background with a bright disk (the lesion)."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    inside = (rows - centre_rc[0]) ** 2 + (cols - centre_rc[1]) ** 2 <= radius_px**2
    image = np.full(shape, background, dtype=np.uint16)
    image[inside] = lesion
    return image
