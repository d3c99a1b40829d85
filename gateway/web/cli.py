"""Commands for the portal and the API: API keys, practitioner invitations, contact verification requests.

`gateway apikey create|revoke|list` are registered here; `gateway practitioner invite` and `gateway patient
verify` live in the existing groups of gateway/cli.py, which import their handlers from this module.
"""
from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.audit import record
from gateway.db.tables import ContactPoint, Patient
from gateway.errors import Conflict, NotFound

INVITE_TTL = timedelta(days=7)


def _gateway():  # type: ignore[no-untyped-def]
    from gateway.app import Gateway
    from gateway.config import load_settings

    return Gateway(load_settings())


def request_verification(db: Session, patient: Patient, kind: str, *, actor: str) -> tuple[ContactPoint, bool]:
    """Queue a verification for the patient's contact of `kind` (email: a link; phone: a 6-digit code).

    Returns (contact, sent); a contact already verified is left alone (sent is False)."""
    if patient.erased_at is not None:
        raise Conflict("patient was erased")
    contact_kind = "email" if kind == "email" else "phone"
    contact = db.scalar(
        select(ContactPoint)
        .where(
            ContactPoint.patient_id == patient.id, ContactPoint.kind == contact_kind, ContactPoint.value_ct.is_not(None)
        )
        .order_by(ContactPoint.verified_at.is_(None).desc(), ContactPoint.created_at.desc())
    )
    if contact is None:
        raise NotFound(f"the patient has no {'email address' if contact_kind == 'email' else 'phone number'}")
    if contact.verified_at is not None:
        return contact, False
    from gateway.outbox import add_notice

    notice = "verify_email" if contact_kind == "email" else "verify_sms"
    add_notice(
        db, notice, patient_id=patient.id, contact_id=contact.id, channel="email" if contact_kind == "email" else "sms"
    )
    record(db, actor, "contact.verification_sent", "contact", contact.id, kind=contact_kind)
    return contact, True


# --- handlers --------------------------------------------------------------------------------------


def cmd_patient_verify(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.directory.patients import get_patient

    gw = _gateway()
    keys = gw.keys  # noqa: F841 - loaded before the write transaction (SQLite)
    with gw.transaction() as db:
        patient = get_patient(db, args.patient)
        contact, sent = request_verification(db, patient, "email" if args.email else "phone", actor="cli")
        return {
            "patient_id": patient.id,
            "contact_id": contact.id,
            "kind": contact.kind,
            "sent": sent,
            "already_verified": not sent,
        }


def cmd_practitioner_invite(args: argparse.Namespace) -> dict[str, Any]:
    """Print a single-use link where the practitioner sets their password (it also resets a forgotten one)."""
    from gateway.directory.practices import get_practitioner
    from gateway.links import issue

    gw = _gateway()
    keys = gw.keys  # noqa: F841
    with gw.transaction() as db:
        practitioner = get_practitioner(db, args.slug)
        token = issue(db, "invite", ttl=INVITE_TTL, practitioner_id=practitioner.id)
        record(db, "cli", "practitioner.invite", "practitioner", practitioner.id)
        return {
            "practitioner": practitioner.slug,
            "url": f"{gw.settings.resolved_public_url}/l/{token.token}",
            "expires_at": token.expires_at.isoformat(),
        }


def cmd_apikey_create(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.web.api import create_key

    gw = _gateway()
    with gw.transaction() as db:
        key, raw = create_key(db, args.practice)
        return {
            "id": key.id,
            "practice": args.practice,
            "key": raw,
            "note": "shown once: store it now, only its hash is kept",
        }


def cmd_apikey_revoke(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.web.api import revoke_key

    gw = _gateway()
    with gw.transaction() as db:
        key = revoke_key(db, args.id)
        return {"id": key.id, "revoked": True, "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None}


def cmd_apikey_list(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.web.api import list_keys

    gw = _gateway()
    with gw.readers() as db:
        return {
            "keys": [
                {
                    "id": k.id,
                    "created_at": k.created_at.isoformat(),
                    "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                    "revoked": k.revoked_at is not None,
                }
                for k in list_keys(db, args.practice)
            ]
        }


def register_cli(sub: Any, leaf: Any, group: Any) -> None:
    apikey = group("apikey", "API keys of a practice for the JSON API")
    p = leaf(apikey, "create", cmd_apikey_create, "create an API key for a practice (printed once)")
    p.add_argument("--practice", required=True)
    p = leaf(apikey, "revoke", cmd_apikey_revoke, "revoke an API key")
    p.add_argument("id")
    p = leaf(apikey, "list", cmd_apikey_list, "list a practice's API keys (ids and dates, never the keys)")
    p.add_argument("--practice", required=True)
