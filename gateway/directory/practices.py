"""Practices and their practitioners."""
from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.crypto import binding
from gateway.db.keystore import Keystore
from gateway.db.tables import ContactPoint, Practice, Practitioner, new_id
from gateway.directory.contacts import add_contact, normalize_email, normalize_phone
from gateway.errors import Conflict, InvalidInput, NotFound

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
# Local parts the mail domain keeps for itself: a practitioner slug may not take them.
RESERVED_SLUGS = frozenset({"postmaster", "abuse", "mailer-daemon", "noreply", "no-reply", "notifications", "admin"})


def check_slug(slug: str) -> str:
    slug = (slug or "").strip().lower()
    if not _SLUG.match(slug) or slug.startswith("r-"):
        raise InvalidInput("slug must be lower-case letters, digits and dashes (not starting with 'r-')")
    if slug in RESERVED_SLUGS:
        raise InvalidInput("slug is reserved")
    return slug


def add_practice(session: Session, *, slug: str, name: str, sms_number: str | None = None) -> Practice:
    slug = check_slug(slug)
    name = (name or "").strip()
    if not name or len(name) > 80 or "\n" in name:
        raise InvalidInput("practice name must be 1 to 80 characters on one line")
    number = normalize_phone(sms_number) if sms_number else None
    if session.scalar(select(Practice.id).where(Practice.slug == slug)):
        raise Conflict("a practice with this slug exists")
    if number and session.scalar(select(Practice.id).where(Practice.sms_number == number)):
        raise Conflict("this SMS number belongs to another practice")
    practice = Practice(id=new_id(), slug=slug, display_name=name, sms_number=number)
    session.add(practice)
    return practice


def get_practice(session: Session, slug: str) -> Practice:
    practice = session.scalar(select(Practice).where(Practice.slug == (slug or "").strip().lower()))
    if practice is None:
        raise NotFound("unknown practice")
    return practice


def practitioner_name_aad(practitioner_id: str) -> bytes:
    return binding("practitioners", practitioner_id, "name")


def add_practitioner(
    session: Session, keys: Keystore, *, practice_slug: str, slug: str, name: str, email: str, messaging: bool = True
) -> Practitioner:
    practice = get_practice(session, practice_slug)
    slug = check_slug(slug)
    if not (name or "").strip():
        raise InvalidInput("practitioner name is required")
    address = normalize_email(email)
    if session.scalar(select(Practitioner.id).where(Practitioner.slug == slug)):
        raise Conflict("a practitioner with this slug exists")
    practitioner = Practitioner(id=new_id(), practice_id=practice.id, slug=slug, messaging_enabled=messaging)
    practitioner.name_ct = keys.directory.seal(name.strip(), aad=practitioner_name_aad(practitioner.id))
    session.add(practitioner)
    session.flush()
    # The practice attests its own practitioners' addresses.
    add_contact(session, keys, keys.directory, kind="email", normalised=address, verified=True, practitioner_id=practitioner.id)
    return practitioner


def get_practitioner(session: Session, slug: str) -> Practitioner:
    practitioner = session.scalar(select(Practitioner).where(Practitioner.slug == (slug or "").strip().lower()))
    if practitioner is None:
        raise NotFound("unknown practitioner")
    return practitioner


def get_practitioner_by_id(session: Session, practitioner_id: str) -> Practitioner:
    practitioner = session.get(Practitioner, practitioner_id)
    if practitioner is None:
        raise NotFound("unknown practitioner")
    return practitioner


def practitioner_name(keys: Keystore, practitioner: Practitioner) -> str:
    return keys.directory.open_text(practitioner.name_ct, aad=practitioner_name_aad(practitioner.id))


def practitioner_contacts(session: Session, practitioner_id: str) -> list[ContactPoint]:
    return list(session.scalars(select(ContactPoint).where(ContactPoint.practitioner_id == practitioner_id)))


__all__ = ["add_practice", "add_practitioner", "get_practice", "get_practitioner", "normalize_phone"]
