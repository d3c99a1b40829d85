"""The path of an inbound SMS, in order. Each step takes the previous step's frozen value and returns the
next; a step that ends the path raises Discard (nothing to post) or Refused (nothing posted; the number
may get one content-free reply a day).

    parse      webhook form          -> InboundSms
    identify   To, From              -> IdentifiedSms      (the practice; that number's contacts there)
    keywords   STOP / START / HELP   -> handled here, the path ends (never posted as a message)
    route      thread code, recent SMS notice, only open thread -> RoutedSms (a thread, or held for triage)
    fetch      MMS media             -> FetchedSms         (no database transaction held meanwhile)
    store      one transaction       -> SmsResult          (message + attachments + outbox row, or the held copy)

An SMS without media goes from identify to store in one write transaction; an MMS is identified and
routed in a read transaction, its media fetched with no transaction held, then stored in a write one.
The edge (gateway/ingress/sms.py) turns the result into an HTTP answer, in one place.
"""
from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Final, Literal

from sqlalchemy import Connection, Row, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.app import Gateway
from gateway.audit import record
from gateway.db.tables import (
    CareRelationship,
    ContactPoint,
    OutboxRow,
    Patient,
    Practice,
    Practitioner,
    SmsInbound,
    Thread,
)
from gateway.directory.contacts import normalize_phone
from gateway.errors import Discard, InvalidInput
from gateway.intake.attachments import AttachmentLimits
from gateway.intake.held import hold
from gateway.intake.mms import FetchedMedia, MediaError, MediaFetcher, MediaRef, RefusedMedia, queue_deletions
from gateway.logs import get_logger, redact
from gateway.metrics import INTAKE_SECONDS, MESSAGES_IN
from gateway.notices.context import NoticeContext
from gateway.notices.render import render
from gateway.outbox import add_notice
from gateway.ratelimit import first_in_window
from gateway.threads.service import NewAttachment, post_message, thread_ref

log = get_logger("gateway.intake.sms")

STEPS: Final = ("parse", "identify", "keywords", "route", "fetch", "store")
RECENT_NOTICE: Final = timedelta(days=7)
MAX_MEDIA: Final = 10  # Twilio sends at most 10 media per MMS
MAX_BODY: Final = 10_000  # 1,600 characters is Twilio's limit; anything far longer is not an SMS

# Whole-message keywords, compared without case or accents (ARRÊT is ARRET).
STOP_WORDS: Final = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "arret"})
START_WORDS: Final = frozenset({"start", "yes", "unstop"})
HELP_WORDS: Final = frozenset({"help", "aide"})
Keyword = Literal["stop", "start", "help"]

# A leading thread code: "#K3 ...", "K3: ...". Codes are 2-6 letters and digits (threads.service alphabet).
_LEADING_CODE: Final = re.compile(r"\s*(?P<hash>#\s*)?(?P<code>[A-Za-z0-9]{2,6})(?=$|[\s,.:;!?)\-])[\s,.:;!?)\-]*")

Outcome = Literal["stored", "held", "keyword", "refused", "duplicate", "discarded"]
RefusalReason = Literal["unknown-number", "unverified", "no-care", "messaging-off"]
Rule = Literal["code", "recent-notice", "only-open", "held"]


class Refused(Discard):
    """Nothing is posted. The number may get one content-free `refused_sms` reply per day."""

    def __init__(self, reason: RefusalReason) -> None:
        super().__init__(reason)


# -- values passed between steps ----------------------------------------------------------------


