"""Delivery failures, sorted for the retry policy: transient ones are retried, permanent ones are not.

    DeliveryError(GatewayError)       .code names the failure: "smtp-550", "twilio-21610", "connect"
     ├── TransientDeliveryError       retry with backoff: SMTP 4xx, connection refused / timed out / dropped,
     │                                TLS failure, Twilio 429 / 5xx, network errors
     └── PermanentDeliveryError       do not retry, fall back to the other channel: SMTP 5xx, a Twilio 4xx
                                      (21610 opted out, 21211 invalid number, 21614 not a mobile, 30005 …)

Messages are the code and a fixed text: never an address, a number or content. Senders raise these
`from None`, so a provider's reply (which often quotes the recipient) is not chained into a traceback.
"""
from __future__ import annotations

import re
from typing import Final

from gateway.errors import GatewayError

_CODE: Final = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")

# Twilio error codes after which sending the same SMS again cannot succeed.
# https://www.twilio.com/docs/api/errors
PERMANENT_TWILIO_CODES: Final = frozenset(
    {
        20003,  # authentication failed: a configuration error, retrying will not fix it
        20404,  # resource not found
        21211,  # invalid 'To' number
        21212,  # invalid 'From' number
        21214,  # 'To' number cannot be reached
        21408,  # permission to send to this region not enabled
        21606,  # 'From' number cannot send SMS
        21610,  # recipient replied STOP
        21612,  # cannot route between these numbers
        21614,  # 'To' is not a mobile number
        21617,  # body too long
        30003,  # unreachable handset
        30004,  # message blocked
        30005,  # unknown destination handset
        30006,  # landline or unreachable carrier
        30007,  # filtered by the carrier
    }
)
# Twilio error codes that say "later": queue overflow, rate limit.
TRANSIENT_TWILIO_CODES: Final = frozenset({20429, 30001})


class DeliveryError(GatewayError):
    """A notice could not be handed to its provider."""

    transient: bool = False
    _what = "delivery failed"

    def __init__(self, code: str) -> None:
        # The code is the only variable part of the message, so it must be one we built from numbers and words.
        if not _CODE.fullmatch(code):
            raise ValueError("delivery error code must be lower-case words and digits joined by '-'")
        super().__init__(f"{code}: {self._what}")
        self.code = code


class TransientDeliveryError(DeliveryError):
    transient = True
    _what = "delivery failed for now; retry later"


class PermanentDeliveryError(DeliveryError):
    _what = "delivery refused; do not retry"


def smtp_failure(reply_code: int) -> DeliveryError:
    """The error for an SMTP reply code: 4xx is transient, 5xx permanent, anything else a protocol error."""
    if 400 <= reply_code < 500:
        return TransientDeliveryError(f"smtp-{reply_code}")
    if 500 <= reply_code < 600:
        return PermanentDeliveryError(f"smtp-{reply_code}")
    return TransientDeliveryError("smtp-protocol")


def twilio_failure(status: int | None, error_code: int | None) -> DeliveryError:
    """The error for a Twilio failure: an API reply (HTTP status and code) or a status callback (code only)."""
    code = f"twilio-{error_code}" if error_code else f"twilio-http-{status or 0}"
    if error_code in PERMANENT_TWILIO_CODES:
        return PermanentDeliveryError(code)
    if error_code in TRANSIENT_TWILIO_CODES or status == 429 or (status is not None and status >= 500):
        return TransientDeliveryError(code)
    # Any other refused request or failed delivery: sending it again would repeat the failure
    # (or reach the patient twice); the notice falls back to the other channel instead.
    return PermanentDeliveryError(code)
