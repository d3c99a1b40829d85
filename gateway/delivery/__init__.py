"""Delivery: hand a rendered notice to its provider (SMTP relay, Twilio) or, in development, to files.

Senders raise `TransientDeliveryError` (retry) or `PermanentDeliveryError` (fall back); see `errors`.
"""
from gateway.delivery.email import (
    AutoSubmitted,
    DkimKey,
    EmailSender,
    FileEmailSender,
    RelayEmailSender,
    build_notice_email,
    message_id_of,
)
from gateway.delivery.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    smtp_failure,
    twilio_failure,
)
from gateway.delivery.sms import FileSmsSender, SmsSender, TwilioSmsSender, twilio_client

__all__ = [
    "AutoSubmitted",
    "DeliveryError",
    "DkimKey",
    "EmailSender",
    "FileEmailSender",
    "FileSmsSender",
    "PermanentDeliveryError",
    "RelayEmailSender",
    "SmsSender",
    "TransientDeliveryError",
    "TwilioSmsSender",
    "build_notice_email",
    "message_id_of",
    "smtp_failure",
    "twilio_client",
    "twilio_failure",
]
