"""SMS held for triage: a verified patient's message that no rule routed to exactly one thread, sealed under
that patient's key until the practice files it into a thread (never a silent guess)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.audit import record
from gateway.crypto import binding
from gateway.db.keystore import Keystore
from gateway.db.tables import HeldSms, HeldSmsMedia, Patient, new_id
from gateway.errors import Conflict, NotFound
from gateway.intake.attachments import File
from gateway.threads.service import NewAttachment, get_thread, post_message


@dataclass(frozen=True)
class HeldContent:
    body: str
    media: tuple[NewAttachment, ...]


def _aad(held_id: str, column: str, row_id: str | None = None) -> bytes:
    return binding("held_sms", held_id, column, row_id)


def hold(
    session: Session,
    keys: Keystore,
    *,
    practice_id: str,
    patient: Patient,
    contact_id: str,
    message_sid: str,
    body: str,
    media: Sequence[File] = (),
) -> HeldSms:
    """Seal and keep the message; the caller owns the transaction (and the patient's notice)."""
    key = keys.patient_key(patient)
    held = HeldSms(
        id=new_id(), practice_id=practice_id, patient_id=patient.id, contact_id=contact_id, message_sid=message_sid,
        size=len(body.encode()) + sum(len(m.data) for m in media), created_at=datetime.now(timezone.utc),
    )
    held.body_ct = key.seal(body, aad=_aad(held.id, "body"))
    session.add(held)
    session.flush()  # no ORM relationships: the parent row goes first
    for item in media:
        row = HeldSmsMedia(id=new_id(), held_id=held.id, content_type=item.content_type[:127], size=len(item.data))
        row.filename_ct = key.seal(item.filename, aad=_aad(held.id, "filename", row.id))
        row.content_ct = key.seal(item.data, aad=_aad(held.id, "content", row.id))
        session.add(row)
    return held


def list_held(session: Session, practice_id: str) -> list[HeldSms]:
    """The practice's triage queue, oldest first."""
    stmt = (
        select(HeldSms)
        .where(HeldSms.practice_id == practice_id, HeldSms.released_at.is_(None))
        .order_by(HeldSms.created_at, HeldSms.id)
    )
    return list(session.scalars(stmt))


def held_content(session: Session, keys: Keystore, held: HeldSms) -> HeldContent:
    patient = session.get(Patient, held.patient_id)
    if patient is None:
        raise NotFound("unknown patient")
    key = keys.patient_key(patient)
    media = tuple(
        NewAttachment(
            key.open_text(m.filename_ct, aad=_aad(held.id, "filename", m.id)),
            m.content_type,
            key.open(m.content_ct, aad=_aad(held.id, "content", m.id)),
        )
        for m in session.scalars(select(HeldSmsMedia).where(HeldSmsMedia.held_id == held.id).order_by(HeldSmsMedia.id))
    )
    return HeldContent(key.open_text(held.body_ct, aad=_aad(held.id, "body")), media)


def release_held(session: Session, keys: Keystore, held_id: str, thread_id: str, *, actor: str) -> str:
    """File a held SMS into a thread of the same practice, as the patient's message; returns the message id.

    The held copy is destroyed once filed: the thread holds the message, sealed under its patient's key."""
    held = session.get(HeldSms, held_id)
    if held is None:
        raise NotFound("unknown held message")
    if held.released_at is not None:
        raise Conflict("this message was already filed")
    thread = get_thread(session, thread_id)
    if thread.practice_id != held.practice_id:
        raise Conflict("the thread belongs to another practice")
    if thread.patient_id != held.patient_id:
        # Another patient would read it: a held SMS is only ever filed into its own sender's thread.
        raise Conflict("the thread belongs to another patient")
    content = held_content(session, keys, held)
    message = post_message(
        session, keys, thread, author="patient", channel="sms", body=content.body, attachments=content.media,
        dedupe=("sms", held.message_sid),
    )
    for media in session.scalars(select(HeldSmsMedia).where(HeldSmsMedia.held_id == held.id)):
        session.delete(media)
    held.body_ct = b""
    held.released_at = datetime.now(timezone.utc)
    held.message_id = message.id
    record(session, actor, "held_sms.release", "message", message.id, held=held.id)
    return message.id
