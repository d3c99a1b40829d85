"""Open a thread, post a message into it (with its outbox row, same transaction), read it back."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from gateway.audit import record
from gateway.crypto import DataKey, DecryptionError, binding
from gateway.db.keystore import Keystore
from gateway.db.tables import Attachment, Message, Patient, Practitioner, Thread, new_id
from gateway.directory.patients import get_patient, has_care
from gateway.directory.practices import get_practitioner
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.outbox import notify_other_party
from gateway.threads.addresses import reply_address

AUTHORS = ("patient", "practitioner", "system")
CHANNELS = ("email", "sms", "portal", "api", "cli")
MAX_SUBJECT = 200
MAX_BODY = 1_000_000
# Thread codes avoid look-alike characters (0/O, 1/I) since patients type them on a phone.
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@dataclass(frozen=True, slots=True)
class ThreadRef:
    """What posting to an existing thread needs of it and of its patient, read as columns in one statement
    (`thread_ref`) instead of loading both rows as ORM objects: the hot path of inbound email and SMS."""

    id: str
    patient_id: str
    practitioner_id: str
    status: str
    kek_id: str | None
    dek_wrapped: bytes | None


_T, _P = Thread.__table__, Patient.__table__
_THREAD_REF = (
    select(_T.c.id, _T.c.patient_id, _T.c.practitioner_id, _T.c.status, _P.c.kek_id, _P.c.dek_wrapped)
    .join_from(_T, _P, _P.c.id == _T.c.patient_id)
    .where(_T.c.id == bindparam("thread_id"))
)


def thread_ref(session: Session, thread_id: str) -> ThreadRef:
    """The thread as `post_message` needs it, on the session's connection (nothing pending is flushed)."""
    row = session.connection().execute(_THREAD_REF, {"thread_id": (thread_id or "").strip()}).first()
    if row is None:
        raise NotFound("unknown thread")
    return ThreadRef(*row)


@dataclass(frozen=True)
class NewAttachment:
    filename: str
    content_type: str
    data: bytes


def _new_code(session: Session, patient_id: str) -> str:
    for length in (2, 2, 3, 3, 4, 5, 6):
        code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(length))
        if not session.scalar(select(Thread.id).where(Thread.patient_id == patient_id, Thread.code == code)):
            return code
    raise RuntimeError("no free thread code")


def subject_aad(thread_id: str) -> bytes:
    return binding("threads", thread_id, "subject", thread_id)


def body_aad(message_id: str, thread_id: str) -> bytes:
    return binding("messages", message_id, "body", thread_id)


def original_aad(message_id: str, thread_id: str) -> bytes:
    return binding("messages", message_id, "original", thread_id)


def attachment_aad(attachment_id: str, column: str, thread_id: str) -> bytes:
    return binding("attachments", attachment_id, column, thread_id)


def check_can_write(session: Session, patient: Patient, practitioner: Practitioner) -> None:
    if patient.erased_at is not None:
        raise Conflict("patient was erased")
    if practitioner.practice_id != patient.practice_id:
        raise Conflict("patient and practitioner belong to different practices")
    if not practitioner.messaging_enabled:
        raise Conflict("this practitioner does not use secure messaging")
    if not has_care(session, patient.id, practitioner.id):
        raise Conflict("no care relationship between this patient and this practitioner")


def open_thread(
    session: Session, keys: Keystore, *, patient_id: str, practitioner_slug: str, subject: str, actor: str = "cli"
) -> Thread:
    patient = get_patient(session, patient_id)
    practitioner = get_practitioner(session, practitioner_slug)
    check_can_write(session, patient, practitioner)
    subject = " ".join((subject or "").split())[:MAX_SUBJECT]
    thread = Thread(
        id=new_id(),
        practice_id=patient.practice_id,
        patient_id=patient.id,
        practitioner_id=practitioner.id,
        status="open",
        code=_new_code(session, patient.id),
        token_version=1,
    )
    thread.subject_ct = keys.patient_key(patient).seal(subject, aad=subject_aad(thread.id))
    session.add(thread)
    session.flush()
    record(session, actor, "thread.open", "thread", thread.id)
    return thread


