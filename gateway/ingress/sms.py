"""The Twilio webhooks: check the signature against the configured public URL, hand the form to the SMS
pipeline in a worker thread (the SMS that arrive together, in one batch: SmsQueue), and answer with TwiML
once everything is committed.

    POST /webhooks/twilio/sms      inbound SMS / MMS    200 TwiML | 403 unsigned | 413 | 415 | 503 (retry)
    POST /webhooks/twilio/status   delivery callbacks   200 TwiML | 403 unsigned | 413 | 415 | 503 (retry)
"""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, parse_qs

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask
from starlette.datastructures import ImmutableMultiDict
from twilio.request_validator import SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER, RequestValidator, get_signature_algorithm
from twilio.twiml.messaging_response import MessagingResponse

from gateway.app import Gateway
from gateway.config import Settings
from gateway.intake.mms import delete_queued
from gateway.intake.sms import SmsIntake, SmsResult, media_count
from gateway.intake.sms_status import StatusIntake
from gateway.logs import get_logger
from gateway.metrics import MESSAGES_IN

log = get_logger("gateway.ingress.sms")

SMS_PATH: Final = "/webhooks/twilio/sms"
STATUS_PATH: Final = "/webhooks/twilio/status"
MAX_BODY_BYTES: Final = 64 * 1024  # an SMS webhook with ten media URLs is a few kilobytes
MAX_FIELDS: Final = 200
SMS_THREADS: Final = 4
MAX_BATCH: Final = 8  # webhooks filed with one commit, at most
TWIML: Final = "text/xml"
EMPTY_TWIML: Final = str(MessagingResponse())

router = APIRouter(include_in_schema=False)
T = TypeVar("T")


class SignedForm(ImmutableMultiDict[str, str]):
    """The webhook's fields. `getall` is what RequestValidator tries first: without it, every field costs
    the validator an AttributeError, and the check takes twice as long. Each name's values are gathered
    once, here, rather than by a scan of all the fields for each name the validator asks for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._values: dict[str, list[str]] = {}
        for key, value in self.multi_items():
            self._values.setdefault(key, []).append(value)

    def getall(self, key: str) -> list[str]:
        return list(self._values.get(key, ()))


class Signatures:
    """Twilio's `RequestValidator` under the auth token and, during a rotation, the secondary one."""

    def __init__(self, settings: Settings) -> None:
        tokens = [t.get_secret_value() for t in (settings.twilio_auth_token, settings.twilio_auth_token_secondary) if t]
        self._validators = [RequestValidator(token) for token in tokens if token]
        self._public_url = settings.resolved_public_url

    def url_for(self, path: str, query: str) -> str:
        # What Twilio was configured to call: the public URL, never the Host header (wrong behind a proxy).
        return self._public_url + path + ("?" + query if query else "")

    def valid(self, url: str, params: Mapping[str, str] | str, signature: str, algorithm: str | None = None) -> bool:
        if not signature:
            return False
        return any(v.validate(url, params, signature, algorithm) for v in self._validators)


class SmsQueue:
    """Inbound SMS waiting to be filed, oldest first. A request that finds no batch being filed takes the
    oldest waiting webhooks (its own first, or among them), up to MAX_BATCH, and files them in a worker
    thread with one commit (SmsIntake.deliver_many); the others wait on the event loop for their answer or
    their turn. Alone, a webhook is filed at once, on its own; under load, as many messages take fewer
    transactions. Each answer still follows the commit of its own message.

    A second batch is filed meanwhile only once a full one waits, and only when `batches` allows it: on
    SQLite (one writer) it would wait for the first, and a second batch started early takes messages that
    the next full one would have carried. On PostgreSQL two batches overlap their round trips. (16 concurrent
    webhooks on the bench: SQLite 550-630 req/s one at a time, 460-580 two; PostgreSQL 270-320 one, 260-390
    two; any free thread starting a batch, as many of them one or two webhooks long: 430-470 and 270-290.)
    An MMS does not queue: its media are fetched from Twilio first, which no other message should wait for."""

    def __init__(self, intake: SmsIntake, limiter: anyio.CapacityLimiter, batches: int = 1) -> None:
        self._intake = intake
        self._limiter = limiter
        self._batches = batches
        self._waiting: deque[_Waiting] = deque()
        self._filing = 0  # batches in worker threads now

    async def deliver(self, form: SignedForm) -> SmsResult:
        if media_count(form):
            return await anyio.to_thread.run_sync(self._intake.deliver, form, limiter=self._limiter)
        me = _Waiting(form)
        self._waiting.append(me)
        try:
            while me.outcome is None:
                if not me.taken and self._may_file():
                    await self._file_oldest()
                else:
                    me.turn = anyio.Event()
                    await me.turn.wait()  # a batch was filed: ours, or ours is next
        except BaseException:
            if not me.taken:  # cancelled before a batch took it: nothing of it was written
                self._waiting.remove(me)
                self._wake_oldest()
            raise
        if isinstance(me.outcome, Exception):
            raise me.outcome
        return me.outcome

    async def _file_oldest(self) -> None:
        batch = [self._waiting.popleft() for _ in range(min(len(self._waiting), MAX_BATCH))]
        for waiting in batch:
            waiting.taken = True
        self._filing += 1
        self._wake_oldest()  # a full batch more waiting, and room for it: it goes too
        try:
            outcomes: list[SmsResult | Exception] = await anyio.to_thread.run_sync(
                self._intake.deliver_many, [w.form for w in batch], limiter=self._limiter
            )
        except Exception as exc:  # noqa: BLE001 - deliver_many answers each webhook; this is its own failure
            outcomes = [exc] * len(batch)
        except BaseException:
            # Cancelled while waiting for a thread (once in one, the call is shielded and runs to its end):
            # nothing was filed, and the batch goes back to the head of the queue.
            for waiting in reversed(batch):
                waiting.taken = False
                self._waiting.appendleft(waiting)
            raise
        finally:
            self._filing -= 1
        for waiting, outcome in zip(batch, outcomes):
            waiting.outcome = outcome
            waiting.turn.set()
        self._wake_oldest()

    def _may_file(self) -> bool:
        """No batch is being filed; or a full one waits, and there is room for it."""
        return not self._filing or (len(self._waiting) >= MAX_BATCH and self._filing < self._batches)

    def _wake_oldest(self) -> None:
        if self._waiting and self._may_file():
            self._waiting[0].turn.set()


