"""The patient's pages under /portal/: their threads, one thread (read through `read_thread`, audited), replies
and new threads with attachments, attachment downloads, and confirming a phone number with its SMS code.

A thread or attachment that is not the signed-in patient's answers 404, exactly like one that does not exist.
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.audit import record
from gateway.crypto import DecryptionError
from gateway.db.keystore import Keystore
from gateway.db.tables import (
    Attachment,
    CareRelationship,
    ContactPoint,
    Message,
    Patient,
    Practitioner,
    Thread,
    ThreadRead,
)
from gateway.directory.contacts import find_contacts, normalize_phone
from gateway.directory.practices import practitioner_name
from gateway.errors import Conflict, InvalidInput
from gateway.intake.attachments import AttachmentLimits, Refused, screen
from gateway.links import check_code
from gateway.resources import templates_dir
from gateway.threads.service import (
    MAX_BODY,
    MAX_SUBJECT,
    NewAttachment,
    attachment_content,
    list_threads,
    open_thread,
    post_message,
    read_thread,
    subject_aad,
    thread_key,
)
from gateway.web import pages
from gateway.web.app import gateway_of
from gateway.web.login import confirm_contact
from gateway.web.security import (
    VERIFY_PER_CLIENT,
    VERIFY_PER_NUMBER,
    Viewer,
    allow,
    check_csrf,
    client_key,
    current_viewer,
    finish,
)

router = APIRouter(include_in_schema=False)
LIMITS = AttachmentLimits()
MAX_FILES = 10
# The notices worker (gateway.workers.notify) issues `verify_sms` and `second_factor` codes as purpose "code".
VERIFY_CODE_PURPOSES = ("code",)

Files = Annotated[list[UploadFile], File()]


# --- shared with the practitioner pages ------------------------------------------------------------


def read_uploads(files: Iterable[UploadFile]) -> tuple[tuple[NewAttachment, ...], tuple[Refused, ...]]:
    """Uploaded files through the same allowlist and limits as email attachments; an empty file input is
    not a file. A file over the per-file limit is not read beyond it."""
    items: list[NewAttachment] = []
    refused: list[Refused] = []
    for upload in files:
        name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
        if not name:
            continue
        data = upload.file.read(LIMITS.per_file_bytes + 1)
        if len(data) > LIMITS.per_file_bytes:
            refused.append(Refused(name[:200], "size"))
            continue
        items.append(NewAttachment(name[:200], upload.content_type or "application/octet-stream", data))
    if len(items) + len(refused) > MAX_FILES:
        refused.extend(Refused(a.filename, "total") for a in items[MAX_FILES:])
        items = items[:MAX_FILES]
    accepted, screened_out = screen(items, LIMITS)
    return accepted, tuple(refused) + screened_out


def content_disposition(filename: str) -> str:
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in filename) or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def attachment_response(
    db: Session, keys: Keystore, thread: Thread, attachment_id: str, *, actor: str
) -> Response | None:
    """The attachment's bytes with its stored type, always as a download; None when it is not in `thread`."""
    attachment = db.get(Attachment, attachment_id)
    message = db.get(Message, attachment.message_id) if attachment is not None else None
    if attachment is None or message is None or message.thread_id != thread.id:
        return None
    try:
        name, data = attachment_content(db, keys, attachment, thread)
    except DecryptionError:
        return None
    record(db, actor, "attachment.read", "attachment", attachment.id, thread=thread.id)
    return Response(
        data,
        media_type=attachment.content_type,
        headers={"Content-Disposition": content_disposition(name), "Cache-Control": "no-store"},
    )


def mark_read(db: Session, thread_id: str, party: str) -> None:
    now = datetime.now(timezone.utc)
    row = db.get(ThreadRead, (thread_id, party))
    if row is not None:
        row.read_at = now
        return
    try:
        with db.begin_nested():
            db.add(ThreadRead(thread_id=thread_id, party=party, read_at=now))
    except IntegrityError:  # a concurrent first read of the same thread
        row = db.get(ThreadRead, (thread_id, party))
        if row is not None:
            row.read_at = now


def unread(db: Session, thread_ids: list[str], party: str) -> set[str]:
    """The threads with a message from the other side newer than this side's last read."""
    if not thread_ids:
        return set()
    other = "practitioner" if party == "patient" else "patient"
    latest = db.execute(
        select(Message.thread_id, func.max(Message.created_at))
        .where(Message.thread_id.in_(thread_ids), Message.author == other)
        .group_by(Message.thread_id)
    ).all()
    reads = dict(
        db.execute(
            select(ThreadRead.thread_id, ThreadRead.read_at).where(
                ThreadRead.thread_id.in_(thread_ids), ThreadRead.party == party
            )
        ).all()
    )
    return {tid for tid, at in latest if tid not in reads or _aware(at) > _aware(reads[tid])}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def subject_of(db: Session, keys: Keystore, thread: Thread) -> str | None:
    try:
        return thread_key(db, keys, thread).open_text(thread.subject_ct, aad=subject_aad(thread.id))
    except DecryptionError:
        return None


def check_text(subject: str | None, body: str) -> None:
    if subject is not None and not " ".join(subject.split()):
        raise InvalidInput("subject is required")
    if subject is not None and len(subject) > MAX_SUBJECT:
        raise InvalidInput("subject is too long")
    if len(body) > MAX_BODY:
        raise InvalidInput("message body is too long")


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


