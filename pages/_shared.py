"""State shared by the pages: the workspace (database + data directory), opened once per server process, and who
is working in this browser session (a logged-in account, or a named local reviewer when no login is required)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import threading
import urllib.parse
from dataclasses import dataclass

import streamlit as st
from streamlit import config as st_config

from cadx.csvsafe import frame_csv_bytes
from cadx.errors import CadxError
from cadx.workflows import Workspace, dataset_stats, import_demo, open_workspace
from cadx.workflows.accounts import (
    SESSION_COOKIE,
    SignInThrottled,
    access_mode,
    authenticate,
    bootstrap_admin_from_env,
    can,
    create_first_admin,
    end_session,
    host_refusal,
    issue_cookie_handoff,
    oidc_account,
    session_account,
    session_hours,
    setup_token,
    start_session,
)

__all__ = ["workspace", "signed_in", "current_user", "current_role", "allowed", "sign_in", "reviewer_sidebar",
           "mark_routed", "pick_experiment", "ensure_demo_data", "sidebar_menu", "page_asked_before_sign_in",
           "figure_downloads", "figure_config",
           "FIGURE_EXPORT", "plain", "csv_download", "picked_experiment_text", "SYNTHETIC_BADGE",
           "RANDOM_WEIGHTS_BADGE", "manual_window"]

SYNTHETIC_BADGE = ":orange-badge[SYNTHETIC DEMO DATA]"
RANDOM_WEIGHTS_BADGE = ":red-badge[RANDOM (UNTRAINED) CNN WEIGHTS]"
_NO_LOGIN_ROLE = "admin"  # no accounts yet and the server on loopback only: the local owner of the data


@st.cache_resource(show_spinner=False)
def _open() -> Workspace:
    ws = open_workspace()
    bootstrap_admin_from_env(ws)  # CADX_ADMIN_PASSWORD_FILE (containers): the first admin, before anyone connects
    return ws


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
    A browser that reached the server under a host name it must not answer to sees only why, before anything runs.
    """
    _refuse_foreign_host()
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


def _refuse_foreign_host() -> None:
    """Stop the page when the browser named a host this server must not answer to (DNS rebinding; serve.py
    refuses such requests before Streamlit sees them, this covers ``streamlit run app.py``)."""
    try:
        host = st.context.headers.get("Host")
    except Exception:  # noqa: BLE001 - no client context (e.g. tests)
        host = None
    if host is None:  # no HTTP request behind this session (AppTest); every browser sends a Host header
        return
    why = host_refusal(host, server_address=_server_address())
    if why is not None:
        st.title("cadx — host name refused")
        st.error(plain(why), icon=":material/block:")  # the host name is the visitor's text
        st.stop()


def page_asked_before_sign_in(pages: dict, navigation) -> object | None:
    """The page whose link (``/upload``) was opened when the sign-in screen came up, once signed in; else None."""
    path = st.session_state.pop("_cadx_after_sign_in", None)
    if not path:
        return None
    for page in (p for section in pages.values() for p in section):
        if page.url_path and page.url_path == path and page.url_path != navigation.url_path:
            return page
    return None


def plain(text: object) -> str:
    """``text`` (user data: lesion keys, user names, notes, experiment names, file names) escaped so that the
    markdown of st.markdown / st.caption / st.info / widget labels shows it literally: no link, image, HTML,
    colour directive, emoji shortcode or formula is interpreted, and it stays on one line.

    Backslashes do not stop GFM's autolinks: remark-gfm finds ``https://…``, ``www.…`` and ``a@b.c`` in the text
    *after* escapes are resolved and links them. An invisible WORD JOINER (U+2060) inside each trigger (before
    ``://`` and the ``.`` of ``www.``, after ``@``) leaves them inert and looking the same."""
    value = _AUTOLINK_TRIGGER.sub(_WORD_JOINER, " ".join(str(text).split()))
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


_MD_SPECIAL = re.compile(r"[\\`*_{}\[\]()<>#+\-.!|~:$=&\"']")
_WORD_JOINER = "\u2060"
_AUTOLINK_TRIGGER = re.compile(r"(?i)(?<=www)(?=\.)|(?=://)|(?<=@)")


def _server_address() -> str | None:
    """The address this Streamlit server listens on, as the running server sees it (None: every interface)."""
    return st_config.get_option("server.address")


def _client() -> str | None:
    """The browser's address (None when it connects through localhost)."""
    try:
        return st.context.ip_address
    except Exception:  # noqa: BLE001 - no client context (e.g. tests)
        return None


