"""Coalescing: one "new message" notice per thread and recipient until they come to read it.

A new_message notice is not sent while another one for the same thread and recipient is still on its
way (created earlier, not finished), or was sent less than GATEWAY_NOTICE_COALESCE_MINUTES ago and the
recipient has not been back since (no login link spent, no audited action of theirs after it was sent).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import ColumnElement, Connection, Exists, Select, and_, bindparam, exists, or_, select
from sqlalchemy.orm import aliased

from gateway.db.tables import AuditEvent, LoginToken, OutboxRow
from gateway.workers.channels import NoticeRow

IN_FLIGHT = ("pending", "queued", "sending")
SENT = ("sent", "delivered")


def _one_of(column: ColumnElement[str], values: tuple[str, ...]) -> ColumnElement[bool]:
    # `column IN (...)` spelt with plain bind parameters: an IN list's expanding parameter is rendered
    # again at every execution, which costs more than the query on SQLite.
    return or_(*(column == value for value in values))


def _candidate_terms(
    other: type[OutboxRow], *, thread_id: object, row_id: object, owner: ColumnElement[bool], since: object
) -> tuple[ColumnElement[bool], ...]:
    # One query for both rules; a thread holds few notices that are in flight or recently sent.
    return (
        other.kind == "new_message",
        other.thread_id == thread_id,
        other.id != row_id,
        owner,
        or_(_one_of(other.state, IN_FLIGHT), and_(_one_of(other.state, SENT), other.sent_at > since)),
    )


def _candidates(owner: ColumnElement[bool]) -> Select[tuple[str, str, datetime, datetime | None]]:
    return select(OutboxRow.id, OutboxRow.state, OutboxRow.created_at, OutboxRow.sent_at).where(
        *_candidate_terms(
            OutboxRow,
            thread_id=bindparam("thread_id"),
            row_id=bindparam("row_id"),
            owner=owner,
            since=bindparam("since"),
        )
    )


def any_candidate() -> Exists:
    """Whether `covering_notice` has anything to look at for the enclosing query's outbox row (most notices
    have not: asked inside the query that reads the row, it saves a query per notice). Its bind parameter
    `coalesce_since` is `since` of `covering_notice`: now less the coalescing window."""
    other = aliased(OutboxRow)
    owner = or_(
        other.patient_id == OutboxRow.patient_id,
        and_(OutboxRow.patient_id.is_(None), other.practitioner_id == OutboxRow.practitioner_id),
    )
    return exists().where(
        *_candidate_terms(
            other, thread_id=OutboxRow.thread_id, row_id=OutboxRow.id, owner=owner, since=bindparam("coalesce_since")
        )
    )


# Built once (with bind parameters) rather than per notice: building and keying a statement costs more
# than running it on SQLite.
_PATIENT_CANDIDATES: Final = _candidates(OutboxRow.patient_id == bindparam("owner_id"))
_PRACTITIONER_CANDIDATES: Final = _candidates(OutboxRow.practitioner_id == bindparam("owner_id"))
_SPENT: Final = {
    owner: select(LoginToken.id).where(column == bindparam("owner_id"), LoginToken.used_at >= bindparam("since")).limit(1)
    for owner, column in (("patient", LoginToken.patient_id), ("practitioner", LoginToken.practitioner_id))
}
# A failed login attempt (or a failed second factor) is not coming back to read.
_SEEN: Final = (
    select(AuditEvent.id)
    .where(AuditEvent.actor == bindparam("actor"), AuditEvent.at >= bindparam("since"), AuditEvent.action.not_like("%failed"))
    .limit(1)
)


def covering_notice(db: Connection, row: NoticeRow, *, now: datetime, window: timedelta) -> str | None:
    """The id of a notice that already tells this recipient about this thread, or None: send `row`."""
    if row.kind != "new_message" or row.thread_id is None or window <= timedelta(0):
        return None
    by_patient = row.patient_id is not None
    candidates = db.execute(
        _PATIENT_CANDIDATES if by_patient else _PRACTITIONER_CANDIDATES,
        {
            "thread_id": row.thread_id,
            "row_id": row.id,
            "owner_id": row.patient_id if by_patient else row.practitioner_id,
            "since": now - window,
        },
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
    return None if came_back(db, row, since=last.sent_at) else last.id


def came_back(db: Connection, row: NoticeRow, *, since: datetime) -> bool:
    """Whether the row's recipient logged in (spent a link) or did anything audited since `since`."""
    if row.patient_id is not None:
        owner, owner_id = "patient", row.patient_id
    else:
        owner, owner_id = "practitioner", row.practitioner_id
    if db.scalar(_SPENT[owner], {"owner_id": owner_id, "since": since}) is not None:
        return True
    return db.scalar(_SEEN, {"actor": f"{owner}:{owner_id}", "since": since}) is not None
