"""The tables. Columns ending in `_ct` hold AES-GCM ciphertext, `_bidx` blind indexes; everything else
in the clear is an id, a timestamp, a state, a size, a channel or a direction."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime")
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


ID = String(32)
BIDX = String(64)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class SystemKey(Base):
    """Keys of the installation itself (blind index, directory, tokens), stored wrapped by the KEK."""

    __tablename__ = "system_keys"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(64))
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Practice(Base):
    __tablename__ = "practices"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    # A business's display name, shown in notices: not personal data.
    display_name: Mapped[str] = mapped_column(String(200))
    # The practice's own business number (E.164), the `To` of inbound SMS.
    sms_number: Mapped[str | None] = mapped_column(String(20), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Practitioner(Base):
    __tablename__ = "practitioners"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    practice_id: Mapped[str] = mapped_column(ForeignKey("practices.id"), index=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name_ct: Mapped[bytes] = mapped_column(LargeBinary)
    messaging_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    totp_secret_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    totp_last_step: Mapped[int | None] = mapped_column(Integer)  # a TOTP code is accepted once (no replay)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    practice_id: Mapped[str] = mapped_column(ForeignKey("practices.id"), index=True)
    name_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    locale: Mapped[str] = mapped_column(String(8), default="fr")
    # The patient's data key, wrapped by the KEK; NULL once erased (crypto-shredded).
    dek_wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    kek_id: Mapped[str | None] = mapped_column(String(64), index=True)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ContactPoint(Base):
    """An email address or phone number of a patient or a practitioner."""

    __tablename__ = "contact_points"
    __table_args__ = (Index("ix_contact_points_kind_bidx", "kind", "bidx"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id"), index=True)
    practitioner_id: Mapped[str | None] = mapped_column(ForeignKey("practitioners.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # email | phone
    value_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    bidx: Mapped[str | None] = mapped_column(BIDX)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    bouncing_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unreachable_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CareRelationship(Base):
    __tablename__ = "care_relationships"
    __table_args__ = (UniqueConstraint("patient_id", "practitioner_id"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    practitioner_id: Mapped[str] = mapped_column(ForeignKey("practitioners.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Thread(Base):
    __tablename__ = "threads"
    __table_args__ = (UniqueConstraint("patient_id", "code"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    practice_id: Mapped[str] = mapped_column(ForeignKey("practices.id"), index=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    practitioner_id: Mapped[str] = mapped_column(ForeignKey("practitioners.id"), index=True)
    subject_ct: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | closed
    code: Mapped[str] = mapped_column(String(8))  # short code carried by SMS notices
    token_version: Mapped[int] = mapped_column(Integer, default=1)  # bump to revoke reply addresses
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_message_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("dedupe_source", "dedupe_key"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id"), index=True)
    author: Mapped[str] = mapped_column(String(16))  # patient | practitioner | system
    channel: Mapped[str] = mapped_column(String(8))  # email | sms | portal | api | cli
    body_ct: Mapped[bytes] = mapped_column(LargeBinary)
    original_ct: Mapped[bytes | None] = mapped_column(LargeBinary)  # the full original (raw email)
    size: Mapped[int] = mapped_column(Integer, default=0)
    dedupe_source: Mapped[str | None] = mapped_column(String(16))
    dedupe_key: Mapped[str | None] = mapped_column(BIDX)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id"), index=True)
    filename_ct: Mapped[bytes] = mapped_column(LargeBinary)
    content_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(Integer)
    content_ct: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutboxRow(Base):
    """A notice to send, written in the same transaction as what caused it; ids only."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_state_due", "state", "next_attempt_at"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))  # a notice name: new_message, acknowledgement, ...
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id"), index=True)
    practitioner_id: Mapped[str | None] = mapped_column(ForeignKey("practitioners.id"), index=True)
    contact_id: Mapped[str | None] = mapped_column(ForeignKey("contact_points.id"))  # a fixed recipient contact
    thread_id: Mapped[str | None] = mapped_column(ForeignKey("threads.id"), index=True)
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id"))
    channel: Mapped[str | None] = mapped_column(String(8))  # chosen when sent: email | sms
    state: Mapped[str] = mapped_column(String(16), default="pending")
    # pending -> sending -> sent -> delivered | failed | undelivered; pending -> coalesced | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    provider_id: Mapped[str | None] = mapped_column(String(64), index=True)
    error_code: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LoginToken(Base):
    """A single-use link or code: only its hash is stored."""

    __tablename__ = "login_tokens"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    purpose: Mapped[str] = mapped_column(String(16))  # login | verify | invite | code
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id"), index=True)
    practitioner_id: Mapped[str | None] = mapped_column(ForeignKey("practitioners.id"), index=True)
    contact_id: Mapped[str | None] = mapped_column(ForeignKey("contact_points.id"))
    thread_id: Mapped[str | None] = mapped_column(ForeignKey("threads.id"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """Who did what to which object, when. Never content."""

    __tablename__ = "audit_events"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(80))  # e.g. "cli", "patient:<id>", "practitioner:<id>", "api:<key id>"
    action: Mapped[str] = mapped_column(String(40))  # thread.read, patient.erase, contact.attested, ...
    object_kind: Mapped[str] = mapped_column(String(24))
    object_id: Mapped[str | None] = mapped_column(ID)
    detail: Mapped[str | None] = mapped_column(Text)  # JSON of ids and states only


class RateCounter(Base):
    """Fixed-window counters shared by every gateway process (sender rate limits, once-a-day replies).
    The bucket names a purpose and a blind index, never an address or a number."""

    __tablename__ = "rate_counters"
    bucket: Mapped[str] = mapped_column(String(100), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class PostmasterMail(Base):
    """Mail to postmaster@ (RFC 5321), kept sealed under the directory key for the practice's administrators."""

    __tablename__ = "postmaster_mail"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    size: Mapped[int] = mapped_column(Integer)
    raw_ct: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebSession(Base):
    """A signed-in browser (patient or practitioner). Only the hash of the cookie's token is stored."""

    __tablename__ = "web_sessions"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id"), index=True)
    practitioner_id: Mapped[str | None] = mapped_column(ForeignKey("practitioners.id"), index=True)
    # Signed in by link but still owing the second factor: no page but the code page is open to it.
    second_factor_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    landing_thread_id: Mapped[str | None] = mapped_column(ID)  # where the login link pointed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the absolute timeout
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """A practice's key to the JSON API; only a hash of its secret is stored."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    practice_id: Mapped[str] = mapped_column(ForeignKey("practices.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ThreadRead(Base):
    """When each side last read a thread: unread-first inboxes, and "no login since the notice" for coalescing."""

    __tablename__ = "thread_reads"
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id"), primary_key=True)
    party: Mapped[str] = mapped_column(String(16), primary_key=True)  # patient | practitioner
    read_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SmsInbound(Base):
    """Every inbound SMS seen (Twilio's MessageSid) and what became of it: a retry of one stops here."""

    __tablename__ = "sms_inbound"
    message_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    practice_id: Mapped[str] = mapped_column(ForeignKey("practices.id"), index=True)
    outcome: Mapped[str] = mapped_column(String(16))  # stored | held | keyword | refused
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HeldSms(Base):
    """An SMS from a verified patient that no rule routed to exactly one thread, sealed under that patient's
    key until the practice files it into a thread."""

    __tablename__ = "held_sms"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    practice_id: Mapped[str] = mapped_column(ForeignKey("practices.id"), index=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    contact_id: Mapped[str] = mapped_column(ForeignKey("contact_points.id"))
    message_sid: Mapped[str] = mapped_column(String(64), unique=True)
    body_ct: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id"))  # where it was filed


class HeldSmsMedia(Base):
    __tablename__ = "held_sms_media"
    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    held_id: Mapped[str] = mapped_column(ForeignKey("held_sms.id"), index=True)
    filename_ct: Mapped[bytes] = mapped_column(LargeBinary)
    content_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(Integer)
    content_ct: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SmsStatusEvent(Base):
    """Twilio status callbacks received, one per (MessageSid, status): a repeated callback changes nothing."""

    __tablename__ = "sms_status_events"
    message_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    error_code: Mapped[str | None] = mapped_column(String(16))
    applied: Mapped[bool] = mapped_column(Boolean, default=False)  # False: no notice had that id yet
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TwilioMediaDeletion(Base):
    """Inbound MMS media still to delete at Twilio (the resource path: ids only), retried until Twilio keeps no copy."""

    __tablename__ = "twilio_media_deletions"
    path: Mapped[str] = mapped_column(String(200), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


metadata = Base.metadata
