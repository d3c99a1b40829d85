"""MMS media at Twilio: fetch it (from Twilio's own hosts only, bounded in size and time) and delete it
there once it is stored, so that no copy of the content stays with the provider.

    MediaError(GatewayError)      a fetch that may succeed later (network, Twilio 429/5xx): the webhook
                                  answers 5xx and Twilio retries; nothing was stored

A media item that is gone, too big or of a refused type is not an error: it comes back as `Refused`.
"""
from __future__ import annotations

import mimetypes
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final, Literal
from urllib.parse import urljoin, urlsplit

import requests
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.db.tables import TwilioMediaDeletion
from gateway.errors import GatewayError
from gateway.intake.attachments import AttachmentLimits, screen

TWILIO_API_BASE: Final = "https://api.twilio.com"
# Twilio answers a media GET on api.twilio.com with a redirect to its CDN; nothing else is followed.
TWILIO_HOST_SUFFIXES: Final = (".twilio.com", ".twiliocdn.com")
_MEDIA_PATH: Final = re.compile(
    r"/2010-04-01/Accounts/(?P<account>AC[0-9a-fA-F]{32})/Messages/(?P<message>(?:SM|MM)[0-9a-fA-F]{32})"
    r"/Media/(?P<media>ME[0-9a-fA-F]{32})(?:\.json)?"
)
_MAX_REDIRECTS: Final = 3
_CHUNK: Final = 64 * 1024
# Where a declared type has several extensions, the one the attachment screen knows best.
_EXTENSIONS: Final = {
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/tiff": ".tif",
    "text/plain": ".txt",
    "text/vcard": ".vcf",
    "text/x-vcard": ".vcf",
    "audio/amr": ".amr",
    "video/3gpp": ".3gp",
}

RefusalReason = Literal["type", "size", "total", "unavailable"]


class MediaError(GatewayError):
    """Fetching media failed for now; `code` says how ("timeout", "connect", "twilio-503")."""

    def __init__(self, code: str) -> None:
        super().__init__(f"{code}: media fetch failed for now")
        self.code = code


@dataclass(frozen=True)
class MediaRef:
    """One `MediaUrl{i}` / `MediaContentType{i}` pair of an inbound MMS."""

    index: int
    url: str
    content_type: str

    @property
    def filename(self) -> str:
        """MMS media have no name: `mms-1.jpg`, from the position and the declared type."""
        declared = self.content_type.split(";", 1)[0].strip().lower()
        extension = _EXTENSIONS.get(declared) or mimetypes.guess_extension(declared) or ".bin"
        return f"mms-{self.index + 1}{extension}"


