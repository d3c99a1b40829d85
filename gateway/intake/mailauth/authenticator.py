"""Decide whether an inbound email's header From domain is authenticated: DKIM/SPF/DMARC checked here
(`verify`), a trusted `Authentication-Results` header read (`trust-header`), or nothing checked (`none`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import dkim
import spf

from gateway.intake.mailauth.dmarc import DmarcPolicy, lookup_policy
from gateway.intake.mailauth.domains import aligned, normalise
from gateway.intake.mailauth.lookup import DnsClient, TemporaryDnsError, spf_lookups_through
from gateway.intake.mailauth.reported import judge, parse_results, topmost_authentication_results

if TYPE_CHECKING:
    from gateway.config import Settings

Mode = Literal["verify", "trust-header", "none"]
_MODES: tuple[Mode, ...] = ("verify", "trust-header", "none")

_SPF_RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"})

# A message may carry many signatures; past this many we stop spending DNS lookups on it.
_MAX_DKIM_SIGNATURES = 8

# dkimpy logs signer domains and selectors on failures. This logger has no parent and is disabled, so
# nothing it is given can reach the application's handlers, whatever logging configuration they set.
_SILENT = logging.Logger("gateway.mailauth.dkimpy")
_SILENT.disabled = True


@dataclass(frozen=True)
class AuthVerdict:
    passed: bool  # the header From is authenticated
    temporary: bool  # a DNS temporary error / timeout decided the outcome -> caller answers 451 4.7.0
    method: str  # "dmarc", "dkim", "spf", "arc", "trust-header", "none"
    reason: str  # short fixed text: never an address or a domain


@dataclass(frozen=True)
class _Dkim:
    passing: tuple[str, ...]  # d= of the signatures that verified
    unknown: tuple[str, ...]  # d= of the signatures whose key lookup failed temporarily
    present: bool


class MailAuthenticator:
    """Built once from settings, then `check` is called for every message, from any thread.

    `verify` passes when DMARC passes: a DKIM signature that verifies with d= aligned to the From domain,
    or an SPF pass for the MAIL FROM (the HELO name for a null sender) aligned to it, under the domain's
    adkim/aspf. A domain without a DMARC record gets no benefit of the doubt: the same aligned DKIM or SPF
    pass is required, with relaxed alignment (DMARC's default), since a forged From is what we guard
    against. The policy the domain asks for (p=) only names the failure: a From that is not
    authenticated is never accepted, even under p=none.
    When no decision could be reached because a lookup that mattered timed out or met SERVFAIL, the
    verdict is `temporary` (the sender should retry). With `trusted_arc_signers`, a failing message is
    still accepted when it carries a valid ARC chain whose latest seal is by one of those domains and
    whose results at that hop show DMARC (or aligned DKIM) passing for the From domain: a practice's
    old mailbox forwarding to us breaks SPF and often DKIM, and ARC is how the forwarder vouches.

    `trust-header` believes only the topmost `Authentication-Results` header, and only when its
    authserv-id is `trusted_authserv_id`: our own MTA prepends it, whereas anyone can write the ones
    below. It passes on dmarc=pass for the From domain, dkim=pass with header.d aligned, or spf=pass with
    smtp.mailfrom aligned (relaxed alignment), and is temporary when that header reports a temperror.

    `none` passes everything: for development only (the caller warns at start).
    """

    def __init__(
        self,
        *,
        mode: Mode,
        dns_resolver: str | None,
        trusted_authserv_id: str | None,
        trusted_arc_signers: tuple[str, ...] = (),
        timeout: float = 5.0,
    ) -> None:
        if mode not in _MODES:
            raise ValueError("sender authentication mode must be verify, trust-header or none")
        if timeout <= 0:
            raise ValueError("DNS timeout must be positive")
        if mode == "trust-header" and not (trusted_authserv_id or "").strip():
            raise ValueError("trust-header mode needs the trusted authserv-id")
        self.mode: Mode = mode
        self.timeout = timeout
        self._authserv_id = (trusted_authserv_id or "").strip().lower()
        self._arc_signers = frozenset(normalise(d) for d in trusted_arc_signers if d.strip())
        self._dns = DnsClient(dns_resolver or None, timeout) if mode == "verify" else None

    @classmethod
    def from_settings(cls, settings: Settings) -> MailAuthenticator:
        return cls(
            mode=settings.sender_auth,
            dns_resolver=settings.dns_resolver or None,
            trusted_authserv_id=settings.trusted_authserv_id or None,
            trusted_arc_signers=settings.arc_signers,
            timeout=settings.dns_timeout,
        )

    def check(
        self, raw: bytes, *, header_from_domain: str, envelope_sender: str | None, client_ip: str, helo: str | None,
        reported: Sequence[str] | None = None,
    ) -> AuthVerdict:
        """`reported`: the message's Authentication-Results values, topmost first, when the caller has parsed
        them already (None: read from `raw`)."""
        if self.mode == "none":
            return AuthVerdict(passed=True, temporary=False, method="none", reason="sender authentication off")
        from_domain = normalise(header_from_domain)
        if not from_domain:
            return AuthVerdict(passed=False, temporary=False, method=self._method_for_mode(), reason="no from domain")
        if self.mode == "trust-header":
            return self._trust_header(raw, from_domain, reported)
        assert self._dns is not None  # built for verify mode
        return self._verify(self._dns, raw, from_domain, envelope_sender, client_ip, helo)

    def _method_for_mode(self) -> str:
        return "trust-header" if self.mode == "trust-header" else "dmarc"

    # --- trust-header ---------------------------------------------------------------------------------

    def _trust_header(self, raw: bytes, from_domain: str, reported: Sequence[str] | None) -> AuthVerdict:
        if reported is None:
            value = topmost_authentication_results(raw)
        else:
            value = reported[0] if reported else None
        parsed = parse_results(value) if value is not None else None
        if parsed is None or parsed.authserv_id != self._authserv_id:
            return AuthVerdict(
                passed=False, temporary=False, method="trust-header", reason="no trusted authentication-results"
            )
        judgement = judge(parsed.results, from_domain, accept_spf=True)
        return AuthVerdict(judgement.passed, judgement.temporary, "trust-header", judgement.reason)

    # --- verify ---------------------------------------------------------------------------------------

    def _verify(
        self, client: DnsClient, raw: bytes, from_domain: str, envelope_sender: str | None, client_ip: str,
        helo: str | None,
    ) -> AuthVerdict:
        policy: DmarcPolicy | None
        try:
            policy = lookup_policy(client, from_domain)
            policy_unknown = False
        except TemporaryDnsError:
            policy, policy_unknown = None, True
        # Without the record we do not know adkim/aspf: only a strictly aligned pass is a pass for sure.
        strict_dkim = policy.strict_dkim if policy else policy_unknown
        strict_spf = policy.strict_spf if policy else policy_unknown

        dkim_result = self._dkim(client, raw)
        if any(aligned(d, from_domain, strict=strict_dkim) for d in dkim_result.passing):
            return self._pass("dkim", policy, policy_unknown)

        spf_result, spf_domain = self._spf(client, client_ip, envelope_sender, helo)
        spf_aligned = bool(spf_domain) and aligned(spf_domain or "", from_domain, strict=strict_spf)
        if spf_result == "pass" and spf_aligned:
            return self._pass("spf", policy, policy_unknown)

        # Would the outcome have been a pass had the failed lookups answered? Then it is temporary. An
        # unknown policy might have allowed relaxed alignment, so relaxed is what could have passed.
        could_strict_dkim = policy.strict_dkim if policy else False
        could_strict_spf = policy.strict_spf if policy else False
        spf_could_align = bool(spf_domain) and aligned(spf_domain or "", from_domain, strict=could_strict_spf)
        passes_if_relaxed = any(aligned(d, from_domain, strict=False) for d in dkim_result.passing) or (
            spf_result == "pass" and spf_could_align
        )
        temporary = (
            (policy_unknown and passes_if_relaxed)
            or any(aligned(d, from_domain, strict=could_strict_dkim) for d in dkim_result.unknown)
            or (spf_result == "temperror" and spf_could_align)
        )

        if self._arc_signers:
            arc = self._arc(client, raw, from_domain)
            if arc is not None and arc.passed:
                return arc
            temporary = temporary or (arc is not None and arc.temporary)

        dkim_state = self._dkim_state(dkim_result, from_domain, could_strict_dkim)
        spf_state = "not aligned" if spf_result == "pass" else spf_result
        if temporary:
            head = "dns temperror"
        elif policy is not None:
            head = f"dmarc p={policy.policy}"
        else:
            head = "no dmarc record"
        return AuthVerdict(
            passed=False, temporary=temporary, method="dmarc", reason=f"{head}; dkim {dkim_state}; spf {spf_state}"
        )

    @staticmethod
    def _pass(how: Literal["dkim", "spf"], policy: DmarcPolicy | None, policy_unknown: bool) -> AuthVerdict:
        if policy is not None:
            return AuthVerdict(passed=True, temporary=False, method="dmarc", reason=f"dmarc pass ({how})")
        suffix = "dmarc temperror, strictly aligned" if policy_unknown else "no dmarc record"
        return AuthVerdict(passed=True, temporary=False, method=how, reason=f"{how} pass aligned, {suffix}")

    @staticmethod
    def _dkim_state(result: _Dkim, from_domain: str, strict: bool) -> str:
        if any(aligned(d, from_domain, strict=strict) for d in result.unknown):
            return "temperror"
        if result.passing:
            return "not aligned"
        return "fail" if result.present else "none"

    def _dkim(self, client: DnsClient, raw: bytes) -> _Dkim:
        passing: list[str] = []
        unknown: list[str] = []
        try:
            verifier = dkim.DKIM(raw, logger=_SILENT, timeout=self.timeout)
        except dkim.DKIMException:
            return _Dkim((), (), present=False)
        count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
        for idx in range(min(count, _MAX_DKIM_SIGNATURES)):
            verifier.domain = None
            try:
                if verifier.verify(idx=idx, dnsfunc=client.dkim_txt):
                    passing.append(_ascii(verifier.domain))
            except TemporaryDnsError:
                unknown.append(_ascii(verifier.domain))
            except (dkim.DKIMException, ValueError, LookupError):
                # A malformed signature or key is that signature failing; the others still count. dkimpy
                # lets some base64, number and missing-tag errors through as builtins.
                continue
        return _Dkim(tuple(passing), tuple(unknown), present=count > 0)

    def _spf(
        self, client: DnsClient, client_ip: str, envelope_sender: str | None, helo: str | None
    ) -> tuple[str, str | None]:
        """pyspf's result for the MAIL FROM identity (the HELO one for a null sender), and its domain."""
        sender = (envelope_sender or "").strip().strip("<>")
        if not sender and not helo:
            return "none", None
        _local, domain = spf.split_email(sender, helo or "")
        try:
            with spf_lookups_through(client):
                query = spf.query(
                    i=client_ip, s=sender, h=helo or "", timeout=self.timeout, querytime=4 * self.timeout
                )
                result, _code, _explanation = query.check()
        except (spf.PermError, spf.TempError):
            # Raised by the constructor for a client address pyspf cannot read; check() returns, not raises.
            return "permerror", normalise(domain or "")
        # The result goes into our reason, which must stay a fixed text.
        return (result if result in _SPF_RESULTS else "permerror"), normalise(domain or "")

    def _arc(self, client: DnsClient, raw: bytes, from_domain: str) -> AuthVerdict | None:
        """A pass when a trusted forwarder's valid ARC seal vouches for the From domain; None when no ARC."""
        try:
            chain, sets, _why = dkim.arc_verify(raw, logger=_SILENT, dnsfunc=client.dkim_txt)
        except TemporaryDnsError:
            return AuthVerdict(passed=False, temporary=True, method="arc", reason="arc temperror")
        except (ValueError, LookupError):
            return None  # a chain dkimpy cannot even walk is no usable ARC
        if chain == dkim.CV_None or not sets:
            return None
        latest = sets[0]  # dkimpy lists the sets from the highest instance down
        sealer = normalise(_ascii(latest.get("as-domain")))
        if chain != dkim.CV_Pass or sealer not in self._arc_signers:
            return AuthVerdict(passed=False, temporary=False, method="arc", reason="arc not trusted")
        parsed = parse_results(_ascii(latest.get("aar-value")))
        if parsed is None:
            return AuthVerdict(passed=False, temporary=False, method="arc", reason="arc results unreadable")
        judgement = judge(parsed.results, from_domain, accept_spf=False)
        if judgement.passed:
            return AuthVerdict(passed=True, temporary=False, method="arc", reason=f"arc {judgement.reason}")
        return AuthVerdict(passed=False, temporary=False, method="arc", reason="arc no aligned pass")


def _ascii(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value
