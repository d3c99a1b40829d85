"""The loopback DNS server the mail tests rely on behaves like a real one, over UDP and TCP."""
from __future__ import annotations

import time

import dns.message
import dns.query
import dns.resolver
import pytest

from tests.support.dns_server import DNSTestServer


def resolver_for(server: DNSTestServer, timeout: float = 1.0) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.timeout = resolver.lifetime = timeout
    return resolver


def test_answers_nxdomain_and_nodata() -> None:
    with DNSTestServer({"example.org": [("A", "192.0.2.1"), ("MX", "10 mx.example.org")]}) as server:
        resolver = resolver_for(server)
        assert [r.address for r in resolver.resolve("example.org", "A")] == ["192.0.2.1"]
        assert str(resolver.resolve("EXAMPLE.org.", "MX")[0].exchange) == "mx.example.org."
        with pytest.raises(dns.resolver.NoAnswer):
            resolver.resolve("example.org", "TXT")
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve("missing.example.org", "A")


def test_records_change_while_running() -> None:
    with DNSTestServer() as server:
        resolver = resolver_for(server)
        server.add("example.org", "TXT", "v=spf1 -all")
        server.add("alias.example.org", "CNAME", "example.org")
        assert resolver.resolve("alias.example.org", "TXT")[0].strings == (b"v=spf1 -all",)
        server.set("example.org", "TXT", "v=spf1 ~all", "second")
        texts = sorted(b"".join(r.strings) for r in resolver.resolve("example.org", "TXT"))
        assert texts == [b"second", b"v=spf1 ~all"]
        server.remove("example.org")
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve("example.org", "TXT")


def test_long_txt_is_split_into_strings_and_served_over_tcp() -> None:
    value = "p=" + "A" * 600
    with DNSTestServer({"big.example.org": [("TXT", value)]}, udp_limit=512) as server:
        query = dns.message.make_query("big.example.org", "TXT")
        over_udp = dns.query.udp(query, server.host, port=server.port, timeout=1)
        assert over_udp.flags & dns.flags.TC and not over_udp.answer
        answer = resolver_for(server).resolve("big.example.org", "TXT")
        assert [len(s) for s in answer[0].strings] == [255, 255, 92]
        assert b"".join(answer[0].strings).decode() == value
        assert ("big.example.org", "TXT", "tcp") in server.queries


def test_black_hole_times_out_and_servfail_fails_fast() -> None:
    with DNSTestServer({"example.org": [("A", "192.0.2.1")]}) as server:
        resolver = resolver_for(server, timeout=0.3)
        server.black_hole("example.org")
        started = time.monotonic()
        with pytest.raises(dns.exception.Timeout):
            resolver.resolve("example.org", "A")
        assert time.monotonic() - started >= 0.25
        server.restore("example.org")
        server.servfail("example.org")
        with pytest.raises(dns.resolver.NoNameservers):
            resolver.resolve("example.org", "A")
        server.restore("example.org")
        assert resolver.resolve("example.org", "A")[0].address == "192.0.2.1"


def test_address_only_while_running_and_bad_records_refused() -> None:
    server = DNSTestServer()
    with pytest.raises(RuntimeError):
        _ = server.address
    with pytest.raises(ValueError):
        server.add("example.org", "NOPE", "x")
    with server:
        host, port = server.address.split(":")
        assert host == "127.0.0.1" and int(port) == server.port > 0
