"""Patients: creation with their own data key, care relationships, and erasure by crypto-shredding."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.audit import record
from gateway.crypto import binding
from gateway.db.keystore import Keystore
from gateway.db.tables import CareRelationship, ContactPoint, OutboxRow, Patient, Practitioner, new_id
from gateway.directory.contacts import add_contact, normalize_email, normalize_phone
from gateway.directory.practices import get_practice, get_practitioner
from gateway.errors import Conflict, InvalidInput, NotFound

LOCALES = ("fr", "en")


def patient_name_aad(patient_id: str) -> bytes:
    return binding("patients", patient_id, "name")


def add_patient(
    session: Session,
    keys: Keystore,
    *,
    practice_slug: str,
    name: str,
    email: str | None = None,
    phone: str | None = None,
    verified: bool = False,
    locale: str = "fr",
    actor: str = "cli",
) -> Patient:
    practice = get_practice(session, practice_slug)
    name = (name or "").strip()
    if not name:
        raise InvalidInput("patient name is required")
    if locale not in LOCALES:
        raise InvalidInput("locale must be fr or en")
    address = normalize_email(email) if email else None
    number = normalize_phone(phone) if phone else None
    patient = Patient(id=new_id(), practice_id=practice.id, locale=locale)
    patient.kek_id, patient.dek_wrapped, dek = keys.new_patient_key(patient.id)
    patient.name_ct = dek.seal(name, aad=patient_name_aad(patient.id))
    session.add(patient)
    session.flush()
    for kind, value in (("email", address), ("phone", number)):
        if value:
            contact = add_contact(session, keys, dek, kind=kind, normalised=value, verified=verified, patient_id=patient.id)
            if verified:
                session.flush()
                record(session, actor, "contact.attested", "contact", contact.id, kind=kind)
    return patient


def get_patient(session: Session, patient_id: str) -> Patient:
    patient = session.get(Patient, (patient_id or "").strip())
    if patient is None:
        raise NotFound("unknown patient")
    return patient


def patient_name(keys: Keystore, patient: Patient) -> str:
    assert patient.name_ct is not None
    return keys.patient_key(patient).open_text(patient.name_ct, aad=patient_name_aad(patient.id))


def has_care(session: Session, patient_id: str, practitioner_id: str) -> bool:
    stmt = select(CareRelationship.id).where(
        CareRelationship.patient_id == patient_id, CareRelationship.practitioner_id == practitioner_id
    )
    return session.scalar(stmt) is not None


def add_care(session: Session, *, patient_id: str, practitioner_slug: str) -> tuple[CareRelationship, bool]:
    """Returns (relationship, created). Idempotent: an existing relationship is returned unchanged."""
    patient = get_patient(session, patient_id)
    if patient.erased_at is not None:
        raise Conflict("patient was erased")
    practitioner: Practitioner = get_practitioner(session, practitioner_slug)
    if practitioner.practice_id != patient.practice_id:
        raise Conflict("patient and practitioner belong to different practices")
    existing = session.scalar(
        select(CareRelationship).where(
            CareRelationship.patient_id == patient.id, CareRelationship.practitioner_id == practitioner.id
        )
    )
    if existing:
        return existing, False
    care = CareRelationship(id=new_id(), patient_id=patient.id, practitioner_id=practitioner.id)
    session.add(care)
    return care, True


def erase_patient(session: Session, patient_id: str, *, actor: str = "cli") -> Patient:
    """Crypto-shred: destroy the data key and the blind indexes; ciphertexts stay, unreadable forever."""
    patient = get_patient(session, patient_id)
    if patient.erased_at is None:
        patient.dek_wrapped = None
        patient.kek_id = None
        patient.name_ct = None
        patient.erased_at = datetime.now(timezone.utc)
        session.execute(
            update(ContactPoint).where(ContactPoint.patient_id == patient.id).values(bidx=None, value_ct=None)
        )
        session.execute(
            update(OutboxRow)
            .where(OutboxRow.patient_id == patient.id, OutboxRow.state == "pending")
            .values(state="failed", error_code="erased")
        )
        record(session, actor, "patient.erase", "patient", patient.id)
    return patient
