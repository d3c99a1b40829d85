"""The patient's pages under /portal/: their threads, one thread (read through `read_thread`, audited), replies
and new threads with attachments, attachment downloads, and confirming a phone number with its SMS code.

A thread or attachment that is not the signed-in patient's answers 404, exactly like one that does not exist.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.audit import record
from gateway.db.keystore import Keystore
from gateway.db.tables import CareRelationship, ContactPoint, Patient, Practitioner
from gateway.directory.contacts import find_contacts, normalize_phone
from gateway.directory.practices import practitioner_name
from gateway.errors import Conflict, InvalidInput
from gateway.intake.attachments import Refused
from gateway.links import check_code
from gateway.resources import templates_dir
from gateway.threads.service import list_threads, open_thread, post_message
from gateway.web import pages, threads_view
from gateway.web.app import gateway_of
from gateway.web.login import confirm_contact
from gateway.web.security import (
    VERIFY_PER_CLIENT,
    VERIFY_PER_NUMBER,
    Viewer,
    Visit,
    allow,
    check_csrf,
    client_key,
    current_viewer,
    finish,
    signed_in,
)
from gateway.web.threads_view import Files, Side, ThreadVisit, check_text, read_uploads, subject_of, unread

router = APIRouter(include_in_schema=False)
# The notices worker (gateway.workers.notify) issues `verify_sms` and `second_factor` codes as purpose "code".
VERIFY_CODE_PURPOSES = ("code",)


# --- the signed-in patient -------------------------------------------------------------------------


def _patient_viewer(request: Request, db: Session, gw: Any) -> Viewer | Response:
    viewer = current_viewer(request, db, gw.settings)
    if viewer is None or viewer.patient_id is None:
        return pages.render(
            request, gw, "signed_out.html", locale=pages.pick_locale(request, gw), status=401, practitioner=False
        )
    if viewer.second_factor_pending:
        return finish(request, RedirectResponse("/portal/code", status_code=303), gw.settings)
    return viewer


def _patient(db: Session, viewer: Viewer) -> Patient:
    patient = db.get(Patient, viewer.patient_id)
    assert patient is not None
    return patient


def _thread_list(db: Session, keys: Keystore, viewer: Viewer) -> list[dict[str, Any]]:
    assert viewer.patient_id is not None
    threads = list_threads(db, patient_id=viewer.patient_id)
    new = unread(db, [t.id for t in threads], "patient")
    names = _practitioner_names(db, keys, {t.practitioner_id for t in threads})
    record(db, viewer.actor, "thread.list", "patient", viewer.patient_id, count=len(threads))
    return [
        {
            "id": t.id,
            "subject": subject_of(db, keys, t),
            "practitioner": names.get(t.practitioner_id, ""),
            "status": t.status,
            "last": t.last_message_at or t.created_at,
            "unread": t.id in new,
        }
        for t in sorted(threads, key=lambda t: t.last_message_at or t.created_at, reverse=True)
    ]


def _practitioner_names(db: Session, keys: Keystore, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    return {p.id: practitioner_name(keys, p) for p in db.scalars(select(Practitioner).where(Practitioner.id.in_(ids)))}


def _writable_practitioners(db: Session, keys: Keystore, patient: Patient) -> list[dict[str, str]]:
    rows = db.scalars(
        select(Practitioner)
        .join(CareRelationship, CareRelationship.practitioner_id == Practitioner.id)
        .where(
            CareRelationship.patient_id == patient.id,
            Practitioner.practice_id == patient.practice_id,
            Practitioner.messaging_enabled.is_(True),
        )
    )
    return sorted(({"id": p.id, "name": practitioner_name(keys, p)} for p in rows), key=lambda p: p["name"])


def _thread_context(visit: ThreadVisit) -> dict[str, Any]:
    thread = visit.thread
    names = _practitioner_names(visit.db, visit.keys, {thread.practitioner_id})
    return {
        "locale": _patient(visit.db, visit.viewer).locale,
        "practitioner": names.get(thread.practitioner_id, ""),
        "threads": _thread_list(visit.db, visit.keys, visit.viewer),
    }


PATIENT = Side("patient", "/portal", "thread.html", _patient_viewer, _thread_context)


@router.get("/portal/")
def home(request: Request) -> Response:
    def show(visit: Visit) -> Response:
        db, gw, keys, viewer = visit.db, visit.gw, visit.keys, visit.viewer
        patient = _patient(db, viewer)
        return pages.render(
            request,
            gw,
            "threads.html",
            locale=patient.locale,
            viewer_kind="patient",
            threads=_thread_list(db, keys, viewer),
            can_write=bool(_writable_practitioners(db, keys, patient)),
        )

    return signed_in(request, _patient_viewer, show, csrf=None)


@router.get("/portal")
def home_slash() -> Response:
    return RedirectResponse("/portal/", status_code=308)


@router.get("/portal/threads/{thread_id}")
def thread_page(request: Request, thread_id: str) -> Response:
    return threads_view.show(request, PATIENT, thread_id)


@router.post("/portal/threads/{thread_id}/messages")
def reply(
    request: Request,
    thread_id: str,
    csrf: Annotated[str, Form()] = "",
    body: Annotated[str, Form()] = "",
    files: Files = [],  # noqa: B006 - FastAPI copies defaults
) -> Response:
    return threads_view.reply(request, PATIENT, thread_id, csrf=csrf, body=body, files=files)


@router.get("/portal/threads/{thread_id}/attachments/{attachment_id}")
def download(request: Request, thread_id: str, attachment_id: str) -> Response:
    return threads_view.download(request, PATIENT, thread_id, attachment_id)


def _new_thread_form(
    visit: Visit,
    patient: Patient,
    practitioners: list[dict[str, str]],
    *,
    status: int = 200,
    chosen: str = "",
    subject: str = "",
    draft: str = "",
    refused: tuple[Refused, ...] = (),
    error: str | None = None,
) -> Response:
    return pages.render(
        visit.request,
        visit.gw,
        "new_thread.html",
        locale=patient.locale,
        viewer_kind="patient",
        status=status,
        practitioners=practitioners,
        chosen=chosen,
        subject=subject,
        draft=draft,
        refused=refused,
        error=error,
    )


@router.get("/portal/new")
def new_thread_page(request: Request) -> Response:
    def show(visit: Visit) -> Response:
        patient = _patient(visit.db, visit.viewer)
        return _new_thread_form(visit, patient, _writable_practitioners(visit.db, visit.keys, patient))

    return signed_in(request, _patient_viewer, show, csrf=None)


@router.post("/portal/threads")
def new_thread(
    request: Request,
    csrf: Annotated[str, Form()] = "",
    practitioner: Annotated[str, Form(max_length=64)] = "",
    subject: Annotated[str, Form()] = "",
    body: Annotated[str, Form()] = "",
    files: Files = [],  # noqa: B006
) -> Response:
    def post(visit: Visit) -> Response:
        db, gw, keys, viewer = visit.db, visit.gw, visit.keys, visit.viewer
        patient = _patient(db, viewer)
        choices = _writable_practitioners(db, keys, patient)
        accepted, refused = read_uploads(files)

        def again(error: str | None) -> Response:
            return _new_thread_form(
                visit,
                patient,
                choices,
                status=422,
                chosen=practitioner,
                subject=subject,
                draft=body,
                refused=refused,
                error=error,
            )

        if refused:
            return again(None)
        target = db.get(Practitioner, practitioner) if any(c["id"] == practitioner for c in choices) else None
        if target is None:
            return again("practitioner")
        try:
            check_text(subject, body)
            if not body.strip() and not accepted:
                raise InvalidInput("message is empty")
            thread = open_thread(
                db, keys, patient_id=patient.id, practitioner_slug=target.slug, subject=subject, actor=viewer.actor
            )
            message = post_message(
                db, keys, thread, author="patient", channel="portal", body=body, attachments=accepted
            )
        except InvalidInput:
            return again("empty")
        except Conflict:
            return again("practitioner")
        record(db, viewer.actor, "message.post", "message", message.id, thread=thread.id, channel="portal")
        return finish(request, RedirectResponse(f"/portal/threads/{thread.id}", status_code=303), gw.settings)

    return signed_in(request, _patient_viewer, post, csrf=csrf)


# --- confirming a phone number with the code sent by SMS --------------------------------------------


@router.get("/portal/verify")
def verify_page(request: Request) -> Response:
    gw = gateway_of(request)
    return pages.render(request, gw, "verify_phone.html", locale=pages.pick_locale(request, gw), error=None, phone="")


@router.post("/portal/verify")
def verify_phone(
    request: Request,
    csrf: Annotated[str, Form()] = "",
    phone: Annotated[str, Form(max_length=40)] = "",
    code: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """One answer for every failure (unknown number, wrong or used code), so the page reveals nobody."""
    gw = gateway_of(request)
    keys = gw.keys
    check_csrf(request, gw, csrf)
    locale = pages.pick_locale(request, gw)
    with gw.transaction() as db:
        if not allow(db, VERIFY_PER_CLIENT, client_key(request, gw)):
            return pages.render(request, gw, "error.html", locale=locale, status=429, problem="rate_limited")
        try:
            number = normalize_phone(phone)
        except InvalidInput:
            number = None
        done = False
        if number is not None and allow(db, VERIFY_PER_NUMBER, keys.index("phone", number)[:40]):
            code = "".join(code.split())[:12]
            for contact in find_contacts(db, keys, "phone", number):
                if contact.patient_id is None or contact.verified_at is not None:
                    continue
                if _spend_verification_code(db, contact, code):
                    confirm_contact(db, contact, actor=f"patient:{contact.patient_id}")
                    done = True
                    break
        if done:
            return pages.render(request, gw, "verified.html", locale=locale)
        return pages.render(
            request, gw, "verify_phone.html", locale=locale, error="wrong_code", phone=phone, status=422
        )


def _spend_verification_code(db: Session, contact: ContactPoint, code: str) -> bool:
    """A code the outbox sent to this very contact for verification (each wrong try counts an attempt)."""
    assert contact.patient_id is not None
    for purpose in VERIFY_CODE_PURPOSES:
        row = check_code(db, contact.patient_id, code, purpose)
        if row is not None:
            return row.contact_id == contact.id
    return False



# --- the one stylesheet ----------------------------------------------------------------------------


@router.get("/portal/static/portal.css")
def stylesheet() -> Response:
    css = (templates_dir() / "portal" / "static" / "portal.css").read_bytes()
    return Response(css, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})


@router.get("/favicon.ico")
def favicon() -> Response:
    # Browsers ask every site for one; an empty answer keeps a 404 out of every page load.
    return Response(status_code=204, headers={"Cache-Control": "public, max-age=86400"})
