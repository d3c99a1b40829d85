"""DNS for sender authentication: every lookup goes through one configured resolver, and a lookup that
could not be answered (timeout, SERVFAIL) is told apart from a name that has no such record.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import spf


class TemporaryDnsError(Exception):
    """The resolver did not answer in time or answered SERVFAIL: the record's existence is unknown."""


def parse_resolver_address(value: str) -> tuple[str, int]:
    """"host:port", "[v6]:port" or a bare host (port 53) -> (host, port); ValueError when malformed."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("DNS resolver must be host:port")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a bare IPv4/IPv6 address or name
        host, port_text = text, ""
    if not host:
        raise ValueError("DNS resolver must be host:port")
    try:
        port = int(port_text) if port_text else 53
    except ValueError:
        raise ValueError("DNS resolver port must be a number") from None
    if not 0 < port < 65536:
        raise ValueError("DNS resolver port out of range")
    return host, port


class DnsClient:
    """dnspython resolver aimed at `address` ("host:port"; None = the system's resolv.conf), no cache.

    Safe to share between threads: every lookup builds its own resolution state.
    """

    def __init__(self, address: str | None, timeout: float) -> None:
        if address:
            host, port = parse_resolver_address(address)
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [host]
            resolver.port = port
        else:
            try:
                resolver = dns.resolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                raise ValueError("no system DNS resolver is configured: set a DNS resolver address") from None
        resolver.timeout = timeout
        resolver.lifetime = timeout
        # Caching belongs to the recursive resolver we point at; a second cache here would hide record changes.
        resolver.cache = None
        self._resolver = resolver
        self.timeout = timeout

    def resolve(self, name: str, rtype: str, *, lifetime: float | None = None) -> dns.resolver.Answer | None:
        """The answer, or None when the name or the record type does not exist (or the name is invalid)."""
        wait = self.timeout if lifetime is None else max(0.05, min(lifetime, self.timeout))
        try:
            qname = dns.name.from_text(name.rstrip(".") + ".")
            return self._resolver.resolve(qname, rtype, lifetime=wait, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return None
        except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel, UnicodeError):
            return None
        except (dns.exception.Timeout, dns.resolver.NoNameservers):
            raise TemporaryDnsError("dns lookup failed temporarily") from None

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record of `name`, its strings joined."""
        answer = self.resolve(name, "TXT")
        if answer is None:
            return []
        return [b"".join(rdata.strings) for rdata in answer]

    def dkim_txt(self, name: bytes, timeout: float = 0) -> bytes | None:
        """dkimpy's `dnsfunc`: the first TXT record of a key name, None when there is none.

        TemporaryDnsError goes through dkimpy untouched (it is no DKIMException), so the caller learns that
        the key, not the signature, is at fault; dkimpy would otherwise fold a timeout into a plain fail.
        dkimpy's `timeout` is not used: the client's own timeout applies to every lookup alike.
        """
        records = self.txt(name.decode("ascii", "replace"))
        return records[0] if records else None

    def spf_records(self, name: str, qtype: str, timeout: float) -> list[tuple[tuple[str, str], Any]]:
        """Answers in the shape pyspf's `DNSLookup` returns, pyspf's TempError when the lookup failed."""
        try:
            answer = self.resolve(name, qtype, lifetime=timeout)
        except TemporaryDnsError:
            raise spf.TempError("DNS lookup failed temporarily") from None
        if answer is None:
            return []
        records: list[tuple[tuple[str, str], Any]] = []
        for rdata in answer:
            if qtype in ("A", "AAAA"):
                value: Any = rdata.address
            elif qtype == "MX":
                value = (rdata.preference, rdata.exchange)
            elif qtype == "PTR":
                value = rdata.target.to_text(True)
            elif qtype in ("TXT", "SPF"):
                value = rdata.strings
            else:
                value = rdata.to_text()
            records.append(((name, qtype), value))
        return records


# pyspf resolves through its module-level `spf.DNSLookup` hook and offers no per-query resolver. We set
# that hook once to a dispatcher that uses the DnsClient of the SPF check running in this context
# (thread or task), and pyspf's own lookup for any other caller in the process.
_spf_client: ContextVar[DnsClient | None] = ContextVar("gateway_mailauth_spf_client", default=None)
_pyspf_default: Callable[..., Any] | None = None
_install_lock = threading.Lock()


def _spf_dns_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> Any:
    client = _spf_client.get()
    if client is None:
        assert _pyspf_default is not None  # set before this function is installed
        return _pyspf_default(name, qtype, strict, timeout)
    return client.spf_records(name, qtype, timeout)


def _install_spf_hook() -> None:
    global _pyspf_default
    with _install_lock:
        if spf.DNSLookup is not _spf_dns_lookup:
            _pyspf_default = spf.DNSLookup
            spf.DNSLookup = _spf_dns_lookup


@contextmanager
def spf_lookups_through(client: DnsClient) -> Iterator[None]:
    """Within the block, pyspf queries in this context go to `client`."""
    _install_spf_hook()
    token = _spf_client.set(client)
    try:
        yield
    finally:
        _spf_client.reset(token)
