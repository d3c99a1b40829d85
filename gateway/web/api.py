"""The JSON API for practice software under /api/v1/, authenticated by per-practice API keys.

Patients, care relationships, threads and practitioner messages (with attachments); decrypted reads are audited;
`GET /api/v1/messages?since=` polls for new messages without webhooks. A key sees only its own practice:
anything of another practice answers 404, exactly like something that does not exist.

Errors are JSON `{"code", "message"}` with fixed texts: 401 no or bad key, 404 not found, 409 a rule forbids it
now, 413 too large, 422 invalid input. No personal data ever goes into a URL: it travels in bodies.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.audit import record
from gateway.crypto import DataKey, DecryptionError
from gateway.db.keystore import Keystore
from gateway.db.tables import (
    ApiKey,
    Attachment,
    CareRelationship,
    ContactPoint,
    Message,
    Patient,
    Practice,
    Practitioner,
    Thread,
)
from gateway.directory.contacts import reveal
from gateway.directory.patients import add_care, add_patient, patient_name
from gateway.directory.practices import get_practice, practitioner_name
from gateway.errors import Conflict, GatewayError, NotFound
from gateway.intake.attachments import AttachmentLimits, screen
from gateway.threads.service import (
    MAX_BODY,
    MAX_SUBJECT,
    NewAttachment,
    attachment_aad,
    attachment_content,
    body_aad,
    close_thread,
    open_thread,
    post_message,
    read_thread,
    subject_aad,
    thread_reply_address,
)
from gateway.web import pages
from gateway.web.app import gateway_of

KEY_PREFIX = "gwk"
LIMITS = AttachmentLimits()
MAX_ATTACHMENTS = 10
TOUCH_EVERY = timedelta(minutes=1)

bearer = HTTPBearer(auto_error=False, description="A practice's API key, from `gateway apikey create --practice SLUG`.")


class ErrorOut(BaseModel):
    code: str
    message: str


ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorOut} for status in (401, 404, 409, 413, 422)}
router = APIRouter(prefix="/api/v1", tags=["api"], responses=ERRORS)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def problem(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_input",
    429: "rate_limited",
}


def http_problem(exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "error")
    return problem(exc.status_code, code, code.replace("_", " "), headers=getattr(exc, "headers", None))


def validation_problem(exc: RequestValidationError) -> JSONResponse:
    # Only where and what kind: pydantic's own report quotes the input, which may be personal data.
    fields = [{"loc": [str(p) for p in e.get("loc", ())], "type": e.get("type", "")} for e in exc.errors()]
    body = {"code": "invalid_input", "message": "the request does not match the schema", "fields": fields}
    return JSONResponse(body, status_code=422)


def gateway_problem(exc: Exception) -> JSONResponse:
    # Our errors carry fixed texts (never content), so their message can be returned as it is.
    if isinstance(exc, ApiError):
        return problem(exc.status, exc.code, exc.message)
    if isinstance(exc, NotFound):
        return problem(404, "not_found", str(exc))
    if isinstance(exc, Conflict):
        return problem(409, "conflict", str(exc))
    return problem(422, "invalid_input", str(exc))


def setup(app: FastAPI, gw: Any) -> None:
    app.add_exception_handler(ApiError, lambda request, exc: gateway_problem(exc))
    if GatewayError not in app.exception_handlers:  # the portal's handler already answers JSON on /api/
        pages.install_error_pages(app)


# --- keys ------------------------------------------------------------------------------------------


def _secret_hash(secret: str) -> str:
    # The secret has 256 bits of entropy: a plain hash is enough (no password stretching needed).
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(db: Session, practice_slug: str) -> tuple[ApiKey, str]:
    """A new key for the practice; returns the row and the only copy of the full key."""
    practice = get_practice(db, practice_slug)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(practice_id=practice.id, secret_hash=_secret_hash(secret), created_at=datetime.now(timezone.utc))
    key.id = secrets.token_hex(16)
    db.add(key)
    record(db, "cli", "apikey.create", "api_key", key.id, practice=practice.id)
    return key, f"{KEY_PREFIX}_{key.id}_{secret}"


def revoke_key(db: Session, key_id: str) -> ApiKey:
    key = db.get(ApiKey, (key_id or "").strip())
    if key is None:
        raise NotFound("unknown API key")
    if key.revoked_at is None:
        key.revoked_at = datetime.now(timezone.utc)
        record(db, "cli", "apikey.revoke", "api_key", key.id)
    return key


def list_keys(db: Session, practice_slug: str) -> list[ApiKey]:
    practice = get_practice(db, practice_slug)
    return list(db.scalars(select(ApiKey).where(ApiKey.practice_id == practice.id).order_by(ApiKey.created_at)))


@dataclass(frozen=True)
class Caller:
    key_id: str
    practice_id: str

    @property
    def actor(self) -> str:
        return f"api:{self.key_id}"


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def caller(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
    if credentials is None:
        raise StarletteHTTPException(401, headers=_UNAUTHORIZED)
    parts = credentials.credentials.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 32 or not parts[2]:
        raise StarletteHTTPException(401, headers=_UNAUTHORIZED)
    gw = gateway_of(request)
    with gw.transaction() as db:
        key = db.get(ApiKey, parts[1])
        if key is None or key.revoked_at is not None:
            raise StarletteHTTPException(401, headers=_UNAUTHORIZED)
        if not hmac.compare_digest(key.secret_hash, _secret_hash(parts[2])):
            raise StarletteHTTPException(401, headers=_UNAUTHORIZED)
        now = datetime.now(timezone.utc)
        if key.last_used_at is None or now - key.last_used_at >= TOUCH_EVERY:
            key.last_used_at = now
        return Caller(key.id, key.practice_id)


Auth = Annotated[Caller, Depends(caller)]


# --- schemas ---------------------------------------------------------------------------------------

Id = Annotated[str, Field(min_length=1, max_length=64)]
Slug = Annotated[str, Field(min_length=1, max_length=64)]


class ContactOut(BaseModel):
    id: str
    kind: Literal["email", "phone"]
    value: str | None
    verified: bool


class PatientIn(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    email: Annotated[str | None, Field(max_length=320)] = None
    phone: Annotated[str | None, Field(max_length=40)] = None
    verified: bool = Field(False, description="the practice attests the contacts (audited)")
    locale: Literal["fr", "en"] | None = None


class PatientOut(BaseModel):
    id: str
    name: str | None
    locale: str
    erased: bool
    contacts: list[ContactOut]
    created_at: datetime


class PatientList(BaseModel):
    patients: list[PatientOut]


class VerificationIn(BaseModel):
    kind: Literal["email", "phone"]


class VerificationOut(BaseModel):
    contact_id: str
    kind: str
    sent: bool


class PractitionerOut(BaseModel):
    slug: str
    name: str
    messaging: bool


class PractitionerList(BaseModel):
    practitioners: list[PractitionerOut]


class CareIn(BaseModel):
    patient_id: Id
    practitioner: Slug


class CareOut(BaseModel):
    id: str
    patient_id: str
    practitioner: str
    created: bool


class CareList(BaseModel):
    care: list[CareOut]


class AttachmentIn(BaseModel):
    filename: Annotated[str, Field(min_length=1, max_length=200)]
    content_type: Annotated[str, Field(min_length=1, max_length=127)]
    content_base64: str


class AttachmentOut(BaseModel):
    id: str
    filename: str | None
    content_type: str
    size: int


class MessageIn(BaseModel):
    body: Annotated[str, Field(max_length=MAX_BODY)] = ""
    attachments: Annotated[list[AttachmentIn], Field(max_length=MAX_ATTACHMENTS)] = []


class MessageOut(BaseModel):
    id: str
    thread_id: str
    author: str
    channel: str
    body: str | None
    attachments: list[AttachmentOut]
    created_at: datetime


class ThreadIn(BaseModel):
    patient_id: Id
    practitioner: Slug
    subject: Annotated[str, Field(min_length=1, max_length=MAX_SUBJECT)]
    message: MessageIn | None = None


class ThreadSummary(BaseModel):
    id: str
    status: str
    code: str
    patient_id: str
    practitioner: str | None
    subject: str | None
    created_at: datetime
    last_message_at: datetime | None


class ThreadCreated(ThreadSummary):
    reply_address: str
    message_id: str | None


class ThreadOut(ThreadSummary):
    messages: list[MessageOut]


class ThreadList(BaseModel):
    threads: list[ThreadSummary]


class MessagePage(BaseModel):
    messages: list[MessageOut]
    next_since: datetime | None = Field(description="pass as `since` to the next poll; null when nothing was new")


# --- helpers ---------------------------------------------------------------------------------------


def _patient_of(db: Session, who: Caller, patient_id: str) -> Patient:
    patient = db.get(Patient, patient_id)
    if patient is None or patient.practice_id != who.practice_id:
        raise NotFound("unknown patient")
    return patient


def _thread_of(db: Session, who: Caller, thread_id: str) -> Thread:
    thread = db.get(Thread, thread_id)
    if thread is None or thread.practice_id != who.practice_id:
        raise NotFound("unknown thread")
    return thread


def _practitioner_of(db: Session, who: Caller, slug: str) -> Practitioner:
    practitioner = db.scalar(select(Practitioner).where(Practitioner.slug == slug.strip().lower()))
    if practitioner is None or practitioner.practice_id != who.practice_id:
        raise NotFound("unknown practitioner")
    return practitioner


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _patient_out(db: Session, keys: Keystore, patient: Patient) -> PatientOut:
    contacts = db.scalars(
        select(ContactPoint).where(ContactPoint.patient_id == patient.id).order_by(ContactPoint.created_at)
    )
    erased = patient.erased_at is not None
    return PatientOut(
        id=patient.id,
        name=None if erased or patient.name_ct is None else patient_name(keys, patient),
        locale=patient.locale,
        erased=erased,
        contacts=[
            ContactOut(
                id=c.id,
                kind=c.kind,
                verified=c.verified_at is not None,  # type: ignore[arg-type]
                value=None if erased or c.value_ct is None else reveal(db, keys, c),
            )
            for c in contacts
        ],
        created_at=patient.created_at,
    )


def _key(keys: Keystore, patient: Patient | None) -> DataKey | None:
    try:
        return keys.patient_key(patient) if patient is not None else None
    except DecryptionError:
        return None


def _summary(thread: Thread, slug: str | None, key: DataKey | None) -> dict[str, Any]:
    return {
        "id": thread.id,
        "status": thread.status,
        "code": thread.code,
        "patient_id": thread.patient_id,
        "practitioner": slug,
        "subject": key.open_text(thread.subject_ct, aad=subject_aad(thread.id)) if key else None,
        "created_at": thread.created_at,
        "last_message_at": thread.last_message_at,
    }


def _decode_attachments(items: list[AttachmentIn]) -> tuple[NewAttachment, ...]:
    decoded: list[NewAttachment] = []
    for index, item in enumerate(items):
        if len(item.content_base64) > (LIMITS.per_file_bytes * 4) // 3 + 8:
            raise ApiError(413, "too_large", f"attachment {index} is larger than the per-file limit")
        try:
            data = base64.b64decode(item.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "invalid_input", f"attachment {index} is not valid base64") from None
        decoded.append(NewAttachment(item.filename, item.content_type, data))
    accepted, refused = screen(decoded, LIMITS)
    if refused:
        index = next(i for i, a in enumerate(decoded) if a not in accepted)
        reason = refused[0].reason
        if reason == "type":
            raise ApiError(422, "attachment_refused", f"attachment {index}: this type of file is not accepted")
        raise ApiError(413, "too_large", f"attachment {index}: over the size limit")
    return accepted


def _post(db: Session, keys: Keystore, who: Caller, thread: Thread, message: MessageIn) -> Message:
    attachments = _decode_attachments(message.attachments)
    posted = post_message(
        db, keys, thread, author="practitioner", channel="api", body=message.body, attachments=attachments
    )
    record(db, who.actor, "message.post", "message", posted.id, thread=thread.id, channel="api")
    return posted


# --- routes ----------------------------------------------------------------------------------------


@router.get("/practitioners", response_model=PractitionerList)
def list_practitioners(request: Request, who: Auth) -> dict[str, Any]:
    gw = gateway_of(request)
    keys = gw.keys
    with gw.readers() as db:
        rows = db.scalars(
            select(Practitioner).where(Practitioner.practice_id == who.practice_id).order_by(Practitioner.slug)
        )
        return {
            "practitioners": [
                {"slug": p.slug, "name": practitioner_name(keys, p), "messaging": p.messaging_enabled} for p in rows
            ]
        }


@router.get("/patients", response_model=PatientList)
def list_patients(
    request: Request,
    who: Auth,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        rows = list(
            db.scalars(
                select(Patient)
                .where(Patient.practice_id == who.practice_id)
                .order_by(Patient.created_at, Patient.id)
                .limit(limit)
                .offset(offset)
            )
        )
        record(db, who.actor, "patient.list", "practice", who.practice_id, count=len(rows))
        return {"patients": [_patient_out(db, keys, p) for p in rows]}


@router.post("/patients", response_model=PatientOut, status_code=201)
def create_patient(request: Request, who: Auth, body: PatientIn) -> PatientOut:
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        practice = db.get(Practice, who.practice_id)
        assert practice is not None
        patient = add_patient(
            db,
            keys,
            practice_slug=practice.slug,
            name=body.name,
            email=body.email,
            phone=body.phone,
            verified=body.verified,
            locale=body.locale or gw.settings.default_locale,
            actor=who.actor,
        )
        db.flush()
        record(db, who.actor, "patient.create", "patient", patient.id)
        return _patient_out(db, keys, patient)


@router.get("/patients/{patient_id}", response_model=PatientOut)
def get_patient(request: Request, who: Auth, patient_id: str) -> PatientOut:
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        patient = _patient_of(db, who, patient_id)
        record(db, who.actor, "patient.read", "patient", patient.id)
        return _patient_out(db, keys, patient)


@router.post("/patients/{patient_id}/verifications", response_model=VerificationOut, status_code=202)
def send_verification(request: Request, who: Auth, patient_id: str, body: VerificationIn) -> dict[str, Any]:
    """Send a verification link (email) or 6-digit code (SMS) to the patient's contact of that kind."""
    from gateway.web.cli import request_verification

    gw = gateway_of(request)
    keys = gw.keys  # noqa: F841 - loaded before the write transaction (SQLite)
    with gw.transaction() as db:
        patient = _patient_of(db, who, patient_id)
        contact, sent = request_verification(db, patient, body.kind, actor=who.actor)
        return {"contact_id": contact.id, "kind": contact.kind, "sent": sent}


