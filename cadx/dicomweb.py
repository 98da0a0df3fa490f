"""A DICOMweb client for PACS import and export: QIDO-RS search, WADO-RS retrieval of single instances, STOW-RS.

The server is untrusted: a retrieved instance is read with a byte cap (no more than an image within cadx's pixel
limit can need), its length is checked against the Content-Length the server announced, and a multipart body must
end with its closing boundary; anything else is a truncated transfer. Every failure is a
:class:`~cadx.errors.CadxInputError` naming the server (its URL without credentials) and the fix; messages never
quote a password or token (credentials go into the session's ``auth``, never into the URL or a header the client
logs). Searching and storing go through ``dicomweb-client``; retrieval uses its session and the standard WADO-RS
path, with ``transfer-syntax=*`` so the stored file comes back as it is (same bytes, same SHA-256, so importing the
same instance from a folder and from the PACS is one image).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from cadx import io as cadx_io
from cadx.errors import CadxInputError

if TYPE_CHECKING:
    import pydicom
    import requests
    from dicomweb_client import DICOMwebClient

    from cadx.config import DicomwebCredentials

__all__ = ["DicomwebServer", "SeriesInfo", "UID_PATTERN", "instance_byte_limit", "server_name"]

#: a DICOM UID: digits and dots, at most 64 characters
UID_PATTERN = re.compile(r"^[0-9][0-9.]{0,63}$")

# An instance's header (tags, private blocks, embedded ICC profiles) beside its pixels: generous, but bounded.
_HEADER_ALLOWANCE_BYTES = 8 * 2**20
_CHUNK = 2**20
_TIMEOUT_S = (10, 120)  # connect, read: a PACS on a slow link still answers within two minutes per chunk


def instance_byte_limit() -> int:
    """The most bytes cadx downloads for one instance: an uncompressed 16-bit image at the pixel limit
    (``CADX_MAX_IMAGE_PIXELS``) and its header."""
    return cadx_io.max_image_pixels() * 2 + _HEADER_ALLOWANCE_BYTES


def server_name(url: str) -> str:
    """The server as messages and the database name it: scheme, host, port and path, nothing else.

    Raises
    ------
    CadxInputError
        Not an http(s) URL, or one carrying a user or password (``https://user:pw@host``), which would end up in
        shell history, logs and messages: credentials go in ``--credentials FILE`` or the environment.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CadxInputError(f"DICOMweb URL {parts.scheme + '://' if parts.scheme else ''}{parts.hostname or ''}",
                             "is not an http:// or https:// URL with a host",
                             "give the server's DICOMweb root, e.g. https://pacs.example.org/dicom-web")
    if parts.username is not None or parts.password is not None:
        raise CadxInputError(f"DICOMweb URL {parts.scheme}://{parts.hostname}", "carries a user or password",
                             "remove them from the URL and give them with --credentials FILE (or "
                             "CADX_DICOMWEB_USER / CADX_DICOMWEB_PASSWORD); URLs end up in logs and shell history")
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class SeriesInfo:
    """One series a QIDO-RS search found."""

    study_uid: str
    series_uid: str
    modality: str
    study_date: str | None
    n_instances: int | None


def _value(record: Mapping[str, Any], tag: str) -> Any:
    values = record.get(tag, {}).get("Value") or [None]
    return values[0]


class DicomwebServer:
    """One DICOMweb server, signed in with ``credentials``; TLS certificates are verified unless ``verify_tls`` is
    False.

    Parameters
    ----------
    url : the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
    credentials : user and password, or a token; None for an open server.
    verify_tls : verify the server's certificate (https) — turn off only for a test server you trust.
    """

    def __init__(self, url: str, *, credentials: DicomwebCredentials | None = None, verify_tls: bool = True) -> None:
        import requests
        from dicomweb_client import DICOMwebClient

        self.url = server_name(url)
        self._session = requests.Session()
        self._session.verify = verify_tls
        # trust_env stays on: REQUESTS_CA_BUNDLE (the fix for an unverified certificate) and proxies apply
        if credentials is not None and credentials.token:
            self._session.auth = _BearerAuth(credentials.token)
        elif credentials is not None and credentials.user:
            self._session.auth = requests.auth.HTTPBasicAuth(credentials.user, credentials.password or "")
        self._client: DICOMwebClient = DICOMwebClient(self.url, session=self._session, timeout=_TIMEOUT_S)
        self._client.set_http_retry_params(retry=False)  # a refused sign-in is answered at once, never retried

    # ------------------------------------------------------------------------------------------------ search ---
    def search_series(self, *, patient_id: str | None = None, study_uid: str | None = None,
                      series_uid: str | None = None, date_from: str | None = None,
                      date_to: str | None = None) -> list[SeriesInfo]:
        """The series matching every filter given (QIDO-RS ``/series``), all pages of them.

        Dates are ``YYYYMMDD``; either end may be left open.
        """
        filters: dict[str, Any] = {}
        if patient_id:
            filters["PatientID"] = patient_id
        if series_uid:
            filters["SeriesInstanceUID"] = series_uid
        if date_from or date_to:
            filters["StudyDate"] = f"{date_from or ''}-{date_to or ''}"
        records = self._call("search for series", lambda: self._client.search_for_series(
            study_instance_uid=study_uid or None, search_filters=filters, get_remaining=True,
            fields=["StudyDate", "Modality", "NumberOfSeriesRelatedInstances"]))
        found = []
        for record in records:
            study, series = _value(record, "0020000D"), _value(record, "0020000E")
            if not (isinstance(study, str) and UID_PATTERN.match(study)
                    and isinstance(series, str) and UID_PATTERN.match(series)):
                raise CadxInputError(self.url, "answered a series search with a malformed Study or Series UID",
                                     "check that the URL is the server's DICOMweb root")
            count = _value(record, "00201209")
            found.append(SeriesInfo(study, series, str(_value(record, "00080060") or ""),
                                    _value(record, "00080020"), int(count) if count is not None else None))
        return found

    def search_instances(self, series: SeriesInfo) -> list[str]:
        """The SOP Instance UIDs of one series (QIDO-RS)."""
        records = self._call("search for instances", lambda: self._client.search_for_instances(
            study_instance_uid=series.study_uid, series_instance_uid=series.series_uid, get_remaining=True))
        uids = []
        for record in records:
            uid = _value(record, "00080018")
            if not (isinstance(uid, str) and UID_PATTERN.match(uid)):
                raise CadxInputError(self.url, "answered an instance search with a malformed SOP Instance UID",
                                     "check that the URL is the server's DICOMweb root")
            uids.append(uid)
        return uids

    # -------------------------------------------------------------------------------------------- retrieve ---
    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str, *,
                          max_bytes: int | None = None) -> bytes:
        """The bytes of one instance as the server stores it (WADO-RS), at most ``max_bytes``
        (default :func:`instance_byte_limit`).

        Raises
        ------
        CadxInputError
            Unreachable, refused, an instance over the limit, or a truncated or malformed transfer.
        """
        import urllib3

        limit = instance_byte_limit() if max_bytes is None else max_bytes
        for uid in (study_uid, series_uid, sop_uid):
            if not UID_PATTERN.match(uid):
                raise CadxInputError(self.url, f"{uid[:70]!r} is not a DICOM UID", "give UIDs of digits and dots")
        where = f"{self.url} instance {sop_uid}"
        url = f"{self.url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'

        def fetch() -> tuple[requests.Response, bytes]:
            # identity encoding: the bytes counted are the bytes announced in Content-Length
            headers = {"Accept": accept, "Accept-Encoding": "identity"}
            with self._session.get(url, headers=headers, stream=True, timeout=_TIMEOUT_S) as response:
                response.raise_for_status()
                announced = response.headers.get("Content-Length")
                if announced is not None and announced.isdigit() and int(announced) > limit:
                    raise _too_large(where, int(announced), limit)
                body = bytearray()
                try:
                    for chunk in response.raw.stream(_CHUNK, decode_content=False):
                        body += chunk
                        if len(body) > limit:
                            raise _too_large(where, len(body), limit)
                except urllib3.exceptions.HTTPError as exc:  # raw reads raise urllib3's own (IncompleteRead, ...)
                    raise _truncated(where, f"the connection closed after {len(body)} bytes "
                                            f"({type(exc).__name__})") from None
                if announced is not None and announced.isdigit() and len(body) != int(announced):
                    raise _truncated(where, f"{len(body)} bytes arrived of the {int(announced)} announced")
                return response, bytes(body)

        response, body = self._call("retrieve an instance", fetch, where=where)
        return _single_part(response.headers.get("Content-Type", ""), body, where)

    # ----------------------------------------------------------------------------------------------- store ---
    def store(self, instances: Iterable[pydicom.Dataset | bytes]) -> list[str]:
        """Store instances (STOW-RS); returns their SOP Instance UIDs.

        Raises
        ------
        CadxInputError
            Bytes that are not DICOM, the server refusing one or more instances (named), or the transport errors
            of :meth:`retrieve_instance`.
        """
        import pydicom

        datasets = []
        for number, item in enumerate(instances, start=1):
            if isinstance(item, (bytes, bytearray, memoryview)):
                try:
                    item = pydicom.dcmread(BytesIO(bytes(item)))
                except Exception as exc:  # pydicom raises many kinds for bad input
                    raise CadxInputError(f"instance {number}", f"is not a DICOM file ({type(exc).__name__})",
                                         "give DICOM files (Part 10, with the DICM preamble)") from None
            datasets.append(item)
        if not datasets:
            return []
        answer = self._call("store instances", lambda: self._client.store_instances(datasets))
        failed = getattr(answer, "FailedSOPSequence", None) or []
        if failed:
            uids = ", ".join(str(getattr(f, "ReferencedSOPInstanceUID", "?")) for f in failed)
            raise CadxInputError(self.url, f"refused to store {len(failed)} of {len(datasets)} instances ({uids})",
                                 "check the server's log for why (SOP class not accepted, disk full, permissions)")
        return [str(ds.SOPInstanceUID) for ds in datasets]

    # -------------------------------------------------------------------------------------------- transport ---
    def _call(self, what: str, call: Any, *, where: str | None = None) -> Any:
        """Run one request, turning transport failures into errors that name the server and the fix."""
        import requests

        where = where or self.url
        try:
            with warnings.catch_warnings():
                # dicomweb-client warns about non-standard answers; cadx validates the answer itself
                warnings.simplefilter("ignore", UserWarning)
                return call()
        except CadxInputError:  # already says what went wrong (and is a ValueError too)
            raise
        except requests.exceptions.SSLError:
            raise CadxInputError(where, f"could not {what}: the server's TLS certificate could not be verified",
                                 "install the CA certificate that signed it (REQUESTS_CA_BUNDLE), or, for a test "
                                 "server you trust, add --insecure") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in repr(exc):
                raise _truncated(where, "the connection closed before the answer was complete") from None
            raise CadxInputError(where, f"could not {what}: the server cannot be reached ({type(exc).__name__})",
                                 "check the URL (scheme, host, port, path) and that the server is running and "
                                 "reachable from here") from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise CadxInputError(where, f"could not {what}: the server refused the credentials (HTTP {status})",
                                     "give a user and password (or token) the server accepts, with --credentials "
                                     "FILE or CADX_DICOMWEB_USER / CADX_DICOMWEB_PASSWORD / CADX_DICOMWEB_TOKEN, "
                                     "and check that this user may read (or store) these studies") from None
            if status == 404:
                raise CadxInputError(where, f"could not {what}: not found on the server (HTTP 404)",
                                     "check the URL is the DICOMweb root (e.g. .../dicom-web) and the UIDs exist "
                                     "there") from None
            raise CadxInputError(where, f"could not {what}: the server answered HTTP {status}",
                                 "check the server's log; run again once it answers") from None
        except ValueError as exc:
            # dicomweb-client's JSON / multipart decoding of a malformed answer
            raise CadxInputError(where, f"could not {what}: the server's answer is malformed ({type(exc).__name__})",
                                 "check that the URL is the server's DICOMweb root") from None


