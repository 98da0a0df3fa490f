"""The lesion/ROI database: patients, lesions, images, ROIs, review events and import runs.

Identity rules (see ARCHITECTURE.md): an image is identified by the SHA-256 of its source file, an ROI by the
SHA-256 of its pixels. Excluding an ROI is a review event, never a deletion: ``Roi.included`` is the current state,
kept in step with the newest event of that ROI in the same transaction.

No protected health information is stored: patients carry an opaque key (a dataset's public id, or an HMAC
pseudonym of a DICOM PatientID), and images carry only a whitelisted header subset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy import DateTime as _DateTime
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from cadx import labels as _labels
from cadx import words as _words
from cadx.records import EXPERIMENT_NAME_MAX

__all__ = [
    "Base",
    "Patient",
    "Lesion",
    "Image",
    "Roi",
    "ReviewEvent",
    "ImportRun",
    "Segmentation",
    "Experiment",
    "Prediction",
    "FoldModelRecord",
    "PermutationTest",
    "Job",
    "JobCheckpoint",
    "User",
    "AuditEvent",
    "Cohort",
    "AuthSession",
    "SignInAttempt",
    "OidcIdentity",
    "LABELS",
    "ROLES",
    "EXCLUSION_REASONS",
    "JOB_STATES",
]

LABELS = _labels.LABELS  # the one label codec is cadx.labels
EXCLUSION_REASONS = tuple(_words.EXCLUSION_REASONS)  # the codes; their words live in cadx.words
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
ROLES = ("viewer", "reviewer", "admin")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DateTime(TypeDecorator):
    """A timestamp that is always timezone-aware UTC in Python, on every engine (SQLite stores it naive)."""

    impl = _DateTime(timezone=True)
    cache_ok = True

    def __init__(self, timezone: bool = True) -> None:  # noqa: ARG002 - same signature as sqlalchemy.DateTime
        super().__init__()

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value, dialect):
        if value is not None:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value


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
    lesion_type: Mapped[str | None] = mapped_column(String(64))  # a code of cadx.lesion_types.LESION_TYPES
    size_mm: Mapped[float | None] = mapped_column(Float)  # diameter when known
    is_synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    # Ground truth of synthetic phantoms; for DDSM, the overlay's description (type, shape, margins, assessment, ...)
    truth: Mapped[dict[str, Any] | None] = mapped_column(JSON)
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
    # The reference segmentation (PNG, ROI grid): a phantom's true outline, or an expert's (DDSM overlays)
    truth_mask_file: Mapped[str | None] = mapped_column(String(256))
    included: Mapped[bool] = mapped_column(Boolean, default=True)  # current review state
    exclusion_reason: Mapped[str | None] = mapped_column(String(32))
    is_synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    import_run_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the import run that created it
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


class Segmentation(Base):
    """Method B for one ROI content: the seeded segmentation and the analytic features measured on it."""

    __tablename__ = "segmentations"
    __table_args__ = (UniqueConstraint("roi_sha256", "version", name="uq_segmentation_roi_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    roi_sha256: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))  # cadx.analytic.FEATURES_VERSION
    quality: Mapped[str] = mapped_column(String(32))  # "ok", "touches_border", "low_contrast", "failed", ...
    reason: Mapped[str | None] = mapped_column(Text)
    mask_file: Mapped[str | None] = mapped_column(String(256))  # PNG under the data directory
    features: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # name -> value (None for missing)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class Experiment(Base):
    """A frozen experiment: its config fully determines its numbers; results and per-ROI predictions hang off it."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(EXPERIMENT_NAME_MAX))
    kind: Mapped[str] = mapped_column(String(16))  # "sweep" | "evaluate"
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_sha256: Mapped[str] = mapped_column(String(64), index=True)
    code_version: Mapped[str] = mapped_column(String(64))
    results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    uses_synthetic_data: Mapped[bool] = mapped_column(Boolean, default=False)
    uses_random_weights: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)

    predictions: Mapped[list[Prediction]] = relationship(back_populates="experiment", cascade="all, delete-orphan")


