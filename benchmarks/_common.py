"""What several benchmarks share: where the shared real data is, and running the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["REPO", "shared_data", "cli"]

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """``$CADX_SHARED_DATA``, else ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("CADX_SHARED_DATA", REPO.parent / "shared" / "data"))


def cli(data: Path, *args: str) -> None:
    """``cadx ARGS`` in a fresh process on the workspace ``data`` (its own SQLite database), output discarded."""
    env = dict(os.environ, CADX_DATA_DIR=str(data), PYTHONPATH=str(REPO))
    env.pop("CADX_DATABASE_URL", None)
    subprocess.run([sys.executable, "-m", "cadx.cli", *args], env=env, check=True, stdout=subprocess.DEVNULL)
