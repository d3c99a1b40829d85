"""Step: what does the recipient address name? A thread's reply address, a practitioner (a new thread),
postmaster, or the notices' bounce address; anything else is 550 5.1.1."""
from __future__ import annotations

from typing import Final

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from gateway.db.keystore import Keystore
from gateway.db.tables import Practitioner, Thread
from gateway.errors import Reject
from gateway.intake.values import Destination
from gateway.threads.addresses import PREFIX, read_token

UNKNOWN = Reject(550, "5.1.1", "No such recipient here")
CLOSED = Reject(
    550, "5.7.1", "This conversation is closed. Please start a new conversation from the secure portal"
)
NO_MESSAGING = Reject(550, "5.7.1", "This practitioner does not use secure messaging")


# Asked at every RCPT: columns only (no ORM objects), statements built once.
_threads, _practitioners = Thread.__table__.c, Practitioner.__table__.c
_THREAD: Final = (
    select(
        _threads.id, _threads.status, _threads.token_version, _threads.practitioner_id, _threads.practice_id,
        _threads.patient_id, _practitioners.id.label("practitioner_found"), _practitioners.messaging_enabled,
    )
    .outerjoin(Practitioner.__table__, _practitioners.id == _threads.practitioner_id)
    .where(_threads.id == bindparam("thread_id"))
)
_PRACTITIONER: Final = select(_practitioners.id, _practitioners.practice_id, _practitioners.messaging_enabled).where(
    _practitioners.slug == bindparam("slug")
)


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = (address or "").strip().strip("<>").rpartition("@")
    return local, domain.lower().rstrip(".")


def resolve(session: Session, keys: Keystore, address: str, *, mail_domain: str, notice_from: str) -> Destination:
    local, domain = split_address(address)
    if not local or domain != mail_domain.lower():
        raise UNKNOWN
    lowered = local.lower()
    if lowered == "postmaster":
        return Destination("postmaster")
    if address.strip("<> ").lower() == notice_from.lower():
        return Destination("bounces")
    if lowered.startswith(PREFIX):
        token = read_token(keys.tokens, lowered)
        if token is None:
            raise UNKNOWN
        thread = session.connection().execute(_THREAD, {"thread_id": token.thread_id}).first()
        if thread is None:
            raise UNKNOWN
        if thread.status != "open" or thread.token_version != token.version:
            raise CLOSED
        if thread.practitioner_found is not None and not thread.messaging_enabled and token.party == "patient":
            raise NO_MESSAGING
        return Destination(
            "reply", thread_id=thread.id, party=token.party, practitioner_id=thread.practitioner_id,
            practice_id=thread.practice_id, patient_id=thread.patient_id,
        )
    practitioner = session.connection().execute(_PRACTITIONER, {"slug": lowered}).first()
    if practitioner is None:
        raise UNKNOWN
    if not practitioner.messaging_enabled:
        raise NO_MESSAGING
    return Destination("new_thread", practitioner_id=practitioner.id, practice_id=practitioner.practice_id)
