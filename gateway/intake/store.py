"""Step: seal and store, in one transaction: the message, its attachments, the full original, its dedupe
key, the other party's notice and the sender's acknowledgement. The caller commits; only then is 250 said."""
from __future__ import annotations

from datetime import timedelta
from sqlalchemy.orm import Session

from gateway.audit import record
from gateway.db.tables import Patient
from gateway.db.keystore import Keystore
from gateway.errors import Discard, Reject
from gateway.intake.attachments import AttachmentLimits, screen
from gateway.intake.values import AuthenticatedEmail, StoredEmail
from gateway.outbox import add_notice
from gateway.ratelimit import first_in_window, hit
from gateway.directory.practices import get_practitioner_by_id
from gateway.threads.service import NewAttachment, has_duplicate, open_thread, post_message, thread_ref

RATE_LIMITED = Reject(451, "4.7.0", "Too many messages from this sender, please retry later")
EMPTY = Reject(550, "5.6.0", "The message is empty: nothing to deliver")
NO_SUBJECT = {"fr": "(sans objet)", "en": "(no subject)"}
NO_TEXT = {"fr": "(message sans texte)", "en": "(message without text)"}


def refused_note(names: list[tuple[str, str]], locale: str) -> str:
    lines = [f"- {name} ({'type not accepted' if reason == 'type' else 'too large'})" for name, reason in names]
    if locale == "fr":
        lines = [f"- {name} ({'type de fichier non accepté' if reason == 'type' else 'trop volumineux'})" for name, reason in names]
        return "Pièces jointes non acceptées :\n" + "\n".join(lines)
    return "Attachments not accepted:\n" + "\n".join(lines)


def dedupe_key_for(keys: Keystore, identified) -> str:  # type: ignore[no-untyped-def]
    scope = (
        f"new|{identified.parsed.destination.practitioner_id}|{identified.sender.person_id}"
        if identified.thread_id is None
        else identified.thread_id
    )
    return keys.index("message-id", f"{scope}|{identified.parsed.email.dedupe_id}")


def store(
    session: Session,
    keys: Keystore,
    item: AuthenticatedEmail,
    *,
    rate_limit: int,
    limits: AttachmentLimits,
    default_locale: str,
    look_for_duplicate: bool = True,
) -> StoredEmail:
    """`look_for_duplicate=False` leaves a duplicate to the message's unique dedupe key: its insert fails
    (IntegrityError) and the transaction rolls back. For callers that then store each message of that
    transaction again on its own, with the lookup (`EmailIntake.deliver_many`)."""
    identified = item.identified
    email = identified.parsed.email
    sender = identified.sender

    if rate_limit > 0 and hit(session, f"smtp-sender:{sender.contact_bidx}", timedelta(hours=1)) > rate_limit:
        raise RATE_LIMITED

    new_thread = identified.thread_id is None
    # A retransmission (the sender never saw our 250) must not open a second thread: new-thread mail is
    # de-duplicated per practitioner and patient, replies per thread.
    dedupe_key = dedupe_key_for(keys, identified)
    if look_for_duplicate and has_duplicate(session, "email", dedupe_key):
        raise Discard("duplicate")
    if new_thread:
        practitioner = get_practitioner_by_id(session, identified.parsed.destination.practitioner_id or "")
        thread = open_thread(
            session, keys, patient_id=sender.person_id, practitioner_slug=practitioner.slug,
            subject=email.subject or NO_SUBJECT.get(default_locale, "(no subject)"), actor=f"email:{sender.contact_id}",
        )
    else:
        # The thread and its patient's wrapped key, as columns in one statement.
        thread = thread_ref(session, identified.thread_id or "")

    accepted, refused = screen(email.attachments, limits)
    body = (email.body or email.full_text).strip("\r\n")
    if not body.strip():
        if not email.attachments:
            raise EMPTY
        body = NO_TEXT.get(default_locale, NO_TEXT["en"])
    message = post_message(
        session, keys, thread, author=sender.party, channel="email", body=body,
        attachments=tuple(NewAttachment(a.filename, a.content_type, a.data) for a in accepted),
        original=identified.parsed.inbound.raw, dedupe=("email", dedupe_key),
    )
    if refused:
        patient = session.get(Patient, thread.patient_id)
        locale = patient.locale if patient else default_locale
        post_message(
            session, keys, thread, author="system", channel="email",
            body=refused_note([(r.filename, r.reason) for r in refused], locale), notify=False,
        )
    if sender.party == "patient" and first_in_window(session, f"ack:{thread.id}", timedelta(days=1)):
        add_notice(
            session, "acknowledgement", patient_id=sender.person_id, thread_id=thread.id, message_id=message.id,
            contact_id=sender.contact_id, channel="email",
        )
    record(session, f"email:{sender.contact_id}", "message.received", "message", message.id, auth=item.method)
    return StoredEmail(thread.id, message.id, new_thread, len(refused))
