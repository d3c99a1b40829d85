"""What guards every portal request: response headers (CSP, frames), server-side sessions with idle and absolute
timeouts, CSRF tokens, a same-origin check on form posts, and database-backed rate limits.

Cookies:
    gw_session  the session's random token (only its SHA-256 is stored); HttpOnly, SameSite=Lax, Secure on https
    gw_csrf     a random value; each form carries HMAC(tokens key, gw_csrf + session), checked on every POST
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from fastapi import Request, Response
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.app import Gateway
from gateway.config import Settings
from gateway.db.keystore import Keystore
from gateway.db.tables import Patient, Practitioner, WebSession, new_id
from gateway.ratelimit import hit

SESSION_COOKIE = "gw_session"
CSRF_COOKIE = "gw_csrf"
CSRF_FIELD = "csrf"
# Writing last_seen_at on every request would serialise page views on the database; a minute is precise enough.
TOUCH_EVERY = timedelta(seconds=60)

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders:
    """ASGI middleware: headers every response carries, and early refusal of over-size bodies.

    The size check runs before anything parses the body, so a large upload costs nothing but its headers."""

    def __init__(self, app: ASGIApp, *, https: bool, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.headers: list[tuple[bytes, bytes]] = [
            (b"content-security-policy", CSP.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            # The login link's token is in the path: never let it leak to another site through Referer.
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]
        if https:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if scope.get("method") in ("POST", "PUT", "PATCH") and _guarded(path):
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                await _too_large(path, send)
                return
            if length is None:
                # A chunked body has no length to check up front: read it here, up to the limit, and replay it.
                buffered = await _read_bounded(receive, self.max_body_bytes)
                if buffered is None:
                    await _too_large(path, send)
                    return
                receive = _replay(buffered, receive)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in self.headers if h[0] not in present)
                if b"cache-control" not in present and _guarded(path):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _read_bounded(receive: Receive, limit: int) -> list[Message] | None:
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if size > limit:
            return None
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], then: Receive) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        return pending.pop(0) if pending else await then()

    return receive


def _guarded(path: str) -> bool:
    return path.startswith(("/portal/", "/l/", "/api/"))


async def _too_large(path: str, send: Send) -> None:
    if path.startswith("/api/"):
        body = b'{"code":"too_large","message":"request body is too large"}'
        ctype = b"application/json"
    else:
        body = b"Request body is too large."
        ctype = b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", ctype),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- sessions --------------------------------------------------------------------------------------


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class Viewer:
    """Who is signed in on this request."""

    session_id: str
    token_hash: str
    patient_id: str | None
    practitioner_id: str | None
    second_factor_pending: bool
    landing_thread_id: str | None

    @property
    def actor(self) -> str:
        return f"patient:{self.patient_id}" if self.patient_id else f"practitioner:{self.practitioner_id}"


def open_session(
    db: Session,
    settings: Settings,
    *,
    patient_id: str | None = None,
    practitioner_id: str | None = None,
    landing_thread_id: str | None = None,
    second_factor_pending: bool = False,
) -> str:
    """A new session row; returns the raw token for the cookie (never stored)."""
    if (patient_id is None) == (practitioner_id is None):
        raise ValueError("a session belongs to exactly one person")
    raw = secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    db.add(
        WebSession(
            id=new_id(),
            token_hash=_hash(raw),
            patient_id=patient_id,
            practitioner_id=practitioner_id,
            second_factor_pending=second_factor_pending,
            landing_thread_id=landing_thread_id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(hours=settings.portal_session_max_hours),
        )
    )
    return raw


def current_viewer(request: Request, db: Session, settings: Settings) -> Viewer | None:
    """The live session named by the cookie, or None (absent, ended, idle too long, past its absolute limit)."""
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw or len(raw) > 100:
        return None
    row = db.scalar(select(WebSession).where(WebSession.token_hash == _hash(raw)))
    now = datetime.now(timezone.utc)
    if row is None or row.ended_at is not None:
        return None
    if row.expires_at <= now or row.last_seen_at + timedelta(minutes=settings.portal_session_idle_minutes) <= now:
        row.ended_at = now
        return None
    if row.patient_id is not None:
        patient = db.get(Patient, row.patient_id)
        if patient is None or patient.erased_at is not None:
            row.ended_at = now
            return None
    elif db.get(Practitioner, row.practitioner_id) is None:
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
    return Viewer(
        row.id, row.token_hash, row.patient_id, row.practitioner_id, row.second_factor_pending, row.landing_thread_id
    )


def end_session(db: Session, viewer: Viewer | None) -> None:
    if viewer is not None:
        db.execute(
            update(WebSession)
            .where(WebSession.id == viewer.session_id, WebSession.ended_at.is_(None))
            .values(ended_at=datetime.now(timezone.utc))
        )


def end_sessions_of(db: Session, *, practitioner_id: str) -> None:
    """After a password change every other browser signs in again."""
    db.execute(
        update(WebSession)
        .where(WebSession.practitioner_id == practitioner_id, WebSession.ended_at.is_(None))
        .values(ended_at=datetime.now(timezone.utc))
    )


def https(settings: Settings) -> bool:
    return settings.resolved_public_url.startswith("https://")


def set_session_cookie(response: Response, settings: Settings, raw: str) -> None:
    # No Max-Age: the cookie dies with the browser; the server enforces the idle and absolute limits.
    response.set_cookie(SESSION_COOKIE, raw, httponly=True, secure=https(settings), samesite="lax", path="/")


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(SESSION_COOKIE, httponly=True, secure=https(settings), samesite="lax", path="/")


# --- CSRF ------------------------------------------------------------------------------------------


class CsrfRejected(Exception):
    """A form post without a valid token or from another origin: answered 403, nothing done."""


def _csrf_seed(request: Request) -> str:
    """The browser's CSRF cookie value; a fresh one (set on the response by `finish`) when it has none."""
    seed = getattr(request.state, "csrf_seed", None)
    if seed is None:
        seed = request.cookies.get(CSRF_COOKIE) or ""
        if not (20 <= len(seed) <= 64):
            seed = secrets.token_urlsafe(24)
            request.state.new_csrf_seed = seed
        request.state.csrf_seed = seed
    return seed


