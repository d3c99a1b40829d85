"""Where a notice can go: the recipient's deliverable contacts, in the order they are tried.

Email first when the person has a verified address that does not bounce, then a verified phone that has
not opted out and is reachable. A row's `contact_id` pins one contact (a verification goes to the contact
being verified, verified or not); a row's `channel` is tried first (an SMS is answered by SMS).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Final, Literal

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from gateway.db.tables import ContactPoint, OutboxRow
from gateway.notices import KINDS

Channel = Literal["email", "sms"]
CONTACT_KIND: Final[dict[str, str]] = {"email": "email", "sms": "phone"}
CHANNEL_OF: Final[dict[str, Channel]] = {"email": "email", "phone": "sms"}
# Which contact column a permanent failure sets, by provider error code (the rest mark nothing:
# a refused sender number or a bad credential is our configuration, not the recipient's contact).
_UNREACHABLE_TWILIO: Final = frozenset(
    {"twilio-21211", "twilio-21214", "twilio-21614", "twilio-30003", "twilio-30005", "twilio-30006"}
)
# SMTP 5xx replies about our relay login rather than the recipient's mailbox.
_RELAY_AUTH_SMTP: Final = frozenset({"smtp-530", "smtp-534", "smtp-535", "smtp-538"})


# Built once: building and keying a statement costs more than running it (one of these per notice).
_PATIENT_CONTACTS: Final = (
    select(ContactPoint)
    .where(ContactPoint.patient_id == bindparam("owner_id"))
    .order_by(ContactPoint.verified_at.desc(), ContactPoint.created_at.desc())
)
_PRACTITIONER_CONTACTS: Final = (
    select(ContactPoint)
    .where(ContactPoint.practitioner_id == bindparam("owner_id"))
    .order_by(ContactPoint.verified_at.desc(), ContactPoint.created_at.desc())
)


@dataclass(frozen=True, slots=True)
class Route:
    channel: Channel
    contact_id: str


def deliverable(contact: ContactPoint, *, pinned: bool = False) -> bool:
    """Whether a notice may be sent to this contact now (a pinned contact need not be verified yet)."""
    if contact.value_ct is None or (contact.verified_at is None and not pinned):
        return False
    if contact.kind == "email":
        return contact.bouncing_at is None
    return contact.opted_out_at is None and contact.unreachable_at is None


def choose_routes(session: Session, row: OutboxRow, *, sms_possible: bool = True) -> list[Route]:
    """The routes to try for `row`, best first; empty when the notice can go nowhere."""
    return [route for route, _ in route_contacts(session, row, sms_possible=sms_possible)]


def route_contacts(session: Session, row: OutboxRow, *, sms_possible: bool = True) -> list[tuple[Route, ContactPoint]]:
    """`choose_routes` with each route's contact row, for the caller that reveals the address next."""
    spec = KINDS.get(row.kind)
    if spec is None:
        return []
    allowed = {c for c in spec.channels if c != "sms" or sms_possible}
    if row.contact_id is not None:
        contact = session.get(ContactPoint, row.contact_id)
        if contact is None or not _belongs(contact, row) or not deliverable(contact, pinned=True):
            return []
        channel = CHANNEL_OF[contact.kind]
        return [(Route(channel, contact.id), contact)] if channel in allowed else []
    if row.patient_id is not None:
        contacts = session.scalars(_PATIENT_CONTACTS, {"owner_id": row.patient_id})
    else:
        contacts = session.scalars(_PRACTITIONER_CONTACTS, {"owner_id": row.practitioner_id})
    best: dict[Channel, tuple[Route, ContactPoint]] = {}
    for contact in contacts:
        channel = CHANNEL_OF.get(contact.kind)
        if channel in allowed and channel not in best and deliverable(contact):
            best[channel] = (Route(channel, contact.id), contact)
    order: list[Channel] = ["email", "sms"]
    if row.channel in best:
        order.sort(key=lambda c: c != row.channel)
    return [best[c] for c in order if c in best]


def _belongs(contact: ContactPoint, row: OutboxRow) -> bool:
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
