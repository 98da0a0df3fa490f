"""The cadx server: the Streamlit app (``app.py``) plus one small route that keeps the sign-in session in an
HttpOnly, SameSite=Strict cookie, which Streamlit itself cannot set. Run with ``streamlit run serve.py`` (what
``scripts/app.sh`` and the Docker image do); ``streamlit run app.py`` works too, but a browser refresh then asks
to sign in again.

``POST /api/cadx/session`` with a one-time code (issued right after a sign-in, valid 60 s, see
``cadx.workflows.accounts.issue_cookie_handoff``) sets the cookie; ``DELETE`` clears it. The cookie holds a random
token stored in the database only as its SHA-256; the app checks it again on every page run.
"""

from __future__ import annotations

import streamlit as st
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cadx.workflows.accounts import SESSION_COOKIE, redeem_cookie_handoff, session_hours

__all__ = ["app", "session_cookie"]

SESSION_ROUTE = "/api/cadx/session"


def _secure(request: Request) -> bool:
    """Whether the browser talks HTTPS to us (directly, or to the TLS reverse proxy in front)."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


async def session_cookie(request: Request) -> Response:
    """Set (POST, body: the one-time code) or clear (DELETE) the session cookie."""
    if request.method == "DELETE":
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/", secure=_secure(request), httponly=True, samesite="strict")
        return response
    code = (await request.body())[:256].decode("ascii", errors="replace").strip()
    token = redeem_cookie_handoff(code)
    if token is None:
        return Response("unknown or expired code", status_code=403, media_type="text/plain")
    response = Response(status_code=204)
    response.set_cookie(SESSION_COOKIE, token, max_age=int(session_hours() * 3600), path="/",
                        secure=_secure(request), httponly=True, samesite="strict")
    return response


app = st.App("app.py", routes=[Route(SESSION_ROUTE, session_cookie, methods=["POST", "DELETE"])])
