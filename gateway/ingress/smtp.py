"""The SMTP/LMTP edge (aiosmtpd). Cheap checks at RCPT (unknown recipient 550 5.1.1, closed thread or
messaging off 550 5.7.1), size at DATA (552 5.3.4), then hand-off to the intake pipeline in a worker
thread. `250` is said only after the pipeline committed; any failure before that is `451 4.3.0`."""
from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.app import Gateway
from gateway.errors import Reject
from gateway.intake.pipeline import Delivered, EmailIntake
from gateway.intake.values import Destination, InboundEmail
from gateway.logs import get_logger

log = get_logger("gateway.smtp")
# aiosmtpd logs every command line (addresses included) at INFO and DEBUG: its logger stays at WARNING
# whatever level the process runs at.
logging.getLogger("mail.log").setLevel(logging.WARNING)

ACCEPTED = "250 2.0.0 Message accepted"
RCPT_OK = "250 2.1.5 Recipient ok"
TEMPORARY = "451 4.3.0 Temporary failure, please retry later"
TOO_BIG = "552 5.3.4 Message too big for system"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients, send the others in another transaction"
# aiosmtpd answers these itself; we give them their enhanced status codes.
_NAMED = {
    "552 Error: Too much mail data": TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long",
}


class _NamedReplies:
    """Mixin for aiosmtpd's server classes: its own refusals carry enhanced status codes."""

    # Real mail has longer lines than RFC 5322's 998 (HTML from some clients): refusing them loses mail.
    line_length_limit = 32768

    async def push(self, status: str) -> None:
        await super().push(_NAMED.get(status, status))  # type: ignore[misc]


class GatewaySMTP(_NamedReplies, SMTP):
    pass


class GatewayLMTP(_NamedReplies, LMTP):
    pass


MAX_BATCH = 8  # messages stored with one commit, at most


class IntakeQueue:
    """Work waiting for the intake, oldest first, one batch at a time in a worker thread: the recipients of
    RCPT commands waiting to be looked up (`EmailIntake.resolve_many`, one read transaction), then up to
    MAX_BATCH messages (`EmailIntake.deliver_many`: one transaction and one commit for those that get as far as
    storing). Whoever finds no batch running starts one; the others wait on the event loop for their turn.
    Alone, a command goes through at once, on its own; under load, the same work takes fewer transactions,
    and one thread works instead of several trading the GIL (and, on SQLite, the one writer). Each reply
    still follows the commit of its own message.
    With `verify` authentication each message runs on its own, as DNS answers may be slow to come."""

    def __init__(self, intake: EmailIntake, run: Callable[..., Awaitable[Any]]) -> None:
        self._intake = intake
        self._run = run
        self._lookups: deque[tuple[str, asyncio.Future[Any]]] = deque()
        self._messages: deque[tuple[InboundEmail, asyncio.Future[Any]]] = deque()
        self._filing = False
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    async def resolve(self, address: str) -> Destination:
        return await self._wait(self._lookups, address)  # type: ignore[no-any-return]

    async def deliver(self, inbound: InboundEmail) -> Delivered:
        if not self._intake.batchable:
            return await self._run(self._intake.deliver, inbound)  # type: ignore[no-any-return]
        return await self._wait(self._messages, inbound)  # type: ignore[no-any-return]

    async def _wait(self, line: deque[tuple[Any, asyncio.Future[Any]]], work: Any) -> Any:
        turn: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        line.append((work, turn))
        if not self._filing:
            self._file_next()
        outcome = await turn
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _file_next(self) -> None:
        # A waiter whose connection went away before its turn is dropped: nothing of it is written.
        lookups = [item for item in _take(self._lookups, len(self._lookups)) if not item[1].cancelled()]
        messages = [item for item in _take(self._messages, MAX_BATCH) if not item[1].cancelled()]
        if lookups or messages:
            self._filing = True
            task = asyncio.get_running_loop().create_task(self._file(lookups, messages))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _file(self, lookups: list[tuple[str, asyncio.Future[Any]]],
                    messages: list[tuple[InboundEmail, asyncio.Future[Any]]]) -> None:
        try:
            outcomes = await self._run(self._work, [a for a, _ in lookups], [m for m, _ in messages])
        except Exception as exc:  # noqa: BLE001 - each waiter is answered with its own outcome; this is the batch's failure
            outcomes = [exc] * (len(lookups) + len(messages))
        finally:
            self._filing = False
        for (_, turn), outcome in zip(lookups + messages, outcomes):  # type: ignore[operator]
            if not turn.done():
                turn.set_result(outcome)
        self._file_next()

    def _work(self, addresses: list[str], inbounds: list[InboundEmail]) -> list[Any]:
        return [*self._intake.resolve_many(addresses), *(self._intake.deliver_many(inbounds) if inbounds else [])]


def _take(line: deque[Any], most: int) -> list[Any]:
    return [line.popleft() for _ in range(min(most, len(line)))]


