"""The pages behind a link from a notice (`/l/{token}`: login, contact verification, practitioner invitation),
the second factor, and signing out.

A GET or HEAD only shows a page with one button: the token is spent by the POST from that page, so a mail
scanner that opens links spends nothing. A spent, expired or unknown link offers to send a fresh one to the
contact on file, with the same answer whether or not there is one.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.formparsers import MultiPartParser

from gateway.audit import record
from gateway.db.tables import ContactPoint, LoginToken, Patient, Thread
from gateway.links import check_code, hash_token, spend, usable
from gateway.outbox import add_notice
from gateway.web import pages
from gateway.web.app import gateway_of
from gateway.web.security import (
    CODE_RESEND,
    RENEW_PER_CLIENT,
    RENEW_PER_LINK,
    SecurityHeaders,
    Viewer,
    Visit,
    allow,
    check_csrf,
    clear_session_cookie,
    client_key,
    current_viewer,
    end_session,
    finish,
    open_session,
    set_session_cookie,
    signed_in,
)

router = APIRouter(include_in_schema=False)

# Link tokens are `secrets.token_urlsafe(32)`; 6-digit codes are stored under "<owner>:<code>" and must never
# be usable as a link (that would skip the attempt counter), so a link token is recognised by its shape first.
LINK_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,100}")
LINK_PURPOSES = ("login", "verify", "invite")
SECOND_FACTOR_TTL = timedelta(minutes=10)
# Largest body a portal or API request may have: 20 MiB of attachments, base64-encoded in the API, plus text.
MAX_BODY_BYTES = 28 * 1024 * 1024


def setup(app: FastAPI, gw) -> None:  # type: ignore[no-untyped-def]
    """Security headers and error pages for every portal and API route (this module is mounted first)."""
    # Starlette spools uploads over 1 MiB to a temporary file, in the clear: keep them in memory instead
    # (the body is already bounded by MAX_BODY_BYTES in SecurityHeaders).
    MultiPartParser.spool_max_size = MAX_BODY_BYTES
    app.add_middleware(
        SecurityHeaders, https=gw.settings.resolved_public_url.startswith("https://"), max_body_bytes=MAX_BODY_BYTES
    )
    pages.install_error_pages(app)


def find_link(db: Session, token: str) -> LoginToken | None:
    """The link row named by `token` (spent and expired ones included), or None."""
    if not LINK_TOKEN.fullmatch(token or ""):
        return None
    row = db.scalar(select(LoginToken).where(LoginToken.token_hash == hash_token(token)))
    return row if row is not None and row.purpose in LINK_PURPOSES else None


def _locale_of(request: Request, db: Session, gw, row: LoginToken | None) -> str:  # type: ignore[no-untyped-def]
    patient = db.get(Patient, row.patient_id) if row is not None and row.patient_id else None
    return pages.pick_locale(request, gw, patient.locale if patient else None)


def _landing(db: Session, patient_id: str, thread_id: str | None) -> str:
    if thread_id:
        thread = db.get(Thread, thread_id)
        if thread is not None and thread.patient_id == patient_id:
            return f"/portal/threads/{thread.id}"
    return "/portal/"


def _redirect(request: Request, gw, url: str) -> Response:  # type: ignore[no-untyped-def]
    return finish(request, RedirectResponse(url, status_code=303), gw.settings)


# --- GET / HEAD: look, spend nothing -----------------------------------------------------------------


@router.api_route("/l/{token}", methods=["GET", "HEAD"])
def link_page(request: Request, token: str) -> Response:
    gw = gateway_of(request)
    keys = gw.keys  # noqa: F841 - loaded before the write transaction (SQLite)
    with gw.transaction() as db:
        row = find_link(db, token)
        locale = _locale_of(request, db, gw, row)
        if row is None or not usable(row):
            viewer = current_viewer(request, db, gw.settings)
            if (
                row is not None
                and row.purpose == "login"
                and viewer is not None
                and viewer.patient_id == row.patient_id
            ):
                # The same person opening an old link again while signed in: just take them there.
                return _redirect(request, gw, _landing(db, row.patient_id, row.thread_id))
            return pages.render(
                request, gw, "link_expired.html", locale=locale, token=token, purpose=row.purpose if row else "login"
            )
        if row.purpose == "invite":
            return pages.render(request, gw, "pro_set_password.html", locale=locale, token=token, error=None)
        return pages.render(request, gw, "link_confirm.html", locale=locale, token=token, purpose=row.purpose)


# --- POST: spend -------------------------------------------------------------------------------------


@router.post("/l/{token}")
def link_spend(
    request: Request,
    token: str,
    csrf: Annotated[str, Form()] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    password2: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    gw = gateway_of(request)
    keys = gw.keys  # noqa: F841 - loaded before the write transaction (SQLite)
    check_csrf(request, gw, csrf)
    with gw.transaction() as db:
        row = find_link(db, token)
        locale = _locale_of(request, db, gw, row)

        def expired() -> Response:
            purpose = row.purpose if row else "login"
            return pages.render(request, gw, "link_expired.html", locale=locale, token=token, purpose=purpose)

        if row is None or not usable(row):
            return expired()
        if row.purpose == "invite":
            from gateway.web.practitioner import password_problem, set_password

            problem = password_problem(password, password2)
            if problem:
                return pages.render(
                    request, gw, "pro_set_password.html", locale=locale, token=token, error=problem, status=422
                )
            if spend(db, token, "invite") is None:
                return expired()
            assert row.practitioner_id is not None
            set_password(db, row.practitioner_id, password)
            end_session(db, current_viewer(request, db, gw.settings))
            raw = open_session(db, gw.settings, practitioner_id=row.practitioner_id)
            record(
                db,
                f"practitioner:{row.practitioner_id}",
                "session.login",
                "practitioner",
                row.practitioner_id,
                via="invite",
            )
            response = _redirect(request, gw, "/portal/pro/")
            set_session_cookie(response, gw.settings, raw)
            return response
        if row.purpose == "verify":
            if spend(db, token, "verify") is None:
                return expired()
            contact = db.get(ContactPoint, row.contact_id) if row.contact_id else None
            if contact is None or contact.value_ct is None or contact.patient_id != row.patient_id:
                return expired()
            confirm_contact(db, contact, actor=f"patient:{row.patient_id}")
            return pages.render(request, gw, "verified.html", locale=locale)
        # A login link.
        if spend(db, token, "login") is None:
            return expired()
        if row.practitioner_id is not None:
            # A practitioner's notice leads to their password sign-in; a link alone never signs them in.
            viewer = current_viewer(request, db, gw.settings)
            target = f"/portal/pro/threads/{row.thread_id}" if row.thread_id else "/portal/pro/"
            if viewer is not None and viewer.practitioner_id == row.practitioner_id:
                return _redirect(request, gw, target)
            return _redirect(request, gw, "/portal/pro/login" + (f"?thread={row.thread_id}" if row.thread_id else ""))
        assert row.patient_id is not None
        patient = db.get(Patient, row.patient_id)
        if patient is None or patient.erased_at is not None:
            return expired()
        end_session(db, current_viewer(request, db, gw.settings))
        factor_contact = second_factor_contact(db, gw.settings.portal_second_factor, patient.id, row.contact_id)
        raw = open_session(
            db,
            gw.settings,
            patient_id=patient.id,
            landing_thread_id=row.thread_id,
            second_factor_pending=factor_contact is not None,
        )
        record(db, f"patient:{patient.id}", "session.login", "patient", patient.id, via="link")
        if factor_contact is not None:
            _send_second_factor(db, patient.id, factor_contact)
            target = "/portal/code"
        else:
            target = _landing(db, patient.id, row.thread_id)
        response = _redirect(request, gw, target)
        set_session_cookie(response, gw.settings, raw)
        return response


def confirm_contact(db: Session, contact: ContactPoint, *, actor: str) -> None:
    if contact.verified_at is None:
        contact.verified_at = datetime.now(timezone.utc)
        record(db, actor, "contact.verified", "contact", contact.id, kind=contact.kind)


@router.post("/l/{token}/renew")
def link_renew(request: Request, token: str, csrf: Annotated[str, Form()] = "") -> Response:
    """Send a fresh link to the contact on file. The page says the same whether or not anything was sent."""
    gw = gateway_of(request)
    keys = gw.keys  # noqa: F841 - loaded before the write transaction (SQLite)
    check_csrf(request, gw, csrf)
    with gw.transaction() as db:
        row = find_link(db, token)
        locale = _locale_of(request, db, gw, row)
        if not allow(db, RENEW_PER_CLIENT, client_key(request, gw)):
            return pages.render(request, gw, "error.html", locale=locale, status=429, problem="rate_limited")
        if row is not None and row.patient_id is not None and allow(db, RENEW_PER_LINK, row.patient_id):
            patient = db.get(Patient, row.patient_id)
            if patient is not None and patient.erased_at is None:
                if row.purpose == "login":
                    add_notice(db, "login_link", patient_id=patient.id, thread_id=row.thread_id)
                elif row.purpose == "verify" and row.contact_id:
                    contact = db.get(ContactPoint, row.contact_id)
                    if contact is not None and contact.value_ct is not None and contact.verified_at is None:
                        add_notice(
                            db,
                            "verify_email" if contact.kind == "email" else "verify_sms",
                            patient_id=patient.id,
                            contact_id=contact.id,
                            channel="email" if contact.kind == "email" else "sms",
                        )
                record(db, "portal", "link.renew", "patient", patient.id, purpose=row.purpose)
        return pages.render(request, gw, "link_sent.html", locale=locale)


# --- second factor -----------------------------------------------------------------------------------


def second_factor_contact(db: Session, mode: str, patient_id: str, link_contact_id: str | None) -> ContactPoint | None:
    """The verified contact a second-factor code goes to, or None when the portal asks for none.

    The configured kind is preferred; the contact the link itself went to is never used (a code through the
    same channel as the link proves nothing more). A patient with no other verified contact gets no second
    factor: the practice chose a mode its patients' contacts cannot all satisfy, and that is audited."""
    if mode == "off":
        return None
    contacts = db.scalars(
        select(ContactPoint).where(
            ContactPoint.patient_id == patient_id,
            ContactPoint.verified_at.is_not(None),
            ContactPoint.value_ct.is_not(None),
            ContactPoint.opted_out_at.is_(None),
            ContactPoint.unreachable_at.is_(None),
        )
    )
    wanted = "phone" if mode == "sms" else "email"
    usable_contacts = sorted(
        (c for c in contacts if c.id != link_contact_id and not (c.kind == "email" and c.bouncing_at)),
        key=lambda c: c.kind != wanted,
    )
    if not usable_contacts:
        record(db, f"patient:{patient_id}", "second_factor.unavailable", "patient", patient_id)
        return None
    return usable_contacts[0]


