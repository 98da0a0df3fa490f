"""Local accounts, roles, sign-in sessions, sign-in throttling and the audit trail.

Roles: ``viewer`` (read only), ``reviewer`` (also uploads, review decisions, jobs), ``admin`` (also accounts and
deleting experiments). Passwords are stored only as Argon2id hashes (argon2-cffi).

Who may use the app without signing in (:func:`access_mode`, policy ``CADX_AUTH``):

- ``auto`` (default): while no account exists *and the server listens on loopback only* (127.0.0.1, ::1,
  localhost: the one-command local demo), everyone acts as ``local user`` with the admin role, as the owner of the
  data. Once an account exists, everyone signs in. A server reachable from the network (``0.0.0.0``, a LAN
  address, or no ``server.address`` at all) with no account shows only a first-run setup that creates the first
  admin with a one-time token printed in the server log (as Jupyter does), or ``CADX_ADMIN_PASSWORD_FILE``
  creates it at start.
- ``required``: everyone always signs in (first-run setup while no account exists).
- ``off``: nobody signs in; refused unless the server listens on loopback only.

A sign-in is a server-side session (:class:`db.models.AuthSession`): a random token the browser keeps in an
HttpOnly, SameSite=Strict cookie, stored here only as its SHA-256, expiring after ``CADX_SESSION_HOURS`` (8).
Every page run checks it again (:func:`session_account`): the account's current role applies at once, and
disabling an account, changing its password or ``cadx user logout-all`` revokes its sessions.

Failed sign-ins are throttled per account and per client (a growing wait after a few failures, audited) and
audited without ever storing what was typed as a user name unless it is an existing account (a password typed
into the name field is recorded only as a keyed hash).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cadx.csvsafe import write_rows_csv
from cadx.errors import CadxInputError
from cadx.workflows.workspace import Workspace
from db.audit_chain import append_event
from db.models import ROLES, AuditEvent, AuthSession, OidcIdentity, SignInAttempt, User

__all__ = ["ROLES", "SESSION_COOKIE", "Account", "SignInThrottled", "add_user", "set_password", "set_role",
           "set_disabled", "logout_all", "authenticate", "list_users", "access_mode", "is_loopback", "can",
           "record_audit", "export_audit_csv", "audit_events", "start_session", "session_account", "end_session",
           "setup_token", "create_first_admin", "bootstrap_admin_from_env", "session_hours", "cli_actor",
           "issue_cookie_handoff", "redeem_cookie_handoff", "host_refusal", "ALLOWED_HOSTS_SETTING",
           "oidc_account", "link_oidc", "unlink_oidc", "list_oidc_identities"]

_LOG = logging.getLogger("cadx.accounts")
_HASHER = PasswordHasher()  # Argon2id with argon2-cffi's current recommended parameters
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{2,64}$")
_MIN_PASSWORD = 10
_MAX_PASSWORD = 1024
#: the least zxcvbn score (0-4) a new password needs: 3 is at least 10^8 guesses ("safely unguessable")
_MIN_PASSWORD_SCORE = 3
_RANK = {role: rank for rank, role in enumerate(ROLES)}
#: the least role allowed to do each action
_NEEDS = {"view": "viewer", "upload": "reviewer", "review": "reviewer", "run": "reviewer", "delete": "admin",
          "accounts": "admin"}
#: name of the browser cookie holding the session token
SESSION_COOKIE = "cadx_session"
#: failures allowed before waiting (see _wait): for one account from one client, from one client, for one account
#: from all clients together; the wait then doubles from 1 s up to _MAX_WAIT_S
_FREE_FAILURES_PAIR = 3
_FREE_FAILURES_CLIENT = 10
_FREE_FAILURES_ACCOUNT = 100
_PG_SIGN_IN_LOCK = 0x6361736e  # "casn": serialises the sign-in check-and-record on PostgreSQL
_SETUP_ACCOUNT = "first-run setup"  # what the first-run setup's token guesses are counted and audited as
_MAX_WAIT_S = 900.0
_THROTTLE_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Account:
    """Who a valid session belongs to, as the database says now."""

    username: str
    role: str
    #: a single sign-on identity not linked to any account yet (its id, for ``cadx user link-oidc``)
    unlinked_identity: int | None = None


class SignInThrottled(CadxInputError):
    """Too many failed sign-ins for this account or from this client: wait before trying again."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        super().__init__("sign-in", f"too many failed sign-ins; the next try is accepted in {math.ceil(wait_s)} s",
                         "wait, then sign in with the right password (an admin can set a new one with "
                         "`cadx user passwd`)")


