"""The cadx server: the Streamlit app (``app.py``) plus one small route that keeps the sign-in session in an
HttpOnly, SameSite=Strict cookie, which Streamlit itself cannot set. Run with ``streamlit run serve.py`` (what
``scripts/app.sh`` and the Docker image do); ``streamlit run app.py`` works too, but a browser refresh then asks
to sign in again.

``POST /api/cadx/session`` with a one-time code (issued right after a sign-in, valid 60 s, see
``cadx.workflows.accounts.issue_cookie_handoff``) sets the cookie; ``DELETE`` clears it. The cookie holds a random
token stored in the database only as its SHA-256; the app checks it again on every page run.

When the server stops (SIGTERM from ``docker stop``, Ctrl-C) it stops the data directory's background workers
before it exits (``lifespan``): they run in their own session, so the signal would not reach them, and in a
container they would be killed outright when the server exits. Each stops at its job's next unit boundary and
leaves the job queued, to be resumed from its checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import streamlit as st
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cadx import config
from cadx.workflows.accounts import SESSION_COOKIE, redeem_cookie_handoff, session_hours
from cadx.workflows.jobs import stop_workers

__all__ = ["app", "session_cookie", "lifespan"]

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


@contextlib.asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[None]:
    """The server's life: on its way out, stop the workers of its data directory and wait for them (see above)."""
    yield
    await asyncio.to_thread(stop_workers, config.data_dir())


app = st.App("app.py", routes=[Route(SESSION_ROUTE, session_cookie, methods=["POST", "DELETE"])], lifespan=lifespan)
