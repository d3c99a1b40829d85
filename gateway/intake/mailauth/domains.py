"""Domain names as DMARC compares them: one normal form, the organisational domain, and alignment."""
from __future__ import annotations

from functools import cache

from publicsuffixlist import PublicSuffixList


@cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()


def normalise(domain: str) -> str:
    """Lower-case A-label form without the trailing dot, so "Exemple.FR." and "exemple.fr" compare equal."""
    name = domain.strip().strip("<>").rstrip(".").lower()
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def domain_of(address: str) -> str:
    """The domain part of an address (or of an AR property such as smtp.mailfrom), normalised."""
    return normalise(address.rpartition("@")[2])


def organisational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the registrable domain under the public suffix list (the name itself if none)."""
    name = normalise(domain)
    return _public_suffixes().privatesuffix(name) or name


def aligned(identifier: str, from_domain: str, *, strict: bool) -> bool:
    """RFC 7489 §3.1: strict needs the same name; relaxed the same organisational domain."""
    a, b = normalise(identifier), normalise(from_domain)
    if not a or not b:
        return False
    if a == b:
        return True
    return not strict and organisational_domain(a) == organisational_domain(b)