def _send_second_factor(db: Session, patient_id: str, contact: ContactPoint) -> None:
    """Queue a second-factor code to `contact`, by SMS to a phone and by email to an address."""
    channel = "sms" if contact.kind == "phone" else "email"
    add_notice(db, "second_factor", patient_id=patient_id, contact_id=contact.id, channel=channel)


def _pending_viewer(request: Request, db: Session, gw) -> Viewer | Response:  # type: ignore[no-untyped-def]
    """A patient signed in by link whose second factor is still to come; anyone else goes to the portal."""
    viewer = current_viewer(request, db, gw.settings)
    if viewer is not None and viewer.patient_id and viewer.second_factor_pending:
        return viewer
    return _redirect(request, gw, "/portal/")


@router.get("/portal/code")
def code_page(request: Request) -> Response:
    def show(visit: Visit) -> Response:
        db, gw, viewer = visit.db, visit.gw, visit.viewer
        locale = _patient_locale(request, db, gw, viewer)
        return pages.render(request, gw, "second_factor.html", locale=locale, error=None, resent=False)

    return signed_in(request, _pending_viewer, show, csrf=None)


@router.post("/portal/code")
def code_check(
    request: Request, csrf: Annotated[str, Form()] = "", code: Annotated[str, Form(max_length=20)] = ""
) -> Response:
    def check(visit: Visit) -> Response:
        db, gw, viewer = visit.db, visit.gw, visit.viewer
        assert viewer.patient_id is not None
        locale = _patient_locale(request, db, gw, viewer)
        # Every wrong or malformed code counts as an attempt on the patient's live codes (5 at most).
        row = check_code(db, viewer.patient_id, "".join(code.split())[:12], "code")
        if row is None or not _good_factor(db, row):
            record(db, viewer.actor, "second_factor.failed", "patient", viewer.patient_id)
            return pages.render(
                request, gw, "second_factor.html", locale=locale, error="wrong_code", resent=False, status=422
            )
        # A new session token once the second factor is done: the pending one may have been observed.
        end_session(db, viewer)
        raw = open_session(db, gw.settings, patient_id=viewer.patient_id, landing_thread_id=viewer.landing_thread_id)
        record(db, viewer.actor, "second_factor.passed", "patient", viewer.patient_id)
        response = _redirect(request, gw, _landing(db, viewer.patient_id, viewer.landing_thread_id))
        set_session_cookie(response, gw.settings, raw)
        return response

    return signed_in(request, _pending_viewer, check, csrf=csrf)


