"""CSV import for a practice migrating off plain email: `name,email,phone,practitioners,locale,verified`.

A dry run reports every bad row by line number and writes nothing. A real run commits one transaction per
batch and is idempotent: a row whose email or phone already belongs to a patient of the practice (found by
blind index) changes nothing but missing care relationships.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from tqdm import tqdm

from gateway.db.keystore import Keystore
from gateway.db.tables import ContactPoint, Patient, Practitioner
from gateway.directory.contacts import normalize_email, normalize_phone
from gateway.directory.patients import add_care, add_patient
from gateway.directory.practices import get_practice
from gateway.errors import GatewayError, InvalidInput

COLUMNS = ("name", "email", "phone", "practitioners", "locale", "verified")
BATCH = 200
_TRUE = {"1", "true", "yes", "oui", "y", "o", "x"}
_FALSE = {"", "0", "false", "no", "non", "n"}


@dataclass(frozen=True)
class Row:
    line: int
    name: str
    email: str | None
    phone: str | None
    practitioners: tuple[str, ...]
    locale: str
    verified: bool


@dataclass
class ImportReport:
    dry_run: bool
    created: int = 0
    unchanged: int = 0
    updated: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "created": self.created,
            "unchanged": self.unchanged,
            "updated": self.updated,
            "rejected": len(self.rejected),
            "errors": self.rejected,
        }


def _validate(line: int, raw: dict[str, str], known_slugs: set[str], default_locale: str) -> Row:
    name = (raw.get("name") or "").strip()
    if not name:
        raise InvalidInput("name is empty")
    email = normalize_email(raw["email"]) if (raw.get("email") or "").strip() else None
    phone = normalize_phone(raw["phone"]) if (raw.get("phone") or "").strip() else None
    if not email and not phone:
        raise InvalidInput("neither email nor phone")
    slugs = tuple(s.strip().lower() for s in (raw.get("practitioners") or "").split(";") if s.strip())
    unknown = [s for s in slugs if s not in known_slugs]
    if unknown:
        raise InvalidInput("unknown practitioner slug in this practice")
    locale = (raw.get("locale") or "").strip().lower() or default_locale
    if locale not in ("fr", "en"):
        raise InvalidInput("locale must be fr or en")
    flag = (raw.get("verified") or "").strip().lower()
    if flag not in _TRUE | _FALSE:
        raise InvalidInput("verified must be true or false")
    return Row(line, name, email, phone, slugs, locale, flag in _TRUE)


def _existing_patient(session: Session, keys: Keystore, practice_id: str, row: Row) -> Patient | None:
    for kind, value in (("email", row.email), ("phone", row.phone)):
        if not value:
            continue
        stmt = (
            select(Patient)
            .join(ContactPoint, ContactPoint.patient_id == Patient.id)
            .where(Patient.practice_id == practice_id, ContactPoint.kind == kind, ContactPoint.bidx == keys.index(kind, value))
        )
        patient = session.scalars(stmt).first()
        if patient is not None:
            return patient
    return None


def import_csv(gw: Any, path: Path, *, practice_slug: str, dry_run: bool = False) -> ImportReport:
    report = ImportReport(dry_run=dry_run)
    keys: Keystore = gw.keys
    with gw.readers() as session:
        practice = get_practice(session, practice_slug)
        slugs = set(session.scalars(select(Practitioner.slug).where(Practitioner.practice_id == practice.id)))
    default_locale = gw.settings.default_locale

    rows: list[Row] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("name", "email", "phone") if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidInput("CSV header must name the columns " + ",".join(COLUMNS))
        seen: set[tuple[str, str]] = set()
        for raw in reader:
            line = reader.line_num
            try:
                row = _validate(line, raw, slugs, default_locale)
            except GatewayError as exc:
                report.rejected.append({"line": line, "reason": str(exc)})
                continue
            # The same person twice in one file would otherwise be created twice in one batch.
            ids = {(k, v) for k, v in (("email", row.email), ("phone", row.phone)) if v}
            if ids & seen:
                report.rejected.append({"line": line, "reason": "duplicate of an earlier row"})
                continue
            seen |= ids
            rows.append(row)
    if dry_run:
        return report

    with tqdm(total=len(rows), desc="importing", unit="row", file=sys.stderr, disable=len(rows) < 1000) as bar:
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            with gw.transaction() as session:
                for row in batch:
                    _apply(session, keys, practice_slug, practice.id, row, report)
            bar.update(len(batch))
    return report


def _apply(session: Session, keys: Keystore, practice_slug: str, practice_id: str, row: Row, report: ImportReport) -> None:
    patient = _existing_patient(session, keys, practice_id, row)
    created = patient is None
    if patient is None:
        patient = add_patient(
            session, keys, practice_slug=practice_slug, name=row.name, email=row.email, phone=row.phone,
            verified=row.verified, locale=row.locale, actor="import",
        )
    new_care = sum(add_care(session, patient_id=patient.id, practitioner_slug=s)[1] for s in row.practitioners)
    if created:
        report.created += 1
    elif new_care:
        report.updated += 1
    else:
        report.unchanged += 1
