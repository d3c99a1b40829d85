"""Sign test messages as real senders and forwarders would: DKIM signatures and ARC seals made with dkimpy
and the fixture keys under tests/fixtures/dkim/, whose public halves a DNSTestServer publishes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from typing import Literal

import dkim

from tests.support.dns_server import DNSTestServer
from tests.support.services import REPO

KEYS_DIR = REPO / "tests" / "fixtures" / "dkim"


@dataclass(frozen=True)
class DkimKey:
    """An RSA-2048 test key pair (test-only: the private half is in the repository on purpose)."""

    private_pem: bytes
    public_b64: str

    @property
    def dns_record(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64}"

    def publish(self, dns: DNSTestServer, domain: str, selector: str) -> None:
        dns.add(f"{selector}._domainkey.{domain}", "TXT", self.dns_record)


@cache
def key(name: Literal["sender", "forwarder"]) -> DkimKey:
    return DkimKey(
        private_pem=(KEYS_DIR / f"{name}.pem").read_bytes(),
        public_b64=(KEYS_DIR / f"{name}.pub.b64").read_text().strip(),
    )


def message(
    *, from_addr: str, to_addr: str = "r-abc@gateway.test", subject: str = "Question", body: str = "Bonjour.\r\n",
    extra_headers: tuple[str, ...] = (),
) -> bytes:
    """A minimal RFC 5322 message with CRLF line ends."""
    headers = [
        *extra_headers,
        f"From: {from_addr}",
        f"To: {to_addr}",
        f"Subject: {subject}",
        "Date: Mon, 02 Jun 2025 09:00:00 +0200",
        f"Message-ID: <{hashlib.sha256((from_addr + subject + body).encode()).hexdigest()[:20]}@test.invalid>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def dkim_sign(raw: bytes, signing_key: DkimKey, domain: str, selector: str = "s1") -> bytes:
    """`raw` with a DKIM-Signature (relaxed/relaxed) prepended, as the sender's outbound MTA would."""
    signature = dkim.sign(
        raw, selector.encode(), domain.encode(), signing_key.private_pem, canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return signature + raw


def arc_seal(
    raw: bytes, signing_key: DkimKey, domain: str, *, authserv_id: str, results: str, selector: str = "arc"
) -> bytes:
    """What a forwarder does: record its own `Authentication-Results` (`results`, e.g. "dmarc=pass
    header.from=example.org"), then prepend an ARC set sealing the message as it now stands.
    """
    with_results = f"Authentication-Results: {authserv_id}; {results}\r\n".encode() + raw
    arc_set = dkim.arc_sign(
        with_results, selector.encode(), domain.encode(), signing_key.private_pem, authserv_id.encode()
    )
    if not arc_set:
        raise ValueError("dkimpy produced no ARC set (authserv-id mismatch?)")
    return b"".join(arc_set) + with_results


__all__ = ["DkimKey", "KEYS_DIR", "arc_seal", "dkim_sign", "key", "message"]
