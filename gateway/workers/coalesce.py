"""Coalescing: one "new message" notice per thread and recipient until they come to read it.

A new_message notice is not sent while another one for the same thread and recipient is still on its
way (created earlier, not finished), or was sent less than GATEWAY_NOTICE_COALESCE_MINUTES ago and the
recipient has not been back since (no login link spent, no audited action of theirs after it was sent).
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from gateway.db.tables import AuditEvent, LoginToken, OutboxRow

IN_FLIGHT = ("pending", "queued", "sending")
SENT = ("sent", "delivered")


def covering_notice(session: Session, row: OutboxRow, *, now: datetime, window: timedelta) -> str | None:
    """The id of a notice that already tells this recipient about this thread, or None: send `row`."""
    if row.kind != "new_message" or row.thread_id is None or window <= timedelta(0):
        return None
    same = (
        OutboxRow.kind == "new_message",
        OutboxRow.thread_id == row.thread_id,
        OutboxRow.id != row.id,
        OutboxRow.patient_id == row.patient_id
        if row.patient_id is not None
        else OutboxRow.practitioner_id == row.practitioner_id,
    )
    # One query for both rules; a thread holds few notices that are in flight or recently sent.
    candidates = session.execute(
        select(OutboxRow.id, OutboxRow.state, OutboxRow.created_at, OutboxRow.sent_at).where(
            *same,
            or_(
                OutboxRow.state.in_(IN_FLIGHT),
                and_(OutboxRow.state.in_(SENT), OutboxRow.sent_at > now - window),
            ),
        )
    ).all()
    # Creation order settles which of two concurrent notices goes out: the earlier one, always.
    mine = (row.created_at, row.id)
    earlier = [c.id for c in candidates if c.state in IN_FLIGHT and (c.created_at, c.id) < mine]
    if earlier:
        return earlier[0]
    sent = [c for c in candidates if c.state in SENT and c.sent_at is not None]
    if not sent:
        return None
    last = max(sent, key=lambda c: c.sent_at)
    return None if came_back(session, row, since=last.sent_at) else last.id


def came_back(session: Session, row: OutboxRow, *, since: datetime) -> bool:
    """Whether the row's recipient logged in (spent a link) or did anything audited since `since`."""
    if row.patient_id is not None:
        owner, actor = LoginToken.patient_id == row.patient_id, f"patient:{row.patient_id}"
    else:
        owner, actor = LoginToken.practitioner_id == row.practitioner_id, f"practitioner:{row.practitioner_id}"
    spent = session.scalar(select(LoginToken.id).where(owner, LoginToken.used_at >= since).limit(1))
    if spent is not None:
        return True
    # A failed login attempt (or a failed second factor) is not coming back to read.
    seen = session.scalar(
        select(AuditEvent.id)
        .where(AuditEvent.actor == actor, AuditEvent.at >= since, AuditEvent.action.not_like("%failed"))
        .limit(1)
    )
    return seen is not None
