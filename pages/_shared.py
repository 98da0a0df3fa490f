"""State shared by the pages: the workspace (database + data directory), opened once per server process, and who
is working in this browser session (a logged-in account, or a named local reviewer when no login is required)."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
import urllib.parse

import streamlit as st

from cadx.errors import CadxError
from cadx.workflows import Workspace, dataset_stats, import_demo, open_workspace
from cadx.workflows.accounts import authenticate, can, list_users, login_required

__all__ = ["workspace", "signed_in", "current_user", "current_role", "allowed", "sign_in", "reviewer_sidebar", "mark_routed",
           "pick_experiment", "ensure_demo_data", "sidebar_menu", "page_asked_before_sign_in", "figure_downloads", "SYNTHETIC_BADGE", "RANDOM_WEIGHTS_BADGE"]

SYNTHETIC_BADGE = ":orange-badge[SYNTHETIC DEMO DATA]"
RANDOM_WEIGHTS_BADGE = ":red-badge[RANDOM (UNTRAINED) CNN WEIGHTS]"
_NO_LOGIN_ROLE = "admin"  # no accounts yet: the local owner of the data (the app then listens on localhost only)


@st.cache_resource(show_spinner=False)
def _open() -> Workspace:
    return open_workspace()


_DEMO_LOCK = threading.Lock()  # one session creates the demo data; the others wait for it


@st.cache_resource(show_spinner=False)
def _demo_state() -> dict:
    return {"ready": False}


def ensure_demo_data(ws: Workspace) -> None:
    """On an empty database, create the synthetic demo data, showing its progress (n of 100 lesions;
    ``CADX_DEMO_LESIONS`` sets another number)."""
    state = _demo_state()
    if state["ready"]:
        return
    with _DEMO_LOCK:
        if not state["ready"] and dataset_stats(ws)["rois"] == 0:
            bar = st.progress(0.0, text="Empty database: creating the synthetic demo data…")

            def progress(done: int, total: int | None, message: str) -> None:
                bar.progress(min(1.0, done / total) if total else 0.0, text=f"Empty database: {message}")

            import_demo(ws, n_lesions=int(os.environ.get("CADX_DEMO_LESIONS", "100")), progress=progress)
            bar.empty()
        state["ready"] = True


def sidebar_menu(pages: dict) -> None:
    """The app's menu in the sidebar (Streamlit's own sidebar navigation is switched off in .streamlit/config.toml,
    which also keeps its list of the ``pages/`` files from ever showing)."""
    with st.sidebar:
        for section, section_pages in pages.items():
            st.caption(section)
            for page in section_pages:
                st.page_link(page, label=page.title, icon=page.icon)


def mark_routed() -> None:
    """Called by app.py: this browser session runs under the app's navigation."""
    st.session_state["_cadx_routed"] = True


def workspace() -> Workspace:
    """The workspace of this server (``$CADX_DATA_DIR``).

    A page opened by a direct link on a freshly started server runs without app.py (Streamlit's automatic
    ``pages/`` routing); it then hands over to app.py, which opens the same page under the app's navigation.
    """
    if not st.session_state.get("_cadx_routed"):
        page = sys._getframe(1).f_globals.get("__file__")
        if page:
            st.session_state["_cadx_deep_link"] = f"pages/{os.path.basename(page)}"
        st.switch_page("app.py")
    try:
        ws = _open()
    except CadxError as exc:  # e.g. a database upgraded by a newer cadx: say so instead of a stack trace
        st.error(str(exc), icon=":material/database:")
        st.stop()
    sign_in(ws)  # every page, however it was routed to, asks for the sign-in first when one is needed
    return ws


def page_asked_before_sign_in(pages: dict, navigation) -> object | None:
    """The page whose link (``/upload``) was opened when the sign-in screen came up, once signed in; else None."""
    path = st.session_state.pop("_cadx_after_sign_in", None)
    if not path:
        return None
    for page in (p for section in pages.values() for p in section):
        if page.url_path and page.url_path == path and page.url_path != navigation.url_path:
            return page
    return None


def _session_hours() -> float:
    """How long a sign-in lasts (``CADX_SESSION_HOURS``, default 8)."""
    return float(os.environ.get("CADX_SESSION_HOURS", "8"))


def _account() -> dict | None:
    account = st.session_state.get("_cadx_account")
    if account and time.time() - account["since"] > _session_hours() * 3600:
        st.session_state.pop("_cadx_account", None)  # session expired: log in again
        st.session_state["_cadx_expired"] = True
        return None
    return account


def _oidc_configured() -> bool:
    """Whether an OpenID Connect provider is configured for st.login (an ``[auth]`` section in secrets.toml)."""
    try:
        return "auth" in st.secrets
    except (FileNotFoundError, KeyError, st.errors.StreamlitSecretNotFoundError):
        return False


def _oidc_account(ws: Workspace) -> dict | None:
    """The account of a user signed in through the OIDC provider: the local account with the same name (their
    e-mail) gives the role, otherwise they may only view."""
    if not (_oidc_configured() and st.user.get("is_logged_in", False)):
        return None
    name = str(st.user.get("email") or st.user.get("name") or "sso user")
    roles = {u.username: u.role for u in list_users(ws) if not u.disabled}
    return {"username": name, "role": roles.get(name, "viewer"), "since": time.time(), "sso": True}