def _cookie_token() -> str | None:
    try:
        token = st.context.cookies.get(SESSION_COOKIE)
    except Exception:  # noqa: BLE001 - no client context (e.g. tests)
        return None
    return token if isinstance(token, str) else None


def _oidc_configured() -> bool:
    """Whether an OpenID Connect provider is configured for st.login (an ``[auth]`` section in secrets.toml)."""
    try:
        return "auth" in st.secrets
    except (FileNotFoundError, KeyError, st.errors.StreamlitSecretNotFoundError):
        return False


def _oidc_account(ws: Workspace) -> dict | None:
    """The account of a user signed in through the OIDC provider, by the ID token's issuer and subject only
    (:func:`cadx.workflows.accounts.oidc_account`): the account an admin linked to that identity, else a viewer."""
    if not (_oidc_configured() and st.user.get("is_logged_in", False)):
        return None
    account = oidc_account(ws, st.user.to_dict())
    if account is None:
        return None
    return {"username": account.username, "role": account.role, "sso": True,
            "unlinked_identity": account.unlinked_identity}


def _account() -> dict | None:
    """The account signed in in this browser session, checked against the database at every call (so a page run
    on its own, without app.py, sees a revoked session or a changed role as well)."""
    state = st.session_state
    if (account := state.get("_cadx_sso_account")) is not None:
        return account
    token = state.get("_cadx_token")
    if not token:
        return None
    account = session_account(_open(), token)
    if account is None:
        state.pop("_cadx_token", None)
        state["_cadx_expired"] = True
        return None
    return {"username": account.username, "role": account.role}


_COOKIE_SCRIPT = ("<script>fetch(new URL('api/cadx/session', document.baseURI), {method: '%s', "
                  "credentials: 'same-origin', headers: {'Content-Type': 'text/plain'}, body: %s}).catch(() => {});"
                  "</script>")


def _push_cookie() -> None:
    """After a sign-in: have the browser trade the one-time code for the HttpOnly session cookie (``serve.py``);
    after a sign-out or a revoked session: have it clear the cookie. The token itself never enters the page."""
    code = st.session_state.pop("_cadx_cookie_code", None)
    if code is not None:
        st.html(_COOKIE_SCRIPT % ("POST", json.dumps(code)), unsafe_allow_javascript=True)
    if st.session_state.pop("_cadx_cookie_clear", False):
        st.html(_COOKIE_SCRIPT % ("DELETE", "null"), unsafe_allow_javascript=True)


def _begin_session(ws: Workspace, username: str) -> None:
    token = start_session(ws, username)
    st.session_state["_cadx_token"] = token
    st.session_state["_cadx_cookie_code"] = issue_cookie_handoff(token)
    st.session_state.pop("_cadx_signed_out", None)


def sign_in(ws: Workspace) -> None:
    """Decide who works in this browser session, on every page run; stops the page until someone may.

    No sign-in while :func:`cadx.workflows.accounts.access_mode` says ``open`` (no account, server on loopback
    only); the first-run setup while it says ``setup``; otherwise a valid session (from this browser session or
    its cookie, checked against the database now: revoked, expired, disabled or demoted accounts take effect at
    once) or the sign-in form.
    """
    state = st.session_state
    state.pop("_cadx_sso_account", None)
    state["_cadx_open"] = False
    try:
        mode = access_mode(ws, server_address=_server_address())
    except CadxError as exc:
        st.title("cadx")
        st.error(str(exc), icon=":material/lock:")
        st.stop()
    if (account := _oidc_account(ws)) is not None:
        state["_cadx_sso_account"] = account
        return
    if mode == "open" and not _oidc_configured():
        state["_cadx_open"] = True
        return
    token = state.get("_cadx_token") or (None if state.get("_cadx_signed_out") else _cookie_token())
    if token:
        account = session_account(ws, token)
        if account is not None:
            state["_cadx_token"] = token
            _push_cookie()
            return
        if state.pop("_cadx_token", None) is not None:
            state["_cadx_expired"] = True
        state["_cadx_cookie_clear"] = True
    _push_cookie()
    if mode == "setup":
        _first_run_setup(ws)
        st.stop()
    if "_cadx_after_sign_in" not in st.session_state:  # where the link pointed: opened after the sign-in
        try:
            path = urllib.parse.urlparse(st.context.url or "").path.rstrip("/")
        except Exception:  # noqa: BLE001 - no browser URL (e.g. under AppTest): stay on the default page
            path = ""
        st.session_state["_cadx_after_sign_in"] = path.rsplit("/", 1)[-1]
    st.title("cadx — sign in")
    if state.pop("_cadx_expired", False):
        st.info(f"Your session ended: it expired after {session_hours():g} hours, or it was signed out, or your "
                "account was changed by an admin. Please sign in again.")
    if _oidc_configured():
        st.button("Sign in with your institution (single sign-on)", on_click=st.login, type="primary")
        st.caption("Or with a local cadx account:")
    with st.form("sign_in", clear_on_submit=True):  # never keep a password in the page
        username = st.text_input("User name")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in")
    if submitted:  # every way a sign-in can fail says why (issue 25.8: under load one failed with no word)
        if not username.strip() or not password:
            st.error("Enter both your user name and your password. (A name or password the browser filled in "
                     "by itself may not have reached the page: type it, or click into the field, then sign in.)")
            st.stop()
        try:
            with st.spinner("Checking the password…"):  # Argon2id: about a second of CPU, longer on a busy machine
                user = authenticate(ws, username.strip(), password, client=_client())
        except SignInThrottled as exc:
            st.error(f"Too many failed sign-ins: try again in {exc.wait_s:.0f} s.")
            st.stop()
        except Exception as exc:  # noqa: BLE001 - e.g. a database locked or gone: say so instead of a blank form
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            st.error(f"Signing in failed: {plain(reason)}. Nothing was changed; try again in a moment.")
            st.stop()
        if user is None:
            st.error("Wrong user name or password (or the account is disabled).")
        else:
            _begin_session(ws, user.username)
            st.rerun()
    st.stop()


