"""The gateway's error tree, and the two outcomes a pipeline step may raise.

    GatewayError(Exception)
     ├── InvalidInput(GatewayError, ValueError)     bad input from a user or a caller: CLI exit 2, HTTP 422
     ├── NotFound(GatewayError, LookupError)         an id or slug that names nothing: CLI exit 2, HTTP 404
     ├── Conflict(GatewayError)                      a rule forbids it now (no care relationship, messaging off): exit 2, HTTP 409
     └── Outcome(GatewayError)                       how an inbound message ends when it is not stored
          ├── Reject(smtp_code, enhanced, reason)    refuse it (5xx permanent, 4xx: the sender retries)
          └── Discard(reason)                        accept it and drop it (auto-replies, bounces, duplicates)

Messages are fixed texts: they never carry content, names, addresses or numbers.
`gateway.crypto.DecryptionError` is the one opaque failure for bad ciphertext; it lives with the crypto package.
"""
from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class InvalidInput(GatewayError, ValueError):
    pass


class NotFound(GatewayError, LookupError):
    pass


class Conflict(GatewayError):
    pass


class Outcome(GatewayError):
    """Base of the outcomes that end an inbound message's path before it is stored."""


class Reject(Outcome):
    def __init__(self, smtp_code: int, enhanced: str, reason: str) -> None:
        super().__init__(f"{smtp_code} {enhanced} {reason}")
        self.smtp_code = smtp_code
        self.enhanced = enhanced
        self.reason = reason

    @property
    def temporary(self) -> bool:
        return 400 <= self.smtp_code < 500

    @property
    def smtp_reply(self) -> str:
        return f"{self.smtp_code} {self.enhanced} {self.reason}"


class Discard(Outcome):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