@dataclass(frozen=True)
class MediaFile:
    """A fetched media item, shaped like an attachment for `attachments.screen`."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class RefusedMedia:
    filename: str
    reason: RefusalReason


@dataclass(frozen=True)
class FetchedMedia:
    accepted: tuple[MediaFile, ...]
    refused: tuple[RefusedMedia, ...]


def media_path(url: str, *, api_base: str, account_sid: str, message_sid: str) -> str | None:
    """The resource path of `url` when it names a media item of this message in this account on Twilio's
    API host (in tests: the host of `api_base`), else None: no request ever goes anywhere else."""
    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    if not _host_allowed(parts.scheme, parts.netloc, api_base, redirect=False):
        return None
    match = _MEDIA_PATH.fullmatch(parts.path)
    if match is None or match["account"] != account_sid or match["message"] != message_sid:
        return None
    return parts.path.removesuffix(".json")


def _host_allowed(scheme: str, netloc: str, api_base: str, *, redirect: bool) -> bool:
    base = urlsplit(api_base.rstrip("/"))
    if api_base.rstrip("/") != TWILIO_API_BASE:
        # A stand-in (tests): exactly its scheme, host and port.
        return (scheme, netloc.lower()) == (base.scheme, base.netloc.lower())
    host = netloc.lower()
    if scheme != "https" or ":" in host:
        return False
    if host == "api.twilio.com":
        return True
    return redirect and host.endswith(TWILIO_HOST_SUFFIXES)


class MediaFetcher:
    """Fetches and deletes media with the account's credentials; every request has a timeout and the
    whole fetch of one message has a deadline (Twilio gives a webhook 15 s)."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        api_base: str = TWILIO_API_BASE,
        *,
        limits: AttachmentLimits = AttachmentLimits(),
        connect_timeout: float = 3.0,
        read_timeout: float = 5.0,
        deadline: float = 10.0,
    ) -> None:
        self.account_sid = account_sid
        self._auth = (account_sid, auth_token)
        self.api_base = api_base.rstrip("/")
        self.limits = limits
        self._timeout = (connect_timeout, read_timeout)
        self._deadline = deadline
        self._local = threading.local()  # one requests.Session per thread: it is not meant to be shared

    @property
    def _http(self) -> requests.Session:
        http = getattr(self._local, "http", None)
        if http is None:
            http = self._local.http = requests.Session()
            http.trust_env = False  # no proxy or netrc from the environment sees the credentials
        return http

    def __repr__(self) -> str:
        return "MediaFetcher()"

    def path_of(self, ref: MediaRef, message_sid: str) -> str | None:
        return media_path(ref.url, api_base=self.api_base, account_sid=self.account_sid, message_sid=message_sid)

    def fetch(self, message_sid: str, refs: Sequence[MediaRef]) -> FetchedMedia:
        """Download each item (never more than the per-file limit), then screen them like email attachments.

        Raises MediaError when Twilio or the network fails in a way a retry may fix."""
        stop_at = time.monotonic() + self._deadline
        files: list[MediaFile] = []
        refused: list[RefusedMedia] = []
        for ref in refs:
            path = self.path_of(ref, message_sid)
            if path is None:
                refused.append(RefusedMedia(ref.filename, "unavailable"))
                continue
            data, served_type = self._download(self.api_base + path, stop_at)
            if data is None:
                refused.append(RefusedMedia(ref.filename, "unavailable" if served_type == "gone" else "size"))
                continue
            files.append(MediaFile(ref.filename, ref.content_type or served_type, data))
        accepted, screened_out = screen(files, self.limits)
        refused.extend(RefusedMedia(r.filename, r.reason) for r in screened_out)
        order = {ref.filename: ref.index for ref in refs}
        refused.sort(key=lambda r: order.get(r.filename, 0))
        return FetchedMedia(tuple(accepted), tuple(refused))

    def _download(self, url: str, stop_at: float) -> tuple[bytes | None, str]:
        """(bytes, served type), or (None, "gone") for a 404, or (None, "size") past the per-file limit."""
        auth: tuple[str, str] | None = self._auth
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                response = self._http.get(url, auth=auth, timeout=self._timeout, stream=True, allow_redirects=False)
            except requests.Timeout:
                raise MediaError("timeout") from None
            except requests.ConnectionError:
                raise MediaError("connect") from None
            except requests.RequestException:
                raise MediaError("network") from None
            with response:
                if response.is_redirect:
                    target = urljoin(url, response.headers.get("Location", ""))
                    parts = urlsplit(target)
                    if not _host_allowed(parts.scheme, parts.netloc, self.api_base, redirect=True):
                        return None, "gone"
                    url = target
                    # The CDN link is pre-signed: the account's credentials never leave api.twilio.com.
                    auth = None if parts.netloc.lower() != urlsplit(self.api_base).netloc.lower() else self._auth
                    continue
                if response.status_code in (404, 410):
                    return None, "gone"
                if response.status_code != 200:
                    raise MediaError(f"twilio-{response.status_code}")
                return self._read_bounded(response, stop_at)
        return None, "gone"

    def _read_bounded(self, response: requests.Response, stop_at: float) -> tuple[bytes | None, str]:
        served_type = response.headers.get("Content-Type", "application/octet-stream")
        limit = self.limits.per_file_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            return None, "size"
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(_CHUNK):
                size += len(chunk)
                if size > limit:
                    return None, "size"
                if time.monotonic() > stop_at:
                    raise MediaError("timeout")
                chunks.append(chunk)
        except requests.RequestException:
            raise MediaError("network") from None
        return b"".join(chunks), served_type

    def delete(self, path: str) -> bool:
        """DELETE the media resource at Twilio; True once Twilio no longer has it (a 404 counts)."""
        try:
            response = self._http.delete(self.api_base + path + ".json", auth=self._auth, timeout=self._timeout)
        except requests.RequestException:
            return False
        with response:
            return response.status_code in (200, 204, 404)


def queue_deletions(session: Session, paths: Sequence[str]) -> None:
    """Record media to delete at Twilio, in the transaction that stores (or refuses) their message."""
    for path in dict.fromkeys(paths):
        if session.get(TwilioMediaDeletion, path) is None:
            session.add(TwilioMediaDeletion(path=path, attempts=0))


def delete_queued(
    sessions: sessionmaker[Session],
    fetcher: MediaFetcher,
    paths: Sequence[str] | None = None,
    *,
    limit: int = 20,
    older_than: timedelta = timedelta(minutes=5),
) -> int:
    """Delete media at Twilio and forget them once gone; returns how many are gone.

    `paths`: those just stored; None: up to `limit` left over by earlier failures (queued longer than
    `older_than`, so a delivery still in flight is not raced). Each outcome is its own short transaction."""
    if paths is None:
        with sessions() as session:
            stmt = (
                select(TwilioMediaDeletion.path)
                .where(TwilioMediaDeletion.created_at < datetime.now(timezone.utc) - older_than)
                .order_by(TwilioMediaDeletion.created_at)
                .limit(limit)
            )
            paths = list(session.scalars(stmt))
    done = 0
    for path in paths:
        gone = fetcher.delete(path)
        with sessions() as session, session.begin():
            if gone:
                session.execute(delete(TwilioMediaDeletion).where(TwilioMediaDeletion.path == path))
                done += 1
            else:
                session.execute(
                    update(TwilioMediaDeletion)
                    .where(TwilioMediaDeletion.path == path)
                    .values(attempts=TwilioMediaDeletion.attempts + 1, last_attempt_at=datetime.now(timezone.utc))
                )
    return done
