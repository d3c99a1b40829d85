"""Where a notice can go: the recipient's deliverable contacts, in the order they are tried.

Email first when the person has a verified address that does not bounce, then a verified phone that has
not opted out and is reachable. A row's `contact_id` pins one contact (a verification goes to the contact
being verified, verified or not); a row's `channel` is tried first (an SMS is answered by SMS).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final, Literal

from sqlalchemy import Connection, Row, bindparam, select

from gateway.db.tables import ContactPoint, OutboxRow
from gateway.notices import KINDS

Channel = Literal["email", "sms"]
ContactRow = Row[Any]  # a contact's `CONTACT_COLUMNS`
NoticeRow = OutboxRow | Row[Any]  # an outbox row, or a row of its columns by the same names
CONTACT_KIND: Final[dict[str, str]] = {"email": "email", "sms": "phone"}
CHANNEL_OF: Final[dict[str, Channel]] = {"email": "email", "phone": "sms"}
# Which contact column a permanent failure sets, by provider error code (the rest mark nothing:
# a refused sender number or a bad credential is our configuration, not the recipient's contact).
_UNREACHABLE_TWILIO: Final = frozenset(
    {"twilio-21211", "twilio-21214", "twilio-21614", "twilio-30003", "twilio-30005", "twilio-30006"}
)
# SMTP 5xx replies about our relay login rather than the recipient's mailbox.
_RELAY_AUTH_SMTP: Final = frozenset({"smtp-530", "smtp-534", "smtp-535", "smtp-538"})


# Built once: building and keying a statement costs more than running it (one of these per notice). Only
# the columns a route needs, as plain rows: loading ORM objects cost more than the query.
CONTACT_COLUMNS: Final = (
    ContactPoint.id,
    ContactPoint.kind,
    ContactPoint.value_ct,
    ContactPoint.patient_id,
    ContactPoint.practitioner_id,
    ContactPoint.verified_at,
    ContactPoint.bouncing_at,
    ContactPoint.opted_out_at,
    ContactPoint.unreachable_at,
)
# The order in which an owner's contacts are considered: the most recently verified first.
OWNER_CONTACTS_ORDER: Final = (ContactPoint.verified_at.desc(), ContactPoint.created_at.desc())
_PINNED_CONTACT: Final = select(*CONTACT_COLUMNS).where(ContactPoint.id == bindparam("contact_id"))
_PATIENT_CONTACTS: Final = (
    select(*CONTACT_COLUMNS).where(ContactPoint.patient_id == bindparam("owner_id")).order_by(*OWNER_CONTACTS_ORDER)
)
_PRACTITIONER_CONTACTS: Final = (
    select(*CONTACT_COLUMNS)
    .where(ContactPoint.practitioner_id == bindparam("owner_id"))
    .order_by(*OWNER_CONTACTS_ORDER)
)


@dataclass(frozen=True, slots=True)
class Route:
    channel: Channel
    contact_id: str


def deliverable(contact: ContactPoint | ContactRow, *, pinned: bool = False) -> bool:
    """Whether a notice may be sent to this contact now (a pinned contact need not be verified yet)."""
    if contact.value_ct is None or (contact.verified_at is None and not pinned):
        return False
    if contact.kind == "email":
        return contact.bouncing_at is None
    return contact.opted_out_at is None and contact.unreachable_at is None


def choose_routes(db: Connection, row: NoticeRow, *, sms_possible: bool = True) -> list[Route]:
    """The routes to try for `row`, best first; empty when the notice can go nowhere."""
    return [route for route, _ in route_contacts(db, row, sms_possible=sms_possible)]


def route_contacts(
    db: Connection, row: NoticeRow, *, sms_possible: bool = True, contacts: Sequence[ContactRow] | None = None
) -> list[tuple[Route, ContactRow]]:
    """`choose_routes` with each route's contact (the columns of `CONTACT_COLUMNS`), for the caller that
    reveals the address next. `contacts`: the recipient's contacts, already read in `OWNER_CONTACTS_ORDER`
    (the notice actor reads them with the row, in one query); else they are read here."""
    spec = KINDS.get(row.kind)
    if spec is None:
        return []
    allowed = {c for c in spec.channels if c != "sms" or sms_possible}
    if row.contact_id is not None:
        if contacts is not None:
            contact = next((c for c in contacts if c.id == row.contact_id), None)
        else:
            contact = db.execute(_PINNED_CONTACT, {"contact_id": row.contact_id}).one_or_none()
        if contact is None or not _belongs(contact, row) or not deliverable(contact, pinned=True):
            return []
        channel = CHANNEL_OF[contact.kind]
        return [(Route(channel, contact.id), contact)] if channel in allowed else []
    if contacts is None:
        if row.patient_id is not None:
            contacts = db.execute(_PATIENT_CONTACTS, {"owner_id": row.patient_id}).all()
        else:
            contacts = db.execute(_PRACTITIONER_CONTACTS, {"owner_id": row.practitioner_id}).all()
    best: dict[Channel, tuple[Route, ContactRow]] = {}
    for contact in contacts:
        channel = CHANNEL_OF.get(contact.kind)
        if channel in allowed and channel not in best and deliverable(contact):
            best[channel] = (Route(channel, contact.id), contact)
    order: list[Channel] = ["email", "sms"]
    if row.channel in best:
        order.sort(key=lambda c: c != row.channel)
    return [best[c] for c in order if c in best]


def _belongs(contact: ContactRow, row: NoticeRow) -> bool:
    if row.patient_id is not None:
        return contact.patient_id == row.patient_id
    return contact.practitioner_id == row.practitioner_id


def mark_contact(contact: ContactPoint, code: str, now: datetime | None = None) -> str | None:
    """Record on the contact what a permanent failure says about it; returns the column set, if any."""
    now = now or datetime.now(timezone.utc)
    if contact.kind == "email" and code.startswith("smtp-5") and code not in _RELAY_AUTH_SMTP:
        contact.bouncing_at = now
        return "bouncing_at"
    if contact.kind == "phone" and code == "twilio-21610":
        contact.opted_out_at = now
        return "opted_out_at"
    if contact.kind == "phone" and code in _UNREACHABLE_TWILIO:
        contact.unreachable_at = now
        return "unreachable_at"
    return None
