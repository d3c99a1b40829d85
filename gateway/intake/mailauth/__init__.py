"""Sender authentication for inbound email: is the header From's domain really the sender?

`MailAuthenticator(...).check(raw, ...)` returns an `AuthVerdict`; see `authenticator` for the rules.
"""
from gateway.intake.mailauth.authenticator import AuthVerdict, MailAuthenticator

__all__ = ["AuthVerdict", "MailAuthenticator"]