@dataclass(eq=False)
class _Waiting:
    form: SignedForm
    turn: anyio.Event = field(default_factory=anyio.Event)
    taken: bool = False  # by a batch, in a worker thread now
    outcome: SmsResult | Exception | None = None


def setup(app: FastAPI, gw: Gateway) -> None:
    app.state.sms_signatures = Signatures(gw.settings)
    # The pipeline is Python bound by the GIL (and, on SQLite, by one writer): a few threads (SMS batches,
    # MMS, status callbacks) keep the CPU busy, and more only trade the GIL back and forth. Waiting requests
    # queue on the event loop.
    app.state.sms_threads = anyio.CapacityLimiter(SMS_THREADS)
    app.state.sms_intake = SmsIntake(gw)
    batches = 1 if gw.engine.dialect.name == "sqlite" else 2  # see SmsQueue
    app.state.sms_queue = SmsQueue(app.state.sms_intake, app.state.sms_threads, batches)
    app.state.sms_status = StatusIntake(gw)


class _Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def signed_form(request: Request, path: str) -> SignedForm:
    """The form of a request Twilio signed: url-encoded, or JSON with its `bodySHA256` in the signed URL."""
    signatures: Signatures = request.app.state.sms_signatures
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Refusal(413, "too-large")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _Refusal(413, "too-large")
    query = request.url.query
    url = signatures.url_for(path, query)
    signature = request.headers.get(SIGNATURE_HEADER, "")
    algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    text = raw.decode("utf-8", errors="replace")

    if media_type == "application/json":
        if "bodySHA256" not in parse_qs(query) or not signatures.valid(url, text, signature, algorithm):
            raise _Refusal(403, "signature")
        try:
            document = json.loads(text)
        except ValueError:
            raise _Refusal(400, "malformed") from None
        if not isinstance(document, dict):
            raise _Refusal(400, "malformed")
        return SignedForm([(str(k), _scalar(v)) for k, v in document.items() if _scalar(v) is not None])  # type: ignore[misc]

    if media_type not in ("application/x-www-form-urlencoded", ""):
        raise _Refusal(415, "media-type")
    try:
        # parse_qsl on the raw body: what request.form() returns, at a fraction of its cost.
        form = SignedForm(parse_qsl(raw.decode("latin-1"), keep_blank_values=True, max_num_fields=MAX_FIELDS))
    except ValueError:
        raise _Refusal(400, "malformed") from None
    if not signatures.valid(url, form, signature, algorithm):
        raise _Refusal(403, "signature")
    return form


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


async def _handle(
    request: Request, path: str, work: Callable[[SignedForm], Awaitable[T]], *, counted: bool
) -> tuple[T | None, Response | None]:
    """(result, None), or (None, the error answer): every failure of the webhooks is answered here.
    `counted`: failures count as inbound messages (the SMS webhook, not the status callbacks)."""
    try:
        form = await signed_form(request, path)
    except _Refusal as refusal:
        if counted and refusal.status == 403:
            MESSAGES_IN.labels("sms", "forged").inc()
        log.warning("webhook.refused", path=path, status=refusal.status, reason=refusal.reason)
        return None, Response(status_code=refusal.status)
    try:
        return await work(form), None
    except Exception as exc:  # noqa: BLE001 - the edge: any failure is a 503 so Twilio retries, and is logged without content
        if counted:
            MESSAGES_IN.labels("sms", "failed").inc()
        log.error("webhook.failed", path=path, error=type(exc).__name__)
        return None, Response(status_code=503, headers={"Retry-After": "5"})


@router.post(SMS_PATH)
async def inbound_sms(request: Request) -> Response:
    queue: SmsQueue = request.app.state.sms_queue
    result, failure = await _handle(request, SMS_PATH, queue.deliver, counted=True)
    if failure is not None:
        return failure
    assert result is not None
    return Response(_twiml(result), media_type=TWIML, background=_deletions(request.app.state.sms_intake, result))


@router.post(STATUS_PATH)
async def status_callback(request: Request) -> Response:
    intake: StatusIntake = request.app.state.sms_status

    async def receive(form: SignedForm) -> None:
        await anyio.to_thread.run_sync(intake.receive, form, limiter=request.app.state.sms_threads)

    _, failure = await _handle(request, STATUS_PATH, receive, counted=False)
    return failure or Response(EMPTY_TWIML, media_type=TWIML)


def _twiml(result: SmsResult) -> str:
    if result.reply is None:
        return EMPTY_TWIML
    response = MessagingResponse()
    response.message(result.reply)
    return str(response)


def _deletions(intake: SmsIntake, result: SmsResult) -> BackgroundTask | None:
    """After the answer is sent: delete this message's media at Twilio, then retry a few whose deletion
    failed before (each MMS gives the queue another chance, so no copy stays at Twilio for long)."""
    fetcher = intake.fetcher
    if not result.media_to_delete or fetcher is None:
        return None

    def delete_media() -> None:
        delete_queued(intake.gw.sessions, fetcher, result.media_to_delete)
        delete_queued(intake.gw.sessions, fetcher)

    return BackgroundTask(delete_media)