def signed_in() -> bool:
    """Whether this session is signed in to an account (else the sidebar asks for a reviewer name)."""
    return _account() is not None


def _first_run_setup(ws: Workspace) -> None:
    """No account yet on a server reachable from the network: only this form, which creates the first admin
    with the one-time token printed in the server log."""
    setup_token()  # printed to the server log the first time
    st.title("cadx — first-run setup")
    address = _server_address() or "every network interface"
    st.info(f"No account exists yet and this server listens on {plain(address)}, so anyone who can reach it could "
            "act as admin. Nothing is shown until the first admin account exists. Enter the one-time setup token "
            "printed in the server's log (the terminal running the app, or `docker logs CONTAINER`), or create "
            "the admin with `cadx user add NAME --role admin` (or CADX_ADMIN_PASSWORD_FILE in Docker).")
    with st.form("first_run_setup", clear_on_submit=True):
        token = st.text_input("One-time setup token (from the server log)", type="password")
        username = st.text_input("Admin user name")
        password = st.text_input("Password (at least 10 characters)", type="password")
        again = st.text_input("Password again", type="password")
        submitted = st.form_submit_button("Create the admin account")
    if not submitted:
        return
    if password != again:
        st.error("The two passwords differ.")
        return
    try:
        user = create_first_admin(ws, username.strip(), password, token=token, client=_client())
    except CadxError as exc:
        st.error(str(exc))
        return
    _begin_session(ws, user.username)
    st.rerun()


def current_user() -> str:
    """Who is working in this browser session (recorded with every change)."""
    account = _account()
    if account is not None:
        return account["username"]
    return st.session_state.get("reviewer", "").strip()[:64] or "local user"


def current_role() -> str | None:
    account = _account()
    if account is not None:
        return account["role"]
    return _NO_LOGIN_ROLE if st.session_state.get("_cadx_open") else None


def allowed(action: str) -> bool:
    """Whether this session may ``action`` (upload, review, run, delete); says so on the page when it may not."""
    if can(current_role(), action):
        return True
    st.info(f"Your role ({current_role() or 'none'}) cannot {action} here; ask an admin for the reviewer role.")
    return False


def _sign_out(sso: bool) -> None:
    """End this browser's session on the server (a copied cookie is then useless) and clear its cookie."""
    end_session(_open(), st.session_state.pop("_cadx_token", None))
    st.session_state.pop("_cadx_sso_account", None)
    st.session_state["_cadx_signed_out"] = True
    st.session_state["_cadx_cookie_clear"] = True
    if sso:
        st.logout()


