"""The installation's keys, unwrapped once per process: blind index, directory data key, token signer,
and each patient's data key on demand."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.crypto import BlindIndex, DataKey, DecryptionError, KeyRing, Signer
from gateway.db.tables import Patient, SystemKey

SYSTEM_KEYS = ("index", "directory", "tokens")


def _context(name: str) -> str:
    return f"system-key:{name}"


def patient_key_context(patient_id: str) -> str:
    return f"patient-dek:{patient_id}"


def ensure_system_keys(session: Session, ring: KeyRing) -> None:
    """Create the installation's keys on first init; idempotent."""
    existing = set(session.scalars(select(SystemKey.name)))
    for name in SYSTEM_KEYS:
        if name not in existing:
            kek_id, wrapped = ring.wrap(DataKey.generate(), context=_context(name))
            session.add(SystemKey(name=name, kek_id=kek_id, wrapped=wrapped))


class PatientErased(DecryptionError):
    """The patient's data key was destroyed: their data is gone for good."""


@dataclass
class Keystore:
    ring: KeyRing
    index: BlindIndex
    directory: DataKey
    tokens: Signer

    @classmethod
    def load(cls, session: Session, ring: KeyRing) -> Keystore:
        rows = {k.name: k for k in session.scalars(select(SystemKey))}
        missing = [n for n in SYSTEM_KEYS if n not in rows]
        if missing:
            raise RuntimeError("the database is not initialised: run `gateway init`")

        def unwrap(name: str) -> bytes:
            return ring.unwrap(rows[name].kek_id, rows[name].wrapped, context=_context(name))

        return cls(ring, BlindIndex(unwrap("index")), DataKey(unwrap("directory")), Signer(unwrap("tokens")))

    def patient_key(self, patient: Patient) -> DataKey:
        return self.unwrap_patient_key(patient.id, patient.kek_id, patient.dek_wrapped)

    def unwrap_patient_key(self, patient_id: str, kek_id: str | None, wrapped: bytes | None) -> DataKey:
        """A patient's data key from the columns of their row (read without loading the row as an object)."""
        if wrapped is None or kek_id is None:
            raise PatientErased()
        return DataKey(self.ring.unwrap(kek_id, wrapped, context=patient_key_context(patient_id)))

    def new_patient_key(self, patient_id: str) -> tuple[str, bytes, DataKey]:
        dek = DataKey.generate()
        kek_id, wrapped = self.ring.wrap(dek, context=patient_key_context(patient_id))
        return kek_id, wrapped, DataKey(dek)


def rewrap_batch(session: Session, ring: KeyRing, limit: int = 500) -> int:
    """Re-wrap up to `limit` keys not yet under the newest KEK; returns how many were re-wrapped.
    Each batch is its own transaction (the caller commits), so an interrupted rotation resumes."""
    done = 0
    for key in session.scalars(select(SystemKey).where(SystemKey.kek_id != ring.newest_id)):
        raw = ring.unwrap(key.kek_id, key.wrapped, context=_context(key.name))
        key.kek_id, key.wrapped = ring.wrap(raw, context=_context(key.name))
        done += 1
    stmt = (
        select(Patient)
        .where(Patient.dek_wrapped.is_not(None), Patient.kek_id != ring.newest_id)
        .limit(limit)
    )
    for patient in session.scalars(stmt):
        assert patient.dek_wrapped is not None and patient.kek_id is not None
        raw = ring.unwrap(patient.kek_id, patient.dek_wrapped, context=patient_key_context(patient.id))
        patient.kek_id, patient.dek_wrapped = ring.wrap(raw, context=patient_key_context(patient.id))
        done += 1
    return done


def pending_rewrap(session: Session, ring: KeyRing) -> int:
    n = session.scalar(select(func.count()).select_from(SystemKey).where(SystemKey.kek_id != ring.newest_id)) or 0
    n += (
        session.scalar(
            select(func.count())
            .select_from(Patient)
            .where(Patient.dek_wrapped.is_not(None), Patient.kek_id != ring.newest_id)
        )
        or 0
    )
    return n

