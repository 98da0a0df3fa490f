"""Persistence for cadx: SQLAlchemy 2.0 models, engines and sessions, Alembic migrations.

Knows neither torch nor streamlit. ``cadx.workflows`` joins it with the computation.
"""

from db.models import (
    Base,
    Experiment,
    Image,
    ImportRun,
    Job,
    Lesion,
    Patient,
    Prediction,
    ReviewEvent,
    Roi,
    Segmentation,
)
from db.session import create_db_engine, init_db, session_factory

__all__ = [
    "Base",
    "Experiment",
    "Image",
    "ImportRun",
    "Job",
    "Lesion",
    "Patient",
    "Prediction",
    "ReviewEvent",
    "Roi",
    "Segmentation",
    "create_db_engine",
    "init_db",
    "session_factory",
]