def can(role: str | None, action: str) -> bool:
    """Whether ``role`` may do ``action`` (view, upload, review, run, delete, accounts)."""
    return role in _RANK and _RANK[role] >= _RANK[_NEEDS[action]]


def _now() -> datetime:
    return datetime.now(UTC)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise CadxInputError("role", f"unknown role {role!r}", f"use one of {list(ROLES)}")


def _check_username(username: str) -> None:
    if not _USERNAME.match(username or ""):
        raise CadxInputError("username", f"{username!r} is not a valid user name",
                             "use 2-64 letters, digits, dots, dashes, underscores or @")


def _check_password(password: str, *, username: str | None = None) -> None:
    """The password rule: 10 to 1024 characters, not only blanks, not the user name, and not easy to guess
    (common, sequential like ``1234567890``, repeated, a keyboard walk: a zxcvbn score of at least 3)."""
    if len(password) < _MIN_PASSWORD:
        raise CadxInputError("password", f"shorter than {_MIN_PASSWORD} characters",
                             f"choose a password of at least {_MIN_PASSWORD} characters")
    if len(password) > _MAX_PASSWORD:
        raise CadxInputError("password", f"longer than {_MAX_PASSWORD} characters", "choose a shorter password")
    if not password.strip():
        raise CadxInputError("password", "only blanks", "choose a password with letters, digits or symbols")
    if username is not None and password.strip().lower() == username.lower():
        raise CadxInputError("password", "the same as the user name", "choose a password that is not the user name")
    # zxcvbn (Dropbox's estimator: common-password and word lists, keyboard walks, sequences, repeats, dates, l33t)
    # rather than a list of our own; imported here, since its lists cost every importing process time otherwise.
    # Its first 100 characters only: its matching grows fast with length, and a longer password passes anyway.
    from zxcvbn import zxcvbn

    verdict = zxcvbn(password[:100], user_inputs=[u for u in (username, "cadx") if u])
    if verdict["score"] < _MIN_PASSWORD_SCORE:
        feedback = verdict["feedback"]
        why = (feedback.get("warning") or "").rstrip(".") or "easy to guess"
        raise CadxInputError("password", f"too easy to guess ({why}; about 10^{verdict['guesses_log10']:.0f} "
                             "guesses)", " ".join(feedback.get("suggestions") or []) + " Choose a longer "
                             "passphrase of a few unrelated words, or one from a password manager.")


def record_audit(session: Session, *, user: str, action: str, target: str,
                 detail: dict[str, Any] | None = None) -> None:
    """Append an audit event in the caller's transaction (so it exists exactly when the change does)."""
    append_event(session, AuditEvent(user=user[:128], action=action, target=target[:128], detail=detail or {}))


def cli_actor(user: str | None) -> str:
    """Who a command line run is recorded as: ``--user`` together with the OS account that ran it.

    ``--user`` is a claim (shell users are trusted, but a claim is not an identity), so the operating-system
    account is always recorded beside it: ``alice (os user bob)``; without ``--user``, the OS account alone.
    """
    try:
        os_user = _os_user()
    except Exception:  # noqa: BLE001 - no login name in some containers
        os_user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "cli"
    claimed = (user or "").strip()
    if not claimed or claimed == os_user:
        return os_user[:128]
    return f"{claimed[:80]} (os user {os_user[:40]})"


def _os_user() -> str:
    import getpass

    return getpass.getuser()


def add_user(workspace: Workspace, username: str, password: str, *, role: str, by: str) -> None:
    """Create an account."""
    with workspace.sessions.begin() as session:
        _add_user(session, username, password, role=role, by=by)


def _add_user(session: Session, username: str, password: str, *, role: str, by: str) -> User:
    _check_username(username)
    _check_role(role)
    _check_password(password, username=username)
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise CadxInputError("username", f"{username!r} already exists", "choose another name, or change its "
                             "password with `cadx user passwd`")
    user = User(username=username, password_hash=_HASHER.hash(password), role=role)
    session.add(user)
    record_audit(session, user=by, action="user_add", target=f"user {username}", detail={"role": role})
    session.flush()
    return user


def _revoke(session: Session, user_id: int) -> int:
    """Revoke every open session of an account; returns how many."""
    result = cast("CursorResult[Any]", session.execute(
        update(AuthSession).where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=_now())))
    return int(result.rowcount or 0)