def _session_binding(request: Request) -> str:
    raw = request.cookies.get(SESSION_COOKIE)
    return _hash(raw) if raw else "-"


def csrf_token(request: Request, gw: Gateway, *, binding: str | None = None) -> str:
    """The token for forms on this page, bound to the browser's CSRF cookie and to its session (if any)."""
    data = f"csrf\x00{_csrf_seed(request)}\x00{binding or _session_binding(request)}".encode()
    return base64.urlsafe_b64encode(gw.keys.tokens.sign(data)).decode().rstrip("=")


def check_csrf(request: Request, gw: Gateway, submitted: str | None) -> None:
    """Raises CsrfRejected unless the form's token matches this browser and the post is same-origin."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and _origin(origin) != _origin(gw.settings.resolved_public_url):
        raise CsrfRejected()
    if not request.cookies.get(CSRF_COOKIE) or not submitted:
        raise CsrfRejected()
    expected = csrf_token(request, gw)
    if not hmac.compare_digest(expected.encode(), submitted.encode()):
        raise CsrfRejected()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def finish(request: Request, response: Response, settings: Settings) -> Response:
    """Set the CSRF cookie when this request had to invent one."""
    seed = getattr(request.state, "new_csrf_seed", None)
    if seed:
        response.set_cookie(CSRF_COOKIE, seed, httponly=True, secure=https(settings), samesite="lax", path="/")
    return response


# --- rate limits -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    purpose: str
    count: int
    window: timedelta


RENEW_PER_LINK = Limit("renew-link", 3, timedelta(hours=1))
RENEW_PER_CLIENT = Limit("renew-ip", 20, timedelta(hours=1))
LOGIN_PER_ACCOUNT = Limit("pro-login", 10, timedelta(minutes=15))
LOGIN_PER_CLIENT = Limit("pro-login-ip", 30, timedelta(minutes=15))
CODE_RESEND = Limit("code-resend", 3, timedelta(minutes=10))
VERIFY_PER_CLIENT = Limit("verify-ip", 20, timedelta(hours=1))
VERIFY_PER_NUMBER = Limit("verify-number", 5, timedelta(hours=1))


def allow(db: Session, limit: Limit, key: str) -> bool:
    """Count one attempt; False once the window's budget is spent. `key` is an id or a blind index."""
    return hit(db, f"{limit.purpose}:{key}"[:100], limit.window) <= limit.count


def client_key(request: Request, gw: Gateway) -> str:
    """The client's address as a blind index: rate-limit buckets never hold an address."""
    host = request.client.host if request.client else "-"
    return gw.keys.index("client", host)[:40]


# --- a signed-in request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Visit:
    """A signed-in viewer's request, inside its write transaction."""

    request: Request
    gw: Gateway
    keys: Keystore
    db: Session
    viewer: Viewer


def signed_in(
    request: Request,
    who: Callable[[Request, Session, Gateway], Viewer | Response],
    act: Callable[[Visit], Response],
    *,
    csrf: str | None,
) -> Response:
    """`act` in one transaction for the viewer `who` lets in, else `who`'s answer (a sign-in page or redirect).
    `csrf` is the form's token, checked first; None only for a GET."""
    gw: Gateway = request.app.state.gateway
    keys = gw.keys  # loaded before the write transaction (SQLite)
    if csrf is not None:
        check_csrf(request, gw, csrf)
    with gw.transaction() as db:
        viewer = who(request, db, gw)
        if not isinstance(viewer, Viewer):
            return viewer
        return act(Visit(request, gw, keys, db, viewer))
