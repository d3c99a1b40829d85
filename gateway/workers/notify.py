"""The notice actor's body: claim an outbox row (or each row of a run), render its notice, send it, record
what happened.

    queued ─claim─> sending ─┬─ sent                     provider accepted it (provider id recorded)
                             ├─ pending (+ backoff)     transient failure: the dispatcher hands it out again
                             ├─ failed                  nowhere left to send it, or too many attempts
                             └─ coalesced               an unread notice for the same thread covers it

Idempotent on the row: only a `queued` row (or a `sending` one whose lease ran out: a killed worker) is
claimed, so a message delivered twice by the broker sends nothing twice. A permanent failure marks the
contact (bouncing, opted out, unreachable) and falls back to the recipient's other channel at once.
"""
from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from collections import namedtuple
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from email.parser import BytesHeaderParser
from email.policy import SMTP
from typing import Any, Final

from sqlalchemy import Connection, Row, Update, and_, bindparam, func, or_, select, update

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
from gateway.directory.contacts import open_value
from gateway.logs import get_logger
from gateway.metrics import NOTICE_SECONDS, NOTICES
from gateway.notices import LOCALES, NoticeContext, RenderedNotice, render
from gateway.threads.addresses import reply_address
from gateway.threads.service import original_aad
from gateway.workers.channels import CONTACT_COLUMNS, OWNER_CONTACTS_ORDER, Route, mark_contact, route_contacts
from gateway.workers.coalesce import any_candidate, covering_notice
from gateway.workers.dispatcher import release
from gateway.workers.senders import LoopThread, Senders
from gateway.workers.writes import Combined, writing

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
# How long an actor run of several rows (`dispatcher.runs`) goes on before it gives the rest back (`__call__`).
RUN_SECONDS: Final = 30.0


# The statements run for every notice, built once with bind parameters: on SQLite, building and keying a
# statement costs more than running it. They run on a bare connection (Core, `Combined`): the ORM's
# bulk-update path, with nothing to synchronise, only adds time (about twice the cost of one write).
#
# The row, its recipient, their practice and the thread in one query, as plain columns (loading five ORM
# objects cost more than the query). Labels keep the outbox row's own names free for `covering_notice`
# and `route_contacts`, which read the row by those names.
_LOOK: Final = (
    select(
        OutboxRow.id,
        OutboxRow.kind,
        OutboxRow.state,
        OutboxRow.claimed_at,
        OutboxRow.created_at,
        OutboxRow.patient_id,
        OutboxRow.practitioner_id,
        OutboxRow.thread_id,
        OutboxRow.contact_id,
        OutboxRow.message_id,
        OutboxRow.channel,
        Patient.id.label("patient_found"),
        Patient.erased_at.label("patient_erased_at"),
        Patient.locale.label("patient_locale"),
        Patient.kek_id.label("patient_kek_id"),
        Patient.dek_wrapped.label("patient_dek_wrapped"),
        Practitioner.id.label("practitioner_found"),
        Practice.display_name.label("practice_name"),
        Practice.sms_number.label("practice_sms_number"),
        Thread.id.label("thread_found"),
        Thread.patient_id.label("thread_patient_id"),
        Thread.code.label("thread_code"),
        Thread.token_version.label("thread_token_version"),
        any_candidate().label("may_be_covered"),
        *(column.label(f"cp_{column.key}") for column in CONTACT_COLUMNS),
    )
    .outerjoin(Patient, Patient.id == OutboxRow.patient_id)
    .outerjoin(Practitioner, Practitioner.id == OutboxRow.practitioner_id)
    .outerjoin(Practice, Practice.id == func.coalesce(Patient.practice_id, Practitioner.practice_id))
    .outerjoin(Thread, Thread.id == OutboxRow.thread_id)
    # The recipient's contacts, one result row each (none: one row, its contact columns NULL). Exactly one
    # of the row's two owner columns is set, and NULL matches nothing: each side of the OR uses its index.
    .outerjoin(
        ContactPoint,
        or_(ContactPoint.patient_id == OutboxRow.patient_id, ContactPoint.practitioner_id == OutboxRow.practitioner_id),
    )
    .where(OutboxRow.id == bindparam("row_id"))
    .order_by(*OWNER_CONTACTS_ORDER)
)
_Contact = namedtuple("_Contact", [column.key for column in CONTACT_COLUMNS])  # type: ignore[misc]
_CONTACT_LABELS: Final = tuple(f"cp_{column.key}" for column in CONTACT_COLUMNS)
_ANSWERED: Final = select(Message.id, Message.original_ct).where(Message.id == bindparam("message_id"))
_PATIENT_KEY: Final = (
    select(Patient.id, Patient.kek_id, Patient.dek_wrapped).where(Patient.id == bindparam("patient_id"))
)
# Only a queued row, or one whose sender's lease ran out (a killed worker), is claimed.
_CLAIMABLE: Final = (
    OutboxRow.id == bindparam("row_id"),
    or_(
        OutboxRow.state == "queued",
        and_(OutboxRow.state == "sending", OutboxRow.claimed_at < bindparam("lease_expired")),
    ),
)
_SETTLE: Final = (
    update(OutboxRow)
    .where(*_CLAIMABLE)
    .values(
        state=bindparam("new_state"),
        claimed_at=None,
        error_code=bindparam("new_error_code"),
        attempts=OutboxRow.attempts + 1,
    )
    .execution_options(synchronize_session=False)
)
_CLAIM: Final = (
    update(OutboxRow)
    .where(*_CLAIMABLE)
    .values(state="sending", claimed_at=bindparam("new_claimed_at"), attempts=OutboxRow.attempts + 1)
    .returning(OutboxRow.attempts, OutboxRow.created_at)
    .execution_options(synchronize_session=False)
)