def set_password(workspace: Workspace, username: str, password: str, *, by: str) -> None:
    """Set an account's password; its open sessions end (everyone signs in again with the new one)."""
    _check_password(password, username=username)
    with workspace.sessions.begin() as session:
        user = _get(session, username)
        user.password_hash = _HASHER.hash(password)
        revoked = _revoke(session, user.id)
        record_audit(session, user=by, action="user_passwd", target=f"user {username}",
                     detail={"sessions_revoked": revoked})


def set_role(workspace: Workspace, username: str, role: str, *, by: str) -> None:
    """Change an account's role; open sessions get the new role at their next page run."""
    _check_role(role)
    with workspace.sessions.begin() as session:
        user = _get(session, username)
        previous, user.role = user.role, role
        record_audit(session, user=by, action="user_role", target=f"user {username}",
                     detail={"from": previous, "to": role})


def set_disabled(workspace: Workspace, username: str, disabled: bool, *, by: str) -> None:
    """Disable (no sign-in, open sessions end at once) or enable an account."""
    with workspace.sessions.begin() as session:
        user = _get(session, username)
        user.disabled = bool(disabled)
        revoked = _revoke(session, user.id) if disabled else 0
        record_audit(session, user=by, action="user_disable" if disabled else "user_enable",
                     target=f"user {username}", detail={"sessions_revoked": revoked})


def logout_all(workspace: Workspace, username: str | None = None, *, by: str) -> int:
    """End every open session of ``username`` (of everyone when None); returns how many."""
    with workspace.sessions.begin() as session:
        if username is None:
            result = cast("CursorResult[Any]", session.execute(
                update(AuthSession).where(AuthSession.revoked_at.is_(None)).values(revoked_at=_now())))
            revoked = int(result.rowcount or 0)
        else:
            revoked = _revoke(session, _get(session, username).id)
        record_audit(session, user=by, action="logout_all", target=f"user {username}" if username else "all users",
                     detail={"sessions_revoked": revoked})
        return revoked


def _get(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise CadxInputError("username", f"no user {username!r}", "list accounts with `cadx user list`")
    return user


# --------------------------------------------------------------------------------------------------- sign-in ---
def _keyed(workspace: Workspace, purpose: str, value: str) -> str:
    """A keyed hash (HMAC-SHA256 with the installation's secret) of ``value``: comparable, not reversible by
    hashing guesses without the key."""
    digest = hmac.new(workspace.pseudonym_key(), f"{purpose}\x00{value}".encode("utf-8", "surrogatepass"),
                      hashlib.sha256).hexdigest()
    return digest[:32]


def _client_key(workspace: Workspace, client: str | None) -> str:
    """The throttle's name for a client address: IPv6 addresses by their /64 network, which one host usually
    has whole (one client could otherwise take a fresh address for every guess)."""
    if not client:
        return "local"
    try:
        address = ipaddress.ip_address(client.strip().strip("[]"))
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        client = str(ipaddress.IPv6Network((address, 64), strict=False))
    return "c-" + _keyed(workspace, "sign-in client", client)


def _delay(failures: int, last: datetime | None, free: int, now: datetime) -> float:
    """Seconds still to wait after ``failures`` (the newest at ``last``) when ``free`` are allowed (0 when none)."""
    if failures < free or last is None:
        return 0.0
    return max(0.0, min(2.0 ** (failures - free), _MAX_WAIT_S) - (now - last).total_seconds())


def _failures(session: Session, *conditions: Any) -> tuple[int, datetime | None]:
    row = session.execute(select(func.count(SignInAttempt.id), func.max(SignInAttempt.at))
                          .where(SignInAttempt.ok.is_(False), *conditions)).one()
    return int(row[0] or 0), row[1]


def _wait(session: Session, account_key: str, client_key: str, now: datetime) -> float:
    """Seconds to wait before the next attempt for this account from this client (0 when none).

    Three counts over the last hour, each with its own free failures and doubling delay:

    - this account from this client (3 free), since this client last signed in to it: the delay a guesser meets,
      which never makes the right password from another client wait;
    - this client for any account (10 free), not reset by its own successful sign-ins (a guesser with an account
      of its own would otherwise clear its count by signing in to it between guesses);
    - this account from every client together (100 free): the cap on a guess spread over many clients, far
      beyond what one client can reach in an hour under the two delays above.
    """
    since = now - _THROTTLE_WINDOW
    pair = (SignInAttempt.account == account_key, SignInAttempt.client == client_key)
    last_ok = session.scalar(select(func.max(SignInAttempt.at)).where(*pair, SignInAttempt.ok.is_(True)))
    pair_since = max(since, last_ok) if last_ok is not None else since
    return max(_delay(*_failures(session, *pair, SignInAttempt.at > pair_since), _FREE_FAILURES_PAIR, now),
               _delay(*_failures(session, SignInAttempt.client == client_key, SignInAttempt.at > since),
                      _FREE_FAILURES_CLIENT, now),
               _delay(*_failures(session, SignInAttempt.account == account_key, SignInAttempt.at > since),
                      _FREE_FAILURES_ACCOUNT, now))


@contextlib.contextmanager
def _sign_in_lock(workspace: Workspace) -> Iterator[Session]:
    """A transaction that holds the sign-in lock until it ends: one check-and-record at a time, so parallel
    attempts each see the ones before them (an advisory lock on PostgreSQL, the write lock on SQLite)."""
    with workspace.sessions() as session, session.begin():
        connection = session.connection()
        if connection.dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SIGN_IN_LOCK})
        else:  # pysqlite would begin lazily at the first write, after the counting reads: take the lock now
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        yield session


