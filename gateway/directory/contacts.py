"""Email addresses and phone numbers: normalisation, sealing, blind-index lookup, reveal."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from email.errors import HeaderParseError
from email.headerregistry import Address

import phonenumbers
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.crypto import DataKey, binding
from gateway.db.keystore import Keystore
from gateway.db.tables import ContactPoint, Patient, new_id
from gateway.errors import InvalidInput

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$")
DEFAULT_REGION = "FR"


# A plain address (dot-atom local part, ASCII domain): what the header parser would give back unchanged, so
# it is checked here without it (the parser is most of the cost of identifying a sender).
_PLAIN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9.-]+")


def normalize_email(value: str) -> str:
    """The lower-cased addr-spec, or InvalidInput (the message never echoes the value)."""
    text = (value or "").strip()
    if _PLAIN.fullmatch(text):
        if not _DOMAIN.match(text.rpartition("@")[2].lower()):
            raise InvalidInput("malformed email address")
        return text.lower()
    try:
        addr = Address(addr_spec=text)
    except (HeaderParseError, ValueError, IndexError, AttributeError):  # AttributeError: the stdlib on "a@["
        raise InvalidInput("malformed email address") from None
    if not addr.username or not addr.domain or " " in text or addr.addr_spec != text:
        raise InvalidInput("malformed email address")
    domain = addr.domain.lower().rstrip(".")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidInput("malformed email address") from None
    if not _DOMAIN.match(domain):
        raise InvalidInput("malformed email address")
    return f"{addr.username}@{domain}".lower()


def normalize_phone(value: str, region: str = DEFAULT_REGION) -> str:
    """E.164, or InvalidInput when phonenumbers cannot parse it as a possible number.

    "Possible" (right length for its country) rather than "valid" (an allocated range): practices use
    test and newly allocated numbers that the bundled metadata does not know yet."""
    try:
        number = phonenumbers.parse((value or "").strip(), region)
    except phonenumbers.NumberParseException:
        raise InvalidInput("phone number cannot be parsed") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidInput("phone number is not a possible number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize(kind: str, value: str) -> str:
    return normalize_email(value) if kind == "email" else normalize_phone(value)


def _aad(contact_id: str) -> bytes:
    return binding("contact_points", contact_id, "value")


def owner_key(session: Session, keys: Keystore, contact: ContactPoint) -> DataKey:
    if contact.patient_id is not None:
        patient = session.get(Patient, contact.patient_id)
        assert patient is not None
        return keys.patient_key(patient)
    return keys.directory


def add_contact(
    session: Session,
    keys: Keystore,
    key: DataKey,
    *,
    kind: str,
    normalised: str,
    verified: bool,
    patient_id: str | None = None,
    practitioner_id: str | None = None,
) -> ContactPoint:
    contact = ContactPoint(id=new_id(), kind=kind, patient_id=patient_id, practitioner_id=practitioner_id)
    contact.value_ct = key.seal(normalised, aad=_aad(contact.id))
    contact.bidx = keys.index(kind, normalised)
    contact.verified_at = datetime.now(timezone.utc) if verified else None
    session.add(contact)
    return contact


def find_contacts(session: Session, keys: Keystore, kind: str, normalised: str) -> list[ContactPoint]:
    stmt = select(ContactPoint).where(ContactPoint.kind == kind, ContactPoint.bidx == keys.index(kind, normalised))
    return list(session.scalars(stmt))


def reveal(session: Session, keys: Keystore, contact: ContactPoint) -> str:
    """The contact's value in the clear, for the one moment a sender needs it."""
    if contact.value_ct is None:
        raise InvalidInput("contact was erased")
    return open_value(owner_key(session, keys, contact), contact)


def open_value(key: DataKey, contact: ContactPoint) -> str:
    """`reveal` for a caller that already holds the owner's key (see `owner_key`); `contact` needs only
    its `id` and `value_ct`, so a row of selected columns will do."""
    if contact.value_ct is None:
        raise InvalidInput("contact was erased")
    return key.open_text(contact.value_ct, aad=_aad(contact.id))