@dataclass(frozen=True)
class InboundSms:
    message_sid: str
    account_sid: str
    from_number: str  # as Twilio sent it; never logged unredacted
    to_number: str
    body: str
    media: tuple[MediaRef, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """A contact of one of the practice's patients that carries the sender's number."""

    contact_id: str
    patient_id: str
    verified: bool
    opted_out: bool
    locale: str


@dataclass(frozen=True)
class IdentifiedSms:
    inbound: InboundSms
    practice_id: str
    practice_name: str
    number_bidx: str | None  # None: the sender is not a phone number (an alphanumeric id, say)
    candidates: tuple[Candidate, ...]

    @property
    def verified(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.verified)


@dataclass(frozen=True)
class RoutedSms:
    identified: IdentifiedSms
    sender: Candidate  # the patient whose thread it is, or who is asked to log in when held
    thread_id: str | None  # None: held for the practice to triage
    rule: Rule
    body: str  # without the leading thread code


@dataclass(frozen=True)
class FetchedSms:
    routed: RoutedSms
    media: FetchedMedia
    media_paths: tuple[str, ...]  # to delete at Twilio once committed


@dataclass(frozen=True)
class SmsResult:
    outcome: Outcome
    reason: str | None = None
    thread_id: str | None = None
    message_id: str | None = None
    held_id: str | None = None
    reply: str | None = None  # a content-free SMS to answer with (TwiML), refusals only
    media_to_delete: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _Answer:
    """What the pipeline does instead of storing: a keyword's effect, or a refusal."""

    keyword: Keyword | None = None
    refusal: RefusalReason | None = None


# -- statements, built once: constructing a select with subqueries costs more than SQLite takes to run it --

_CONTACTS = (
    select(ContactPoint.id.label("contact_id"), ContactPoint.patient_id, ContactPoint.verified_at,
           ContactPoint.opted_out_at, ContactPoint.created_at, Patient.locale, Patient.practice_id)
    .join(Patient, Patient.id == ContactPoint.patient_id)
    .where(ContactPoint.kind == "phone", ContactPoint.bidx == bindparam("bidx"), Patient.erased_at.is_(None))
    .subquery()
)
# The practice owning the number, outer-joined to its patients' contacts that carry the sender's number.
_IDENTIFY = (
    select(Practice.id, Practice.display_name, _CONTACTS)
    .outerjoin(_CONTACTS, _CONTACTS.c.practice_id == Practice.id)
    .where(Practice.sms_number == bindparam("number"))
)
# When each thread last had an SMS notice sent to this number, within the window (a notice without a fixed
# contact went to the patient's number, which is this one).
_NOTICED = (
    select(func.max(OutboxRow.sent_at))
    .where(
        OutboxRow.thread_id == Thread.id,
        OutboxRow.patient_id == Thread.patient_id,
        OutboxRow.channel == "sms",
        OutboxRow.state.in_(("sent", "delivered")),
        OutboxRow.sent_at >= bindparam("since"),
        or_(OutboxRow.contact_id.is_(None), OutboxRow.contact_id.in_(bindparam("contacts", expanding=True))),
    )
    .scalar_subquery()
)
# The patients' threads, with what decides whether they may write there. The practice is checked on the
# rows (route): with `threads.practice_id = ?` in the query, SQLite walks the whole practice's threads by
# that index instead of the patients' few by theirs.
_THREADS = (
    select(Thread.id, Thread.code, Thread.status, Thread.patient_id, Thread.practice_id, Practitioner.messaging_enabled,
           CareRelationship.id.label("care_id"), _NOTICED.label("noticed_at"))
    .join(Practitioner, Practitioner.id == Thread.practitioner_id)
    .outerjoin(CareRelationship, and_(CareRelationship.patient_id == Thread.patient_id,
                                      CareRelationship.practitioner_id == Thread.practitioner_id))
    .where(Thread.patient_id.in_(bindparam("patients", expanding=True)))
)


# -- steps -----------------------------------------------------------------------------------------


def parse(form: Mapping[str, str]) -> InboundSms:
    """The fields we use from Twilio's webhook form; a form that is not an inbound SMS is discarded."""
    sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
    if not re.fullmatch(r"(?:SM|MM)[0-9a-fA-F]{32}", sid):
        raise Discard("malformed")
    media = tuple(
        MediaRef(i, form.get(f"MediaUrl{i}", ""), form.get(f"MediaContentType{i}", ""))
        for i in range(media_count(form))
    )
    body = (form.get("Body") or "")[:MAX_BODY]
    if not body.strip() and not media:
        raise Discard("empty")
    return InboundSms(
        message_sid=sid,
        account_sid=(form.get("AccountSid") or "").strip(),
        from_number=(form.get("From") or "").strip(),
        to_number=(form.get("To") or "").strip(),
        body=body,
        media=media,
    )


@lru_cache(maxsize=64)
def _practice_number(to_number: str) -> str | None:
    """`To` in E.164, None when it is not a phone number. Remembered: `To` is one of the practices' own
    (public) numbers, the same few on every webhook, and parsing one costs more than the query it feeds."""
    try:
        return normalize_phone(to_number)
    except InvalidInput:
        return None


def media_count(form: Mapping[str, str]) -> int:
    """How many media the webhook announces (NumMedia), at most MAX_MEDIA."""
    try:
        return max(min(int(form.get("NumMedia") or 0), MAX_MEDIA), 0)
    except ValueError:
        return 0


def identify(conn: Connection, gw: Gateway, inbound: InboundSms) -> IdentifiedSms:
    """`To` names the practice; `From`, by blind index, the contacts of that practice's patients with that
    number. One query: the practice, outer-joined to the matching contacts."""
    keys = gw.keys
    practice_number = _practice_number(inbound.to_number)
    if practice_number is None:
        raise Discard("unknown-practice-number")
    try:
        bidx: str | None = keys.index("phone", normalize_phone(inbound.from_number))
    except InvalidInput:
        bidx = None  # an alphanumeric sender id: no contact can match, and no reply can reach it
    rows = conn.execute(_IDENTIFY, {"number": practice_number, "bidx": bidx}).all()
    if not rows:
        raise Discard("unknown-practice-number")
    matched = sorted(
        (r for r in rows if r.patient_id is not None), key=lambda r: (r.verified_at is None, r.created_at, r.contact_id)
    )
    candidates = tuple(
        Candidate(r.contact_id, r.patient_id, r.verified_at is not None, r.opted_out_at is not None, r.locale) for r in matched
    )
    return IdentifiedSms(inbound, rows[0].id, rows[0].display_name, bidx, candidates)


def keyword_of(body: str) -> Keyword | None:
    """STOP / START / HELP words when they are the whole message, whatever the case and accents."""
    text = "".join(ch for ch in unicodedata.normalize("NFKD", body) if not unicodedata.combining(ch))
    word = text.strip().rstrip(".!").strip().casefold()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None


def apply_keyword(session: Session, item: IdentifiedSms, keyword: Keyword) -> None:
    """STOP: no more SMS notices to that number from this practice (email instead); START undoes it;
    HELP: the short help SMS. The caller owns the transaction."""
    ids = [c.contact_id for c in item.candidates]
    now = datetime.now(timezone.utc)
    actor = f"sms:{ids[0]}"
    if keyword == "stop":
        session.execute(
            update(ContactPoint).where(ContactPoint.id.in_(ids), ContactPoint.opted_out_at.is_(None)).values(opted_out_at=now)
        )
        for contact_id in ids:
            record(session, actor, "contact.sms_opt_out", "contact", contact_id)
    elif keyword == "start":
        session.execute(update(ContactPoint).where(ContactPoint.id.in_(ids)).values(opted_out_at=None))
        for contact_id in ids:
            record(session, actor, "contact.sms_opt_in", "contact", contact_id)
    else:
        sender = (item.verified or item.candidates)[0]
        add_notice(session, "sms_help", patient_id=sender.patient_id, contact_id=sender.contact_id, channel="sms")


def leading_code(body: str, codes: set[str]) -> tuple[str, str] | None:
    """(code, rest of the body) when the message starts with one of `codes`.

    With "#" any case is taken ("#k3"). Without it the token must hold a digit or be typed in capitals, so
    that a message that merely starts with a short word ("Je ...") is not taken for thread JE."""
    match = _LEADING_CODE.match(body)
    if match is None:
        return None
    typed = match["code"]
    code = typed.upper()
    if code not in codes:
        return None
    if not match["hash"] and not (any(ch.isdigit() for ch in typed) or typed.isupper()):
        return None
    return code, body[match.end():]


def route(conn: Connection, item: IdentifiedSms, *, now: datetime) -> RoutedSms:
    """A leading thread code; else the thread of an SMS notice sent to this number within 7 days; else the
    patient's only open thread; else held for triage. Never a silent guess."""
    verified = item.verified
    if not verified:
        raise Refused("unverified" if item.candidates else "unknown-number")
    by_patient = {c.patient_id: c for c in reversed(verified)}  # the first contact of each patient wins
    rows = conn.execute(
        _THREADS,
        {"patients": list(by_patient), "since": now - RECENT_NOTICE, "contacts": [c.contact_id for c in verified]},
    ).all()
    threads = [t for t in rows if t.practice_id == item.practice_id]
    body = item.inbound.body

    coded = leading_code(body, {t.code.upper() for t in threads})
    if coded is not None:
        code, body = coded
        matches = [t for t in threads if t.code.upper() == code]
        if len(matches) == 1:
            return _checked(item, matches[0], by_patient, "code", body)
        return _held(conn, item, by_patient, body)  # siblings sharing a phone with the same code

    recent = max((t for t in threads if t.noticed_at is not None), key=lambda t: t.noticed_at, default=None)
    if recent is not None:
        return _checked(item, recent, by_patient, "recent-notice", body)

    open_threads = [t for t in threads if t.status == "open"]
    if len(open_threads) == 1:
        return _checked(item, open_threads[0], by_patient, "only-open", body)
    return _held(conn, item, by_patient, body)


def _checked(item: IdentifiedSms, thread: Row[Any], by_patient: dict[str, Candidate], rule: Rule, body: str) -> RoutedSms:
    """The thread a rule named, if the patient may still write there; a closed one is held, not redirected."""
    sender = by_patient[thread.patient_id]
    if thread.status != "open":
        return RoutedSms(item, sender, None, "held", body)
    if not thread.messaging_enabled:
        raise Refused("messaging-off")
    if thread.care_id is None:
        raise Refused("no-care")
    return RoutedSms(item, sender, thread.id, rule, body)


def _held(conn: Connection, item: IdentifiedSms, by_patient: dict[str, Candidate], body: str) -> RoutedSms:
    """Held only for a patient who may write to someone here; otherwise it is refused like any stranger."""
    writable = conn.execute(
        select(CareRelationship.patient_id, Practitioner.messaging_enabled)
        .join(Practitioner, Practitioner.id == CareRelationship.practitioner_id)
        .where(CareRelationship.patient_id.in_(by_patient), Practitioner.practice_id == item.practice_id)
    ).all()
    able = [row.patient_id for row in writable if row.messaging_enabled]
    if not able:
        raise Refused("messaging-off" if writable else "no-care")
    sender = next(c for c in item.verified if c.patient_id in able)
    return RoutedSms(item, sender, None, "held", body)


def fetch(fetcher: MediaFetcher | None, routed: RoutedSms) -> FetchedSms:
    inbound = routed.identified.inbound
    if not inbound.media:
        return FetchedSms(routed, FetchedMedia((), ()), ())
    if fetcher is None:  # no Twilio account configured: the media cannot be fetched, say so in the thread
        refused = tuple(RefusedMedia(ref.filename, "unavailable") for ref in inbound.media)
        return FetchedSms(routed, FetchedMedia((), refused), ())
    media = fetcher.fetch(inbound.message_sid, inbound.media)
    paths = tuple(p for p in (fetcher.path_of(ref, inbound.message_sid) for ref in inbound.media) if p)
    return FetchedSms(routed, media, paths)


_REFUSED_TEXT: Final = {
    "fr": ("Fichiers non acceptés :", {"type": "type de fichier non accepté", "size": "trop volumineux",
                                         "total": "trop volumineux", "unavailable": "indisponible"}),
    "en": ("Files not accepted:", {"type": "type not accepted", "size": "too large", "total": "too large",
                                   "unavailable": "unavailable"}),
}


def refused_note(refused: tuple[RefusedMedia, ...], locale: str) -> str:
    """A system note naming each refused file (the generated name, never its content)."""
    title, reasons = _REFUSED_TEXT.get(locale, _REFUSED_TEXT["en"])
    return title + "\n" + "\n".join(f"- {r.filename} ({reasons[r.reason]})" for r in refused)


_INSERT_INBOUND: Final = insert(SmsInbound.__table__)


def _record_inbound(session: Session, item: IdentifiedSms, outcome: Outcome) -> None:
    """The MessageSid's row, written at once (a Core statement, no flush): a concurrent delivery of the same
    message breaks its primary key here, before anything else is written."""
    session.connection().execute(
        _INSERT_INBOUND,
        {"message_sid": item.inbound.message_sid, "practice_id": item.practice_id, "outcome": outcome,
         "received_at": datetime.now(timezone.utc)},
    )


def store(session: Session, gw: Gateway, fetched: FetchedSms) -> SmsResult:
    """Seal and store in the caller's transaction: the message and its attachments with the practitioner's
    notice, or the held copy with the patient's one content-free notice. The MessageSid's row goes in
    with them: a concurrent retry of the same message fails on its primary key and stores nothing."""
    keys = gw.keys
    routed = fetched.routed
    item = routed.identified
    sid = item.inbound.message_sid
    sender = routed.sender
    accepted = tuple(NewAttachment(f.filename, f.content_type, f.data) for f in fetched.media.accepted)
    refused = fetched.media.refused

    if routed.thread_id is None:
        patient = session.get(Patient, sender.patient_id)
        assert patient is not None
        _record_inbound(session, item, "held")
        queue_deletions(session, fetched.media_paths)
        body = routed.body if not refused else (routed.body + "\n\n" + refused_note(refused, sender.locale)).strip()
        held = hold(
            session, keys, practice_id=item.practice_id, patient=patient, contact_id=sender.contact_id,
            message_sid=sid, body=body, media=accepted,
        )
        if item.number_bidx and first_in_window(session, f"held_sms:{item.number_bidx}", timedelta(hours=1)):
            add_notice(session, "held_sms", patient_id=sender.patient_id, contact_id=sender.contact_id)
        return SmsResult("held", reason=routed.rule, held_id=held.id, media_to_delete=fetched.media_paths)

    # The thread and its patient's wrapped key, as columns in one statement.
    thread = thread_ref(session, routed.thread_id)
    _record_inbound(session, item, "stored")
    queue_deletions(session, fetched.media_paths)
    note = refused_note(refused, sender.locale) if refused else None
    if routed.body.strip() or accepted:
        message = post_message(
            session, keys, thread, author="patient", channel="sms", body=routed.body, attachments=accepted,
            dedupe=("sms", sid),
        )
        if note:
            post_message(session, keys, thread, author="system", channel="sms", body=note, notify=False)
    else:
        # Only refused media and no text: the note is all there is to file, and it carries the dedupe key.
        message = post_message(
            session, keys, thread, author="system", channel="sms", body=note or "", dedupe=("sms", sid), notify=False,
        )
    record(session, f"sms:{sender.contact_id}", "message.received", "message", message.id, rule=routed.rule)
    return SmsResult(
        "stored", reason=routed.rule, thread_id=thread.id, message_id=message.id, media_to_delete=fetched.media_paths
    )


def refuse(session: Session, gw: Gateway, item: IdentifiedSms, reason: str, media_paths: tuple[str, ...]) -> SmsResult:
    """Nothing posted; one content-free reply per number per day, unless that number opted out."""
    _record_inbound(session, item, "refused")
    queue_deletions(session, media_paths)
    reply = None
    opted_out = any(c.opted_out for c in item.candidates)
    if item.number_bidx and not opted_out and first_in_window(
        session, f"refused_sms:{item.number_bidx}", timedelta(days=1)
    ):
        locale = item.candidates[0].locale if item.candidates else gw.settings.default_locale
        context = NoticeContext(
            practice_name=item.practice_name, locale=locale,  # type: ignore[arg-type]
            emergency_numbers=gw.settings.emergency_numbers,
        )
        reply = render("refused_sms", context, public_url=gw.settings.resolved_public_url).sms
    return SmsResult("refused", reason=reason, reply=reply, media_to_delete=media_paths)


# -- the pipeline --------------------------------------------------------------------------------


class SmsIntake:
    """Built once per process; `deliver` runs in a worker thread, never on the event loop."""

    def __init__(self, gw: Gateway, fetcher: MediaFetcher | None = None, limits: AttachmentLimits = AttachmentLimits()):
        self.gw = gw
        settings = gw.settings
        token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
        if fetcher is None and token:
            fetcher = MediaFetcher(settings.twilio_account_sid, token, settings.twilio_api_base, limits=limits)
        self.fetcher = fetcher

    def deliver(self, form: Mapping[str, str]) -> SmsResult:
        started = time.perf_counter()
        try:
            result = self._deliver(form)
        except Discard as discard:
            result = SmsResult("duplicate" if discard.reason == "duplicate" else "discarded", reason=discard.reason)
        return self._counted(result, started)

    def deliver_many(self, forms: Sequence[Mapping[str, str]]) -> list[SmsResult | Exception]:
        """`deliver` for webhooks that arrived together, each one's result or exception in their order.

        Those that need nothing but the database (no media to fetch) are filed in one write transaction, with
        one commit for all of them; the others, and all of them again should that transaction fail (rolled
        back: nothing of it is written), are delivered one by one."""
        outcomes: list[SmsResult | Exception | None] = [None] * len(forms)
        started = time.perf_counter()
        for i, result in self._together(forms).items():
            outcomes[i] = self._counted(result, started)
        for i, form in enumerate(forms):
            if outcomes[i] is None:
                try:
                    outcomes[i] = self.deliver(form)
                except Exception as exc:  # noqa: BLE001 - each webhook's failure is answered for that webhook
                    outcomes[i] = exc
        return outcomes  # type: ignore[return-value]

    def _together(self, forms: Sequence[Mapping[str, str]]) -> dict[int, SmsResult]:
        """{index: result} of the SMS without media among `forms`, filed in one transaction; empty when there
        are fewer than two, or when that transaction failed (a concurrent retry's MessageSid, say)."""
        together: dict[int, InboundSms] = {}
        for i, form in enumerate(forms):
            try:
                inbound = parse(form)
            except Discard:
                continue  # answered on its own, without a query
            if not inbound.media:
                together[i] = inbound
        if len(together) < 2:
            return {}
        self.gw.keys  # noqa: B018 - loaded before the write transaction, as in _deliver
        try:
            with self.gw.transaction() as session:
                return {i: self._decide(session, inbound, keyword_of(inbound.body)) for i, inbound in together.items()}
        except Exception:  # noqa: BLE001 - rolled back; delivered again one by one, where a failure is its own
            return {}

    def _counted(self, result: SmsResult, started: float) -> SmsResult:
        MESSAGES_IN.labels("sms", result.outcome).inc()
        if result.outcome in ("stored", "held"):
            INTAKE_SECONDS.labels("sms").observe(time.perf_counter() - started)
        log.info(
            "sms." + result.outcome, reason=result.reason, thread=result.thread_id, message=result.message_id,
            held=result.held_id, media=len(result.media_to_delete),
        )
        return result

    def _deliver(self, form: Mapping[str, str]) -> SmsResult:
        gw = self.gw
        gw.keys  # noqa: B018 - loaded before any write transaction (SQLite: it opens its own read session)
        inbound = parse(form)
        keyword = keyword_of(inbound.body)
        if not inbound.media:
            # Nothing to fetch: identify, route and store in one write transaction (one BEGIN, one commit),
            # the routing read from the very state the message is written into.
            return self._once(inbound.message_sid, lambda session: self._decide(session, inbound, keyword))
        with gw.readers() as session:
            conn = session.connection()
            # Twilio's retry of an MMS must not fetch media that the first delivery stored and deleted.
            if self._seen(inbound.message_sid, conn):
                raise Discard("duplicate")
            identified = identify(conn, gw, inbound)
            decision = self._route(conn, identified, keyword)
        if not isinstance(decision, RoutedSms):
            # A keyword or a refusal: nothing is fetched.
            return self._once(inbound.message_sid, lambda session: self._answer(session, identified, decision))
        try:
            fetched = fetch(self.fetcher, decision)
        except MediaError:
            # A concurrent delivery of this MessageSid may have stored it and deleted the media already.
            if self._seen(inbound.message_sid):
                raise Discard("duplicate") from None
            raise
        return self._once(inbound.message_sid, lambda session: store(session, gw, fetched))

    def _decide(self, session: Session, inbound: InboundSms, keyword: Keyword | None) -> SmsResult:
        conn = session.connection()  # plain selects of columns: Core rows cost less than the ORM's
        identified = identify(conn, self.gw, inbound)
        decision = self._route(conn, identified, keyword)
        if not isinstance(decision, RoutedSms):
            return self._answer(session, identified, decision)
        return store(session, self.gw, fetch(self.fetcher, decision))

    @staticmethod
    def _route(conn: Connection, identified: IdentifiedSms, keyword: Keyword | None) -> RoutedSms | _Answer:
        """The thread (or held copy) to store into, or what to answer instead: a keyword, a refusal."""
        if keyword is not None:
            return _Answer(keyword=keyword)
        try:
            return route(conn, identified, now=datetime.now(timezone.utc))
        except Refused as refused:
            return _Answer(refusal=refused.reason)  # type: ignore[arg-type]

    def _answer(self, session: Session, identified: IdentifiedSms, answer: _Answer) -> SmsResult:
        if answer.keyword is not None:
            return self._keyword(session, identified, answer.keyword)
        return self._refuse(session, identified, answer.refusal or "unknown-number")

    def _keyword(self, session: Session, identified: IdentifiedSms, keyword: Keyword) -> SmsResult:
        if not identified.candidates:
            return SmsResult("keyword", reason=keyword)  # a stranger's STOP: nothing of theirs to change
        _record_inbound(session, identified, "keyword")
        apply_keyword(session, identified, keyword)
        paths = self._paths(identified.inbound)
        queue_deletions(session, paths)
        return SmsResult("keyword", reason=keyword, media_to_delete=paths)

    def _refuse(self, session: Session, identified: IdentifiedSms, reason: str) -> SmsResult:
        log.info("sms.refusing", reason=reason, sender=redact(identified.inbound.from_number))
        return refuse(session, self.gw, identified, reason, self._paths(identified.inbound))

    def _paths(self, inbound: InboundSms) -> tuple[str, ...]:
        if self.fetcher is None:
            return ()
        return tuple(p for p in (self.fetcher.path_of(r, inbound.message_sid) for r in inbound.media) if p)

    def _once(self, sid: str, work) -> SmsResult:  # type: ignore[no-untyped-def]
        """Run `work` in one write transaction; a concurrent delivery of the same MessageSid that committed
        first makes this one a duplicate (its unique key broke), anything else propagates (5xx: Twilio retries)."""
        try:
            with self.gw.transaction() as session:
                return work(session)  # type: ignore[no-any-return]
        except IntegrityError:
            if self._seen(sid):
                raise Discard("duplicate") from None
            raise

    def _seen(self, sid: str, conn: Connection | None = None) -> bool:
        if conn is None:
            with self.gw.readers() as session:
                return self._seen(sid, session.connection())
        return conn.scalar(select(SmsInbound.message_sid).where(SmsInbound.message_sid == sid)) is not None


__all__ = [
    "STEPS",
    "Candidate",
    "FetchedSms",
    "IdentifiedSms",
    "InboundSms",
    "Refused",
    "RoutedSms",
    "SmsIntake",
    "SmsResult",
    "keyword_of",
    "leading_code",
    "media_count",
]