@router.get("/care", response_model=CareList)
def list_care(request: Request, who: Auth, patient_id: Annotated[str, Query(max_length=64)]) -> dict[str, Any]:
    gw = gateway_of(request)
    with gw.readers() as db:
        patient = _patient_of(db, who, patient_id)
        rows = db.execute(
            select(CareRelationship, Practitioner.slug)
            .join(Practitioner, Practitioner.id == CareRelationship.practitioner_id)
            .where(CareRelationship.patient_id == patient.id)
            .order_by(Practitioner.slug)
        ).all()
        return {
            "care": [
                {"id": c.id, "patient_id": c.patient_id, "practitioner": slug, "created": False} for c, slug in rows
            ]
        }


@router.post("/care", response_model=CareOut, status_code=201)
def create_care(request: Request, who: Auth, body: CareIn, response: Response) -> dict[str, Any]:
    gw = gateway_of(request)
    with gw.transaction() as db:
        _patient_of(db, who, body.patient_id)
        practitioner = _practitioner_of(db, who, body.practitioner)
        care, created = add_care(db, patient_id=body.patient_id, practitioner_slug=practitioner.slug)
        if created:
            db.flush()
            record(db, who.actor, "care.add", "care", care.id)
        else:
            response.status_code = 200
        return {"id": care.id, "patient_id": care.patient_id, "practitioner": practitioner.slug, "created": created}