def _own_thread(db: Session, viewer: Viewer, thread_id: str) -> Thread | None:
    thread = db.get(Thread, thread_id) if len(thread_id) <= 64 else None
    return thread if thread is not None and thread.patient_id == viewer.patient_id else None


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


def _thread_page(
    request: Request,
    db: Session,
    gw: Any,
    keys: Keystore,
    viewer: Viewer,
    thread: Thread,
    *,
    status: int = 200,
    draft: str = "",
    refused: tuple[Refused, ...] = (),
    error: str | None = None,
) -> Response:
    patient = _patient(db, viewer)
    view = read_thread(db, keys, thread, actor=viewer.actor)
    mark_read(db, thread.id, "patient")
    names = _practitioner_names(db, keys, {thread.practitioner_id})
    return pages.render(
        request,
        gw,
        "thread.html",
        locale=patient.locale,
        status=status,
        viewer_kind="patient",
        thread=view,
        practitioner=names.get(thread.practitioner_id, ""),
        threads=_thread_list(db, keys, viewer),
        draft=draft,
        refused=refused,
        error=error,
        base=f"/portal/threads/{thread.id}",
    )


@router.get("/portal/")
def home(request: Request) -> Response:
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        viewer = _patient_viewer(request, db, gw)
        if not isinstance(viewer, Viewer):
            return viewer
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


@router.get("/portal")
def home_slash() -> Response:
    return RedirectResponse("/portal/", status_code=308)


@router.get("/portal/threads/{thread_id}")
def thread_page(request: Request, thread_id: str) -> Response:
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        viewer = _patient_viewer(request, db, gw)
        if not isinstance(viewer, Viewer):
            return viewer
        thread = _own_thread(db, viewer, thread_id)
        if thread is None:
            return pages.error_page(request, 404)
        return _thread_page(request, db, gw, keys, viewer, thread)


@router.post("/portal/threads/{thread_id}/messages")
def reply(
    request: Request,
    thread_id: str,
    csrf: Annotated[str, Form()] = "",
    body: Annotated[str, Form()] = "",
    files: Files = [],  # noqa: B006 - FastAPI copies defaults
) -> Response:
    gw = gateway_of(request)
    keys = gw.keys
    check_csrf(request, gw, csrf)
    with gw.transaction() as db:
        viewer = _patient_viewer(request, db, gw)
        if not isinstance(viewer, Viewer):
            return viewer
        thread = _own_thread(db, viewer, thread_id)
        if thread is None:
            return pages.error_page(request, 404)
        accepted, refused = read_uploads(files)
        if refused:
            return _thread_page(request, db, gw, keys, viewer, thread, status=422, draft=body, refused=refused)
        try:
            check_text(None, body)
            message = post_message(
                db, keys, thread, author="patient", channel="portal", body=body, attachments=accepted
            )
        except (InvalidInput, Conflict) as exc:
            problem = "closed" if isinstance(exc, Conflict) else "empty"
            return _thread_page(request, db, gw, keys, viewer, thread, status=422, draft=body, error=problem)
        record(db, viewer.actor, "message.post", "message", message.id, thread=thread.id, channel="portal")
        return finish(
            request, RedirectResponse(f"/portal/threads/{thread.id}#m-{message.id}", status_code=303), gw.settings
        )


@router.get("/portal/threads/{thread_id}/attachments/{attachment_id}")
def download(request: Request, thread_id: str, attachment_id: str) -> Response:
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        viewer = _patient_viewer(request, db, gw)
        if not isinstance(viewer, Viewer):
            return viewer
        thread = _own_thread(db, viewer, thread_id)
        response = attachment_response(db, keys, thread, attachment_id, actor=viewer.actor) if thread else None
        return response if response is not None else pages.error_page(request, 404)


@router.get("/portal/new")
def new_thread_page(request: Request) -> Response:
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        viewer = _patient_viewer(request, db, gw)
        if not isinstance(viewer, Viewer):
            return viewer
        patient = _patient(db, viewer)
        return pages.render(
            request,
            gw,
            "new_thread.html",
            locale=patient.locale,
            viewer_kind="patient",
            practitioners=_writable_practitioners(db, keys, patient),
            chosen="",
            subject="",
            draft="",
            refused=(),
            error=None,
        )


@router.post("/portal/threads")
def new_thread(
    request: Request,
    csrf: Annotated[str, Form()] = "",
    practitioner: Annotated[str, Form(max_length=64)] = "",
    subject: Annotated[str, Form()] = "",
    body: Annotated[str, Form()] = "",
    files: Files = [],  # noqa: B006
) -> Response:
    gw = gateway_of(request)
    keys = gw.keys
    check_csrf(request, gw, csrf)
    with gw.transaction() as db:
        viewer = _patient_viewer(request, db, gw)
        if not isinstance(viewer, Viewer):
            return viewer
        patient = _patient(db, viewer)
        choices = _writable_practitioners(db, keys, patient)
        accepted, refused = read_uploads(files)

        def again(error: str | None) -> Response:
            return pages.render(
                request,
                gw,
                "new_thread.html",
                locale=patient.locale,
                viewer_kind="patient",
                status=422,
                practitioners=choices,
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
