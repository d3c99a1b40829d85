"""Step: is the header From really the sender? DKIM/SPF/DMARC in-process (`verify`), a trusted
Authentication-Results header (`trust-header`), or nothing (`none`, development only)."""
from __future__ import annotations

from gateway.errors import Reject
from gateway.intake.mailauth import MailAuthenticator
from gateway.intake.values import AuthenticatedEmail, IdentifiedEmail

FAILED = Reject(550, "5.7.1", "Sender authentication failed (DMARC): message refused")
TEMPORARY = Reject(451, "4.7.0", "Temporary failure checking sender authentication, please retry")


def authenticate(authenticator: MailAuthenticator, item: IdentifiedEmail) -> AuthenticatedEmail:
    email = item.parsed.email
    inbound = item.parsed.inbound
    verdict = authenticator.check(
        inbound.raw,
        header_from_domain=email.from_domain or "",
        envelope_sender=inbound.mail_from,
        client_ip=inbound.client_ip,
        helo=inbound.helo,
        reported=email.authentication_results,
    )
    if verdict.temporary and not verdict.passed:
        raise TEMPORARY
    if not verdict.passed:
        raise FAILED
    return AuthenticatedEmail(item, verdict.method)
