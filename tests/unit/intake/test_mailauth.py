"""Sender authentication in `verify` mode (DKIM, SPF, DMARC, ARC) against a real DNS server on loopback."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.config import Settings
from gateway.intake.mailauth import AuthVerdict, MailAuthenticator
from gateway.intake.mailauth.lookup import parse_resolver_address
from tests.support.dns_server import DNSTestServer
from tests.support.mailsign import arc_seal, dkim_sign, key, message

SENDER_IP = "192.0.2.10"  # listed in example.org's and example.net's SPF records
STRANGER_IP = "198.51.100.7"  # listed nowhere
FORWARDER_IP = "203.0.113.5"
CANARY = "canary-4f7c1e"  # a person's domain must never show in a verdict or a log line
FAST_TIMEOUT = 0.5

ZONES = {
    # p=reject, relaxed alignment; its subdomains fall under sp=quarantine.
    "example.org": [("TXT", f"v=spf1 ip4:{SENDER_IP} -all")],
    "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject; sp=quarantine; rua=mailto:dmarc@example.org")],
    "mail.example.org": [("TXT", f"v=spf1 ip4:{SENDER_IP} -all")],
    # Strict DKIM and SPF alignment.
    "_dmarc.example.com": [("TXT", "v=DMARC1; p=reject; adkim=s; aspf=s")],
    "mail.example.com": [("TXT", f"v=spf1 ip4:{SENDER_IP} -all")],
    # No DMARC record at all.
    "example.net": [("TXT", f"v=spf1 ip4:{SENDER_IP} ~all")],
    # A bulk mailer signing for its customers with its own domain.
    "esp.example": [("TXT", "v=spf1 -all")],
    # Forwarders (a practice's old mailbox provider) and their SPF.
    "fwd.example.net": [("TXT", f"v=spf1 ip4:{FORWARDER_IP} -all")],
    "rogue.example.net": [("TXT", f"v=spf1 ip4:{FORWARDER_IP} -all")],
    f"{CANARY}.example": [("TXT", "v=spf1 -all")],
    f"_dmarc.{CANARY}.example": [("TXT", "v=DMARC1; p=reject")],
}


@pytest.fixture
def dns() -> Iterator[DNSTestServer]:
    with DNSTestServer(ZONES) as server:
        for domain in ("example.org", "mail.example.com", "example.com", "example.net", f"{CANARY}.example"):
            key("sender").publish(server, domain, "s1")
        key("forwarder").publish(server, "esp.example", "esp")
        key("forwarder").publish(server, "fwd.example.net", "arc")
        key("forwarder").publish(server, "rogue.example.net", "arc")
        yield server


@pytest.fixture
def authenticator(dns: DNSTestServer) -> Callable[..., MailAuthenticator]:
    def build(*, timeout: float = 2.0, arc: tuple[str, ...] = ()) -> MailAuthenticator:
        return MailAuthenticator(
            mode="verify", dns_resolver=dns.address, trusted_authserv_id=None, trusted_arc_signers=arc,
            timeout=timeout,
        )

    return build


def check(
    auth: MailAuthenticator, raw: bytes, from_domain: str, *, sender: str | None = None, ip: str = STRANGER_IP,
    helo: str | None = "mx.sender.example",
) -> AuthVerdict:
    verdict = auth.check(raw, header_from_domain=from_domain, envelope_sender=sender, client_ip=ip, helo=helo)
    # Reasons are fixed texts: no address, no domain, whatever the outcome.
    assert "@" not in verdict.reason and "example" not in verdict.reason and CANARY not in verdict.reason
    return verdict


def signed(from_addr: str, domain: str, *, selector: str = "s1", body: str = "Bonjour docteur.\r\n") -> bytes:
    signer = key("forwarder") if selector in ("esp", "arc") else key("sender")
    return dkim_sign(message(from_addr=from_addr, body=body), signer, domain, selector)


# --- DKIM ---------------------------------------------------------------------------------------------


def test_aligned_dkim_passes_dmarc(authenticator: Callable[..., MailAuthenticator]) -> None:
    verdict = check(authenticator(), signed("alice@example.org", "example.org"), "example.org", sender="a@example.org")
    assert verdict == AuthVerdict(passed=True, temporary=False, method="dmarc", reason="dmarc pass (dkim)")


def test_body_altered_after_signing_fails(authenticator: Callable[..., MailAuthenticator]) -> None:
    raw = signed("alice@example.org", "example.org").replace(b"Bonjour docteur.", b"Bonjour docteur!")
    verdict = check(authenticator(), raw, "example.org", sender="alice@example.org")
    assert not verdict.passed and not verdict.temporary
    assert verdict.reason == "dmarc p=reject; dkim fail; spf fail"


def test_header_from_changed_after_signing_fails(authenticator: Callable[..., MailAuthenticator]) -> None:
    # A signature by example.org replayed under another From of the same domain must not verify.
    raw = signed("alice@example.org", "example.org").replace(b"From: alice@", b"From: mallory@")
    verdict = check(authenticator(), raw, "example.org")
    assert not verdict.passed and "dkim fail" in verdict.reason


def test_valid_but_unaligned_signature_does_not_pass(authenticator: Callable[..., MailAuthenticator]) -> None:
    raw = signed("alice@example.org", "esp.example", selector="esp")
    verdict = check(authenticator(), raw, "example.org", sender="bounce@esp.example")
    assert not verdict.passed and not verdict.temporary
    assert verdict.reason == "dmarc p=reject; dkim not aligned; spf fail"


def test_every_signature_is_tried_not_only_the_first(authenticator: Callable[..., MailAuthenticator]) -> None:
    # The bulk mailer's signature sits on top; the author domain's own one is second.
    own = signed("alice@example.org", "example.org")
    raw = dkim_sign(own, key("forwarder"), "esp.example", "esp")
    assert raw.index(b"d=esp.example") < raw.index(b"d=example.org")
    assert check(authenticator(), raw, "example.org").passed


# --- SPF and DMARC policy -----------------------------------------------------------------------------


def test_spf_only_pass_when_aligned(authenticator: Callable[..., MailAuthenticator]) -> None:
    raw = message(from_addr="alice@example.org")
    verdict = check(authenticator(), raw, "example.org", sender="alice@example.org", ip=SENDER_IP)
    assert verdict == AuthVerdict(passed=True, temporary=False, method="dmarc", reason="dmarc pass (spf)")


def test_spf_pass_for_another_domain_is_not_aligned(authenticator: Callable[..., MailAuthenticator]) -> None:
    raw = message(from_addr="alice@example.org")
    verdict = check(authenticator(), raw, "example.org", sender="srs@fwd.example.net", ip=FORWARDER_IP)
    assert not verdict.passed and verdict.reason == "dmarc p=reject; dkim none; spf not aligned"


def test_null_sender_uses_the_helo_identity(authenticator: Callable[..., MailAuthenticator]) -> None:
    raw = message(from_addr="mailer-daemon@example.org")
    assert check(authenticator(), raw, "example.org", sender="", ip=SENDER_IP, helo="example.org").passed
    assert not check(authenticator(), raw, "example.org", sender="", ip=STRANGER_IP, helo="example.org").passed


def test_reject_domain_failing(authenticator: Callable[..., MailAuthenticator]) -> None:
    raw = message(from_addr="alice@example.org")
    verdict = check(authenticator(), raw, "example.org", sender="alice@example.org", ip=STRANGER_IP)
    assert verdict == AuthVerdict(
        passed=False, temporary=False, method="dmarc", reason="dmarc p=reject; dkim none; spf fail"
    )


def test_subdomain_falls_under_the_organisational_record(authenticator: Callable[..., MailAuthenticator]) -> None:
    # mail.example.org has no _dmarc record of its own: example.org's applies, with its sp=quarantine.
    raw = message(from_addr="alice@mail.example.org")
    verdict = check(authenticator(), raw, "mail.example.org", sender="alice@mail.example.org")
    assert verdict.reason == "dmarc p=quarantine; dkim none; spf fail"


def test_no_dmarc_record_still_needs_an_aligned_pass(authenticator: Callable[..., MailAuthenticator]) -> None:
    auth = authenticator()
    by_dkim = check(auth, signed("bob@example.net", "example.net"), "example.net")
    assert by_dkim == AuthVerdict(True, False, "dkim", "dkim pass aligned, no dmarc record")
    by_spf = check(auth, message(from_addr="bob@example.net"), "example.net", sender="bob@example.net", ip=SENDER_IP)
    assert by_spf == AuthVerdict(True, False, "spf", "spf pass aligned, no dmarc record")
    neither = check(auth, message(from_addr="bob@example.net"), "example.net", sender="bob@example.net")
    assert neither == AuthVerdict(False, False, "dmarc", "no dmarc record; dkim none; spf softfail")


# --- alignment ----------------------------------------------------------------------------------------


def test_relaxed_alignment_accepts_the_organisational_domain(authenticator: Callable[..., MailAuthenticator]) -> None:
    # From a subdomain, signed by the parent: relaxed (example.org's default) aligns them.
    raw = signed("alice@mail.example.org", "example.org")
    assert check(authenticator(), raw, "mail.example.org").passed
    spf_raw = message(from_addr="alice@example.org")
    assert check(authenticator(), spf_raw, "example.org", sender="b@mail.example.org", ip=SENDER_IP).passed


def test_strict_alignment_needs_the_exact_domain(authenticator: Callable[..., MailAuthenticator]) -> None:
    auth = authenticator()
    subdomain_signed = signed("carol@example.com", "mail.example.com")
    verdict = check(auth, subdomain_signed, "example.com")
    assert not verdict.passed and verdict.reason == "dmarc p=reject; dkim not aligned; spf none"
    subdomain_spf = check(auth, message(from_addr="carol@example.com"), "example.com", sender="b@mail.example.com",
                          ip=SENDER_IP)
    assert not subdomain_spf.passed and subdomain_spf.reason.endswith("spf not aligned")
    exact = check(auth, signed("carol@example.com", "example.com"), "example.com")
    assert exact.passed and exact.method == "dmarc"


# --- temporary DNS failures ---------------------------------------------------------------------------


def test_dkim_key_lookup_timeout_is_temporary(
    dns: DNSTestServer, authenticator: Callable[..., MailAuthenticator]
) -> None:
    dns.black_hole("s1._domainkey.example.org")
    started = time.monotonic()
    verdict = check(authenticator(timeout=FAST_TIMEOUT), signed("alice@example.org", "example.org"), "example.org",
                    sender="alice@example.org")
    assert time.monotonic() - started < 5 * FAST_TIMEOUT
    assert verdict == AuthVerdict(False, True, "dmarc", "dns temperror; dkim temperror; spf fail")


def test_dmarc_lookup_timeout_is_temporary_unless_strictly_aligned(
    dns: DNSTestServer, authenticator: Callable[..., MailAuthenticator]
) -> None:
    dns.black_hole("_dmarc.example.org")
    auth = authenticator(timeout=FAST_TIMEOUT)
    # Only relaxed-aligned: whether that suffices is in the record we could not read.
    relaxed = check(auth, signed("alice@mail.example.org", "example.org"), "mail.example.org")
    assert relaxed.temporary and not relaxed.passed
    # Exactly the From domain: aligned under any policy.
    exact = check(auth, signed("alice@example.org", "example.org"), "example.org")
    assert exact == AuthVerdict(True, False, "dkim", "dkim pass aligned, dmarc temperror, strictly aligned")


def test_spf_lookup_timeout_is_temporary(dns: DNSTestServer, authenticator: Callable[..., MailAuthenticator]) -> None:
    dns.black_hole("example.org")
    verdict = check(authenticator(timeout=FAST_TIMEOUT), message(from_addr="alice@example.org"), "example.org",
                    sender="alice@example.org", ip=SENDER_IP)
    assert verdict == AuthVerdict(False, True, "dmarc", "dns temperror; dkim none; spf temperror")


def test_servfail_counts_as_temporary(dns: DNSTestServer, authenticator: Callable[..., MailAuthenticator]) -> None:
    dns.servfail("s1._domainkey.example.org")
    verdict = check(authenticator(), signed("alice@example.org", "example.org"), "example.org")
    assert verdict.temporary and not verdict.passed


def test_failure_of_an_unaligned_lookup_is_not_temporary(
    dns: DNSTestServer, authenticator: Callable[..., MailAuthenticator]
) -> None:
    # The bulk mailer's key is unreachable, but its signature could never have authenticated example.org.
    dns.servfail("esp._domainkey.esp.example")
    verdict = check(authenticator(), signed("alice@example.org", "esp.example", selector="esp"), "example.org")
    assert not verdict.passed and not verdict.temporary
    assert verdict.reason == "dmarc p=reject; dkim fail; spf none"


# --- ARC ----------------------------------------------------------------------------------------------


def forwarded(sealer: str, results: str) -> bytes:
    """alice@example.org's signed mail, a footer added by her old mailbox's forwarder, then sealed by it."""
    original = signed("alice@example.org", "example.org")
    altered = original + b"--\r\nForwarded by your former provider\r\n"
    return arc_seal(altered, key("forwarder"), sealer, authserv_id=f"mx.{sealer}", results=results)


ORIGINAL_PASSED = (
    "dkim=pass header.d=example.org; spf=pass smtp.mailfrom=example.org; dmarc=pass header.from=example.org"
)


def test_arc_from_a_trusted_forwarder_is_accepted(authenticator: Callable[..., MailAuthenticator]) -> None:
    auth = authenticator(arc=("fwd.example.net",))
    verdict = check(auth, forwarded("fwd.example.net", ORIGINAL_PASSED), "example.org",
                    sender="srs0=x@fwd.example.net", ip=FORWARDER_IP)
    assert verdict.passed and verdict.method == "arc" and not verdict.temporary


def test_arc_from_an_untrusted_forwarder_is_refused(authenticator: Callable[..., MailAuthenticator]) -> None:
    auth = authenticator(arc=("fwd.example.net",))
    verdict = check(auth, forwarded("rogue.example.net", ORIGINAL_PASSED), "example.org",
                    sender="srs0=x@rogue.example.net", ip=FORWARDER_IP)
    assert verdict == AuthVerdict(False, False, "dmarc", "dmarc p=reject; dkim fail; spf not aligned")


def test_arc_is_ignored_unless_forwarders_are_configured(authenticator: Callable[..., MailAuthenticator]) -> None:
    verdict = check(authenticator(), forwarded("fwd.example.net", ORIGINAL_PASSED), "example.org", ip=FORWARDER_IP)
    assert not verdict.passed


def test_trusted_forwarder_reporting_a_failure_is_refused(authenticator: Callable[..., MailAuthenticator]) -> None:
    auth = authenticator(arc=("fwd.example.net",))
    raw = forwarded("fwd.example.net", "dkim=fail header.d=example.org; dmarc=fail header.from=example.org")
    assert not check(auth, raw, "example.org", ip=FORWARDER_IP).passed
    # Nor does its pass for some other From domain vouch for this one.
    other = forwarded("fwd.example.net", "dmarc=pass header.from=esp.example")
    assert not check(auth, other, "example.org", ip=FORWARDER_IP).passed


def test_arc_seal_broken_after_sealing_is_refused(authenticator: Callable[..., MailAuthenticator]) -> None:
    auth = authenticator(arc=("fwd.example.net",))
    raw = forwarded("fwd.example.net", ORIGINAL_PASSED).replace(b"Forwarded by", b"Tampered by")
    assert not check(auth, raw, "example.org", ip=FORWARDER_IP).passed


# --- plumbing -----------------------------------------------------------------------------------------


def test_keys_too_long_for_udp_come_over_tcp() -> None:
    # The limit is set below the size of the 2048-bit key's answer (about 470 bytes) to force the fallback.
    with DNSTestServer(udp_limit=400) as dns:
        key("sender").publish(dns, "example.org", "s1")
        auth = MailAuthenticator(mode="verify", dns_resolver=dns.address, trusted_authserv_id=None, timeout=2)
        assert check(auth, signed("alice@example.org", "example.org"), "example.org").passed
        assert ("s1._domainkey.example.org", "TXT", "tcp") in dns.queries


def test_concurrent_checks_each_use_their_own_outcome(authenticator: Callable[..., MailAuthenticator]) -> None:
    auth = authenticator()
    good = signed("alice@example.org", "example.org")
    spf_only = message(from_addr="alice@example.org")

    def one(i: int) -> bool:
        if i % 3 == 0:
            return check(auth, good, "example.org").passed
        ip = SENDER_IP if i % 3 == 1 else STRANGER_IP
        return check(auth, spf_only, "example.org", sender="alice@example.org", ip=ip).passed

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(one, range(18)))
    assert outcomes == [i % 3 != 2 for i in range(18)]


def test_nothing_about_the_sender_reaches_the_logs(
    dns: DNSTestServer, authenticator: Callable[..., MailAuthenticator], caplog: pytest.LogCaptureFixture
) -> None:
    domain = f"{CANARY}.example"
    dns.servfail(f"s1._domainkey.{domain}")
    caplog.set_level(logging.DEBUG)
    raw = signed(f"{CANARY}@{domain}", domain)
    first = check(authenticator(), raw, domain, sender=f"{CANARY}@{domain}")
    dns.restore(f"s1._domainkey.{domain}")
    second = check(authenticator(), raw.replace(b"Bonjour", b"Bonsoir"), domain, sender=f"{CANARY}@{domain}")
    assert first.temporary and not second.passed
    assert CANARY not in caplog.text and CANARY not in repr(first) + repr(second)


def test_off_mode_passes_everything() -> None:
    auth = MailAuthenticator(mode="none", dns_resolver=None, trusted_authserv_id=None)
    verdict = auth.check(b"From: x@example.org\r\n\r\n", header_from_domain="example.org", envelope_sender=None,
                         client_ip=STRANGER_IP, helo=None)
    assert verdict == AuthVerdict(passed=True, temporary=False, method="none", reason="sender authentication off")


def test_misconfiguration_fails_at_construction() -> None:
    with pytest.raises(ValueError):
        MailAuthenticator(mode="trust-header", dns_resolver=None, trusted_authserv_id="")
    with pytest.raises(ValueError):
        MailAuthenticator(mode="sometimes", dns_resolver=None, trusted_authserv_id=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MailAuthenticator(mode="verify", dns_resolver="127.0.0.1:fifty-three", trusted_authserv_id=None)
    with pytest.raises(ValueError):
        MailAuthenticator(mode="verify", dns_resolver="127.0.0.1:53", trusted_authserv_id=None, timeout=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:5353", ("127.0.0.1", 5353)), ("127.0.0.1", ("127.0.0.1", 53)), ("[::1]:5353", ("::1", 5353)),
     ("::1", ("::1", 53)), ("resolver.internal:53", ("resolver.internal", 53))],
)
def test_resolver_address_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_resolver_address(text) == expected


def test_built_from_settings(dns: DNSTestServer) -> None:
    settings = Settings(sender_auth="verify", dns_resolver=dns.address, trusted_arc_signers="FWD.example.net, ")
    auth = MailAuthenticator.from_settings(settings)
    raw = forwarded("fwd.example.net", ORIGINAL_PASSED)
    assert check(auth, raw, "example.org", ip=FORWARDER_IP).method == "arc"
