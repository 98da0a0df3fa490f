"""The Docker image's entrypoint and health check (``python -m cadx.workflows.container start|health``).

``start [--user NAME] -- COMMAND...`` runs as root in the image so that it can read secret files the way Docker
and Kubernetes mount them (owned by root, mode 0600), which the app's user (uid 1000) could not: it reads every
secret file named by ``CADX_ADMIN_PASSWORD_FILE`` / ``CADX_BACKUP_KEY_FILE``, copies each into a private
directory (``/dev/shm``: memory, not disk) owned by the app's user and mode 0400, points the variable at the copy,
drops to the app's user (groups, gid, uid), opens the workspace (creating or upgrading the database as that user)
and creates the first admin from the password file, then execs COMMAND (streamlit). Any of these that fails ends
the start with exit status 2 and the reason on stderr (``docker logs``): a container that cannot work never
looks healthy. Started as another user (``docker run --user``), it checks the same things as that user.

``health [--url URL]`` (the image's ``HEALTHCHECK``; python, since the image has no curl) exits 0 when the
database opens and answers, and the server at URL answers, else 1 with the reason. It never creates a database.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
import tempfile
import urllib.request
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["SECRET_FILE_VARIABLES", "ContainerStartError", "read_secrets", "hand_over_secrets", "drop_privileges",
           "start", "check_health", "main"]

SECRET_FILE_VARIABLES = ("CADX_ADMIN_PASSWORD_FILE", "CADX_BACKUP_KEY_FILE")
_APP_USER = "cadx"  # the image's user (uid 1000); CADX_APP_USER or --user picks another
_SHM = Path("/dev/shm")


class ContainerStartError(Exception):
    """Why the container cannot start (printed on stderr; the start exits 2)."""


def _app_user(name: str | None) -> str:
    return name or os.environ.get("CADX_APP_USER") or _APP_USER


def read_secrets(env: Mapping[str, str]) -> dict[str, bytes]:
    """The contents of the secret files the environment names, read as the current user."""
    secrets = {}
    for variable in SECRET_FILE_VARIABLES:
        path = env.get(variable)
        if not path:
            continue
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ContainerStartError(
                f"{variable}={path}: cannot read it ({exc.strerror or exc}) as uid {os.geteuid()}. Fix: mount the "
                "secret file there (docker run -v FILE:PATH:ro, or a Docker/Kubernetes secret), or unset "
                f"{variable}") from None
        if not data.strip():
            raise ContainerStartError(f"{variable}={path}: the file is empty. Fix: put the secret in it")
        secrets[variable] = data
    return secrets


def hand_over_secrets(secrets: Mapping[str, bytes], account: pwd.struct_passwd) -> dict[str, str]:
    """Copy each secret into a new directory only ``account`` can enter (in memory where ``/dev/shm`` is writable),
    each file mode 0400 and owned by ``account``; returns the variables pointing at the copies."""
    if not secrets:
        return {}
    base = _SHM if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
    directory = Path(tempfile.mkdtemp(prefix="cadx-secrets-", dir=base))  # 0700
    os.chown(directory, account.pw_uid, account.pw_gid)
    moved = {}
    for variable, data in secrets.items():
        path = directory / variable.lower().removesuffix("_file")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        try:
            os.fchown(fd, account.pw_uid, account.pw_gid)
            os.write(fd, data)
        finally:
            os.close(fd)
        moved[variable] = str(path)
    return moved


def drop_privileges(account: pwd.struct_passwd, env: MutableMapping[str, str]) -> None:
    """Become ``account`` for good: its groups, gid and uid (in that order: after setuid nothing else may change)."""
    os.setgroups(os.getgrouplist(account.pw_name, account.pw_gid))
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)


def _check_data_dir(env: Mapping[str, str]) -> None:
    directory = env.get("CADX_DATA_DIR")
    if not directory:
        return
    path = Path(directory)
    if path.exists() and not os.access(path, os.W_OK | os.X_OK):
        raise ContainerStartError(
            f"CADX_DATA_DIR={path}: uid {os.geteuid()} cannot write there (owner uid {path.stat().st_uid}). Fix: "
            f"give the volume to uid {os.geteuid()} (chown -R {os.geteuid()} on the host folder), or use a named "
            "volume")


def _prepare() -> None:
    """Open the workspace (creating or upgrading its database) and create the first admin from the password file,
    as the app's user, so that what would fail on the first page view fails the start instead."""
    from sqlalchemy.exc import SQLAlchemyError

    from cadx.errors import CadxError
    from cadx.workflows.accounts import bootstrap_admin_from_env
    from cadx.workflows.opening import open_workspace

    try:
        workspace = open_workspace()
        try:
            bootstrap_admin_from_env(workspace)
        finally:
            workspace.engine.dispose()
    except (CadxError, SQLAlchemyError, OSError) as exc:
        raise ContainerStartError(str(exc)) from None