def reviewer_sidebar() -> None:
    """The sidebar: who is signed in (with sign-out), or the reviewer-name field when no login is required."""
    account = _account()
    if account is not None:
        st.sidebar.markdown(f"Signed in as **{plain(account['username'])}** ({account['role']})")
        if account.get("unlinked_identity") is not None:
            st.sidebar.caption("Your single sign-on identity is not linked to a cadx account yet, so you may only "
                               "view. An admin links it: `cadx user link-oidc ACCOUNT --identity "
                               f"{account['unlinked_identity']}`.")
        st.sidebar.button("Sign out", on_click=_sign_out, args=(bool(account.get("sso")),))
        return
    st.sidebar.text_input("Reviewer name", key="reviewer", placeholder="local user", max_chars=64,
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
    st.markdown(picked_experiment_text(experiment, newest=by_id[ids[0]]))
    badges = [b for b, on in ((SYNTHETIC_BADGE, experiment["uses_synthetic_data"]),
                              (RANDOM_WEIGHTS_BADGE, experiment["uses_random_weights"])) if on]
    if badges:
        st.markdown(" ".join(badges))
    return experiment


def picked_experiment_text(experiment: dict, *, newest: dict) -> str:
    """Which experiment a results page shows, and why: the newest, or one picked (here or on another page)."""
    shown = f"Showing **experiment #{experiment['id']} '{plain(experiment['name'])}'**"
    if experiment["id"] == newest["id"]:
        return f"{shown} (newest)."
    return f"{shown} (picked; the newest is #{newest['id']} '{plain(newest['name'])}')."


def csv_download(label: str, frame, file_name: str, **kwargs) -> None:
    """A CSV download button; cells that a spreadsheet would read as formulas are neutralised (cadx.csvsafe)."""
    st.download_button(label, frame_csv_bytes(frame), file_name=file_name, mime="text/csv", on_click="ignore",
                       **kwargs)


@dataclass(frozen=True)
class FigureExport:
    """Figure export settings of every page: formats, size in px (a page may ask another height) and PNG scale."""

    formats: tuple[str, ...] = ("PNG", "SVG")
    width: int = 1000
    height: int = 600
    png_scale: int = 2  # SVG: 1


FIGURE_EXPORT = FigureExport()


def figure_config(stem: str, key: str, *, height: int = FIGURE_EXPORT.height) -> dict:
    """Plotly's own download button (camera icon) in the format the user picks (a segmented control ``key``), at
    the export settings of :data:`FIGURE_EXPORT`; pass the result as ``st.plotly_chart(config=...)``."""
    formats = FIGURE_EXPORT.formats
    fmt = st.segmented_control("Figure download format", formats, default=formats[0], key=key) or formats[0]
    st.caption(f"Download the figure as {fmt} with the camera icon at the top right of the chart.")
    return {"displaylogo": False,
            "toImageButtonOptions": {"format": fmt.lower(), "filename": stem, "width": FIGURE_EXPORT.width,
                                     "height": height, "scale": FIGURE_EXPORT.png_scale if fmt == "PNG" else 1}}


def figure_downloads(fig, stem: str, *, height: int = FIGURE_EXPORT.height) -> None:
    """Server-side PNG/SVG buttons for a plotly figure when kaleido is installed (the chart's own camera button
    downloads it in any case), at the export settings of :data:`FIGURE_EXPORT`."""
    if importlib.util.find_spec("kaleido") is None:
        return
    width, scale = FIGURE_EXPORT.width, FIGURE_EXPORT.png_scale
    png, svg = st.columns(2)
    png.download_button("Figure (PNG)", lambda: fig.to_image(format="png", width=width, height=height, scale=scale),
                        file_name=f"{stem}.png", mime="image/png", on_click="ignore")
    svg.download_button("Figure (SVG)", lambda: fig.to_image(format="svg", width=width, height=height),
                        file_name=f"{stem}.svg", mime="image/svg+xml", on_click="ignore")


def manual_window(key: str, *, start: tuple[float, float], value_range: tuple[float, float]) -> tuple[float, float]:
    """Centre and width fields in the image's own grey values (as a DICOM viewer gives them), starting from the
    window shown now (``start``, fractions of ``value_range``); returns the window as fractions for display."""
    from cadx.workflows.browse import centre_width_window, window_centre_width

    centre0, width0 = window_centre_width(start, value_range=value_range)
    lo, hi = float(value_range[0]), float(value_range[1])
    with st.container(horizontal=True, gap="small"):
        centre = st.number_input("Centre (grey value)", min_value=lo, max_value=hi, value=float(round(centre0)),
                                 step=1.0, format="%.0f", key=f"{key}_centre", width=170,
                                 help=f"Grey value shown mid-grey; this image's grey values run {lo:g}–{hi:g}.")
        width = st.number_input("Width (grey values)", min_value=1.0, max_value=hi - lo + 1, step=1.0,
                                value=float(max(1, round(width0))), format="%.0f", key=f"{key}_width", width=170,
                                help="Grey values from black to white: centre − width/2 is black, centre + width/2 "
                                     "white.")
    return centre_width_window(centre, width, value_range=value_range)