class Prediction(Base):
    """Out-of-fold predictions for one ROI in one experiment: SVM1 (CNN), SVM2 (analytic), the two ensembles."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("experiment_id", "roi_id", "repeat", name="uq_prediction_roi"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    roi_id: Mapped[int] = mapped_column(ForeignKey("rois.id"), index=True)
    roi_sha256: Mapped[str] = mapped_column(String(64))
    lesion_id: Mapped[int] = mapped_column(Integer)
    truth: Mapped[int] = mapped_column(Integer)  # 1 malignant, 0 benign
    repeat: Mapped[int] = mapped_column(Integer, default=0)
    fold: Mapped[int] = mapped_column(Integer)
    decision1: Mapped[float | None] = mapped_column(Float)
    p1: Mapped[float | None] = mapped_column(Float)
    decision2: Mapped[float | None] = mapped_column(Float)
    p2: Mapped[float | None] = mapped_column(Float)
    p3: Mapped[float | None] = mapped_column(Float)
    # (z1 + z2) / 2: decision values z-scored on the training fold, averaged (cadx.methods "Z"); not a probability
    pz: Mapped[float | None] = mapped_column(Float)

    experiment: Mapped[Experiment] = relationship(back_populates="predictions")


class FoldModelRecord(Base):
    """One outer fold's fitted classifier of an experiment's first seed (``cadx.foldmodel.FoldModel`` as ``.npz``,
    loaded without pickle): every swept tap's SVM (``classifier="cnn"``, ``tap`` its name) and Method B's
    (``classifier="analytic"``, ``tap=""``), with the fold's test rows and their out-of-fold scores."""

    __tablename__ = "fold_models"
    __table_args__ = (UniqueConstraint("experiment_id", "classifier", "tap", "fold", name="uq_fold_model"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    classifier: Mapped[str] = mapped_column(String(16))  # "cnn" | "analytic"
    tap: Mapped[str] = mapped_column(String(64))
    fold: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    # the fold's test rows and their out-of-fold scores alone (small): read without the tap-wide scaler
    scores: Mapped[bytes] = mapped_column(LargeBinary)


class PermutationTest(Base):
    """A label-permutation test of an experiment's headline AUCs (``cadx.permutation.PermutationResult`` as JSON):
    lesion labels permuted within the first seed's outer folds, the whole nested cross-validation rerun per
    permutation. The newest row of an experiment is the one the pages and the report show."""

    __tablename__ = "permutation_tests"

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    n_permutations: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    code_version: Mapped[str] = mapped_column(String(64))
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    seconds: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class Job(Base):
    """A long task (extraction, analytic features, sweep) run by the background worker, with its progress."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("slot", name="uq_jobs_slot"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)  # one of JOB_STATES
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(String(256), default="")
    error: Mapped[str | None] = mapped_column(Text)
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id", ondelete="SET NULL"))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(64))
    # liveness: the worker process running the job (host, PID and the process's start time, so a reused PID is
    # not mistaken for it); its heartbeat thread refreshes heartbeat_at whatever the progress
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    worker_started: Mapped[float | None] = mapped_column(Float)
    # one of CADX_MAX_PARALLEL_JOBS run slots while running (unique: claiming a slot is atomic across processes)
    slot: Mapped[int | None] = mapped_column(Integer)
    # claims so far (> 1: resumed after a dead worker)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    # the range of the smoothed time left (cadx.planning.EtaSmoother), beside its most likely value
    eta_low_seconds: Mapped[float | None] = mapped_column(Float)
    eta_high_seconds: Mapped[float | None] = mapped_column(Float)


class JobCheckpoint(Base):
    """One finished unit of a job's work (e.g. one outer fold of one tap and seed), so a resumed job redoes only
    the units without a row. ``scope`` is the SHA-256 of the inputs the unit was computed from (the experiment
    config: ROI set, weights, taps, grid, folds, seeds); rows of another scope are never used."""

    __tablename__ = "job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "unit", name="uq_job_checkpoint_unit"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(64))
    unit: Mapped[str] = mapped_column(String(255))
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # numpy .npz, loaded without pickle
    worker: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class User(Base):
    """A local account; the password is stored only as an Argon2id hash."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))  # one of ROLES
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuthSession(Base):
    """A signed-in browser: a random token kept by the browser (a cookie), stored here only as its SHA-256.

    Valid while not revoked, not expired and its account is enabled; the account's role is read again on every
    page run. Disabling an account, changing its password or ``cadx user logout-all`` revokes its sessions.
    """

    __tablename__ = "auth_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SignInAttempt(Base):
    """One sign-in attempt, for throttling: the account (its name when it exists, else a keyed hash of what was
    typed) and the client (a keyed hash of its address); never the password or an unknown name in clear."""

    __tablename__ = "sign_in_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow, index=True)
    account: Mapped[str] = mapped_column(String(128), index=True)
    client: Mapped[str] = mapped_column(String(64), index=True)
    ok: Mapped[bool] = mapped_column(Boolean)


class OidcIdentity(Base):
    """A single sign-on identity: its provider (the ID token's ``iss``) and the user's id there (``sub``), the only
    claims that name a person for good (e-mail and display name are editable at many providers). Stored at its
    first sign-in; it gets a local account's role only once an admin links it (``cadx user link-oidc``), never by
    a matching name. ``claimed_name`` (e-mail or name at the last sign-in) only helps an admin recognise it."""

    __tablename__ = "oidc_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_oidc_identity"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    claimed_name: Mapped[str | None] = mapped_column(String(128))
    first_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    linked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """One entry of the append-only audit trail (the database refuses updates and deletes of these rows)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow, index=True)
    user: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32), index=True)  # upload, import, exclude, include, ...
    target: Mapped[str] = mapped_column(String(128))  # e.g. "roi 17", "experiment 3"
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The hash chain (db.audit_chain): the predecessor's hash and this event's own; NULL only in a damaged trail.
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class Cohort(Base):
    """A named, saved selection of ROIs (``cadx.cohorts.CohortDefinition`` as versioned JSON)."""

    __tablename__ = "cohorts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer)  # cadx.cohorts.COHORT_SCHEMA_VERSION when saved
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