def _reserve_attempt(workspace: Workspace, account_key: str, client_key: str, now: datetime, *,
                     target: str) -> int:
    """Check the throttle and record the attempt as a failure, atomically; returns the attempt's id (set to a
    success by :func:`_settle_attempt`). Raises :class:`SignInThrottled` (audited) when it must wait.

    The attempt counts as failed from the moment it is allowed, before the slow password check: parallel attempts
    then cannot all pass the check before any of them is recorded.
    """
    with _sign_in_lock(workspace) as session:
        wait = _wait(session, account_key, client_key, now)
        if wait > 0:
            record_audit(session, user=account_key, action="login_throttled", target=target,
                         detail={"client": client_key, "wait_s": round(wait, 1)})
            _LOG.warning("sign-in throttled for %s from %s: %.0f s to wait", account_key, client_key, wait)
            attempt_id = None
        else:
            attempt = SignInAttempt(at=now, account=account_key, client=client_key, ok=False)
            session.add(attempt)
            session.flush()
            attempt_id = attempt.id
    if attempt_id is None:
        raise SignInThrottled(wait)  # the audit event above is committed
    return attempt_id


def _settle_attempt(session: Session, attempt_id: int, *, account: str | None = None) -> None:
    """Mark a reserved attempt as a success (``account``: the name it signed in to, when it differs)."""
    values: dict[str, Any] = {"ok": True}
    if account is not None:
        values["account"] = account
    session.execute(update(SignInAttempt).where(SignInAttempt.id == attempt_id).values(**values))


