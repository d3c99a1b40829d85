"""The frozen values an inbound email becomes, step after step (see pipeline.py for the order)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.intake.parse import ParsedEmail

Party = Literal["patient", "practitioner"]


@dataclass(frozen=True)
class Destination:
    """What a recipient address names. Decided at RCPT; the store step re-checks the thread is open."""

    kind: Literal["reply", "new_thread", "postmaster", "bounces"]
    thread_id: str | None = None
    party: Party | None = None  # who may write to a reply address
    practitioner_id: str | None = None
    practice_id: str | None = None
    patient_id: str | None = None  # the thread's patient (a thread never changes hands), for a reply address


@dataclass(frozen=True)
class InboundEmail:
    """What the SMTP edge hands over: one message for one recipient (resolved at RCPT when it came by SMTP)."""

    raw: bytes
    rcpt: str
    mail_from: str | None
    client_ip: str
    helo: str | None
    destination: Destination | None = None


@dataclass(frozen=True)
class ParsedInbound:
    inbound: InboundEmail
    destination: Destination
    email: ParsedEmail


@dataclass(frozen=True)
class Sender:
    """The person the header From was matched to (a verified contact), not yet authenticated."""

    party: Party
    person_id: str  # patient id or practitioner id
    contact_id: str
    contact_bidx: str


@dataclass(frozen=True)
class IdentifiedEmail:
    parsed: ParsedInbound
    sender: Sender
    thread_id: str | None  # None: a new thread to destination.practitioner_id


@dataclass(frozen=True)
class AuthenticatedEmail:
    identified: IdentifiedEmail
    method: str  # how the From was authenticated: dmarc, arc, trust-header, none


@dataclass(frozen=True)
class StoredEmail:
    thread_id: str
    message_id: str
    new_thread: bool
    refused_attachments: int
