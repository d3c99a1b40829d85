"""The notice actor's body: claim one outbox row, render its notice, send it, record what happened.

    queued ─claim─> sending ─┬─ sent                     provider accepted it (provider id recorded)
                             ├─ pending (+ backoff)     transient failure: the dispatcher hands it out again
                             ├─ failed                  nowhere left to send it, or too many attempts
                             └─ coalesced               an unread notice for the same thread covers it

Idempotent on the row: only a `queued` row (or a `sending` one whose lease ran out: a killed worker) is
claimed, so a message delivered twice by the broker sends nothing twice. A permanent failure marks the
contact (bouncing, opted out, unreachable) and falls back to the recipient's other channel at once.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.parser import BytesHeaderParser
from email.policy import SMTP
from typing import Final

from sqlalchemy import and_, or_, update
from sqlalchemy.orm import Session

from gateway import links
from gateway.app import Gateway
from gateway.audit import record
from gateway.db.tables import ContactPoint, Message, OutboxRow, Patient, Practice, Practitioner, Thread
from gateway.delivery import (
    AutoSubmitted,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    build_notice_email,
)
from gateway.directory.contacts import reveal
from gateway.logs import get_logger
from gateway.metrics import NOTICE_SECONDS, NOTICES
from gateway.notices import LOCALES, NoticeContext, RenderedNotice, render
from gateway.threads.service import original_aad, thread_key, thread_reply_address
from gateway.workers.channels import Route, choose_routes, mark_contact
from gateway.workers.coalesce import covering_notice
from gateway.workers.senders import LoopThread, Senders

log = get_logger("gateway.workers.notify")

# Which kind of single-use token each notice carries (links go to <public url>/l/<token>).
LINK_PURPOSE: Final = {
    "new_message": "login",
    "login_link": "login",
    "held_sms": "login",
    "verify_email": "verify",
    "practitioner_invite": "invite",
}
CODE_KINDS: Final = frozenset({"verify_sms", "second_factor"})
CODE_TTL: Final = timedelta(minutes=15)
FINISHED: Final = ("sent", "delivered", "undelivered", "failed", "coalesced")
_EMAIL_SEND_TIMEOUT: Final = 120.0


def backoff_seconds(attempts: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half the ceiling for sure, the other half at random.

    Attempt 1 waits base/2..base, attempt 2 base..2·base, … never more than `cap`."""
    ceiling = min(cap, base * 2 ** max(attempts - 1, 0))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Attempt:
    """One way to send the notice: a channel, its contact, and the address or number (never printed)."""

    route: Route
    to: str = field(repr=False)


@dataclass(frozen=True)
class Plan:
    row_id: str
    kind: str
    created_at: datetime
    attempts: int
    attempts_left: tuple[Attempt, ...]
    rendered: RenderedNotice = field(repr=False)
    reply_to: str | None = field(repr=False)
    in_reply_to: str | None = field(repr=False)
    sms_from: str = field(repr=False)