def sign_in(ws: Workspace) -> None:
    """Ask for a login when the app requires one (see cadx.workflows.accounts); stops the page until then."""
    if _account() is None and (account := _oidc_account(ws)) is not None:
        st.session_state["_cadx_account"] = account
    if not (login_required(ws) or _oidc_configured()) or _account() is not None:
        return
    if "_cadx_after_sign_in" not in st.session_state:  # where the link pointed: opened after the sign-in
        try:
            path = urllib.parse.urlparse(st.context.url or "").path.rstrip("/")
        except Exception:  # noqa: BLE001 - no browser URL (e.g. under AppTest): stay on the default page
            path = ""
        st.session_state["_cadx_after_sign_in"] = path.rsplit("/", 1)[-1]
    st.title("cadx — sign in")
    if st.session_state.pop("_cadx_expired", False):
        st.info(f"Your session expired after {_session_hours():g} hours; please sign in again.")
    if _oidc_configured():
        st.button("Sign in with your institution (single sign-on)", on_click=st.login, type="primary")
        st.caption("Or with a local cadx account:")
    with st.form("sign_in", clear_on_submit=True):  # never keep a password in the page
        username = st.text_input("User name")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        user = authenticate(ws, username.strip(), password)
        if user is None:
            st.error("Wrong user name or password (or the account is disabled).")
        else:
            st.session_state["_cadx_account"] = {"username": user.username, "role": user.role, "since": time.time()}
            st.rerun()
    st.stop()


def signed_in() -> bool:
    """Whether this session is signed in to an account (else the sidebar asks for a reviewer name)."""
    return _account() is not None


def current_user() -> str:
    """Who is working in this browser session (recorded with every change)."""
    account = _account()
    if account is not None:
        return account["username"]
    return st.session_state.get("reviewer", "").strip() or "local user"


def current_role() -> str | None:
    account = _account()
    if account is not None:
        return account["role"]
    return None if login_required(_open()) else _NO_LOGIN_ROLE


def allowed(action: str) -> bool:
    """Whether this session may ``action`` (upload, review, run, delete); says so on the page when it may not."""
    if can(current_role(), action):
        return True
    st.info(f"Your role ({current_role() or 'none'}) cannot {action} here; ask an admin for the reviewer role.")
    return False


def reviewer_sidebar() -> None:
    """The sidebar: who is signed in (with sign-out), or the reviewer-name field when no login is required."""
    account = _account()
    if account is not None:
        st.sidebar.markdown(f"Signed in as **{account['username']}** ({account['role']})")
        if st.sidebar.button("Sign out"):
            st.session_state.pop("_cadx_account", None)
            if account.get("sso"):
                st.logout()
            st.rerun()
        return
    st.sidebar.text_input("Reviewer name", key="reviewer", placeholder="local user",
                          help="Recorded with every upload, review decision and job you start.")


_ALL_COHORTS = "all cohorts"
_NO_COHORT = "(before cohorts)"


def pick_experiment(key: str, *, purpose: str) -> dict:
    """The experiment chooser shared by the result pages (remembered across them), with its data badges.

    Stops the page with a pointer to the Layer sweep page when there is no finished experiment yet.
    """
    from cadx.workflows import list_experiments

    experiments = [e for e in list_experiments(workspace()) if e["auc_A"] is not None]
    if not experiments:
        st.info(f"No experiment yet. Start one on the Layer sweep page; its {purpose} appear here.")
        st.page_link("pages/sweep.py", label="Go to the Layer sweep page", icon=":material/show_chart:")
        st.stop()
    cohorts = sorted({e["cohort"] or _NO_COHORT for e in experiments})
    if len(cohorts) > 1:  # a filter by cohort once experiments ran on several
        chosen = st.selectbox("Cohort", [_ALL_COHORTS, *cohorts], key=f"{key}_cohort")
        if chosen != _ALL_COHORTS:
            experiments = [e for e in experiments if (e["cohort"] or _NO_COHORT) == chosen]
    by_id = {e["id"]: e for e in experiments}
    ids = list(by_id)
    remembered = st.session_state.get("cadx_experiment")
    experiment_id = st.selectbox(
        "Experiment", ids, index=ids.index(remembered) if remembered in ids else 0, key=key,
        format_func=lambda i: f"#{i} {by_id[i]['name']} ({by_id[i]['backbone']} {by_id[i]['ensemble_tap']}, "
                              f"cohort {by_id[i]['cohort'] or '–'}, {by_id[i]['n_rois']} ROIs, "
                              f"{by_id[i]['created_at']:%Y-%m-%d %H:%M})")
    st.session_state["cadx_experiment"] = experiment_id
    experiment = by_id[experiment_id]
    badges = [b for b, on in ((SYNTHETIC_BADGE, experiment["uses_synthetic_data"]),
                              (RANDOM_WEIGHTS_BADGE, experiment["uses_random_weights"])) if on]
    if badges:
        st.markdown(" ".join(badges))
    return experiment


def figure_downloads(fig, stem: str, *, width: int = 1000, height: int = 600) -> None:
    """Server-side PNG/SVG buttons for a plotly figure when kaleido is installed (the chart's own camera button
    downloads it in any case)."""
    if importlib.util.find_spec("kaleido") is None:
        return
    png, svg = st.columns(2)
    png.download_button("Figure (PNG)", lambda: fig.to_image(format="png", width=width, height=height, scale=2),
                        file_name=f"{stem}.png", mime="image/png", on_click="ignore")
    svg.download_button("Figure (SVG)", lambda: fig.to_image(format="svg", width=width, height=height),
                        file_name=f"{stem}.svg", mime="image/svg+xml", on_click="ignore")
