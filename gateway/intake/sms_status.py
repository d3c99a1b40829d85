"""Twilio status callbacks: a notice's delivery state only moves forward, and what a failure says about the
number is written on its contact (21610: opted out; 30003/30005/30006: unreachable, so notices use email).

Each (MessageSid, status) is recorded once; a callback that arrives before the notice's provider id was
committed is kept and applied by `apply_recorded` when the sender records that id."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Final, Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.app import Gateway
from gateway.audit import record
from gateway.db.tables import ContactPoint, OutboxRow, SmsStatusEvent
from gateway.logs import get_logger
from gateway.metrics import NOTICES
from gateway.notices.kinds import KINDS
from gateway.outbox import add_notice

log = get_logger("gateway.intake.sms_status")

# Twilio's message statuses and the outbox state each one means; None: no news for the outbox.
TWILIO_STATES: Final[dict[str, str | None]] = {
    "accepted": None,
    "scheduled": None,
    "queued": None,
    "sending": None,
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "failed",
}
# The outbox states a callback may move a notice out of, for each state it moves it to.
_EARLIER: Final[dict[str, tuple[str, ...]]] = {
    "sent": ("pending", "sending"),
    "delivered": ("pending", "sending", "sent"),
    "undelivered": ("pending", "sending", "sent"),
    "failed": ("pending", "sending", "sent"),
}
OPTED_OUT_CODES: Final = frozenset({"21610"})
UNREACHABLE_CODES: Final = frozenset({"30003", "30005", "30006"})

StatusOutcome = Literal["applied", "unchanged", "pending", "duplicate", "ignored"]


@dataclass(frozen=True)
class StatusCallback:
    message_sid: str
    status: str
    error_code: str | None


@dataclass(frozen=True)
class StatusResult:
    outcome: StatusOutcome
    state: str | None = None
    notice_id: str | None = None


def parse(form: Mapping[str, str]) -> StatusCallback | None:
    sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
    status = (form.get("MessageStatus") or form.get("SmsStatus") or "").strip().lower()
    code = (form.get("ErrorCode") or "").strip()
    if not re.fullmatch(r"(?:SM|MM)[0-9a-fA-F]{32}", sid) or status not in TWILIO_STATES:
        return None
    return StatusCallback(sid, status, code if code.isdigit() and len(code) <= 16 else None)


def record_status(session: Session, callback: StatusCallback) -> StatusResult:
    """Record the callback (a repeat raises IntegrityError) and apply it to its notice if it is known yet."""
    event = SmsStatusEvent(message_sid=callback.message_sid, status=callback.status, error_code=callback.error_code)
    session.add(event)
    session.flush()
    row = session.scalar(select(OutboxRow).where(OutboxRow.provider_id == callback.message_sid))
    if row is None:
        return StatusResult("pending")
    event.applied = True
    return _apply(session, row, callback)


def apply_recorded(session: Session, row: OutboxRow) -> None:
    """Apply the callbacks that arrived before `row.provider_id` was committed (the sender calls this
    right after recording the provider id)."""
    if not row.provider_id:
        return
    events = session.scalars(
        select(SmsStatusEvent).where(SmsStatusEvent.message_sid == row.provider_id, SmsStatusEvent.applied.is_(False))
    )
    for event in events:
        event.applied = True
        _apply(session, row, StatusCallback(event.message_sid, event.status, event.error_code))


def _apply(session: Session, row: OutboxRow, callback: StatusCallback) -> StatusResult:
    state = TWILIO_STATES[callback.status]
    if state is None:
        return StatusResult("unchanged", row.state, row.id)
    values: dict[str, object] = {"state": state}
    failed = state in ("failed", "undelivered")
    if failed:
        values["error_code"] = f"twilio-{callback.error_code}" if callback.error_code else "twilio-" + state
    # Conditional on the current state: a late "sent" never undoes "delivered", even against a concurrent callback.
    moved = session.execute(
        update(OutboxRow)
        .where(OutboxRow.id == row.id, OutboxRow.state.in_(_EARLIER[state]))
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(row)
    if not moved:
        return StatusResult("unchanged", row.state, row.id)
    NOTICES.labels("sms", state).inc()
    if failed:
        _mark_contact(session, row, callback.error_code)
        _fall_back(session, row)
    return StatusResult("applied", state, row.id)


def _mark_contact(session: Session, row: OutboxRow, code: str | None) -> None:
    if code not in OPTED_OUT_CODES and code not in UNREACHABLE_CODES:
        return
    contact = _recipient_phone(session, row)
    if contact is None:
        return
    now = datetime.now(timezone.utc)
    if code in OPTED_OUT_CODES:
        contact.opted_out_at = contact.opted_out_at or now
        action = "contact.opted_out"
    else:
        contact.unreachable_at = contact.unreachable_at or now
        action = "contact.unreachable"
    record(session, "twilio", action, "contact", contact.id, code=f"twilio-{code}", notice=row.id)


def _recipient_phone(session: Session, row: OutboxRow) -> ContactPoint | None:
    """The number the notice went to: its fixed contact, or its recipient's only phone number."""
    if row.contact_id is not None:
        return session.get(ContactPoint, row.contact_id)
    owner = (
        ContactPoint.patient_id == row.patient_id if row.patient_id else ContactPoint.practitioner_id == row.practitioner_id
    )
    phones = list(session.scalars(select(ContactPoint).where(owner, ContactPoint.kind == "phone")))
    return phones[0] if len(phones) == 1 else None


def _fall_back(session: Session, row: OutboxRow) -> None:
    """An SMS notice that never arrived is sent again by email, when its kind has an email form."""
    kind = KINDS.get(row.kind)
    if kind is None or "email" not in kind.channels:
        return
    add_notice(
        session, row.kind, patient_id=row.patient_id, practitioner_id=row.practitioner_id, thread_id=row.thread_id,
        message_id=row.message_id, channel="email",
    )


class StatusIntake:
    """Built once per process; `receive` runs in a worker thread."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def receive(self, form: Mapping[str, str]) -> StatusResult:
        callback = parse(form)
        if callback is None:
            result = StatusResult("ignored")
        else:
            try:
                with self.gw.transaction() as session:
                    result = record_status(session, callback)
            except IntegrityError:
                if not self._seen(callback):
                    raise
                result = StatusResult("duplicate")
        log.info("sms.status." + result.outcome, state=result.state, notice=result.notice_id)
        return result

    def _seen(self, callback: StatusCallback) -> bool:
        with self.gw.readers() as session:
            return session.get(SmsStatusEvent, (callback.message_sid, callback.status)) is not None