class IntakeHandler:
    """aiosmtpd hooks. Database and DNS work runs in a thread pool: a commit on the event loop would stall
    every connection."""

    def __init__(self, intake: EmailIntake, *, lmtp: bool, workers: int = 8) -> None:
        self.intake = intake
        self.lmtp = lmtp
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smtp-intake")
        self.queue = IntakeQueue(intake, self._run)
        self.in_flight = 0
        self._idle = threading.Condition()

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if not self.lmtp and envelope.rcpt_tos:
            # SMTP has one reply for all recipients, which cannot say "stored for one, refused for the other":
            # one recipient per transaction, and the sender retries the others at once (RFC 5321 4.5.3.1.10).
            return TOO_MANY_RECIPIENTS
        try:
            destination = await self.queue.resolve(address)
        except Reject as outcome:
            return outcome.smtp_reply
        except Exception as exc:  # noqa: BLE001 - the edge: a failed lookup must be a retry, never a crash
            log.error("smtp.rcpt_failed", error=type(exc).__name__)
            return TEMPORARY
        envelope.rcpt_tos.append(address)
        # Kept for DATA, so the address is not looked up twice (the store step re-checks the thread).
        destinations = getattr(envelope, "destinations", None) or {}
        destinations[address] = destination
        envelope.destinations = destinations  # type: ignore[attr-defined]
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._enter()
        try:
            raw = envelope.original_content or b""
            if isinstance(raw, str):
                raw = raw.encode("utf-8", "surrogateescape")
            client_ip = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
            mail_from = envelope.mail_from if envelope.mail_from not in (None, "<>") else ""
            replies = []
            destinations = getattr(envelope, "destinations", {})
            for rcpt in envelope.rcpt_tos:
                inbound = InboundEmail(raw, rcpt, mail_from, client_ip, session.host_name, destinations.get(rcpt))
                replies.append(await self._deliver(inbound))
            return "\r\n".join(replies) if self.lmtp else _one_reply(replies)
        finally:
            self._leave()

    async def _deliver(self, inbound: InboundEmail) -> str:
        try:
            await self.queue.deliver(inbound)
            return ACCEPTED
        except Reject as outcome:
            return outcome.smtp_reply
        except Exception as exc:  # noqa: BLE001 - the edge: nothing was committed, so the sender retries
            log.error("smtp.data_failed", error=type(exc).__name__)
            return TEMPORARY

    def _enter(self) -> None:
        with self._idle:
            self.in_flight += 1

    def _leave(self) -> None:
        with self._idle:
            self.in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._idle:
            while self.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True


def _one_reply(replies: list[str]) -> str:
    """SMTP has one reply for all recipients: retry if any failed temporarily (duplicates are recognised
    on the resend), accept if any was accepted, else the first refusal."""
    if any(r.startswith("4") for r in replies):
        return next(r for r in replies if r.startswith("4"))
    if any(r.startswith("2") for r in replies):
        return ACCEPTED
    return replies[0] if replies else "503 5.5.1 No valid recipients"


class _Controller(Controller):
    def __init__(self, handler: IntakeHandler, server_class: type[SMTP], **kwargs: Any) -> None:
        self.server_class = server_class
        super().__init__(handler, **kwargs)

    def factory(self) -> SMTP:
        return self.server_class(self.handler, **self.SMTP_kwargs)


class SmtpServer:
    """The listening server: `start()` binds in its own thread and loop; `stop()` drains, then closes."""

    def __init__(self, gw: Gateway, *, intake: EmailIntake | None = None, host: str | None = None, port: int | None = None) -> None:
        settings = gw.settings
        self.lmtp = settings.smtp_protocol == "lmtp"
        self.handler = IntakeHandler(intake or EmailIntake(gw), lmtp=self.lmtp)
        tls: ssl.SSLContext | None = None
        if settings.smtp_tls_cert and settings.smtp_tls_key:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(str(settings.smtp_tls_cert), str(settings.smtp_tls_key))
        self.host = host or settings.smtp_host
        self.port = port if port is not None else settings.smtp_port
        self.controller = _Controller(
            self.handler,
            GatewayLMTP if self.lmtp else GatewaySMTP,
            hostname=self.host,
            port=self.port,
            server_hostname=settings.mail_domain,
            data_size_limit=settings.max_message_bytes,
            tls_context=tls,
            enable_SMTPUTF8=True,
            decode_data=False,
            ident="gateway ESMTP",
        )

    def start(self) -> None:
        self.controller.start()
        log.info("smtp.listening", protocol="lmtp" if self.lmtp else "smtp", port=self.port)

    def stop(self, drain_timeout: float = 30.0) -> bool:
        """Stop accepting connections, let in-flight DATA finish (up to drain_timeout), then close.
        Returns False when the drain timed out."""
        server = self.controller.server
        if server is not None:
            self.controller.loop.call_soon_threadsafe(server.close)
        drained = self.handler.wait_idle(drain_timeout)
        self.controller.stop()
        self.handler.executor.shutdown(wait=True)
        log.info("smtp.stopped", drained=drained)
        return drained