@functools.cache
def _outcome(names: tuple[str, ...]) -> Update:
    """Write an outcome (`new_state`, `new_<name>`…) unless the row already reached a final state."""
    return (
        update(OutboxRow)
        # NOT IN spelt with plain bind parameters (an IN list's expanding parameter is rendered per execution).
        .where(OutboxRow.id == bindparam("row_id"), *(OutboxRow.state != state for state in FINISHED))
        .values(state=bindparam("new_state"), claimed_at=None, **{name: bindparam(f"new_{name}") for name in names})
        .execution_options(synchronize_session=False)
    )


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
class Look:
    """What the claim's transaction read: whether the row is settled without sending, else where it goes,
    still sealed (the addresses are opened after the commit, outside the writers' turn: `Notifier._open`)."""

    kind: str
    patient_id: str | None
    practitioner_id: str | None
    thread_id: str | None
    contact_id: str | None
    covered_by: str | None = None
    fail: str | None = None
    practice_name: str = ""
    locale: str = "fr"
    thread_code: str | None = None
    routes: tuple[tuple[Route, Any], ...] = field(default=(), repr=False)  # each with its contact's columns
    key_columns: tuple[str | None, bytes | None] = field(default=(None, None), repr=False)  # the patient's key
    reply_party: str | None = None  # the recipient's side of the thread, for its reply address
    token_version: int = 0
    answered: Answered | None = field(default=None, repr=False)  # what an acknowledgement answers
    sms_from: str = field(default="", repr=False)


@dataclass(frozen=True)
class Answered:
    """The inbound message an acknowledgement answers: its sealed original and its thread's key columns."""

    message_id: str
    original_ct: bytes = field(repr=False)
    patient_id: str
    kek_id: str | None = field(repr=False)
    dek_wrapped: bytes | None = field(repr=False)


@dataclass(frozen=True)
class Opened:
    """A claimed notice's addresses, opened after the claim committed."""

    attempts: tuple[Attempt, ...] = field(repr=False)
    reply_to: str | None = field(repr=False)
    in_reply_to: str | None = field(repr=False)


@dataclass(frozen=True)
class Claimed:
    attempts: int
    created_at: datetime
    login_url: str | None = field(repr=False)
    code: str | None = field(repr=False)


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
    settle_later: bool = False  # a sent email's outcome is written behind (`Notifier.deliver`)


