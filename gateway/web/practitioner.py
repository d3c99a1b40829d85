"""The practitioner's pages under /portal/pro/: sign-in (argon2 password set from an invitation link, optional
TOTP), the inbox (unread first, held SMS to triage), a thread (audited read), reply with attachments, close,
switching their own messaging on or off, and TOTP set-up.
"""
from __future__ import annotations

import hmac
import importlib
import time
from typing import Annotated, Any
from urllib.parse import quote

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.audit import record
from gateway.crypto import DecryptionError, binding
from gateway.db.keystore import Keystore
from gateway.db.tables import Patient, Practice, Practitioner, Thread
from gateway.directory.contacts import find_contacts, normalize_email
from gateway.directory.patients import has_care, patient_name
from gateway.errors import InvalidInput
from gateway.threads.service import close_thread, list_threads, open_thread
from gateway.web import pages, threads_view
from gateway.web.app import gateway_of
from gateway.web.security import (
    LOGIN_PER_ACCOUNT,
    LOGIN_PER_CLIENT,
    Viewer,
    Visit,
    allow,
    check_csrf,
    client_key,
    current_viewer,
    end_session,
    end_sessions_of,
    finish,
    open_session,
    set_session_cookie,
    signed_in,
)
from gateway.web.threads_view import Files, Side, ThreadVisit, own_thread, subject_of, unread

router = APIRouter(include_in_schema=False)
HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified against when the address is unknown, so a miss costs the same time as a wrong password.
_DUMMY_HASH = HASHER.hash("not a password of anyone")
MIN_PASSWORD = 12
TOTP_ISSUER = "Secure messaging"


