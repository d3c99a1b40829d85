"""Step: what does the recipient address name? A thread's reply address, a practitioner (a new thread),
postmaster, or the notices' bounce address; anything else is 550 5.1.1."""
from __future__ import annotations

from sqlalchemy import select
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
        # Asked at every RCPT: one statement for the thread and its practitioner, columns only (no ORM objects).
        threads, practitioners = Thread.__table__.c, Practitioner.__table__.c
        thread = session.execute(
            select(
                threads.id, threads.status, threads.token_version, threads.practitioner_id, threads.practice_id,
                threads.patient_id, practitioners.id.label("practitioner_found"), practitioners.messaging_enabled,
            )
            .outerjoin(Practitioner.__table__, practitioners.id == threads.practitioner_id)
            .where(threads.id == token.thread_id)
        ).first()
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
    columns = Practitioner.__table__.c
    practitioner = session.execute(
        select(columns.id, columns.practice_id, columns.messaging_enabled).where(columns.slug == lowered)
    ).first()
    if practitioner is None:
        raise UNKNOWN
    if not practitioner.messaging_enabled:
        raise NO_MESSAGING
    return Destination("new_thread", practitioner_id=practitioner.id, practice_id=practitioner.practice_id)
