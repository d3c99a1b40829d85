"""The path of an inbound email, in order. Each step takes the previous step's frozen value and returns
the next; a step that ends the path raises Reject (an SMTP refusal) or Discard (accepted, not posted).

    resolve      recipient address  -> Destination          (also run cheaply at RCPT)
    parse        raw bytes          -> ParsedInbound
    classify     not a message?     -> Discard (bounces mark addresses first)
    identify     header From        -> IdentifiedEmail      (a verified contact of the right person)
    authenticate DKIM/SPF/DMARC     -> AuthenticatedEmail   (no database transaction held meanwhile)
    store        one transaction    -> StoredEmail          (message, attachments, outbox rows)

Under load the edge hands several messages over at once (`deliver_many`): each goes through the steps on
its own, and those that reach `store` share one transaction and one commit.
The edge (gateway/ingress/smtp.py) turns outcomes into replies, in one place.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

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
from gateway.intake.values import AuthenticatedEmail, Destination, InboundEmail, ParsedInbound, StoredEmail
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
        with self.gw.readers() as session:
            return self._resolve(session, address)

    def resolve_many(self, addresses: list[str]) -> list[Destination | Exception]:
        """Each address's destination, or the exception `resolve` would raise, read in one read transaction."""
        if not addresses:
            return []
        outcomes: list[Destination | Exception] = []
        with self.gw.readers() as session:
            for address in addresses:
                try:
                    outcomes.append(self._resolve(session, address))
                except Exception as exc:  # noqa: BLE001 - handed to this address's own RCPT, as `resolve` raises it
                    outcomes.append(exc)
        return outcomes

    def _resolve(self, session: Session, address: str) -> Destination:
        return route.resolve(
            session, self.gw.keys, address, mail_domain=self.settings.mail_domain,
            notice_from=self.settings.resolved_notice_from,
        )

    @property
    def batchable(self) -> bool:
        """Whether messages may be stored several to a transaction (`deliver_many`): not while each one waits
        on DNS lookups (`verify`), which the others of its batch would wait for too."""
        return self.authenticator.mode != "verify"

    def deliver(self, inbound: InboundEmail) -> Delivered:
        started = time.perf_counter()
        try:
            step = self._until_store(inbound)
            result = step if isinstance(step, Delivered) else self._store_alone(step)
        except Reject as outcome:
            self._account(outcome, started)
            raise
        self._account(result, started)
        return result

    def deliver_many(self, inbounds: list[InboundEmail]) -> list[Delivered | Exception]:
        """Each message's outcome, as `deliver` would give it (a Delivered, or the exception it would raise);
        the messages that get as far as storing are stored in one transaction with one commit. Should any of
        them not store (a duplicate, a closed thread, a rate limit, a failure), that transaction is rolled
        back and each is stored again on its own, as if it had come alone."""
        started = time.perf_counter()
        outcomes: list[Delivered | Exception | None] = [None] * len(inbounds)
        ready: list[tuple[int, AuthenticatedEmail]] = []
        with self.gw.readers() as readers:  # one read transaction identifies the senders of the batch
            for i, inbound in enumerate(inbounds):
                try:
                    step = self._until_store(inbound, readers)
                except Exception as exc:  # noqa: BLE001 - handed to this message's own sender, as `deliver` raises it
                    outcomes[i] = exc
                    continue
                if isinstance(step, Delivered):
                    outcomes[i] = step
                else:
                    ready.append((i, step))
        if ready:  # alone too: a duplicate is rare, and costs the same message a second transaction below
            try:
                with self.gw.transaction() as session:
                    # A duplicate breaks the unique dedupe key: the batch is rolled back, and stored again below.
                    stored = [self._store(session, item, look_for_duplicate=False) for _, item in ready]
            except Exception:  # noqa: BLE001 - rolled back: every message is stored again on its own, below
                pass
            else:
                for (i, _), one in zip(ready, stored):
                    outcomes[i] = Delivered(stored=one)
                ready = []
        for i, item in ready:
            try:
                outcomes[i] = self._store_alone(item)
            except Exception as exc:  # noqa: BLE001 - as above
                outcomes[i] = exc
        done: list[Delivered | Exception] = []
        for outcome in outcomes:
            assert outcome is not None
            if isinstance(outcome, Delivered | Reject):
                self._account(outcome, started)
            done.append(outcome)
        return done

    def _account(self, outcome: Delivered | Reject, started: float) -> None:
        """Metrics and the log line of one message's outcome (ids and reasons only)."""
        if isinstance(outcome, Reject):
            MESSAGES_IN.labels("email", "temporary" if outcome.temporary else "rejected").inc()
            log.info("email.rejected", code=outcome.smtp_code, enhanced=outcome.enhanced, reason=outcome.reason)
            return
        MESSAGES_IN.labels("email", "stored" if outcome.stored else (outcome.discarded or "discarded")).inc()
        INTAKE_SECONDS.labels("email").observe(time.perf_counter() - started)
        if outcome.stored:
            log.info("email.stored", thread=outcome.stored.thread_id, message=outcome.stored.message_id,
                     new_thread=outcome.stored.new_thread, refused_attachments=outcome.stored.refused_attachments)
        else:
            log.info("email.discarded", reason=outcome.discarded)

    def _until_store(self, inbound: InboundEmail, readers: Session | None = None) -> Delivered | AuthenticatedEmail:
        """Every step before `store`: the message authenticated and ready to store, or its outcome already.
        `readers`: a read session to identify the sender in (else one of its own)."""
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

        if readers is not None:
            identified = identify.identify(readers, keys, item)
        else:
            with gw.readers() as session:
                identified = identify.identify(session, keys, item)
        return authenticate(self.authenticator, identified)

    def _store(self, session: Session, authenticated: AuthenticatedEmail, *, look_for_duplicate: bool = True) -> StoredEmail:
        return store(
            session, self.gw.keys, authenticated, rate_limit=self.settings.sender_rate_limit, limits=self.limits,
            default_locale=self.settings.default_locale, look_for_duplicate=look_for_duplicate,
        )

    def _store_alone(self, authenticated: AuthenticatedEmail) -> Delivered:
        """`store` in a transaction of its own, its outcomes turned into the pipeline's."""
        try:
            with self.gw.transaction() as session:
                stored = self._store(session, authenticated)
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