def get_thread(session: Session, thread_id: str) -> Thread:
    thread = session.get(Thread, (thread_id or "").strip())
    if thread is None:
        raise NotFound("unknown thread")
    return thread


def thread_key(session: Session, keys: Keystore, thread: Thread | ThreadRef) -> DataKey:
    if isinstance(thread, ThreadRef):
        return keys.unwrap_patient_key(thread.patient_id, thread.kek_id, thread.dek_wrapped)
    loaded = session.identity_map.get(session.identity_key(Patient, thread.patient_id))
    if loaded is not None:
        return keys.patient_key(loaded)  # type: ignore[arg-type]
    # Not in the session: the key columns only, not the whole row as an object (what every post would
    # otherwise load). Pending rows are flushed first, so a patient added in this transaction is found.
    session.flush()
    row = session.connection().execute(_PATIENT_KEY, {"patient_id": thread.patient_id}).first()
    if row is None:
        raise NotFound("unknown patient")
    return keys.unwrap_patient_key(thread.patient_id, row.kek_id, row.dek_wrapped)


_PATIENT_KEY = select(_P.c.kek_id, _P.c.dek_wrapped).where(_P.c.id == bindparam("patient_id"))


def thread_reply_address(keys: Keystore, thread: Thread, party: str, domain: str) -> str:
    return reply_address(keys.tokens, thread.id, party, thread.token_version, domain)


def post_message(
    session: Session,
    keys: Keystore,
    thread: Thread | ThreadRef,
    *,
    author: str,
    channel: str,
    body: str,
    attachments: tuple[NewAttachment, ...] = (),
    original: bytes | None = None,
    dedupe: tuple[str, str] | None = None,
    notify: bool = True,
) -> Message:
    """Seal and store a message and its attachments, and write the other party's notice to the outbox.

    The caller owns the transaction: nothing here commits, so the message and its outbox row land together.
    """
    if author not in AUTHORS or channel not in CHANNELS:
        raise InvalidInput("unknown author or channel")
    if author != "system" and thread.status != "open":
        raise Conflict("this conversation is closed")
    if len(body) > MAX_BODY:
        raise InvalidInput("message body is too long")
    if not body.strip() and not attachments:
        raise InvalidInput("message is empty")
    key = thread_key(session, keys, thread)
    message_id = new_id()
    created_at = datetime.now(timezone.utc)
    source, dedupe_key = dedupe if dedupe else (None, None)
    values: dict[str, Any] = {
        "id": message_id,
        "thread_id": thread.id,
        "author": author,
        "channel": channel,
        "body_ct": key.seal(body, aad=body_aad(message_id, thread.id)),
        "original_ct": key.seal(original, aad=original_aad(message_id, thread.id)) if original else None,
        "size": len(body.encode()) + sum(len(a.data) for a in attachments),
        "dedupe_source": source,
        "dedupe_key": dedupe_key,
        "created_at": created_at,
    }
    # Core statements on the session's connection, not the unit of work: no flush is spent on them, nor the
    # ORM's execution path (Session.execute). Rows the caller left pending (a new thread, an inbound record)
    # reach the database first: the session is flushed once, a no-op when nothing is pending.
    session.flush()
    conn = session.connection()
    conn.execute(_INSERT_MESSAGE, values)
    if attachments:
        rows = []
        for item in attachments:
            att_id = new_id()
            rows.append(
                {
                    "id": att_id,
                    "message_id": message_id,
                    "filename_ct": key.seal(item.filename, aad=attachment_aad(att_id, "filename", thread.id)),
                    "content_type": item.content_type[:127],
                    "size": len(item.data),
                    "content_ct": key.seal(item.data, aad=attachment_aad(att_id, "content", thread.id)),
                }
            )
        conn.execute(_INSERT_ATTACHMENT, rows)
    conn.execute(_TOUCH_THREAD, {"thread_id": thread.id, "at": created_at})
    if isinstance(thread, Thread):
        # The row is written: the object says so too, without being marked for another UPDATE at the next flush.
        set_committed_value(thread, "last_message_at", created_at)
    # Not added to the session (its row is already written): callers read its attributes only.
    message = Message(**values)
    if notify:
        notify_other_party(session, thread, message)
    return message


