"""Single-use, expiring tokens for login links, verification links, invitations and 6-digit codes.

Only a hash of each token is stored. A link's GET only *looks* (peek); the POST from its confirmation
page spends it, so a mail scanner that opens links spends nothing.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.orm import Session

from gateway.db.tables import LoginToken, new_id

PURPOSES = ("login", "verify", "invite", "code")
MAX_CODE_ATTEMPTS = 5
_INSERT = insert(LoginToken.__table__)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    id: str
    token: str  # the raw token: goes into one URL or one notice, never stored
    expires_at: datetime


def issue(
    session: Session | Connection,
    purpose: str,
    *,
    ttl: timedelta,
    patient_id: str | None = None,
    practitioner_id: str | None = None,
    contact_id: str | None = None,
    thread_id: str | None = None,
    digits: int | None = None,
) -> IssuedToken:
    """A fresh token (url-safe, 256 bits), or a numeric code of `digits` digits when given (written on the
    session, or on a bare connection for a caller with Core statements only)."""
    if purpose not in PURPOSES:
        raise ValueError("unknown token purpose")
    if (patient_id is None) == (practitioner_id is None):
        raise ValueError("a token belongs to exactly one person")
    raw = "".join(secrets.choice("0123456789") for _ in range(digits)) if digits else secrets.token_urlsafe(32)
    # A short code is only unique together with its owner, so its hash is salted by the owner.
    stored = hash_token(f"{patient_id or practitioner_id}:{raw}" if digits else raw)
    now = datetime.now(timezone.utc)
    issued = IssuedToken(new_id(), raw, now + ttl)
    # Written at once with a prebuilt Core insert (a session autoflushes first: the owner may still be
    # pending in it) instead of through the unit of work: a notice issues one per send.
    session.execute(
        _INSERT,
        {
            "id": issued.id,
            "token_hash": stored,
            "purpose": purpose,
            "patient_id": patient_id,
            "practitioner_id": practitioner_id,
            "contact_id": contact_id,
            "thread_id": thread_id,
            "attempts": 0,
            "expires_at": issued.expires_at,
            "used_at": None,
            "created_at": now,
        },
    )
    return issued


def peek(session: Session, token: str, purpose: str) -> LoginToken | None:
    """The token's row if it exists and has this purpose (spent or expired ones included: check `usable`)."""
    if not token or len(token) > 200:
        return None
    row = session.scalar(select(LoginToken).where(LoginToken.token_hash == hash_token(token)))
    return row if row is not None and row.purpose == purpose else None


def usable(row: LoginToken | None, now: datetime | None = None) -> bool:
    now = now or datetime.now(timezone.utc)
    return row is not None and row.used_at is None and row.expires_at > now and row.attempts < MAX_CODE_ATTEMPTS


def spend(session: Session, token: str, purpose: str) -> LoginToken | None:
    """Atomically mark the token used; None if it was already spent, expired or unknown.

    The conditional UPDATE makes two concurrent POSTs race safely: exactly one of them wins."""
    row = peek(session, token, purpose)
    if not usable(row):
        return None
    assert row is not None
    now = datetime.now(timezone.utc)
    result = session.execute(
        update(LoginToken)
        .where(LoginToken.id == row.id, LoginToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    row.used_at = now
    return row


def check_code(session: Session, owner_id: str, code: str, purpose: str = "code") -> LoginToken | None:
    """Spend a numeric code of this owner; a wrong code counts an attempt on the owner's live codes."""
    row = peek(session, f"{owner_id}:{code}", purpose) if code.isdigit() else None
    if row is not None:
        return spend(session, f"{owner_id}:{code}", purpose)
    now = datetime.now(timezone.utc)
    session.execute(
        update(LoginToken)
        .where(
            (LoginToken.patient_id == owner_id) | (LoginToken.practitioner_id == owner_id),
            LoginToken.purpose == purpose,
            LoginToken.used_at.is_(None),
            LoginToken.expires_at > now,
        )
        .values(attempts=LoginToken.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    return None
