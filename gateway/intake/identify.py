"""Step: match the header From to a verified contact of the person the address lets write.

The envelope sender is recorded but may differ (forwarders rewrite it); the header From decides.
Every refusal here is decided before any 250 and echoes no address."""
from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from gateway.db.keystore import Keystore
from gateway.db.tables import CareRelationship, ContactPoint, Patient, Thread
from gateway.directory.contacts import normalize_email
from gateway.errors import InvalidInput, Reject
from gateway.intake.values import IdentifiedEmail, ParsedInbound, Sender

NOT_ALLOWED = Reject(550, "5.7.1", "Sender address not allowed to write to this address")
UNVERIFIED = Reject(
    550, "5.7.1", "Sender address not verified yet: please confirm it from the link your practice sent you"
)
NO_FROM = Reject(550, "5.7.1", "A single valid From address is required")
AMBIGUOUS = Reject(550, "5.7.1", "Several patients share this address: please write from the secure portal")


_c = ContactPoint.__table__.c
# The columns the decision needs, as rows (no ORM objects are built for a lookup).
_CONTACTS: Final = select(_c.id, _c.patient_id, _c.practitioner_id, _c.bidx, _c.verified_at).where(
    _c.kind == "email", _c.bidx == bindparam("bidx")
)


def _contacts(session: Session, keys: Keystore, address: str) -> list[Row[Any]]:
    try:
        bidx = keys.index("email", normalize_email(address))
    except InvalidInput:
        raise NO_FROM from None
    return list(session.connection().execute(_CONTACTS, {"bidx": bidx}))


def _pick(contacts: list[Row[Any]]) -> Row[Any]:
    verified = [c for c in contacts if c.verified_at is not None]
    if verified:
        return verified[0]
    raise UNVERIFIED if contacts else NOT_ALLOWED


def identify(session: Session, keys: Keystore, item: ParsedInbound) -> IdentifiedEmail:
    address = item.email.from_address
    if not address:
        raise NO_FROM
    contacts = _contacts(session, keys, address)
    dest = item.destination
    if dest.kind == "reply":
        assert dest.thread_id is not None
        patient_id, practitioner_id = dest.patient_id, dest.practitioner_id
        if patient_id is None or practitioner_id is None:  # a destination not resolved by `route.resolve`
            thread = session.get(Thread, dest.thread_id)
            assert thread is not None
            patient_id, practitioner_id = thread.patient_id, thread.practitioner_id
        if dest.party == "patient":
            mine = [c for c in contacts if c.patient_id == patient_id]
            person = patient_id
        else:
            mine = [c for c in contacts if c.practitioner_id == practitioner_id]
            person = practitioner_id
        contact = _pick(mine)
        assert dest.party is not None
        return IdentifiedEmail(item, Sender(dest.party, person, contact.id, contact.bidx or ""), dest.thread_id)

    # A new thread: the From must be a verified patient of this practice in the practitioner's care.
    patient_contacts = [c for c in contacts if c.patient_id is not None]
    verified = [c for c in patient_contacts if c.verified_at is not None]
    candidates = []
    for contact in verified:
        patient = session.get(Patient, contact.patient_id)
        if patient is None or patient.erased_at is not None or patient.practice_id != dest.practice_id:
            continue
        care = session.scalar(
            select(CareRelationship.id).where(
                CareRelationship.patient_id == patient.id, CareRelationship.practitioner_id == dest.practitioner_id
            )
        )
        if care is not None:
            candidates.append(contact)
    if len(candidates) > 1:
        raise AMBIGUOUS
    if not candidates:
        raise UNVERIFIED if patient_contacts and not verified else NOT_ALLOWED
    contact = candidates[0]
    assert contact.patient_id is not None
    return IdentifiedEmail(item, Sender("patient", contact.patient_id, contact.id, contact.bidx or ""), None)
