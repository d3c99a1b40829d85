"""`normalize_email` checks plain addresses without the stdlib header parser; for every input it must give
what the parser's path gives (the same address, or a refusal for both)."""
from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.headerregistry import Address

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.directory.contacts import _DOMAIN, normalize_email
from gateway.errors import InvalidInput


def parser_path(value: str) -> str | None:
    """The address through email.headerregistry, as before the plain-address check (None: refused)."""
    text = (value or "").strip()
    try:
        addr = Address(addr_spec=text)
    except (HeaderParseError, ValueError, IndexError, AttributeError):
        return None
    if not addr.username or not addr.domain or " " in text or addr.addr_spec != text:
        return None
    domain = addr.domain.lower().rstrip(".")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not _DOMAIN.match(domain):
        return None
    return f"{addr.username}@{domain}".lower()


def ours(value: str) -> str | None:
    try:
        return normalize_email(value)
    except InvalidInput:
        return None


_ALPHABET = "aZ09.-_+@!#$%&'*/=?^`{|}~\"() ,;:<>[]\\\té\x00"
_PARTS = st.text(alphabet=_ALPHABET, max_size=12)


@settings(max_examples=3000, deadline=None)
@given(st.builds(lambda a, b, c: f"{a}@{b}{c}", _PARTS, st.sampled_from(["", "a.", "example.", "x-y.", "."]), _PARTS))
@example("Patient.Name+tag@Example.COM")
@example("p@example.com.")
@example("p@example.com..")
@example("p@.example.com")
@example("p..q@example.com")
@example(".p@example.com")
@example("p@exa_mple.com")
@example("p@-example.com")
@example("p@" + "a" * 64 + ".com")
@example('"quoted local"@example.com')
@example("p@xn--caf-dma.fr")
@example("a@[")
def test_same_as_the_header_parser(value: str) -> None:
    assert ours(value) == parser_path(value)


@pytest.mark.parametrize("value", ["p@example.com", "  Mixed.Case@Example.Org ", "x+y@sub.example.fr"])
def test_plain_addresses(value: str) -> None:
    assert normalize_email(value) == value.strip().lower()
    assert re.fullmatch(r"[^A-Z]+", normalize_email(value))


@pytest.mark.parametrize("value", ["a@[", "a@a(", '"@a', "@", "p@example.com.", "p@exa_mple.com", "p@-example.com"])
def test_malformed_addresses_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_email(value)