_INSERT_MESSAGE = insert(Message.__table__)
_INSERT_ATTACHMENT = insert(Attachment.__table__)
_TOUCH_THREAD = (
    update(Thread.__table__)
    .where(Thread.__table__.c.id == bindparam("thread_id"))
    .values(last_message_at=bindparam("at"))
)


def find_duplicate(session: Session, source: str, key: str) -> Message | None:
    return session.scalar(select(Message).where(Message.dedupe_source == source, Message.dedupe_key == key))


_DUPLICATE = select(Message.__table__.c.id).where(
    Message.__table__.c.dedupe_source == bindparam("source"), Message.__table__.c.dedupe_key == bindparam("key")
)


def has_duplicate(session: Session, source: str, key: str) -> bool:
    """Whether a message with this dedupe key is stored (`find_duplicate` without loading it)."""
    return session.connection().execute(_DUPLICATE, {"source": source, "key": key}).first() is not None


def read_thread(session: Session, keys: Keystore, thread: Thread, *, actor: str) -> dict[str, Any]:
    """The decrypted thread as plain data; the read itself is written to the audit log."""
    record(session, actor, "thread.read", "thread", thread.id)
    practitioner = session.get(Practitioner, thread.practitioner_id)
    view: dict[str, Any] = {
        "id": thread.id,
        "status": thread.status,
        "code": thread.code,
        "patient_id": thread.patient_id,
        "practitioner": practitioner.slug if practitioner else None,
        "created_at": thread.created_at.isoformat(),
    }
    try:
        key = thread_key(session, keys, thread)
    except DecryptionError:
        key = None
    view["erased"] = key is None
    view["subject"] = key.open_text(thread.subject_ct, aad=subject_aad(thread.id)) if key else None
    messages = session.scalars(select(Message).where(Message.thread_id == thread.id).order_by(Message.created_at, Message.id))
    view["messages"] = []
    for m in messages:
        atts = session.scalars(select(Attachment).where(Attachment.message_id == m.id).order_by(Attachment.created_at))
        view["messages"].append(
            {
                "id": m.id,
                "author": m.author,
                "channel": m.channel,
                "body": key.open_text(m.body_ct, aad=body_aad(m.id, thread.id)) if key else None,
                "erased": key is None,
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
                "created_at": m.created_at.isoformat(),
            }
        )
    return view


def attachment_content(session: Session, keys: Keystore, attachment: Attachment, thread: Thread) -> tuple[str, bytes]:
    key = thread_key(session, keys, thread)
    name = key.open_text(attachment.filename_ct, aad=attachment_aad(attachment.id, "filename", thread.id))
    return name, key.open(attachment.content_ct, aad=attachment_aad(attachment.id, "content", thread.id))


def list_threads(session: Session, *, patient_id: str | None = None, practitioner_id: str | None = None) -> list[Thread]:
    stmt = select(Thread).order_by(Thread.created_at.desc())
    if patient_id is not None:
        stmt = stmt.where(Thread.patient_id == patient_id)
    if practitioner_id is not None:
        stmt = stmt.where(Thread.practitioner_id == practitioner_id)
    return list(session.scalars(stmt))


def close_thread(session: Session, thread: Thread, *, actor: str) -> None:
    """Closing also revokes the reply addresses: a later reply is refused with a clear text."""
    if thread.status != "closed":
        thread.status = "closed"
        thread.token_version += 1
        record(session, actor, "thread.close", "thread", thread.id)
