"""Where cadx keeps its data: the data directory and the database URL, from the environment.

A data directory and a database are one workspace: the database's rows name files in the data directory. A
database URL from the environment (``CADX_DATABASE_URL``) therefore pairs only with the data directory named beside it
(``CADX_DATA_DIR``); any other directory (``--data-dir D``, or the default, which differs between the CLI's
``~/.cadx`` and the app's ``./data``) would put rows in that database and their files in D — one workspace split in
two (issue 26.2). Such an opening is refused, with the fix, before anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cadx.errors import CadxInputError
from cadx.private import make_private_dirs

__all__ = ["DicomwebCredentials", "data_dir", "data_dir_path", "database_url", "dicomweb_credentials", "pacs_url"]

_DEFAULT_DATA_DIR = Path.home() / ".cadx"


def data_dir_path() -> Path:
    """The data directory, ``$CADX_DATA_DIR`` else ``~/.cadx``, without creating it."""
    return Path(os.environ.get("CADX_DATA_DIR") or _DEFAULT_DATA_DIR).expanduser()


def data_dir() -> Path:
    """The data directory: ``$CADX_DATA_DIR``, else ``~/.cadx``. Created when missing."""
    return make_private_dirs(data_dir_path())  # owner-only when cadx creates it (parents included)


def _same_directory(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def database_url(directory: Path) -> str:
    """The database URL of the data ``directory``: a SQLite file ``cadx.sqlite`` in it, or ``$CADX_DATABASE_URL``
    when ``$CADX_DATA_DIR`` names this same directory.

    Raises
    ------
    CadxInputError
        ``$CADX_DATABASE_URL`` is set while ``$CADX_DATA_DIR`` is unset or names another directory.
    """
    url = os.environ.get("CADX_DATABASE_URL")
    if not url:
        return f"sqlite:///{directory / 'cadx.sqlite'}"
    named = os.environ.get("CADX_DATA_DIR")
    if named and _same_directory(named, directory):
        return url
    paired = f"CADX_DATA_DIR is {named}" if named else "CADX_DATA_DIR is not set"
    raise CadxInputError(
        f"data directory {directory}",
        f"CADX_DATABASE_URL names a database while {paired}: its rows would go into that database and their files "
        f"into {directory}, one workspace split in two; nothing was opened or written",
        f"export CADX_DATA_DIR with the data directory that belongs to that database (then --data-dir is not "
        f"needed), or unset CADX_DATABASE_URL so that {directory} keeps its own SQLite database")


@dataclass(frozen=True)
class DicomwebCredentials:
    """How cadx signs in to a DICOMweb server: a user and password (HTTP basic auth) or a bearer token.

    The secret never appears in ``repr`` (nor, through it, in a log line or a traceback's locals), and cadx never
    stores it: it lives for one command.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # the dataclass repr would still name the fields; say only what kind this is
        kind = "token" if self.token else f"user {self.user!r}" if self.user else "none"
        return f"DicomwebCredentials({kind})"


_CREDENTIALS_FIX = ("write one line, user:password (HTTP basic auth) or the bearer token, in a file readable only by "
                    "you (chmod 600) and give it with --credentials FILE; or set CADX_DICOMWEB_USER and "
                    "CADX_DICOMWEB_PASSWORD, or CADX_DICOMWEB_TOKEN")


def dicomweb_credentials(file: Path | None = None) -> DicomwebCredentials | None:
    """The credentials for a DICOMweb server: from ``file`` when given, else from the environment
    (``CADX_DICOMWEB_USER`` with ``CADX_DICOMWEB_PASSWORD``, or ``CADX_DICOMWEB_TOKEN``); None when there are none.

    A credentials file holds one line: ``user:password``, or a bearer token (``Bearer TOKEN`` or the bare token,
    which has no colon).

    Raises
    ------
    CadxInputError
        The file cannot be read or is empty; a user without a password (or the other way round); both a user and a
        token. Messages never quote the secret.
    """
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise CadxInputError(str(file), f"the credentials file cannot be read ({reason})",
                                 _CREDENTIALS_FIX) from None
        line = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if not line:
            raise CadxInputError(str(file), "the credentials file is empty", _CREDENTIALS_FIX)
        if line.lower().startswith("bearer "):
            return DicomwebCredentials(token=line[7:].strip())
        user, colon, password = line.partition(":")
        if not colon:
            return DicomwebCredentials(token=line)
        if not user or not password:
            raise CadxInputError(str(file), "the line has an empty user or password (user:password expected)",
                                 _CREDENTIALS_FIX)
        return DicomwebCredentials(user=user, password=password)
    env_user = os.environ.get("CADX_DICOMWEB_USER") or None
    env_password = os.environ.get("CADX_DICOMWEB_PASSWORD") or None
    token = os.environ.get("CADX_DICOMWEB_TOKEN") or None
    if token and (env_user or env_password):
        raise CadxInputError("CADX_DICOMWEB_TOKEN", "is set together with CADX_DICOMWEB_USER/PASSWORD",
                             "set either the token or the user and password, not both")
    if token:
        return DicomwebCredentials(token=token)
    if bool(env_user) != bool(env_password):
        missing = "CADX_DICOMWEB_PASSWORD" if env_user else "CADX_DICOMWEB_USER"
        raise CadxInputError(missing, "is not set while its partner is", f"set {missing} too, or neither")
    return DicomwebCredentials(user=env_user, password=env_password) if env_user else None


def pacs_url() -> str | None:
    """The PACS the app's *From PACS* searches (``CADX_PACS_URL``, a DICOMweb root), signed in with
    :func:`dicomweb_credentials` from the environment; None when unset.

    Set by whoever runs the server, never typed in the browser: a URL from a browser user would let them make the
    server fetch from any address it can reach (the browser is untrusted; the shell is not)."""
    return (os.environ.get("CADX_PACS_URL") or "").strip() or None
