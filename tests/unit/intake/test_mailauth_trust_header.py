"""Sender authentication in `trust-header` mode: only our own MTA's topmost Authentication-Results counts."""
from __future__ import annotations

import pytest

from gateway.intake.mailauth import AuthVerdict, MailAuthenticator
from gateway.intake.parse import parse
from tests.support.mailsign import message

OURS = "mx.gateway.test"


@pytest.fixture(scope="module")
def auth() -> MailAuthenticator:
    # No resolver is given: this mode must not need DNS at all.
    return MailAuthenticator(mode="trust-header", dns_resolver=None, trusted_authserv_id="MX.Gateway.test")


def with_results(*values: str, from_addr: str = "alice@example.org") -> bytes:
    """A message whose Authentication-Results headers read top to bottom as `values`."""
    return message(from_addr=from_addr, extra_headers=tuple(f"Authentication-Results: {v}" for v in values))


def check(auth: MailAuthenticator, raw: bytes, from_domain: str = "example.org") -> AuthVerdict:
    verdict = auth.check(raw, header_from_domain=from_domain, envelope_sender="alice@example.org",
                         client_ip="192.0.2.10", helo="mx.example.org")
    # The pipeline hands over the values its parse step read; the verdict must be the one read from the raw.
    reported = parse(raw, envelope_sender="alice@example.org").authentication_results
    assert auth.check(raw, header_from_domain=from_domain, envelope_sender="alice@example.org",
                      client_ip="192.0.2.10", helo="mx.example.org", reported=reported) == verdict
    assert verdict.method == "trust-header"
    assert "@" not in verdict.reason and "example" not in verdict.reason
    return verdict


def test_topmost_trusted_dmarc_pass(auth: MailAuthenticator) -> None:
    raw = with_results(f"{OURS}; dkim=pass header.d=example.org; dmarc=pass (p=reject) header.from=example.org")
    assert check(auth, raw) == AuthVerdict(True, False, "trust-header", "dmarc pass")


def test_folded_header_is_read(auth: MailAuthenticator) -> None:
    raw = with_results(f"{OURS};\r\n\tspf=fail smtp.mailfrom=example.org;\r\n\tdmarc=pass header.from=example.org")
    assert check(auth, raw).passed


def test_aligned_dkim_or_spf_pass(auth: MailAuthenticator) -> None:
    dkim = with_results(f"{OURS}; dkim=pass header.d=example.org; dmarc=none", from_addr="a@mail.example.org")
    assert check(auth, dkim, "mail.example.org") == AuthVerdict(True, False, "trust-header", "dkim pass aligned")
    spf = with_results(f"{OURS}; spf=pass smtp.mailfrom=bounce@example.org")
    assert check(auth, spf) == AuthVerdict(True, False, "trust-header", "spf pass aligned")


def test_unaligned_passes_do_not_count(auth: MailAuthenticator) -> None:
    raw = with_results(
        f"{OURS}; dkim=pass header.d=esp.example; spf=pass smtp.mailfrom=bounce@esp.example;"
        " dmarc=pass header.from=esp.example"
    )
    assert check(auth, raw) == AuthVerdict(False, False, "trust-header", "no aligned pass reported")


def test_forged_lower_header_is_ignored(auth: MailAuthenticator) -> None:
    # The sender wrote a header with our authserv-id into its message; our MTA's own sits above it.
    raw = with_results(
        f"{OURS}; dkim=none; spf=fail smtp.mailfrom=example.org; dmarc=fail header.from=example.org",
        f"{OURS}; dkim=pass header.d=example.org; dmarc=pass header.from=example.org",
    )
    assert not check(auth, raw).passed


def test_other_authserv_id_is_ignored(auth: MailAuthenticator) -> None:
    raw = with_results(
        "mx.elsewhere.example; dmarc=pass header.from=example.org",
        f"{OURS}; dmarc=pass header.from=example.org",
    )
    assert check(auth, raw) == AuthVerdict(False, False, "trust-header", "no trusted authentication-results")


def test_missing_or_unreadable_header_fails(auth: MailAuthenticator) -> None:
    assert not check(auth, message(from_addr="alice@example.org")).passed
    assert not check(auth, with_results(f"{OURS}; dmarc=pass header.from=example.org; =garbage(")).passed


def test_temperror_is_temporary(auth: MailAuthenticator) -> None:
    raw = with_results(f"{OURS}; dkim=temperror header.d=example.org; spf=none; dmarc=temperror")
    assert check(auth, raw) == AuthVerdict(False, True, "trust-header", "temperror reported")