def _preload() -> None:
    """Import what ``_prepare`` needs while still root: once the app's user, files root alone can read (a Python
    installed under /root, as on some machines) are out of reach."""
    import sqlite3  # noqa: F401  (the standard library's: SQLAlchemy imports it on first connect)

    import alembic.command  # noqa: F401
    import alembic.runtime.migration  # noqa: F401
    import argon2  # noqa: F401
    import sqlalchemy.dialects.postgresql  # noqa: F401
    import sqlalchemy.dialects.sqlite  # noqa: F401

    import cadx.workflows.accounts  # noqa: F401
    import cadx.workflows.opening  # noqa: F401


def start(command: Sequence[str], *, user: str | None = None, prepare: bool = True) -> NoReturn:
    """The entrypoint (see the module's docstring); never returns."""
    env = os.environ
    try:
        if not command:
            raise ContainerStartError("no command to run. Fix: give one after --, e.g. -- streamlit run serve.py")
        secrets = read_secrets(env)
        if os.geteuid() == 0:
            name = _app_user(user)
            try:
                account = pwd.getpwnam(name)
            except KeyError:
                raise ContainerStartError(f"no user {name!r} in this image. Fix: set CADX_APP_USER to an existing "
                                          "user (the image has cadx, uid 1000)") from None
            if account.pw_uid != 0:
                if prepare:
                    _preload()
                env.update(hand_over_secrets(secrets, account))
                drop_privileges(account, env)
        _check_data_dir(env)
        if prepare:
            _prepare()
    except ContainerStartError as exc:
        print(f"cadx: cannot start: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.stdout.flush()
    os.execvpe(command[0], list(command), env)


def check_health(*, url: str | None = None, timeout: float = 10.0) -> str | None:
    """None when the database opens and answers (and the server at ``url`` answers 200), else the reason."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from cadx import config
    from cadx.errors import CadxInputError
    from db.session import create_db_engine

    try:
        database = config.database_url(config.data_dir_path())
    except CadxInputError as exc:
        return str(exc)
    parsed = make_url(database)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).is_file():
        return f"no database at {parsed.database} (the start creates it; see the container's log)"
    engine = create_db_engine(database)
    try:
        with engine.connect() as connection:
            revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception as exc:  # any failure to open or read is the answer the check exists to give
        return f"cannot open the database {parsed.render_as_string(hide_password=True)}: {exc}".splitlines()[0]
    finally:
        engine.dispose()
    if revision is None:
        return f"the database {parsed.render_as_string(hide_password=True)} has no schema yet"
    if url:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    return f"{url} answered {response.status}"
        except OSError as exc:
            return f"{url} does not answer: {exc}"
    return None


def _health(url: str | None, user: str | None) -> int:
    if os.geteuid() == 0:  # HEALTHCHECK runs as the image's user, root: read as the app's user, create nothing
        account = pwd.getpwnam(_app_user(user))
        if account.pw_uid != 0:
            import sqlite3  # noqa: F401  (before the drop, see _preload)

            import sqlalchemy.dialects.postgresql  # noqa: F401
            import sqlalchemy.dialects.sqlite  # noqa: F401

            import db.session  # noqa: F401

            drop_privileges(account, os.environ)
    problem = check_health(url=url)
    if problem is not None:
        print(f"cadx: unhealthy: {problem}", file=sys.stderr)
        return 1
    print("cadx: healthy")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cadx.workflows.container", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    run = commands.add_parser("start", help="read the secrets, drop to the app's user, check, exec COMMAND")
    run.add_argument("--user", help=f"the app's user (default $CADX_APP_USER, else {_APP_USER})")
    run.add_argument("--no-prepare", action="store_true", help="do not open the workspace before COMMAND")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    health = commands.add_parser("health", help="exit 0 when the database and the server answer")
    health.add_argument("--url", help="also require a 200 from this URL, e.g. http://127.0.0.1:8501/_stcore/health")
    health.add_argument("--user", help="the app's user, when run as root")
    args = parser.parse_args(argv)
    if args.action == "start":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        start(command, user=args.user, prepare=not args.no_prepare)
    return _health(args.url, args.user)


if __name__ == "__main__":
    sys.exit(main())
