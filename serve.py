"""The cadx server: the Streamlit app (``app.py``) plus one small route that keeps the sign-in session in an
HttpOnly, SameSite=Strict cookie, which Streamlit itself cannot set. Run with ``streamlit run serve.py`` (what
``scripts/app.sh`` and the Docker image do); ``streamlit run app.py`` works too, but a browser refresh then asks
to sign in again.

``POST /api/cadx/session`` with a one-time code (issued right after a sign-in, valid 60 s, see
``cadx.workflows.accounts.issue_cookie_handoff``) sets the cookie; ``DELETE`` clears it. The cookie holds a random
token stored in the database only as its SHA-256; the app checks it again on every page run.

A server listening on loopback only answers only to loopback host names (and ``CADX_ALLOWED_HOSTS``): every HTTP
request and WebSocket with another ``Host`` is refused here, before Streamlit sees it (DNS rebinding, see
``cadx.workflows.accounts.host_refusal``); ``app.py`` checks again for ``streamlit run app.py``.

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
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from streamlit import config as st_config

from cadx import config
from cadx.workflows.accounts import SESSION_COOKIE, host_refusal, redeem_cookie_handoff, session_hours
from cadx.workflows.jobs import stop_workers

__all__ = ["app", "session_cookie", "LoopbackHostsOnly", "lifespan"]

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


class LoopbackHostsOnly:
    """ASGI middleware: refuse HTTP requests and WebSockets whose ``Host`` the server must not answer to.

    Pure ASGI rather than starlette's BaseHTTPMiddleware, which passes WebSockets through unchecked.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            why = host_refusal(Headers(scope=scope).get("host"), server_address=st_config.get_option("server.address"))
            if why is not None:
                if scope["type"] == "websocket":  # closed before the handshake completes: the server answers 403
                    await send({"type": "websocket.close", "code": 1008, "reason": "host name not allowed"})
                    return
                response = PlainTextResponse(why + "\n", status_code=403, headers={"X-Content-Type-Options": "nosniff"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[None]:
    """The server's life: on its way out, stop the workers of its data directory and wait for them (see above)."""
    yield
    await asyncio.to_thread(stop_workers, config.data_dir())


app = st.App("app.py", middleware=[Middleware(LoopbackHostsOnly)],
             routes=[Route(SESSION_ROUTE, session_cookie, methods=["POST", "DELETE"])], lifespan=lifespan)
