"""The lesion/ROI database: patients, lesions, images, ROIs, review events and import runs.

Identity rules (see ARCHITECTURE.md): an image is identified by the SHA-256 of its source file, an ROI by the
SHA-256 of its pixels. Excluding an ROI is a review event, never a deletion: ``Roi.included`` is the current state,
kept in step with the newest event of that ROI in the same transaction.

No protected health information is stored: patients carry an opaque key (a dataset's public id, or an HMAC
pseudonym of a DICOM PatientID), and images carry only a whitelisted header subset.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["Base", "Patient", "Lesion", "Image", "Roi", "ReviewEvent", "ImportRun", "LABELS", "EXCLUSION_REASONS"]

LABELS = ("benign", "malignant")
EXCLUSION_REASONS = ("compression_paddle", "location_marker", "other")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("source", "key", name="uq_patient_source_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(32))  # "mias", "cbis-ddsm", "manifest", "dicom", "upload", "demo"
    key: Mapped[str] = mapped_column(String(64))  # opaque: dataset id or HMAC pseudonym, never a real patient id
    is_synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)

    lesions: Mapped[list[Lesion]] = relationship(back_populates="patient", cascade="all, delete-orphan")
    images: Mapped[list[Image]] = relationship(back_populates="patient", cascade="all, delete-orphan")


class Lesion(Base):
    __tablename__ = "lesions"
    __table_args__ = (UniqueConstraint("patient_id", "key", name="uq_lesion_patient_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    key: Mapped[str] = mapped_column(String(128))  # e.g. "mdb005#2", "P_00001/LEFT/1", "demo-L0001"
    label: Mapped[str] = mapped_column(String(16))  # one of LABELS
    pathology_source: Mapped[str] = mapped_column(String(128))  # where the label came from
    lesion_type: Mapped[str | None] = mapped_column(String(64))  # "mass", "calcification", MIAS class, ...
    size_mm: Mapped[float | None] = mapped_column(Float)  # diameter when known
    is_synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    truth: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # ground truth of synthetic phantoms
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)

    patient: Mapped[Patient] = relationship(back_populates="lesions")
    rois: Mapped[list[Roi]] = relationship(back_populates="lesion", cascade="all, delete-orphan")


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    source_name: Mapped[str] = mapped_column(String(512))  # de-identified: dataset-relative name or opaque name
    sha256: Mapped[str] = mapped_column(String(64), unique=True)  # of the source file's bytes
    source_format: Mapped[str] = mapped_column(String(16))  # "dicom", "pgm", "png", "tiff", "synthetic"
    modality: Mapped[str | None] = mapped_column(String(16))
    view: Mapped[str | None] = mapped_column(String(16))
    laterality: Mapped[str | None] = mapped_column(String(1))
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[int] = mapped_column(Integer)
    pixel_spacing_row_mm: Mapped[float] = mapped_column(Float)
    pixel_spacing_col_mm: Mapped[float] = mapped_column(Float)
    pixel_spacing_source: Mapped[str] = mapped_column(String(128))  # "PixelSpacing", "ImagerPixelSpacing", "user", ...
    header: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # whitelisted, PHI-free subset
    burned_in_annotation: Mapped[bool] = mapped_column(Boolean, default=False)
    is_synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)

    patient: Mapped[Patient] = relationship(back_populates="images")
    rois: Mapped[list[Roi]] = relationship(back_populates="image")


class Roi(Base):
    __tablename__ = "rois"
    __table_args__ = (UniqueConstraint("image_id", "lesion_id", name="uq_roi_image_lesion"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    lesion_id: Mapped[int] = mapped_column(ForeignKey("lesions.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # of the ROI pixels (cadx.roi.roi_sha256)
    file: Mapped[str] = mapped_column(String(256))  # path relative to the data directory
    centre_row: Mapped[float] = mapped_column(Float)  # marked centre in source image pixels (row, col)
    centre_col: Mapped[float] = mapped_column(Float)
    centre_source: Mapped[str] = mapped_column(String(128))  # how the centre was obtained
    size_px: Mapped[int] = mapped_column(Integer)  # 512
    pixel_size_mm: Mapped[float] = mapped_column(Float)  # 0.1
    field_mm: Mapped[float] = mapped_column(Float)  # 51.2
    padded_fraction: Mapped[float] = mapped_column(Float)
    background_fraction: Mapped[float] = mapped_column(Float)
    lesion_fits: Mapped[bool | None] = mapped_column(Boolean)
    qc_flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    truth_mask_file: Mapped[str | None] = mapped_column(String(256))  # synthetic phantoms: true outline (PNG)
    included: Mapped[bool] = mapped_column(Boolean, default=True)  # current review state
    exclusion_reason: Mapped[str | None] = mapped_column(String(32))
    is_synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)

    lesion: Mapped[Lesion] = relationship(back_populates="rois")
    image: Mapped[Image] = relationship(back_populates="rois")
    events: Mapped[list[ReviewEvent]] = relationship(
        back_populates="roi", order_by="ReviewEvent.id", cascade="all, delete-orphan"
    )


class ReviewEvent(Base):
    """One review decision on an ROI (append-only): who, when, what, why."""

    __tablename__ = "review_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    roi_id: Mapped[int] = mapped_column(ForeignKey("rois.id"), index=True)
    user: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    action: Mapped[str] = mapped_column(String(16))  # "exclude" | "include"
    reason: Mapped[str | None] = mapped_column(String(32))  # one of EXCLUSION_REASONS for "exclude"
    note: Mapped[str | None] = mapped_column(Text)

    roi: Mapped[Roi] = relationship(back_populates="events")


class ImportRun(Base):
    """One import (MIAS, CBIS-DDSM, manifest, DICOM, demo, upload) and its report."""

    __tablename__ = "import_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(512))  # what was imported (folder or file name)
    user: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    n_imported: Mapped[int] = mapped_column(Integer)
    n_skipped: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
