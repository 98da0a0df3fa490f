"""Persistence for cadx: SQLAlchemy 2.0 models, engines and sessions, Alembic migrations.

Knows neither torch nor streamlit. ``cadx.workflows`` joins it with the computation.
"""

from db.models import Base, Image, Lesion, Patient, ReviewEvent, Roi, ImportRun
from db.session import create_db_engine, init_db, session_factory

__all__ = [
    "Base",
    "Image",
    "ImportRun",
    "Lesion",
    "Patient",
    "ReviewEvent",
    "Roi",
    "create_db_engine",
    "init_db",
    "session_factory",
]
