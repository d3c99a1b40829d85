"""The DMARC policy a From domain publishes (RFC 7489 §6.6.3): its own `_dmarc` record, else its
organisational domain's (where `sp=` then applies), else none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dkim.util import InvalidTagValueList, parse_tag_value

from gateway.intake.mailauth.domains import normalise, organisational_domain
from gateway.intake.mailauth.lookup import DnsClient

Policy = Literal["none", "quarantine", "reject"]
_POLICIES: tuple[Policy, ...] = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class DmarcPolicy:
    policy: Policy
    strict_dkim: bool  # adkim=s
    strict_spf: bool  # aspf=s


def lookup_policy(client: DnsClient, from_domain: str) -> DmarcPolicy | None:
    """The policy that governs `from_domain`, or None when neither it nor its organisational domain has one.

    Raises TemporaryDnsError when a lookup could not be answered.
    """
    domain = normalise(from_domain)
    tags = _record(client, domain)
    if tags is not None:
        return _policy(tags, subdomain=False)
    org = organisational_domain(domain)
    if org != domain:
        tags = _record(client, org)
        if tags is not None:
            return _policy(tags, subdomain=True)
    return None


def _record(client: DnsClient, domain: str) -> dict[bytes, bytes] | None:
    records = [r for r in client.txt(f"_dmarc.{domain}") if r.lstrip().startswith(b"v=DMARC1")]
    if len(records) != 1:  # RFC 7489 §6.6.3: several records count as none
        return None
    try:
        tags = parse_tag_value(records[0])
    except InvalidTagValueList:
        return None
    return tags if tags.get(b"v") == b"DMARC1" else None


def _policy(tags: dict[bytes, bytes], *, subdomain: bool) -> DmarcPolicy:
    raw = tags.get(b"sp") if subdomain and b"sp" in tags else tags.get(b"p")
    text = (raw or b"").decode("ascii", "replace").strip().lower()
    # §6.6.3 step 6: a record with a missing or unknown p= is applied as p=none. The policy only names the
    # failure in our reason: a From that DMARC does not authenticate is refused whatever the domain asks.
    policy: Policy = next((p for p in _POLICIES if p == text), "none")
    return DmarcPolicy(
        policy=policy,
        strict_dkim=tags.get(b"adkim", b"r").strip().lower() == b"s",
        strict_spf=tags.get(b"aspf", b"r").strip().lower() == b"s",
    )
