"""Step: mail that is not a message — our own notices coming back, auto-replies, delivery reports — is
accepted (250), recorded without content, never posted and never answered. A hard bounce marks the
address as bouncing so notices fall back to the other channel."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import update
from sqlalchemy.orm import Session

from gateway.audit import record
from gateway.db.keystore import Keystore
from gateway.db.tables import ContactPoint
from gateway.directory.contacts import normalize_email
from gateway.errors import Discard, InvalidInput
from gateway.intake.values import ParsedInbound


def is_bounce(item: ParsedInbound) -> bool:
    return item.email.kind == "bounce"


def check(item: ParsedInbound) -> ParsedInbound:
    """Raise Discard for what is not a message; bounces are handled by `record_bounce` first."""
    kind = item.email.kind
    if kind in ("own_notice", "auto_reply", "bounce"):
        raise Discard(kind)
    if item.destination.kind == "bounces":
        # The notices' own address is a no-reply address: whatever else arrives there is dropped.
        raise Discard("no_reply_address")
    return item


def record_bounce(session: Session, keys: Keystore, item: ParsedInbound) -> int:
    """Mark the bounced addresses (permanent failures only) as bouncing; returns how many contacts."""
    bounce = item.email.bounce
    marked = 0
    if bounce is not None and bounce.permanent:
        now = datetime.now(timezone.utc)
        for recipient in bounce.recipients:
            try:
                bidx = keys.index("email", normalize_email(recipient))
            except InvalidInput:
                continue
            marked += session.execute(
                update(ContactPoint)
                .where(ContactPoint.kind == "email", ContactPoint.bidx == bidx, ContactPoint.bouncing_at.is_(None))
                .values(bouncing_at=now)
            ).rowcount
    record(session, "smtp", "email.bounce", "contact", None, permanent=bool(bounce and bounce.permanent), marked=marked)
    return marked
