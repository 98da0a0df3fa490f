"""Shared test fixtures.

Real mammograms live outside the repository, in ``../shared/data`` (research use only; never copied here).
Tests that need them use the ``shared_data`` fixture: outside this workplace they skip with the reason, but under
``CI=true`` a missing folder fails the test, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CADX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if path.exists():
        return path
    reason = (
        f"real mammography data not found at {path}: these tests read the research-use sets from ../shared/data "
        "(set CADX_SHARED_DATA to their folder)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " - under CI=true a missing data folder is a failure, not a skip")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _app_served_on_loopback():
    """The app under test (AppTest) runs as `bash scripts/app.sh` serves it: on loopback only, where no account
    means no sign-in. Tests of a server reachable from the network patch server.address themselves (see
    tests/test_app_access.py)."""
    if "streamlit.testing.v1" not in sys.modules:  # not an app test module: leave Streamlit unloaded
        yield
        return
    from streamlit.testing.v1.util import patch_config_options

    with patch_config_options({"server.address": "127.0.0.1"}):
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with the real datasets (``mini-mias/``, ``cbis-ddsm/``)."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def mias_dir(shared_data: Path) -> Path:
    """The real MIAS distribution folder (``Info.txt`` + ``mdbNNN.pgm``)."""
    return _require(shared_data / "mini-mias" / "all-mias")


@pytest.fixture(scope="session")
def cbis_csv_dir(shared_data: Path) -> Path:
    """The folder with the official CBIS-DDSM case-description CSVs (no images)."""
    return _require(shared_data / "cbis-ddsm")


from tests.db_fixtures import _migrated_sqlite, database_url, db_kind, workspace  # noqa: E402,F401  (database tests)


@pytest.fixture(scope="session")
def workspace_cache(tmp_path_factory):
    """Built workspaces shared by the whole session, copied per use (see tests/workspace_cache.py)."""
    from tests.workspace_cache import WorkspaceCache

    return WorkspaceCache(tmp_path_factory.mktemp("workspace-cache"))


@pytest.fixture(autouse=True)
def _main_module_stays_pytest():
    """Streamlit's AppTest leaves the app script as ``sys.modules["__main__"]``; a process pool started later (spawn)
    would then run app.py in every child (opening the default workspace). Put pytest's main module back."""
    import sys

    main = sys.modules.get("__main__")
    yield
    if sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main
