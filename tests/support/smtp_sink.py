"""A real SMTP server on loopback (aiosmtpd) that records what it receives and fails on demand.

    sink = smtp_sink_factory(starttls=True, auth=("relay-user", "relay-pass"))
    sink.fail_next(1, "451 4.3.0 Try again later")      # the next transaction is answered 451
    sink.messages[0].content                             # what was received, as bytes

Also here: `self_signed_tls()`, a throwaway certificate for 127.0.0.1 made with the openssl CLI.
"""
from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.services import free_port, unavailable

Stage = Literal["mail", "rcpt", "data"]


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    authenticated_as: str | None
    tls: bool


@dataclass(frozen=True)
class TlsPair:
    """A server context for the sink and a client context that trusts exactly its certificate."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    cert_file: Path


class SmtpSink:
    """An aiosmtpd handler plus its controller; its hooks are named after the SMTP verbs they answer."""

    def __init__(
        self,
        *,
        tls: TlsPair | None = None,
        implicit_tls: bool = False,
        require_starttls: bool = False,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.messages: list[ReceivedMessage] = []
        self._failures: list[tuple[Stage, str]] = []
        self._lock = threading.Lock()
        self._auth = auth
        self.host = "127.0.0.1"
        self.port = free_port()
        smtp_options: dict[str, Any] = {}
        if tls is not None and not implicit_tls:
            smtp_options.update(tls_context=tls.server, require_starttls=require_starttls)
        if auth is not None:
            smtp_options.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=tls is not None)
        self._controller = Controller(
            self,
            hostname=self.host,
            port=self.port,
            ssl_context=tls.server if (tls is not None and implicit_tls) else None,
            server_hostname="localhost",
            **smtp_options,
        )

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def fail_next(self, count: int, reply: str = "451 4.3.0 Try again later", *, at: Stage = "data") -> None:
        """Answer the next `count` transactions with `reply` at MAIL, RCPT or DATA."""
        with self._lock:
            self._failures.extend([(at, reply)] * count)

    def _failure(self, stage: Stage) -> str | None:
        with self._lock:
            if self._failures and self._failures[0][0] == stage:
                return self._failures.pop(0)[1]
        return None

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self._auth is not None
            and auth_data.login == self._auth[0].encode()
            and auth_data.password == self._auth[1].encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]) -> str:
        failure = self._failure("mail")
        if failure:
            return failure
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        failure = self._failure("rcpt")
        if failure:
            return failure
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        failure = self._failure("data")
        if failure:
            return failure
        content = envelope.original_content or b""
        login = session.auth_data
        # session.ssl is only set by STARTTLS; the transport knows about implicit TLS too.
        tls = server.transport is not None and server.transport.get_extra_info("ssl_object") is not None
        with self._lock:
            self.messages.append(
                ReceivedMessage(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    content=content,
                    authenticated_as=login.login.decode() if isinstance(login, LoginPassword) else None,
                    tls=tls,
                )
            )
        return "250 2.0.0 OK queued"


def self_signed_tls(directory: Path) -> TlsPair:
    """A certificate for 127.0.0.1 and localhost, valid for a day."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl command (to make a test certificate)")
    key, cert = directory / "sink.key", directory / "sink.crt"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return TlsPair(server=server, client=client, cert_file=cert)


@pytest.fixture
def smtp_sink_factory() -> Iterator[Callable[..., SmtpSink]]:
    """Start sinks with `smtp_sink_factory(**SmtpSink options)`; all are stopped after the test."""
    sinks: list[SmtpSink] = []

    def make(**options: Any) -> SmtpSink:
        sink = SmtpSink(**options).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


@pytest.fixture(scope="session")
def sink_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsPair:
    return self_signed_tls(tmp_path_factory.mktemp("sink-tls"))