class _BearerAuth:
    """Adds ``Authorization: Bearer`` to each request (requests' auth hook: not a session header, so the token is
    neither in the client's debug log of headers nor carried to another host on a redirect)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(...)"


def _too_large(where: str, n_bytes: int, limit: int) -> CadxInputError:
    return CadxInputError(where, f"the instance is over {n_bytes / 2**20:.1f} MiB, more than the {limit / 2**20:.1f} "
                                 "MiB an image within the pixel limit can need; nothing of it was imported",
                          "if it is a genuine image, raise CADX_MAX_IMAGE_PIXELS and run again")


def _truncated(where: str, detail: str) -> CadxInputError:
    return CadxInputError(where, f"the transfer was truncated ({detail}); nothing of it was imported",
                          "run the import again (already imported instances are skipped); if it keeps failing, "
                          "check the server and the network between")


def _single_part(content_type: str, body: bytes, where: str) -> bytes:
    """The one DICOM part of a WADO-RS ``multipart/related`` answer (or the body, if sent as application/dicom)."""
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media == "application/dicom":
        return body
    if media != "multipart/related":
        raise CadxInputError(where, f"answered with {media or 'no content type'}, not a DICOM instance",
                             "check that the URL is the server's DICOMweb root")
    boundary = next((p.split("=", 1)[1].strip().strip('"') for p in params.split(";")
                     if p.strip().lower().startswith("boundary=")), None)
    if not boundary:
        raise CadxInputError(where, "answered multipart/related without a boundary", "check the server")
    marker = b"--" + boundary.encode("latin-1")
    start = body.find(marker)
    if start < 0:
        raise _truncated(where, "the answer holds no part")
    head_end = body.find(b"\r\n\r\n", start)
    if head_end < 0:
        raise _truncated(where, "the part's headers are incomplete")
    end = body.find(b"\r\n" + marker, head_end + 4)
    if end < 0:
        raise _truncated(where, "the closing boundary never arrived")
    return body[head_end + 4:end]

