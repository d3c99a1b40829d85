"""Outbox rows: written in the same transaction as the message that causes them, claimed later by the
dispatcher. They hold ids only; the notice is rendered when it is sent."""
from __future__ import annotations

from typing import Protocol

from sqlalchemy import insert
from sqlalchemy.orm import Session

from gateway.db.tables import Message, OutboxRow, new_id, utcnow

_INSERT = insert(OutboxRow.__table__)


class ThreadParties(Protocol):
    """A thread as a notice needs it: a `Thread` row, or the `ThreadRef` that posting reads."""

    @property
    def id(self) -> str: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def practitioner_id(self) -> str: ...


def add_notice(
    session: Session,
    kind: str,
    *,
    patient_id: str | None = None,
    practitioner_id: str | None = None,
    thread_id: str | None = None,
    message_id: str | None = None,
    contact_id: str | None = None,
    channel: str | None = None,
) -> str:
    """Write a pending notice now (a Core statement, after the session has flushed the rows it refers to);
    returns the new row's id."""
    if (patient_id is None) == (practitioner_id is None):
        raise ValueError("a notice has exactly one recipient")
    now, row_id = utcnow(), new_id()
    values = dict(
        id=row_id,
        kind=kind,
        patient_id=patient_id,
        practitioner_id=practitioner_id,
        thread_id=thread_id,
        message_id=message_id,
        contact_id=contact_id,
        channel=channel,
        state="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    # The message, thread or contact the notice names may still be pending in the session: flushed first
    # (a no-op when nothing is), then the row is written on the session's connection.
    session.flush()
    session.connection().execute(_INSERT, values)
    # Read by the in-process dispatcher after the commit, to send at once instead of at its next poll.
    session.info["outbox_written"] = True
    return row_id


def notify_other_party(session: Session, thread: ThreadParties, message: Message) -> str | None:
    """A practitioner's message notifies the patient and the other way round; system notes notify nobody."""
    if message.author == "practitioner":
        return add_notice(session, "new_message", patient_id=thread.patient_id, thread_id=thread.id, message_id=message.id)
    if message.author == "patient":
        return add_notice(
            session, "new_message", practitioner_id=thread.practitioner_id, thread_id=thread.id, message_id=message.id
        )
    return None