class Notifier:
    """Callable as the dramatiq actor's body with a row id; one per worker process."""

    def __init__(self, gw: Gateway, senders: Senders, *, rng: random.Random | None = None) -> None:
        self.gw = gw
        self.settings = gw.settings
        self.senders = senders
        self._loop = LoopThread()
        self._rng = rng or random.Random()

    def close(self) -> None:
        self._loop.close()

    def __call__(self, row_id: str) -> None:
        try:
            self.deliver(row_id)
        except Exception as exc:  # noqa: BLE001 - the actor's edge: the row keeps its lease and is handed out again
            log.error("notice.error", row=row_id, error=type(exc).__name__)

    def deliver(self, row_id: str) -> str | None:
        """Send the notice of a claimed (`queued`) row; returns the row's new state, None if it was not ours."""
        keys = self.gw.keys  # loaded before the write transaction (SQLite: it opens its own read session)
        now = datetime.now(timezone.utc)
        with self.gw.transaction() as session:
            outcome = self._prepare(session, keys, row_id, now)
        if not isinstance(outcome, Plan):
            return outcome
        return self._send(outcome)

    # -- one transaction: claim, coalesce, choose routes, issue the link, render --

    def _prepare(self, session: Session, keys, row_id: str, now: datetime) -> Plan | str | None:  # type: ignore[no-untyped-def]
        lease = timedelta(seconds=self.settings.notice_lease_seconds)
        claimed = session.execute(
            update(OutboxRow)
            .where(
                OutboxRow.id == row_id,
                or_(
                    OutboxRow.state == "queued",
                    and_(OutboxRow.state == "sending", OutboxRow.claimed_at < now - lease),
                ),
            )
            .values(state="sending", claimed_at=now, attempts=OutboxRow.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:
            return None
        row = session.get(OutboxRow, row_id)
        assert row is not None
        covered_by = covering_notice(
            session, row, now=now, window=timedelta(minutes=self.settings.notice_coalesce_minutes)
        )
        if covered_by is not None:
            row.state, row.claimed_at = "coalesced", None
            NOTICES.labels("none", "coalesced").inc()
            log.info("notice.coalesced", row=row.id, kind=row.kind, covered_by=covered_by)
            return "coalesced"

        if row.patient_id is not None:
            patient = session.get(Patient, row.patient_id)
            if patient is None or patient.erased_at is not None:
                return self._fail_now(row, "erased")
            party, practice_id = "patient", patient.practice_id
            locale = patient.locale if patient.locale in LOCALES else self.settings.default_locale
        else:
            practitioner = session.get(Practitioner, row.practitioner_id)
            if practitioner is None:
                return self._fail_now(row, "no-recipient")
            party, practice_id, locale = "practitioner", practitioner.practice_id, self.settings.default_locale
        practice = session.get(Practice, practice_id)
        assert practice is not None
        sms_possible = not self.senders.twilio or practice.sms_number is not None
        routes = choose_routes(session, row, sms_possible=sms_possible)
        if not routes:
            return self._fail_now(row, "no-contact")
        thread = session.get(Thread, row.thread_id) if row.thread_id else None

        login_url, code = self._issue_token(session, row, now)
        try:
            rendered = render(
                row.kind,
                NoticeContext(
                    practice_name=practice.display_name,
                    locale=locale,  # type: ignore[arg-type]
                    login_url=login_url,
                    thread_code=thread.code if thread is not None else None,
                    code=code,
                    emergency_numbers=self.settings.emergency_numbers,
                ),
                public_url=self.settings.resolved_public_url,
            )
        except ValueError:
            return self._fail_now(row, "render")
        attempts = []
        for route in routes:
            contact = session.get(ContactPoint, route.contact_id)
            assert contact is not None
            attempts.append(Attempt(route, reveal(session, keys, contact)))
        return Plan(
            row_id=row.id,
            kind=row.kind,
            created_at=row.created_at,
            attempts=row.attempts,
            attempts_left=tuple(attempts),
            rendered=rendered,
            reply_to=thread_reply_address(keys, thread, party, self.settings.mail_domain) if thread else None,
            in_reply_to=self._answered_message_id(session, keys, row, thread) if row.kind == "acknowledgement" else None,
            sms_from=practice.sms_number or "",
        )

    def _issue_token(self, session: Session, row: OutboxRow, now: datetime) -> tuple[str | None, str | None]:
        # Issued at send time: the raw token exists only in this notice, never in the outbox or a log.
        owner = {"patient_id": row.patient_id, "practitioner_id": row.practitioner_id}
        purpose = LINK_PURPOSE.get(row.kind)
        if purpose is not None:
            issued = links.issue(
                session,
                purpose,
                ttl=timedelta(hours=self.settings.login_link_ttl_hours),
                contact_id=row.contact_id,
                thread_id=row.thread_id,
                **owner,
            )
            return f"{self.settings.resolved_public_url}/l/{issued.token}", None
        if row.kind in CODE_KINDS:
            issued = links.issue(session, "code", ttl=CODE_TTL, contact_id=row.contact_id, digits=6, **owner)
            return None, issued.token
        return None, None

    def _answered_message_id(self, session: Session, keys, row: OutboxRow, thread: Thread | None) -> str | None:  # type: ignore[no-untyped-def]
        """The Message-ID of the email an acknowledgement answers (RFC 3834 In-Reply-To), when there is one."""
        message = session.get(Message, row.message_id) if row.message_id else None
        if message is None or thread is None or message.original_ct is None:
            return None
        try:
            raw = thread_key(session, keys, thread).open(message.original_ct, aad=original_aad(message.id, thread.id))
            value = BytesHeaderParser(policy=SMTP).parsebytes(raw).get("Message-ID")
        except Exception:  # noqa: BLE001 - a missing or odd header only means no In-Reply-To
            return None
        text = str(value or "").strip()
        return text if text.startswith("<") and text.endswith(">") and "@" in text and " " not in text else None

    def _fail_now(self, row: OutboxRow, code: str) -> str:
        row.state, row.error_code, row.claimed_at = "failed", code, None
        NOTICES.labels("none", "failed").inc()
        log.warning("notice.failed", row=row.id, kind=row.kind, code=code)
        return "failed"

    # -- outside any transaction: the provider calls, then one short transaction per outcome --

    def _send(self, plan: Plan) -> str:
        last_code = "no-contact"
        for attempt in plan.attempts_left:
            channel = attempt.route.channel
            try:
                provider_id = self._hand_over(plan, attempt)
            except TransientDeliveryError as exc:
                return self._retry(plan, attempt, exc.code)
            except PermanentDeliveryError as exc:
                last_code = exc.code
                self._refused(plan, attempt, exc.code)
                continue
            except DeliveryError as exc:  # a new kind of failure: safest to treat it as transient
                return self._retry(plan, attempt, exc.code)
            return self._sent(plan, channel, provider_id)
        return self._finish(plan, "failed", error_code=last_code, metric_channel="none")

    def _hand_over(self, plan: Plan, attempt: Attempt) -> str:
        if attempt.route.channel == "email":
            auto: AutoSubmitted = "auto-replied" if plan.kind == "acknowledgement" else "auto-generated"
            try:
                data = build_notice_email(
                    plan.rendered,
                    to=attempt.to,
                    sender=self.settings.resolved_notice_from,
                    reply_to=plan.reply_to,
                    message_id_domain=self.settings.mail_domain,
                    auto_submitted=auto,
                    in_reply_to=plan.in_reply_to if auto == "auto-replied" else None,
                    dkim=self.senders.dkim,
                )
            except ValueError:
                raise PermanentDeliveryError("email-build") from None
            return self._loop.run(
                self.senders.email.send(data, mail_from=self.senders.envelope_from, to=attempt.to),
                timeout=_EMAIL_SEND_TIMEOUT,
            )
        if plan.rendered.sms is None:
            raise PermanentDeliveryError("sms-none")
        return self.senders.sms.send(
            plan.rendered.sms,
            to=attempt.to,
            from_=plan.sms_from,
            status_callback=self.senders.status_callback,
            recipient_ref=attempt.route.contact_id,
        )

    def _sent(self, plan: Plan, channel: str, provider_id: str) -> str:
        now = datetime.now(timezone.utc)
        state = self._finish(plan, "sent", channel=channel, provider_id=provider_id[:64], sent_at=now, error_code=None,
                             metric_channel=channel)
        NOTICE_SECONDS.labels(channel).observe(max((now - plan.created_at).total_seconds(), 0.0))
        return state

    def _retry(self, plan: Plan, attempt: Attempt, code: str) -> str:
        channel = attempt.route.channel
        if plan.attempts >= self.settings.notice_max_attempts:
            return self._finish(plan, "failed", channel=channel, error_code=code, metric_channel=channel)
        delay = backoff_seconds(
            plan.attempts, base=self.settings.notice_retry_base_seconds, cap=self.settings.notice_retry_max_seconds,
            rng=self._rng,
        )
        due = datetime.now(timezone.utc) + timedelta(seconds=delay)
        log.info("notice.retry", row=plan.row_id, channel=channel, code=code, attempt=plan.attempts, delay=round(delay, 3))
        return self._finish(plan, "pending", channel=channel, error_code=code, next_attempt_at=due, metric_channel=channel,
                            metric_state="retry")

    def _refused(self, plan: Plan, attempt: Attempt, code: str) -> None:
        with self.gw.transaction() as session:
            contact = session.get(ContactPoint, attempt.route.contact_id)
            marked = mark_contact(contact, code) if contact is not None else None
            if marked is not None:
                record(session, "worker", f"contact.{marked.removesuffix('_at')}", "contact", attempt.route.contact_id,
                       code=code)
        NOTICES.labels(attempt.route.channel, "refused").inc()
        log.warning("notice.refused", row=plan.row_id, channel=attempt.route.channel, code=code, marked=marked)

    def _finish(self, plan: Plan, state: str, *, metric_channel: str, metric_state: str | None = None,
                **values: object) -> str:
        """Write the outcome unless the row already reached a final state (a duplicate run finished first)."""
        with self.gw.transaction() as session:
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.id == plan.row_id, OutboxRow.state.not_in(FINISHED))
                .values(state=state, claimed_at=None, **values)
                .execution_options(synchronize_session=False)
            )
        NOTICES.labels(metric_channel, metric_state or state).inc()
        if state == "sent":
            log.info("notice.sent", row=plan.row_id, kind=plan.kind, channel=metric_channel, attempt=plan.attempts)
        elif state == "failed":
            log.warning("notice.failed", row=plan.row_id, kind=plan.kind, code=values.get("error_code"))
        return state
