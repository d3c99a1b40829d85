"""Results that a server we trust wrote down (RFC 8601 `Authentication-Results`, or the
`ARC-Authentication-Results` of a trusted forwarder), read with `authres` and judged against the From domain.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

import authres

from gateway.intake.mailauth.domains import aligned, domain_of, normalise

_ARC_INSTANCE = re.compile(r"^\s*i\s*=\s*\d+\s*;", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedResults:
    authserv_id: str
    results: tuple[Any, ...]  # authres result objects


@dataclass(frozen=True)
class Judgement:
    passed: bool
    temporary: bool
    reason: str  # fixed text


def topmost_authentication_results(raw: bytes) -> str | None:
    """The unfolded value of the first `Authentication-Results` header, the one our own MTA prepended."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
    values = headers.get_all("Authentication-Results") or []
    if not values:
        return None
    return re.sub(r"\r?\n", "", str(values[0]))


def parse_results(value: str) -> ParsedResults | None:
    """An AR (or AAR, `i=N;` prefix allowed) value parsed, or None when it is not valid RFC 8601 syntax."""
    text = _ARC_INSTANCE.sub("", value, count=1)
    try:
        header = authres.all_features().parse_value(text)
    except (authres.AuthResError, ValueError, IndexError, AttributeError):
        # authres raises its own errors for bad syntax, and builtins on some truncated inputs.
        return None
    return ParsedResults(authserv_id=(header.authserv_id or "").lower(), results=tuple(header.results))


def judge(results: Sequence[Any], from_domain: str, *, accept_spf: bool) -> Judgement:
    """Pass on dmarc=pass for this From domain, or dkim=pass (or, if `accept_spf`, spf=pass) aligned with it.

    Alignment is relaxed: the reporter's view of the domain's adkim/aspf is not in the header.
    """
    relevant = [r for r in results if getattr(r, "method", "") in ("dmarc", "dkim", "spf")]
    passes = [r for r in relevant if str(getattr(r, "result", "")).lower() == "pass"]
    # The most telling result first: a DMARC pass covers the other two.
    for result in sorted(passes, key=lambda r: ("dmarc", "dkim", "spf").index(r.method)):
        if result.method == "dmarc" and normalise(_prop(result, "header", "from")) == normalise(from_domain):
            return Judgement(passed=True, temporary=False, reason="dmarc pass")
        if result.method == "dkim":
            signer = _prop(result, "header", "d") or domain_of(_prop(result, "header", "i"))
            if aligned(signer, from_domain, strict=False):
                return Judgement(passed=True, temporary=False, reason="dkim pass aligned")
        if result.method == "spf" and accept_spf:
            mail_from = _prop(result, "smtp", "mailfrom")
            if mail_from and aligned(domain_of(mail_from), from_domain, strict=False):
                return Judgement(passed=True, temporary=False, reason="spf pass aligned")
    if any(str(getattr(r, "result", "")).lower() == "temperror" for r in relevant):
        return Judgement(passed=False, temporary=True, reason="temperror reported")
    return Judgement(passed=False, temporary=False, reason="no aligned pass reported")


def _prop(result: Any, ptype: str, name: str) -> str:
    for prop in getattr(result, "properties", ()):
        if prop.type == ptype and prop.name == name and prop.value:
            return str(prop.value)
    return ""