def password_problem(password: str, again: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return "too_short"
    if password != again:
        return "mismatch"
    return None


def set_password(db: Session, practitioner_id: str, password: str) -> None:
    practitioner = db.get(Practitioner, practitioner_id)
    assert practitioner is not None
    practitioner.password_hash = HASHER.hash(password)
    end_sessions_of(db, practitioner_id=practitioner_id)
    record(db, f"practitioner:{practitioner_id}", "practitioner.password_set", "practitioner", practitioner_id)


def _totp_aad(practitioner_id: str) -> bytes:
    return binding("practitioners", practitioner_id, "totp")


def _totp_ok(keys: Keystore, practitioner: Practitioner, code: str, secret: str | None = None) -> bool:
    """A current code (one step of clock drift either way), each accepted once: a seen code cannot be replayed."""
    if secret is None:
        if practitioner.totp_secret_ct is None:
            return False
        secret = keys.directory.open_text(practitioner.totp_secret_ct, aad=_totp_aad(practitioner.id))
    code = "".join(code.split())
    if not (code.isdigit() and len(code) == 6):
        return False
    totp = pyotp.TOTP(secret)
    now_step = int(time.time()) // totp.interval
    for step in (now_step - 1, now_step, now_step + 1):
        if hmac.compare_digest(totp.at(step * totp.interval), code) and step > (practitioner.totp_last_step or -1):
            practitioner.totp_last_step = step
            return True
    return False


def _pro_viewer(request: Request, db: Session, gw: Any) -> Viewer | Response:
    viewer = current_viewer(request, db, gw.settings)
    if viewer is None or viewer.practitioner_id is None:
        return finish(request, RedirectResponse("/portal/pro/login", status_code=303), gw.settings)
    return viewer


def _me(db: Session, viewer: Viewer) -> Practitioner:
    practitioner = db.get(Practitioner, viewer.practitioner_id)
    assert practitioner is not None
    return practitioner


def _patient_label(keys: Keystore, patient: Patient | None) -> str | None:
    if patient is None or patient.erased_at is not None:
        return None
    try:
        return patient_name(keys, patient)
    except DecryptionError:
        return None


def _locale(request: Request, gw: Any) -> str:
    return pages.pick_locale(request, gw)


# --- sign-in -----------------------------------------------------------------------------------------


@router.get("/portal/pro/login")
def login_page(request: Request, thread: Annotated[str, Query(max_length=64)] = "") -> Response:
    gw = gateway_of(request)
    return pages.render(request, gw, "pro_login.html", locale=_locale(request, gw), error=None, thread=thread, email="")


@router.post("/portal/pro/login")
def login(
    request: Request,
    csrf: Annotated[str, Form()] = "",
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    code: Annotated[str, Form(max_length=20)] = "",
    thread: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    gw = gateway_of(request)
    keys = gw.keys
    check_csrf(request, gw, csrf)
    locale = _locale(request, gw)
    with gw.transaction() as db:
        if not allow(db, LOGIN_PER_CLIENT, client_key(request, gw)):
            return pages.render(request, gw, "error.html", locale=locale, status=429, problem="rate_limited")
        try:
            address = normalize_email(email)
        except InvalidInput:
            address = None
        practitioner = None
        if address is not None:
            if not allow(db, LOGIN_PER_ACCOUNT, keys.index("email", address)[:40]):
                return pages.render(request, gw, "error.html", locale=locale, status=429, problem="rate_limited")
            for contact in find_contacts(db, keys, "email", address):
                if contact.practitioner_id is not None:
                    practitioner = db.get(Practitioner, contact.practitioner_id)
                    break
        ok = _password_ok(practitioner, password)
        if ok and practitioner is not None and practitioner.totp_secret_ct is not None:
            ok = _totp_ok(keys, practitioner, code)
        if not ok or practitioner is None:
            if practitioner is not None:
                record(db, f"practitioner:{practitioner.id}", "session.login_failed", "practitioner", practitioner.id)
            return pages.render(
                request,
                gw,
                "pro_login.html",
                locale=locale,
                status=401,
                error="credentials",
                thread=thread,
                email=email,
            )
        assert practitioner.password_hash is not None
        if HASHER.check_needs_rehash(practitioner.password_hash):
            practitioner.password_hash = HASHER.hash(password)
        end_session(db, current_viewer(request, db, gw.settings))
        raw = open_session(db, gw.settings, practitioner_id=practitioner.id)
        record(db, f"practitioner:{practitioner.id}", "session.login", "practitioner", practitioner.id, via="password")
        target = "/portal/pro/"
        if thread:
            own = db.get(Thread, thread)
            if own is not None and own.practitioner_id == practitioner.id:
                target = f"/portal/pro/threads/{own.id}"
    response = finish(request, RedirectResponse(target, status_code=303), gw.settings)
    set_session_cookie(response, gw.settings, raw)
    return response


def _password_ok(practitioner: Practitioner | None, password: str) -> bool:
    stored = practitioner.password_hash if practitioner is not None else None
    try:
        return HASHER.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


# --- inbox and threads -------------------------------------------------------------------------------


def _held_module() -> Any:
    """The SMS intake's triage queue (gateway.intake.held), when this installation has it."""
    try:
        return importlib.import_module("gateway.intake.held")
    except ModuleNotFoundError as exc:
        if exc.name and "gateway.intake.held".startswith(exc.name):
            return None
        raise


def held_for_triage(db: Session, keys: Keystore, viewer: Viewer, practitioner: Practitioner) -> list[dict[str, Any]]:
    """SMS held because no rule routed them to one thread, from patients in this practitioner's care, each
    with the patient's open threads with them to file it into. Showing the text is a read: audited."""
    held = _held_module()
    if held is None:
        return []
    items = []
    for row in held.list_held(db, practitioner.practice_id):
        if not has_care(db, row.patient_id, practitioner.id):
            continue
        try:
            content = held.held_content(db, keys, row)
        except DecryptionError:
            continue
        record(db, viewer.actor, "held_sms.read", "held_sms", row.id)
        threads = db.scalars(
            select(Thread)
            .where(
                Thread.patient_id == row.patient_id, Thread.practitioner_id == practitioner.id, Thread.status == "open"
            )
            .order_by(Thread.last_message_at.desc())
        )
        items.append(
            {
                "id": row.id,
                "patient": _patient_label(keys, db.get(Patient, row.patient_id)),
                "received_at": row.created_at,
                "body": content.body,
                "files": len(content.media),
                "threads": [{"id": t.id, "subject": subject_of(db, keys, t), "code": t.code} for t in threads],
            }
        )
    return items


@router.post("/portal/pro/held/{held_id}/file")
def file_held(
    request: Request,
    held_id: str,
    csrf: Annotated[str, Form()] = "",
    thread: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """File a held SMS into one of the patient's threads with this practitioner, or into a new one."""

    def file_it(visit: Visit) -> Response:
        held = _held_module()
        db, gw, keys, viewer = visit.db, visit.gw, visit.keys, visit.viewer
        me = _me(db, viewer)
        row = next((h for h in held.list_held(db, me.practice_id) if h.id == held_id), None) if held else None
        if row is None or not has_care(db, row.patient_id, me.id):
            return pages.error_page(request, 404)
        if thread == "new":
            target = open_thread(
                db, keys, patient_id=row.patient_id, practitioner_slug=me.slug, subject="SMS", actor=viewer.actor
            )
        else:
            target = own_thread(db, viewer, thread, PRACTITIONER)
            if target is None or target.patient_id != row.patient_id:
                return pages.error_page(request, 404)
        held.release_held(db, keys, row.id, target.id, actor=viewer.actor)
        return finish(request, RedirectResponse(f"/portal/pro/threads/{target.id}", status_code=303), gw.settings)

    return signed_in(request, _pro_viewer, file_it, csrf=csrf)


@router.get("/portal/pro/")
def inbox(request: Request) -> Response:
    def show(visit: Visit) -> Response:
        db, gw, keys, viewer = visit.db, visit.gw, visit.keys, visit.viewer
        me = _me(db, viewer)
        threads = list_threads(db, practitioner_id=me.id)
        new = unread(db, [t.id for t in threads], "practitioner")
        patients = {p.id: p for p in db.scalars(select(Patient).where(Patient.id.in_({t.patient_id for t in threads})))}
        record(db, viewer.actor, "thread.list", "practitioner", me.id, count=len(threads))
        rows = [
            {
                "id": t.id,
                "subject": subject_of(db, keys, t),
                "patient": _patient_label(keys, patients.get(t.patient_id)),
                "code": t.code,
                "status": t.status,
                "last": t.last_message_at or t.created_at,
                "unread": t.id in new,
            }
            for t in threads
        ]
        # Unread first, then open before closed, then the most recent activity.
        rows.sort(key=lambda r: r["last"], reverse=True)
        rows.sort(key=lambda r: (not r["unread"], r["status"] != "open"))
        practice = db.get(Practice, me.practice_id)
        return pages.render(
            request,
            gw,
            "pro_inbox.html",
            locale=_locale(request, gw),
            viewer_kind="practitioner",
            threads=rows,
            held=held_for_triage(db, keys, viewer, me),
            messaging=me.messaging_enabled,
            practice=practice.display_name if practice else "",
        )

    return signed_in(request, _pro_viewer, show, csrf=None)


def _thread_context(visit: ThreadVisit) -> dict[str, Any]:
    patient = visit.db.get(Patient, visit.thread.patient_id)
    return {"locale": _locale(visit.request, visit.gw), "patient": _patient_label(visit.keys, patient)}


PRACTITIONER = Side("practitioner", "/portal/pro", "pro_thread.html", _pro_viewer, _thread_context)


@router.get("/portal/pro/threads/{thread_id}")
def thread_page(request: Request, thread_id: str) -> Response:
    return threads_view.show(request, PRACTITIONER, thread_id)


@router.post("/portal/pro/threads/{thread_id}/messages")
def reply(
    request: Request,
    thread_id: str,
    csrf: Annotated[str, Form()] = "",
    body: Annotated[str, Form()] = "",
    files: Files = [],  # noqa: B006 - FastAPI copies defaults
) -> Response:
    return threads_view.reply(request, PRACTITIONER, thread_id, csrf=csrf, body=body, files=files)


@router.post("/portal/pro/threads/{thread_id}/close")
def close(request: Request, thread_id: str, csrf: Annotated[str, Form()] = "") -> Response:
    def close_it(visit: ThreadVisit) -> Response:
        close_thread(visit.db, visit.thread, actor=visit.viewer.actor)
        target = RedirectResponse(f"/portal/pro/threads/{visit.thread.id}", status_code=303)
        return finish(request, target, visit.gw.settings)

    return threads_view.on_own_thread(request, PRACTITIONER, thread_id, close_it, csrf=csrf)


@router.get("/portal/pro/threads/{thread_id}/attachments/{attachment_id}")
def download(request: Request, thread_id: str, attachment_id: str) -> Response:
    return threads_view.download(request, PRACTITIONER, thread_id, attachment_id)


# --- settings: messaging on/off, TOTP ----------------------------------------------------------------


def _settings_page(
    request: Request,
    gw: Any,
    me: Practitioner,
    *,
    status: int = 200,
    error: str | None = None,
    setup: dict[str, str] | None = None,
) -> Response:
    return pages.render(
        request,
        gw,
        "pro_settings.html",
        locale=_locale(request, gw),
        status=status,
        viewer_kind="practitioner",
        messaging=me.messaging_enabled,
        totp=me.totp_secret_ct is not None,
        error=error,
        setup=setup,
    )


@router.get("/portal/pro/settings")
def settings_page(request: Request) -> Response:
    def show(visit: Visit) -> Response:
        db, gw, viewer = visit.db, visit.gw, visit.viewer
        return _settings_page(request, gw, _me(db, viewer))

    return signed_in(request, _pro_viewer, show, csrf=None)


@router.post("/portal/pro/messaging")
def messaging(
    request: Request, csrf: Annotated[str, Form()] = "", enabled: Annotated[str, Form(max_length=8)] = ""
) -> Response:
    def switch(visit: Visit) -> Response:
        db, gw, viewer = visit.db, visit.gw, visit.viewer
        me = _me(db, viewer)
        wanted = enabled == "on"
        if me.messaging_enabled != wanted:
            me.messaging_enabled = wanted
            record(db, viewer.actor, "practitioner.messaging", "practitioner", me.id, enabled=wanted)
        return finish(request, RedirectResponse("/portal/pro/settings", status_code=303), gw.settings)

    return signed_in(request, _pro_viewer, switch, csrf=csrf)


@router.post("/portal/pro/totp/start")
def totp_start(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    def start(visit: Visit) -> Response:
        db, gw, keys, viewer = visit.db, visit.gw, visit.keys, visit.viewer
        me = _me(db, viewer)
        return _settings_page(request, gw, me, setup=_totp_setup(keys, me, pyotp.random_base32()))

    return signed_in(request, _pro_viewer, start, csrf=csrf)


def _totp_setup(keys: Keystore, me: Practitioner, secret: str) -> dict[str, str]:
    # The account label is the slug, not the name or address: the authenticator app is outside our control.
    uri = pyotp.TOTP(secret).provisioning_uri(name=me.slug, issuer_name=TOTP_ISSUER)
    # The same key as a QR code for the app's camera (quiet zone of 4 modules, as the standard asks): inline SVG,
    # so no script, no style attribute and no request.
    qr = Markup(segno.make(uri, error="m").svg_inline(scale=4, border=4, omitsize=True))
    return {"secret": secret, "uri": uri, "uri_quoted": quote(uri, safe=""), "qr": qr}


@router.post("/portal/pro/totp/confirm")
def totp_confirm(
    request: Request,
    csrf: Annotated[str, Form()] = "",
    secret: Annotated[str, Form(max_length=64)] = "",
    code: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    def confirm(visit: Visit) -> Response:
        db, gw, keys, viewer = visit.db, visit.gw, visit.keys, visit.viewer
        me = _me(db, viewer)
        try:
            pyotp.TOTP(secret).now()
        except Exception:  # noqa: BLE001 - any malformed base32 secret is just a bad form
            return _settings_page(request, gw, me, status=422, error="totp")
        if not _totp_ok(keys, me, code, secret=secret):
            return _settings_page(request, gw, me, status=422, error="totp", setup=_totp_setup(keys, me, secret))
        me.totp_secret_ct = keys.directory.seal(secret, aad=_totp_aad(me.id))
        record(db, viewer.actor, "practitioner.totp_on", "practitioner", me.id)
        return finish(request, RedirectResponse("/portal/pro/settings", status_code=303), gw.settings)

    return signed_in(request, _pro_viewer, confirm, csrf=csrf)


@router.post("/portal/pro/totp/disable")
def totp_disable(
    request: Request, csrf: Annotated[str, Form()] = "", code: Annotated[str, Form(max_length=20)] = ""
) -> Response:
    def disable(visit: Visit) -> Response:
        db, gw, keys, viewer = visit.db, visit.gw, visit.keys, visit.viewer
        me = _me(db, viewer)
        if not _totp_ok(keys, me, code):
            return _settings_page(request, gw, me, status=422, error="totp")
        me.totp_secret_ct = None
        me.totp_last_step = None
        record(db, viewer.actor, "practitioner.totp_off", "practitioner", me.id)
        return finish(request, RedirectResponse("/portal/pro/settings", status_code=303), gw.settings)

    return signed_in(request, _pro_viewer, disable, csrf=csrf)


@router.get("/portal/pro")
def inbox_slash() -> Response:
    return RedirectResponse("/portal/pro/", status_code=308)