def authenticate(workspace: Workspace, username: str, password: str, *, client: str | None = None,
                 now: datetime | None = None) -> User | None:
    """The account when the password is right (and the account enabled), else None.

    Every attempt is audited: by the account's name when it exists, else by a keyed hash of what was typed (a
    password typed into the name field never reaches the audit trail). After a few failures for one account from
    one client, from one client (``client``: its address), or for one account from very many clients, further
    attempts wait a doubling delay (1 s, 2 s, ... 15 min; see :func:`_wait`): :class:`SignInThrottled`, audited
    as ``login_throttled``.
    """
    now = now or _now()
    username = (username or "")[:256]
    with workspace.sessions() as session:
        known = session.scalar(select(User.username).where(User.username == username)) if username else None
    account_key = known if known is not None else "unknown-" + _keyed(workspace, "sign-in name", username)
    client_key = _client_key(workspace, client)
    attempt_id = _reserve_attempt(workspace, account_key, client_key, now, target="app")
    with workspace.sessions.begin() as session:
        user = session.scalar(select(User).where(User.username == username)) if username else None
        ok = False
        if user is not None and not user.disabled:
            try:
                ok = _HASHER.verify(user.password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                ok = False
        else:
            # Spend the same time as a real check, so response times do not reveal which user names exist.
            try:
                _HASHER.verify(_dummy_hash(), password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                pass
        record_audit(session, user=account_key, action="login" if ok else "login_failed", target="app",
                     detail={"client": client_key})
        if not ok or user is None:
            _LOG.info("failed sign-in for %s from %s", account_key, client_key)
            return None
        _settle_attempt(session, attempt_id)
        if _HASHER.check_needs_rehash(user.password_hash):
            user.password_hash = _HASHER.hash(password)
        user.last_login_at = now
        session.flush()
        session.expunge(user)
        return user


@functools.cache
def _dummy_hash() -> str:
    # Made on first use, not at import: an Argon2id hash costs ~0.5 s of CPU, which every process importing
    # cadx.workflows (CLI runs, workers, app servers) would otherwise pay.
    return _HASHER.hash("not a password of anyone")


# -------------------------------------------------------------------------------------------------- sessions ---
def session_hours() -> float:
    """How long a sign-in lasts (``CADX_SESSION_HOURS``, default 8)."""
    raw = os.environ.get("CADX_SESSION_HOURS", "8")
    try:
        hours = float(raw)
    except ValueError:
        hours = float("nan")
    if not (math.isfinite(hours) and 0 < hours <= 24 * 30):
        raise CadxInputError("CADX_SESSION_HOURS", f"got {raw!r}", "give a number of hours between 0 and 720")
    return hours


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(workspace: Workspace, username: str, *, hours: float | None = None,
                  now: datetime | None = None) -> str:
    """Open a session for ``username``; returns its token (to keep in the browser; stored only hashed)."""
    now = now or _now()
    token = secrets.token_urlsafe(32)
    with workspace.sessions.begin() as session:
        user = _get(session, username)
        session.add(AuthSession(token_sha256=_token_hash(token), user_id=user.id, created_at=now,
                                expires_at=now + timedelta(hours=hours if hours is not None else session_hours())))
    return token


def session_account(workspace: Workspace, token: str | None, *, now: datetime | None = None) -> Account | None:
    """The account of a session token as it is now, or None when the token is unknown, expired or revoked, or
    its account is disabled or gone."""
    if not isinstance(token, str) or not token or len(token) > 256:
        return None
    now = now or _now()
    with workspace.sessions() as session:
        row = session.execute(select(AuthSession.expires_at, AuthSession.revoked_at, User.username, User.role,
                                     User.disabled)
                              .join(User, User.id == AuthSession.user_id)
                              .where(AuthSession.token_sha256 == _token_hash(token))).first()
    if row is None or row.revoked_at is not None or row.disabled or row.expires_at <= now:
        return None
    return Account(row.username, row.role)


def end_session(workspace: Workspace, token: str | None) -> None:
    """Sign out: revoke this session."""
    if not token:
        return
    with workspace.sessions.begin() as session:
        session.execute(update(AuthSession).where(AuthSession.token_sha256 == _token_hash(token),
                                                  AuthSession.revoked_at.is_(None)).values(revoked_at=_now()))


_HANDOFF_LOCK = threading.Lock()
_HANDOFFS: dict[str, tuple[str, float]] = {}  # sha256(code) -> (session token, deadline), this process only
_HANDOFF_SECONDS = 60.0


def issue_cookie_handoff(token: str) -> str:
    """A one-time code (valid 60 s, this server process only) that the browser trades for an HttpOnly cookie
    holding ``token`` (``serve.py``'s ``/api/cadx/session`` route), so the token itself never appears in the page.
    """
    import time

    code = secrets.token_urlsafe(24)
    with _HANDOFF_LOCK:
        now = time.monotonic()
        for key in [k for k, (_, deadline) in _HANDOFFS.items() if deadline < now]:
            del _HANDOFFS[key]
        _HANDOFFS[_token_hash(code)] = (token, now + _HANDOFF_SECONDS)
    return code


def redeem_cookie_handoff(code: str) -> str | None:
    """The session token of a one-time code from :func:`issue_cookie_handoff` (None when unknown or stale)."""
    import time

    with _HANDOFF_LOCK:
        entry = _HANDOFFS.pop(_token_hash(code or ""), None)
    if entry is None or entry[1] < time.monotonic():
        return None
    return entry[0]


# ----------------------------------------------------------------------------------------- who may get in ---
def is_loopback(address: str | None) -> bool:
    """Whether a server bound to ``address`` is reachable from this machine only.

    None or empty (Streamlit then listens on every interface), ``0.0.0.0``, ``::`` and any other address or host
    name count as exposed; ``localhost``, ``127.0.0.0/8`` and ``::1`` as loopback.
    """
    text = (address or "").strip().strip("[]")
    if not text:
        return False
    if text.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


#: host names a loopback-only server also answers to (comma-separated), e.g. the name of a reverse proxy on this machine
ALLOWED_HOSTS_SETTING = "CADX_ALLOWED_HOSTS"


def _host_name(host_header: str) -> str:
    """The name in a ``Host`` header, lower case, without port or trailing dot (``[::1]:8501`` -> ``::1``)."""
    text = host_header.strip().lower()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text.rstrip(".")


def host_refusal(host_header: str | None, *, server_address: str | None) -> str | None:
    """Why a request naming ``host_header`` (its ``Host`` header) must be refused, or None when it may be served.

    A server listening on loopback only is the one-command demo, where nobody signs in while no account exists. A
    web page under a foreign name that resolves to 127.0.0.1 (DNS rebinding) would reach it from the visitor's
    browser and act as admin, so such a server answers only to loopback names (``localhost``, ``127.0.0.0/8``,
    ``[::1]``) and to the names in ``CADX_ALLOWED_HOSTS``. The same holds once accounts exist (a rebinding page
    could otherwise guess passwords from every visitor's browser), as Jupyter does. A server reachable from the
    network (accounts or first-run setup) answers to any name.
    """
    if not is_loopback(server_address):
        return None
    name = _host_name(host_header or "")
    extra = {n.strip().lower().rstrip(".") for n in os.environ.get(ALLOWED_HOSTS_SETTING, "").split(",")}
    if name and (is_loopback(name) or name in extra):
        return None
    shown = "".join(c for c in (host_header or "")[:100] if c.isprintable()) or "(none)"
    return (f"cadx refuses the host name {shown!r}: this server listens on loopback only ({server_address}), so "
            "it answers only to localhost, 127.0.0.1 and [::1]. A web page under another name that points to this "
            "machine (DNS rebinding) could otherwise drive the app from your browser, as admin while no account "
            f"exists. Open the app at http://localhost:PORT, or, to serve it under this name (e.g. behind a "
            f"reverse proxy on this machine), set {ALLOWED_HOSTS_SETTING}={_host_name(shown) or 'NAME'} "
            "(comma-separated names) and restart it.")


def _auth_mode() -> str:
    mode = os.environ.get("CADX_AUTH", "auto").lower()
    if mode not in ("auto", "required", "off"):
        raise CadxInputError("CADX_AUTH", f"unknown value {mode!r}", "use auto, required or off")
    return mode


def access_mode(workspace: Workspace, *, server_address: str | None) -> str:
    """How the app lets people in: ``"open"`` (no sign-in: the local owner, admin), ``"sign_in"`` or ``"setup"``
    (no account yet on a server that is not loopback-only: only the first-run setup with the one-time token).

    ``server_address`` is the address the running server listens on (Streamlit's ``server.address``).
    """
    mode = _auth_mode()
    exposed = not is_loopback(server_address)
    if mode == "off":
        if exposed:
            raise CadxInputError("CADX_AUTH", f"'off' while the app listens on {server_address or 'every interface'}"
                                 ": anyone who can reach the port would be admin",
                                 "listen on loopback only (--server.address 127.0.0.1), or create an account "
                                 "(`cadx user add NAME --role admin`) and use CADX_AUTH=auto")
        return "open"
    with workspace.sessions() as session:
        has_accounts = (session.scalar(select(func.count(User.id))) or 0) > 0
    if has_accounts:
        return "sign_in"
    if mode == "required" or exposed:
        return "setup"
    return "open"


_SETUP_LOCK = threading.Lock()
_SETUP_TOKEN: str | None = None


def setup_token(*, announce: Callable[[str], object] | None = None) -> str:
    """This server process's one-time first-run setup token, printed to the server log once when created."""
    global _SETUP_TOKEN
    with _SETUP_LOCK:
        if _SETUP_TOKEN is None:
            _SETUP_TOKEN = secrets.token_urlsafe(24)
            message = ("cadx: no account exists and this server is reachable from the network. To create the "
                       f"first admin, open the app and enter this one-time setup token:\n\n    {_SETUP_TOKEN}\n")
            (announce or (lambda text: print(text, file=sys.stderr, flush=True)))(message)
            _LOG.warning("first-run setup token printed to the server log")
        return _SETUP_TOKEN


def _forget_setup_token() -> None:
    global _SETUP_TOKEN
    with _SETUP_LOCK:
        _SETUP_TOKEN = None


def create_first_admin(workspace: Workspace, username: str, password: str, *, token: str,
                       client: str | None = None, now: datetime | None = None) -> User:
    """Create the first admin through the first-run setup, given the one-time token from the server log.

    Throttled like a sign-in (the token is what is guessed); refused once any account exists.
    """
    now = now or _now()
    client_key = _client_key(workspace, client)
    attempt_id = _reserve_attempt(workspace, _SETUP_ACCOUNT, client_key, now, target="setup")
    expected = setup_token()
    if not hmac.compare_digest((token or "").strip().encode(), expected.encode()):
        with workspace.sessions.begin() as session:
            record_audit(session, user=_SETUP_ACCOUNT, action="setup_failed", target="setup",
                         detail={"client": client_key})
        raise CadxInputError("setup token", "wrong one-time setup token",
                             "copy the token printed in the server's log (e.g. `docker logs CONTAINER`)")
    with workspace.sessions.begin() as session:
        if (session.scalar(select(func.count(User.id))) or 0) > 0:
            raise CadxInputError("setup", "an account exists already", "sign in with it")
        user = _add_user(session, username, password, role="admin", by=_SETUP_ACCOUNT)
        _settle_attempt(session, attempt_id, account=username)
        session.expunge(user)
    _forget_setup_token()
    return user


def bootstrap_admin_from_env(workspace: Workspace) -> str | None:
    """Create the first admin from ``CADX_ADMIN_PASSWORD_FILE`` (name ``CADX_ADMIN_USER``, default ``admin``)
    when no account exists yet; returns the name created, or None. For containers: ``docker run -e
    CADX_ADMIN_PASSWORD_FILE=/run/secrets/cadx_admin ...``."""
    path = os.environ.get("CADX_ADMIN_PASSWORD_FILE")
    if not path:
        return None
    with workspace.sessions() as session:
        if (session.scalar(select(func.count(User.id))) or 0) > 0:
            return None
    try:
        password = Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise CadxInputError("CADX_ADMIN_PASSWORD_FILE", f"cannot read {path} ({exc.strerror or exc})",
                             "mount the file with the admin password there, or unset the variable") from None
    username = os.environ.get("CADX_ADMIN_USER", "admin")
    try:
        with workspace.sessions.begin() as session:
            if (session.scalar(select(func.count(User.id))) or 0) > 0:
                return None
            _add_user(session, username, password, role="admin", by="CADX_ADMIN_PASSWORD_FILE")
    except CadxInputError as exc:
        raise CadxInputError("CADX_ADMIN_PASSWORD_FILE", exc.problem, exc.fix) from None
    return username


# ------------------------------------------------------------------------------------------ single sign-on ---
def _claim(claims: Any, name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and 0 < len(value) <= 255 else None


def oidc_account(workspace: Workspace, claims: Any, *, now: datetime | None = None) -> Account | None:
    """Who a user signed in through the OpenID Connect provider is (``claims``: the ID token's, ``st.user``).

    Identified by the issuer (``iss``) and subject (``sub``) only, stored at the first sign-in: the account an
    admin linked to that identity (``cadx user link-oidc``) with its role, or, while none is linked, a viewer
    named ``sso #ID``. ``email`` and ``name`` never choose an account (a user can set them at many providers);
    they are kept only as a hint for the admin. None (no access) when ``iss`` or ``sub`` is missing or the
    linked account is disabled.
    """
    issuer, subject = _claim(claims, "iss"), _claim(claims, "sub")
    if issuer is None or subject is None:
        return None
    hint = str(claims.get("email") or claims.get("name") or "")[:128] or None
    for _ in range(2):  # a second try when a parallel first sign-in of the same identity stored it first
        try:
            with workspace.sessions.begin() as session:
                identity = session.scalar(select(OidcIdentity).where(OidcIdentity.issuer == issuer,
                                                                     OidcIdentity.subject == subject))
                if identity is None:
                    identity = OidcIdentity(issuer=issuer, subject=subject, claimed_name=hint,
                                            first_seen_at=now or _now())
                    session.add(identity)
                    session.flush()
                    record_audit(session, user=f"sso #{identity.id}", action="sso_first_sign_in", target="app",
                                 detail={"issuer": issuer[:128]})
                elif identity.claimed_name != hint:
                    identity.claimed_name = hint
                user = session.get(User, identity.user_id) if identity.user_id is not None else None
                if user is None:
                    return Account(f"sso #{identity.id}", "viewer", unlinked_identity=identity.id)
                return None if user.disabled else Account(user.username, user.role)
        except IntegrityError:
            continue
    return None


def _identity(session: Session, *, identity: int | None, issuer: str | None, subject: str | None,
              create: bool) -> OidcIdentity:
    if identity is not None:
        found = session.get(OidcIdentity, identity)
        if found is None:
            raise CadxInputError("identity", f"no single sign-on identity #{identity}",
                                 "list them with `cadx user oidc-list` (one appears at its first sign-in)")
        return found
    if not issuer or not subject:
        raise CadxInputError("identity", "neither an identity number nor both issuer and subject given",
                             "pass --identity N (from `cadx user oidc-list`) or --issuer ISS --subject SUB")
    if len(issuer) > 255 or len(subject) > 255:
        raise CadxInputError("identity", "issuer or subject longer than 255 characters", "check the values")
    found = session.scalar(select(OidcIdentity).where(OidcIdentity.issuer == issuer, OidcIdentity.subject == subject))
    if found is None:
        if not create:
            raise CadxInputError("identity", f"no single sign-on identity {issuer} / {subject}",
                                 "list them with `cadx user oidc-list`")
        found = OidcIdentity(issuer=issuer, subject=subject)
        session.add(found)
    return found


def link_oidc(workspace: Workspace, username: str, *, identity: int | None = None, issuer: str | None = None,
              subject: str | None = None, by: str) -> int:
    """Link a single sign-on identity (its number from :func:`list_oidc_identities`, or its issuer and subject,
    also before its first sign-in) to a local account, whose role it then gets; returns the identity's number."""
    with workspace.sessions.begin() as session:
        user = _get(session, username)
        found = _identity(session, identity=identity, issuer=issuer, subject=subject, create=True)
        if found.user_id is not None and found.user_id != user.id:
            other = session.get(User, found.user_id)
            raise CadxInputError("identity", f"linked to {other.username if other else 'another account'} already",
                                 "unlink it first with `cadx user unlink-oidc`")
        found.user_id, found.linked_at = user.id, _now()
        session.flush()
        record_audit(session, user=by, action="sso_link", target=f"user {username}",
                     detail={"identity": found.id, "issuer": found.issuer[:128], "subject": found.subject[:128]})
        return found.id


def unlink_oidc(workspace: Workspace, *, identity: int | None = None, issuer: str | None = None,
                subject: str | None = None, by: str) -> None:
    """Unlink a single sign-on identity from its account (it may then only view); its open page runs see it at
    once."""
    with workspace.sessions.begin() as session:
        found = _identity(session, identity=identity, issuer=issuer, subject=subject, create=False)
        previous = session.get(User, found.user_id) if found.user_id is not None else None
        found.user_id, found.linked_at = None, None
        record_audit(session, user=by, action="sso_unlink", target=f"user {previous.username if previous else '-'}",
                     detail={"identity": found.id, "issuer": found.issuer[:128], "subject": found.subject[:128]})


def list_oidc_identities(workspace: Workspace) -> list[dict[str, Any]]:
    """The single sign-on identities seen or linked: number, issuer, subject, claimed name, linked account."""
    with workspace.sessions() as session:
        rows = session.execute(select(OidcIdentity, User.username).outerjoin(User, User.id == OidcIdentity.user_id)
                               .order_by(OidcIdentity.id)).all()
    return [{"id": identity.id, "issuer": identity.issuer, "subject": identity.subject,
             "claimed_name": identity.claimed_name, "account": username} for identity, username in rows]


def list_users(workspace: Workspace) -> list[User]:
    with workspace.sessions() as session:
        return list(session.scalars(select(User).order_by(User.username)))


def audit_events(workspace: Workspace, *, limit: int | None = None) -> list[AuditEvent]:
    with workspace.sessions() as session:
        query = select(AuditEvent).order_by(AuditEvent.id)
        if limit is not None:
            query = query.limit(limit)
        return list(session.scalars(query))


def export_audit_csv(workspace: Workspace, target: str | Path) -> int:
    """Write the whole audit trail to a CSV file (formula-like cells neutralised); returns the number of events."""
    events = audit_events(workspace)
    return write_rows_csv(target, ["id", "at_utc", "user", "action", "target", "detail"],
                          ([e.id, e.at.isoformat(), e.user, e.action, e.target,
                            json.dumps(e.detail, sort_keys=True, default=str)] for e in events))
