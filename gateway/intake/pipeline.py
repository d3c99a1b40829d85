"""The path of an inbound email, in order. Each step takes the previous step's frozen value and returns
the next; a step that ends the path raises Reject (an SMTP refusal) or Discard (accepted, not posted).

    resolve      recipient address  -> Destination          (also run cheaply at RCPT)
    parse        raw bytes          -> ParsedInbound
    classify     not a message?     -> Discard (bounces mark addresses first)
    identify     header From        -> IdentifiedEmail      (a verified contact of the right person)
    authenticate DKIM/SPF/DMARC     -> AuthenticatedEmail   (no database transaction held meanwhile)
    store        one transaction    -> StoredEmail          (message, attachments, outbox rows)

The edge (gateway/ingress/smtp.py) turns outcomes into replies, in one place.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from gateway.app import Gateway
from gateway.db.tables import PostmasterMail, new_id
from gateway.crypto import DecryptionError, binding
from gateway.errors import Conflict, Discard, InvalidInput, Reject
from gateway.intake import classify, identify, route
from gateway.intake.attachments import AttachmentLimits
from gateway.intake.authenticate import authenticate
from gateway.intake.mailauth import MailAuthenticator
from gateway.intake.parse import Unparseable, parse
from gateway.intake.store import dedupe_key_for, store
from gateway.threads.service import has_duplicate
from gateway.intake.values import Destination, InboundEmail, ParsedInbound, StoredEmail
from gateway.logs import get_logger
from gateway.metrics import INTAKE_SECONDS, MESSAGES_IN

log = get_logger("gateway.intake")

STEPS = ("resolve", "parse", "classify", "identify", "authenticate", "store")
MALFORMED = Reject(550, "5.6.0", "Message could not be parsed")
TOO_LONG = Reject(552, "5.3.4", "Message text is too long")


@dataclass(frozen=True)
class Delivered:
    """A message that was accepted: stored (`stored` set) or discarded with a reason."""

    stored: StoredEmail | None = None
    discarded: str | None = None


class EmailIntake:
    """Built once per process; `deliver` is called from worker threads, never on the event loop."""

    def __init__(self, gw: Gateway, authenticator: MailAuthenticator | None = None) -> None:
        self.gw = gw
        self.settings = gw.settings
        self.authenticator = authenticator or MailAuthenticator.from_settings(gw.settings)
        self.limits = AttachmentLimits()

    def resolve(self, address: str) -> Destination:
        keys = self.gw.keys
        with self.gw.readers() as session:
            return route.resolve(
                session, keys, address, mail_domain=self.settings.mail_domain,
                notice_from=self.settings.resolved_notice_from,
            )

    def deliver(self, inbound: InboundEmail) -> Delivered:
        started = time.perf_counter()
        try:
            result = self._deliver(inbound)
        except Reject as outcome:
            MESSAGES_IN.labels("email", "temporary" if outcome.temporary else "rejected").inc()
            log.info("email.rejected", code=outcome.smtp_code, enhanced=outcome.enhanced, reason=outcome.reason)
            raise
        outcome_label = "stored" if result.stored else (result.discarded or "discarded")
        MESSAGES_IN.labels("email", outcome_label).inc()
        INTAKE_SECONDS.labels("email").observe(time.perf_counter() - started)
        if result.stored:
            log.info("email.stored", thread=result.stored.thread_id, message=result.stored.message_id,
                     new_thread=result.stored.new_thread, refused_attachments=result.stored.refused_attachments)
        else:
            log.info("email.discarded", reason=result.discarded)
        return result

    def _deliver(self, inbound: InboundEmail) -> Delivered:
        gw, keys = self.gw, self.gw.keys
        destination = inbound.destination or self.resolve(inbound.rcpt)
        try:
            email = parse(inbound.raw, envelope_sender=inbound.mail_from)
        except Unparseable:
            raise MALFORMED from None
        item = ParsedInbound(inbound, destination, email)

        if destination.kind == "postmaster":
            return self._keep_for_postmaster(inbound)
        # Only reports to our notices' own envelope sender can be bounces of our notices: a forged report
        # sent to any other address must not mark a patient's address as bouncing.
        if classify.is_bounce(item) and destination.kind == "bounces":
            with gw.transaction() as session:
                classify.record_bounce(session, keys, item)
        try:
            classify.check(item)
        except Discard as discard:
            return Delivered(discarded=discard.reason)

        with gw.readers() as session:
            identified = identify.identify(session, keys, item)
        authenticated = authenticate(self.authenticator, identified)
        try:
            with gw.transaction() as session:
                stored = store(
                    session, keys, authenticated, rate_limit=self.settings.sender_rate_limit, limits=self.limits,
                    default_locale=self.settings.default_locale,
                )
        except Discard as discard:
            return Delivered(discarded=discard.reason)
        except Conflict:
            # The thread was closed (or messaging switched off) between RCPT and the end of DATA.
            raise route.CLOSED from None
        except DecryptionError:
            # The patient was erased: the thread can take no more messages.
            raise route.CLOSED from None
        except InvalidInput:
            # Permanent problems of the message itself (text over the limit): a refusal, not a retry.
            raise TOO_LONG from None
        except IntegrityError:
            # Two deliveries of the same message may race; the unique dedupe key lets exactly one commit.
            # Anything else that broke a constraint is a real failure (451 at the edge).
            if self._was_stored(authenticated):
                return Delivered(discarded="duplicate")
            raise
        return Delivered(stored=stored)

    def _was_stored(self, item) -> bool:  # type: ignore[no-untyped-def]
        key = dedupe_key_for(self.gw.keys, item.identified)
        with self.gw.readers() as session:
            return has_duplicate(session, "email", key)

    def _keep_for_postmaster(self, inbound: InboundEmail) -> Delivered:
        keys = self.gw.keys
        with self.gw.transaction() as session:
            mail = PostmasterMail(id=new_id(), size=len(inbound.raw))
            mail.raw_ct = keys.directory.seal(inbound.raw, aad=binding("postmaster_mail", mail.id, "raw"))
            session.add(mail)
        return Delivered(discarded="postmaster")