class Notifier:
    """Callable as the dramatiq actor's body with a run of row ids (or one id); one per worker process."""

    def __init__(
        self,
        gw: Gateway,
        senders: Senders,
        *,
        rng: random.Random | None = None,
        run_seconds: float = RUN_SECONDS,
        max_sends: int | None = None,
    ) -> None:
        self.gw = gw
        self.settings = gw.settings
        self.senders = senders
        self.run_seconds = run_seconds
        # Emails this process has with the relay at once, a run's sent together (`__call__`) included; by
        # default one a worker thread, as when each thread sent its own.
        self.max_sends = max_sends or gw.settings.worker_threads
        self._sends: asyncio.Semaphore | None = None
        self._winding_down = threading.Event()
        self._loop = LoopThread()
        self._rng = rng or random.Random()
        # The actor threads' claims and outcomes: those that queue up together share one transaction.
        self._writes = Combined(gw)

    def wind_down(self) -> None:
        """The process is stopping: runs in progress give back the rows they have not begun (see `__call__`)."""
        self._winding_down.set()

    def close(self) -> None:
        """Commit the outcomes still written behind, then stop the send loop."""
        self._writes.close()
        self._loop.close()

    def __call__(self, row_ids: str | Sequence[str]) -> None:
        """The actor's body: the rows of one run (a list of row ids, or one id).

        Each row is claimed and its notice rendered in turn; then the run's emails go to the relay together
        (at most `max_sends` at once in this process), and each outcome is recorded in the run's order, with
        the retries and fallbacks of a notice sent alone (an SMS, or the fallback after a refused email, is
        sent then). With Redis this took a drain from 400-510 to 520-680 notices/s (bench/notices.py): a
        thread no longer waits for each relay reply in turn.

        A run stops claiming, and gives the rows it has not begun back to the outbox, due at once, once it
        has taken `run_seconds` or when the process is stopping (`wind_down`: the drain does not wait for
        whole runs)."""
        ids = [row_ids] if isinstance(row_ids, str) else list(row_ids)
        started = time.monotonic()
        plans: list[Plan] = []
        for done, row_id in enumerate(ids):
            if done and (self._winding_down.is_set() or time.monotonic() - started > self.run_seconds):
                self.give_back(ids[done:])
                break
            try:
                prepared = self.prepare(row_id, settle_later=True)
            except Exception as exc:  # noqa: BLE001 - the actor's edge: the row keeps its lease and is handed out again
                log.error("notice.error", row=row_id, error=type(exc).__name__)
                continue
            if isinstance(prepared, Plan):
                plans.append(prepared)
        started_sends = [self._start_email(plan) for plan in plans] if len(plans) > 1 else [None] * len(plans)
        for plan, first in zip(plans, started_sends):
            try:
                self._send(plan, first)
            except Exception as exc:  # noqa: BLE001 - as above
                log.error("notice.error", row=plan.row_id, error=type(exc).__name__)

    def give_back(self, row_ids: list[str]) -> None:
        """Rows handed to this run and not yet claimed: `pending` again, due now (a claimed row is left alone)."""
        try:
            with writing(self.gw) as session:
                release(session, row_ids)
        except Exception as exc:  # noqa: BLE001 - they are handed out again when their lease ends
            log.error("notice.give_back_failed", rows=len(row_ids), error=type(exc).__name__)

    def deliver(self, row_id: str, *, settle_later: bool = False) -> str | None:
        """Send the notice of a claimed (`queued`) row; returns the row's new state, None if it was not ours."""
        prepared = self.prepare(row_id, settle_later=settle_later)
        return self._send(prepared) if isinstance(prepared, Plan) else prepared

    def prepare(self, row_id: str, *, settle_later: bool = False) -> Plan | str | None:
        """Claim the row and render its notice: the plan of what to send, or the row's new state when there
        is nothing to send (coalesced, failed), or None if the row was not ours.

        `settle_later` (the actor): an email the relay accepted is recorded `sent` behind the run
        (`Combined.later`), not before it returns; every other outcome is committed before it returns.

        One short transaction reads what the claim needs (coalescing and routes: one query, two when an
        earlier notice may cover this one) and claims the row and issues its link; the addresses are opened
        after its commit, then the notice is rendered and sent. A separate read transaction before it cost
        more (a connection, a BEGIN and a COMMIT per notice) than the writer lock is held for the queries.
        Claims and outcomes of threads that queue up at the same time share one transaction (`Combined`),
        which every actor thread's writes wait for: only what needs the database runs in it."""
        keys = self.gw.keys  # loaded before any transaction (SQLite: it opens its own read session)
        now = datetime.now(timezone.utc)

        def look_and_claim(db: Connection) -> tuple[Look | None, Claimed | str | None]:
            look = self._look(db, row_id, now)
            return look, (self._claim(db, row_id, now, look) if look is not None else None)

        look, claimed = self._writes.run(look_and_claim)
        if look is None or claimed is None:
            return None
        if not isinstance(claimed, Claimed):
            NOTICES.labels("none", claimed).inc()
            if claimed == "coalesced":
                log.info("notice.coalesced", row=row_id, kind=look.kind, covered_by=look.covered_by)
            else:
                log.warning("notice.failed", row=row_id, kind=look.kind, code=look.fail)
            return claimed
        return self._plan(row_id, look, self._open(keys, look), claimed, settle_later)

    # -- in the claim's transaction, first: whether to send, and where (only what needs the database:
    # the writers of every actor thread wait while it runs) --

    def _look(self, db: Connection, row_id: str, now: datetime) -> Look | None:
        window = timedelta(minutes=self.settings.notice_coalesce_minutes)
        rows = db.execute(_LOOK, {"row_id": row_id, "coalesce_since": now - window}).all()
        if not rows or not self._claimable(rows[0].state, rows[0].claimed_at, now):
            return None
        row = rows[0]
        base = Look(row.kind, row.patient_id, row.practitioner_id, row.thread_id, row.contact_id)
        covered_by = covering_notice(db, row, now=now, window=window) if row.may_be_covered else None
        if covered_by is not None:
            return replace(base, covered_by=covered_by)
        if row.patient_id is not None:
            if row.patient_found is None or row.patient_erased_at is not None:
                return replace(base, fail="erased")
            party = "patient"
            locale = row.patient_locale if row.patient_locale in LOCALES else self.settings.default_locale
        else:
            if row.practitioner_found is None:
                return replace(base, fail="no-recipient")
            party, locale = "practitioner", self.settings.default_locale
        assert row.practice_name is not None
        sms_possible = not self.senders.twilio or row.practice_sms_number is not None
        contacts = [_Contact(*(found[label] for label in _CONTACT_LABELS)) for found in (r._mapping for r in rows)
                    if found["cp_id"] is not None]
        routes = route_contacts(db, row, sms_possible=sms_possible, contacts=contacts)
        if not routes:
            return replace(base, fail="no-contact")
        thread = row.thread_found is not None
        return replace(
            base,
            practice_name=row.practice_name,
            locale=locale,
            thread_code=row.thread_code if thread else None,
            routes=tuple(routes),
            key_columns=(row.patient_kek_id, row.patient_dek_wrapped),
            reply_party=party if thread else None,
            token_version=row.thread_token_version or 0,
            answered=self._answered(db, row) if row.kind == "acknowledgement" and thread else None,
            sms_from=row.practice_sms_number or "",
        )

    # -- after the commit: the addresses, opened --

    def _open(self, keys, look: Look) -> Opened:  # type: ignore[no-untyped-def]
        # Every route's contact belongs to the recipient (route_contacts checks): one key opens them all.
        if look.patient_id is not None:
            key = keys.unwrap_patient_key(look.patient_id, *look.key_columns)
        else:
            key = keys.directory
        reply_to = None
        if look.reply_party is not None:
            assert look.thread_id is not None
            reply_to = reply_address(
                keys.tokens, look.thread_id, look.reply_party, look.token_version, self.settings.mail_domain
            )
        return Opened(
            attempts=tuple(Attempt(route, open_value(key, contact)) for route, contact in look.routes),
            reply_to=reply_to,
            in_reply_to=self._answered_message_id(keys, look) if look.answered is not None else None,
        )

    def _claimable(self, state: str, claimed_at: datetime | None, now: datetime) -> bool:
        lease = timedelta(seconds=self.settings.notice_lease_seconds)
        return state == "queued" or (state == "sending" and claimed_at is not None and claimed_at < now - lease)

    # -- then, in the same transaction: claim the row (or settle it) and issue its link --

    def _claim(self, db: Connection, row_id: str, now: datetime, look: Look) -> Claimed | str | None:
        claimable = {"row_id": row_id, "lease_expired": now - timedelta(seconds=self.settings.notice_lease_seconds)}
        if look.covered_by is not None or look.fail is not None:
            state = "coalesced" if look.covered_by is not None else "failed"
            done = db.execute(_SETTLE, {**claimable, "new_state": state, "new_error_code": look.fail})
            return state if done.rowcount == 1 else None  # the caller counts and logs it, once committed
        claimed = db.execute(_CLAIM, {**claimable, "new_claimed_at": now}).first()
        if claimed is None:
            return None
        login_url, code = self._issue_token(db, look)
        return Claimed(claimed.attempts, claimed.created_at, login_url, code)

    def _plan(self, row_id: str, look: Look, opened: Opened, claimed: Claimed, settle_later: bool = False) -> Plan | str:
        """Render the notice (outside any transaction); a notice that cannot be written fails here."""
        try:
            rendered = render(
                look.kind,
                NoticeContext(
                    practice_name=look.practice_name,
                    locale=look.locale,  # type: ignore[arg-type]
                    login_url=claimed.login_url,
                    thread_code=look.thread_code,
                    code=claimed.code,
                    emergency_numbers=self.settings.emergency_numbers,
                ),
                public_url=self.settings.resolved_public_url,
                channels={attempt.route.channel for attempt in opened.attempts},
            )
        except ValueError:
            return self._finish_now(row_id, look.kind, "render")
        return Plan(
            row_id=row_id,
            kind=look.kind,
            created_at=claimed.created_at,
            attempts=claimed.attempts,
            attempts_left=opened.attempts,
            rendered=rendered,
            reply_to=opened.reply_to,
            in_reply_to=opened.in_reply_to,
            sms_from=look.sms_from,
            settle_later=settle_later,
        )

    def _issue_token(self, db: Connection, look: Look) -> tuple[str | None, str | None]:
        # Issued at send time: the raw token exists only in this notice, never in the outbox or a log.
        owner = {"patient_id": look.patient_id, "practitioner_id": look.practitioner_id}
        purpose = LINK_PURPOSE.get(look.kind)
        if purpose is not None:
            issued = links.issue(
                db,
                purpose,
                ttl=timedelta(hours=self.settings.login_link_ttl_hours),
                contact_id=look.contact_id,
                thread_id=look.thread_id,
                **owner,
            )
            return f"{self.settings.resolved_public_url}/l/{issued.token}", None
        if look.kind in CODE_KINDS:
            issued = links.issue(db, "code", ttl=CODE_TTL, contact_id=look.contact_id, digits=6, **owner)
            return None, issued.token
        return None, None

    def _answered(self, db: Connection, row: Row[Any]) -> Answered | None:
        """The message an acknowledgement answers, with the key columns of its thread's patient (the
        thread's key, as `thread_key` finds it: most often the recipient's own)."""
        message = db.execute(_ANSWERED, {"message_id": row.message_id}).one_or_none() if row.message_id else None
        if message is None or message.original_ct is None:
            return None
        if row.thread_patient_id == row.patient_id:
            kek_id, wrapped = row.patient_kek_id, row.patient_dek_wrapped
        else:
            found = db.execute(_PATIENT_KEY, {"patient_id": row.thread_patient_id}).one_or_none()
            if found is None:
                return None
            kek_id, wrapped = found.kek_id, found.dek_wrapped
        return Answered(message.id, message.original_ct, row.thread_patient_id, kek_id, wrapped)

    def _answered_message_id(self, keys, look: Look) -> str | None:  # type: ignore[no-untyped-def]
        """The Message-ID of the email an acknowledgement answers (RFC 3834 In-Reply-To), when there is one."""
        answered: Answered = look.answered
        try:
            key = keys.unwrap_patient_key(answered.patient_id, answered.kek_id, answered.dek_wrapped)
            raw = key.open(answered.original_ct, aad=original_aad(answered.message_id, look.thread_id))
            value = BytesHeaderParser(policy=SMTP).parsebytes(raw).get("Message-ID")
        except Exception:  # noqa: BLE001 - a missing or odd header only means no In-Reply-To
            return None
        text = str(value or "").strip()
        return text if text.startswith("<") and text.endswith(">") and "@" in text and " " not in text else None

    def _finish_now(self, row_id: str, kind: str, code: str) -> str:
        params = {"row_id": row_id, "new_state": "failed", "new_error_code": code}
        self._writes.run(lambda db: db.execute(_outcome(("error_code",)), params), one_statement=True)
        NOTICES.labels("none", "failed").inc()
        log.warning("notice.failed", row=row_id, kind=kind, code=code)
        return "failed"

    # -- outside any transaction: the provider calls, then one short transaction per outcome --

    def _send(self, plan: Plan, first: Future[str] | DeliveryError | None = None) -> str:
        """Send the plan's notice, trying its routes in order; `first`: its first attempt, an email already
        handed to the relay (`_start_email`), or the error that stopped it."""
        last_code = "no-contact"
        for tried, attempt in enumerate(plan.attempts_left):
            channel = attempt.route.channel
            try:
                if tried == 0 and isinstance(first, DeliveryError):
                    raise first
                if tried == 0 and first is not None:
                    provider_id = self._loop.wait(first, timeout=_EMAIL_SEND_TIMEOUT)
                else:
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

    def _start_email(self, plan: Plan) -> Future[str] | DeliveryError | None:
        """Hand the plan's first attempt to the relay now, if it is an email (None: it is not)."""
        attempt = plan.attempts_left[0] if plan.attempts_left else None
        if attempt is None or attempt.route.channel != "email":
            return None
        try:
            return self._loop.submit(self._gated_send(self._email(plan, attempt), attempt.to))
        except DeliveryError as exc:
            return exc

    def _email(self, plan: Plan, attempt: Attempt) -> bytes:
        auto: AutoSubmitted = "auto-replied" if plan.kind == "acknowledgement" else "auto-generated"
        try:
            return build_notice_email(
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

    async def _gated_send(self, data: bytes, to: str) -> str:
        """One email to the relay, at most `max_sends` at once in this process (connections to the relay)."""
        if self._sends is None:
            self._sends = asyncio.Semaphore(self.max_sends)  # made on the loop that uses it
        async with self._sends:
            return await self.senders.email.send(data, mail_from=self.senders.envelope_from, to=to)

    def _hand_over(self, plan: Plan, attempt: Attempt) -> str:
        if attempt.route.channel == "email":
            return self._loop.run(self._gated_send(self._email(plan, attempt), attempt.to), timeout=_EMAIL_SEND_TIMEOUT)
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
                             metric_channel=channel, later=plan.settle_later and channel == "email")
        NOTICE_SECONDS.labels(channel).observe(max((now - plan.created_at).total_seconds(), 0.0))
        if channel == "sms":
            # Twilio may call the status webhook before this commit: those callbacks were kept, apply them now.
            from gateway.intake.sms_status import apply_recorded

            with writing(self.gw) as session:
                row = session.get(OutboxRow, plan.row_id)
                if row is not None:
                    apply_recorded(session, row)
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
        with writing(self.gw) as session:
            contact = session.get(ContactPoint, attempt.route.contact_id)
            marked = mark_contact(contact, code) if contact is not None else None
            if marked is not None:
                record(session, "worker", f"contact.{marked.removesuffix('_at')}", "contact", attempt.route.contact_id,
                       code=code)
        NOTICES.labels(attempt.route.channel, "refused").inc()
        log.warning("notice.refused", row=plan.row_id, channel=attempt.route.channel, code=code, marked=marked)

    def _finish(self, plan: Plan, state: str, *, metric_channel: str, metric_state: str | None = None,
                later: bool = False, **values: object) -> str:
        """Write the outcome unless the row already reached a final state (a duplicate run finished first);
        `later`: written behind, with the next transaction of the actor threads (`Combined.later`)."""
        names = tuple(sorted(values))
        params = {"row_id": plan.row_id, "new_state": state, **{f"new_{name}": values[name] for name in names}}
        if later:
            self._writes.later(lambda db: db.execute(_outcome(names), params), one_statement=True)
        else:
            self._writes.run(lambda db: db.execute(_outcome(names), params), one_statement=True)
        NOTICES.labels(metric_channel, metric_state or state).inc()
        if state == "sent":
            log.info("notice.sent", row=plan.row_id, kind=plan.kind, channel=metric_channel, attempt=plan.attempts)
        elif state == "failed":
            log.warning("notice.failed", row=plan.row_id, kind=plan.kind, code=values.get("error_code"))
        return state