@router.get("/threads", response_model=ThreadList)
def list_threads(
    request: Request,
    who: Auth,
    since: Annotated[datetime | None, Query(description="only threads with activity after this instant")] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    practitioner: Annotated[str | None, Query(max_length=64)] = None,
    status: Literal["open", "closed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        stmt = select(Thread).where(Thread.practice_id == who.practice_id)
        if since is not None:
            stmt = stmt.where(Thread.last_message_at > _utc(since))
        if patient_id is not None:
            stmt = stmt.where(Thread.patient_id == patient_id)
        if practitioner is not None:
            stmt = stmt.where(Thread.practitioner_id == _practitioner_of(db, who, practitioner).id)
        if status is not None:
            stmt = stmt.where(Thread.status == status)
        threads = list(db.scalars(stmt.order_by(Thread.created_at.desc(), Thread.id).limit(limit)))
        slugs = dict(
            db.execute(
                select(Practitioner.id, Practitioner.slug).where(Practitioner.practice_id == who.practice_id)
            ).all()
        )
        patients = {p.id: p for p in db.scalars(select(Patient).where(Patient.id.in_({t.patient_id for t in threads})))}
        record(db, who.actor, "thread.list", "practice", who.practice_id, threads=[t.id for t in threads])
        return {
            "threads": [
                _summary(t, slugs.get(t.practitioner_id), _key(keys, patients.get(t.patient_id))) for t in threads
            ]
        }


@router.post("/threads", response_model=ThreadCreated, status_code=201)
def create_thread(request: Request, who: Auth, body: ThreadIn) -> dict[str, Any]:
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        _patient_of(db, who, body.patient_id)
        practitioner = _practitioner_of(db, who, body.practitioner)
        thread = open_thread(
            db,
            keys,
            patient_id=body.patient_id,
            practitioner_slug=practitioner.slug,
            subject=body.subject,
            actor=who.actor,
        )
        message = _post(db, keys, who, thread, body.message) if body.message is not None else None
        out = _summary(thread, practitioner.slug, _key(keys, db.get(Patient, thread.patient_id)))
        out["reply_address"] = thread_reply_address(keys, thread, "practitioner", gw.settings.mail_domain)
        out["message_id"] = message.id if message else None
        return out


@router.get("/threads/{thread_id}", response_model=ThreadOut)
def get_thread(request: Request, who: Auth, thread_id: str) -> dict[str, Any]:
    """The decrypted thread with its messages; the read is written to the audit log."""
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        thread = _thread_of(db, who, thread_id)
        view = read_thread(db, keys, thread, actor=who.actor)
        out = _summary(thread, view["practitioner"], None)
        out["subject"] = view["subject"]
        out["messages"] = [{**m, "thread_id": thread.id} for m in view["messages"]]
        return out


@router.post("/threads/{thread_id}/messages", response_model=MessageOut, status_code=201)
def create_message(request: Request, who: Auth, thread_id: str, body: MessageIn) -> dict[str, Any]:
    """Post a practitioner's message (attachments base64-encoded, same allowlist and limits as email)."""
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        thread = _thread_of(db, who, thread_id)
        message = _post(db, keys, who, thread, body)
        return _message_out(db, _key(keys, db.get(Patient, thread.patient_id)), message, thread)


@router.post("/threads/{thread_id}/close", response_model=ThreadSummary)
def close(request: Request, who: Auth, thread_id: str) -> dict[str, Any]:
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        thread = _thread_of(db, who, thread_id)
        close_thread(db, thread, actor=who.actor)
        slug = db.scalar(select(Practitioner.slug).where(Practitioner.id == thread.practitioner_id))
        return _summary(thread, slug, _key(keys, db.get(Patient, thread.patient_id)))


@router.get("/messages", response_model=MessagePage)
def poll_messages(
    request: Request,
    who: Auth,
    since: Annotated[datetime, Query(description="messages created strictly after this instant (the last next_since)")],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Messages of every thread of the practice created after `since`, oldest first; each thread read is audited."""
    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        practice_messages = (
            select(Message, Thread)
            .join(Thread, Thread.id == Message.thread_id)
            .where(Thread.practice_id == who.practice_id)
            .order_by(Message.created_at, Message.id)
        )
        rows = db.execute(practice_messages.where(Message.created_at > _utc(since)).limit(limit)).all()
        if len(rows) == limit:
            # The next poll asks for what is strictly after the last instant returned: messages sharing that
            # instant but cut off by the limit would never be returned. The page takes them too.
            last = rows[-1][0]
            rows += db.execute(
                practice_messages.where(Message.created_at == last.created_at, Message.id > last.id)
            ).all()
        data_keys: dict[str, DataKey | None] = {}
        out = []
        for message, thread in rows:
            if thread.patient_id not in data_keys:
                data_keys[thread.patient_id] = _key(keys, db.get(Patient, thread.patient_id))
            key = data_keys[thread.patient_id]
            out.append(_message_out(db, key, message, thread))
        for thread_id in dict.fromkeys(thread.id for _, thread in rows):
            record(db, who.actor, "thread.read", "thread", thread_id, via="poll")
        return {"messages": out, "next_since": out[-1]["created_at"] if out else None}


def _message_out(db: Session, key: DataKey | None, message: Message, thread: Thread) -> dict[str, Any]:
    atts = db.scalars(select(Attachment).where(Attachment.message_id == message.id).order_by(Attachment.created_at))
    return {
        "id": message.id,
        "thread_id": thread.id,
        "author": message.author,
        "channel": message.channel,
        "body": key.open_text(message.body_ct, aad=body_aad(message.id, thread.id)) if key else None,
        "created_at": message.created_at,
        "attachments": [
            {
                "id": a.id,
                "filename": key.open_text(a.filename_ct, aad=attachment_aad(a.id, "filename", thread.id))
                if key
                else None,
                "content_type": a.content_type,
                "size": a.size,
            }
            for a in atts
        ],
    }


@router.get(
    "/attachments/{attachment_id}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the file, as a download"}},
)
def get_attachment(request: Request, who: Auth, attachment_id: str) -> Response:
    from gateway.web.threads_view import content_disposition

    gw = gateway_of(request)
    keys = gw.keys
    with gw.transaction() as db:
        attachment = db.get(Attachment, attachment_id)
        message = db.get(Message, attachment.message_id) if attachment is not None else None
        thread = db.get(Thread, message.thread_id) if message is not None else None
        if attachment is None or thread is None or thread.practice_id != who.practice_id:
            raise NotFound("unknown attachment")
        try:
            name, data = attachment_content(db, keys, attachment, thread)
        except DecryptionError:
            raise NotFound("unknown attachment") from None
        record(db, who.actor, "attachment.read", "attachment", attachment.id, thread=thread.id)
        return Response(
            data,
            media_type=attachment.content_type,
            headers={"Content-Disposition": content_disposition(name), "Cache-Control": "no-store"},
        )