def _good_factor(db: Session, row: LoginToken) -> bool:
    """Young enough, and sent to a verified contact (a verification code is not a second factor)."""
    if row.created_at <= datetime.now(timezone.utc) - SECOND_FACTOR_TTL:
        return False
    contact = db.get(ContactPoint, row.contact_id) if row.contact_id else None
    return row.contact_id is None or (contact is not None and contact.verified_at is not None)


@router.post("/portal/code/resend")
def code_resend(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    def resend(visit: Visit) -> Response:
        db, gw, viewer = visit.db, visit.gw, visit.viewer
        assert viewer.patient_id is not None
        locale = _patient_locale(request, db, gw, viewer)
        if not allow(db, CODE_RESEND, viewer.patient_id):
            return pages.render(request, gw, "error.html", locale=locale, status=429, problem="rate_limited")
        contact = second_factor_contact(db, gw.settings.portal_second_factor, viewer.patient_id, None)
        if contact is not None:
            _send_second_factor(db, viewer.patient_id, contact)
        return pages.render(request, gw, "second_factor.html", locale=locale, error=None, resent=True)

    return signed_in(request, _pending_viewer, resend, csrf=csrf)


def _patient_locale(request: Request, db: Session, gw, viewer: Viewer) -> str:  # type: ignore[no-untyped-def]
    patient = db.get(Patient, viewer.patient_id) if viewer.patient_id else None
    return pages.pick_locale(request, gw, patient.locale if patient else None)


# --- signing out -------------------------------------------------------------------------------------


@router.post("/portal/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    gw = gateway_of(request)
    keys = gw.keys  # noqa: F841
    check_csrf(request, gw, csrf)
    with gw.transaction() as db:
        viewer = current_viewer(request, db, gw.settings)
        practitioner = viewer is not None and viewer.practitioner_id is not None
        if viewer is not None:
            record(db, viewer.actor, "session.logout", "session", viewer.session_id)
        end_session(db, viewer)
        if practitioner:
            assert viewer is not None
            locale = pages.pick_locale(request, gw)
        else:
            locale = _patient_locale(request, db, gw, viewer) if viewer else pages.pick_locale(request, gw)
    response = pages.render(request, gw, "signed_out.html", locale=locale, practitioner=practitioner)
    clear_session_cookie(response, gw.settings)
    return response


__all__ = ["confirm_contact", "find_link", "router", "second_factor_contact", "setup"]
