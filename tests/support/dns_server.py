"""A real DNS server on loopback (UDP and TCP on one port) answering from zones the test controls.

Stands in for public DNS wherever a test needs DKIM keys, SPF, DMARC or MX records:

    with DNSTestServer({"example.org": [("TXT", "v=spf1 ip4:192.0.2.10 -all")]}) as dns:
        dns.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
        dns.black_hole("sel._domainkey.example.org")   # queries go unanswered: the client times out
        resolver_setting = dns.address                  # "127.0.0.1:<port>"
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from types import TracebackType

from dnslib import QTYPE, RCODE, RDMAP, RR, TXT, DNSError, DNSHeader, DNSLabel, DNSRecord
from dnslib.server import DNSHandler, DNSLogger, DNSServer, TCPServer, UDPServer

Record = tuple[str, str | bytes | tuple[bytes, ...]]
"""(type, value): a zone-file value ("10 mx.example.org", "192.0.2.1"); a TXT value is the whole text,
split into 255-byte strings as DNS requires (a tuple of bytes gives the strings explicitly)."""

_TTL = 60


def _key(name: str | DNSLabel) -> str:
    return str(name).rstrip(".").lower()


class _Dropped(DNSError):
    """Raised from the resolver so dnslib's handler sends nothing back (a black-holed name)."""


class _ZoneResolver:
    """dnslib resolver over the server's records; one instance is shared by every handler thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, list[tuple[str, str | bytes | tuple[bytes, ...]]]] = {}
        self.black_holed: set[str] = set()
        self.failing: set[str] = set()
        self.queries: list[tuple[str, str, str]] = []

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        qname = request.q.qname
        qtype = QTYPE.get(request.q.qtype)
        name = _key(qname)
        with self.lock:
            self.queries.append((name, str(qtype), handler.protocol))
            if name in self.black_holed:
                raise _Dropped("black-holed")
            reply = request.reply()
            if name in self.failing:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if name not in self.records:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            for rr in self._answer(qname, str(qtype)):
                reply.add_answer(rr)
        return reply

    def _answer(self, qname: DNSLabel, qtype: str, depth: int = 0) -> list[RR]:
        name = _key(qname)
        entries = self.records.get(name, [])
        answers = [self._rr(qname, rtype, value) for rtype, value in entries if rtype == qtype or qtype == "ANY"]
        if answers or depth > 8:
            return answers
        # Follow a CNAME inside our zones, as an authoritative server answering for both names would.
        for rtype, value in entries:
            if rtype == "CNAME":
                target = DNSLabel(str(value))
                return [self._rr(qname, rtype, value), *self._answer(target, qtype, depth + 1)]
        return []

    @staticmethod
    def _rr(qname: DNSLabel, rtype: str, value: str | bytes | tuple[bytes, ...]) -> RR:
        if rtype == "TXT":
            if isinstance(value, tuple):
                strings = list(value)
            else:
                data = value.encode() if isinstance(value, str) else value
                strings = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
            rdata = TXT(strings)
        else:
            text = value.decode() if isinstance(value, bytes) else str(value)
            rdata = RDMAP[rtype].fromZone(text.split())
        return RR(qname, getattr(QTYPE, rtype), rdata=rdata, ttl=_TTL)


class _Handler(DNSHandler):
    """dnslib's handler, truncating long UDP answers the way clients expect (question kept, TC set)."""

    udp_limit = 0

    def get_reply(self, data: bytes) -> bytes:
        if self.protocol != "udp" or not self.udp_limit:
            return bytes(super().get_reply(data))
        reply = self.server.resolver.resolve(DNSRecord.parse(data), self)
        packed = bytes(reply.pack())
        if len(packed) <= self.udp_limit:
            return packed
        # dnslib's own truncate() drops the question section, which resolvers reject as a mismatch.
        truncated = DNSRecord(DNSHeader(id=reply.header.id, qr=1, aa=1, tc=1, rd=reply.header.rd), q=reply.q)
        return bytes(truncated.pack())


def _handler(udp_limit: int) -> type[DNSHandler]:
    # A long answer over UDP then carries only the TC bit, so clients must retry over TCP.
    return type("LimitedHandler", (_Handler,), {"udp_limit": udp_limit})


class DNSTestServer:
    """Authoritative-looking DNS server for any name in `zones`; NXDOMAIN for every other name.

    Use as a context manager; `.address` is "127.0.0.1:<port>" (the form of GATEWAY_DNS_RESOLVER).
    Records can be added, replaced and removed while it runs; `black_hole(name)` drops queries for a
    name (the client sees a timeout), `servfail(name)` answers SERVFAIL; `restore(name)` undoes both.
    `udp_limit` (bytes, 0 = none) truncates longer UDP answers to exercise the client's TCP fallback.
    `queries` lists (name, type, "udp"|"tcp") in arrival order.
    """

    host = "127.0.0.1"

    def __init__(self, zones: Mapping[str, Iterable[Record]] | None = None, *, udp_limit: int = 0) -> None:
        self._resolver = _ZoneResolver()
        self._udp_limit = udp_limit
        self._servers: list[DNSServer] = []
        self.port = 0
        for name, records in (zones or {}).items():
            for rtype, value in records:
                self.add(name, rtype, value)

    @property
    def address(self) -> str:
        if not self.port:
            raise RuntimeError("DNSTestServer is not running")
        return f"{self.host}:{self.port}"

    @property
    def queries(self) -> list[tuple[str, str, str]]:
        with self._resolver.lock:
            return list(self._resolver.queries)

    def add(self, name: str, rtype: str, value: str | bytes | tuple[bytes, ...]) -> None:
        rtype = rtype.upper()
        if rtype not in RDMAP:
            raise ValueError(f"unsupported record type {rtype}")
        _ZoneResolver._rr(DNSLabel(name), rtype, value)  # fail here, not in a handler thread, on a bad value
        with self._resolver.lock:
            self._resolver.records.setdefault(_key(name), []).append((rtype, value))

    def set(self, name: str, rtype: str, *values: str | bytes | tuple[bytes, ...]) -> None:
        """Replace every `rtype` record of `name` by `values` (none: remove them)."""
        self.remove(name, rtype)
        for value in values:
            self.add(name, rtype, value)

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Remove the records of `name` of one type, or the whole name (it then answers NXDOMAIN)."""
        with self._resolver.lock:
            if rtype is None:
                self._resolver.records.pop(_key(name), None)
            elif _key(name) in self._resolver.records:
                kept = [r for r in self._resolver.records[_key(name)] if r[0] != rtype.upper()]
                self._resolver.records[_key(name)] = kept

    def black_hole(self, name: str) -> None:
        with self._resolver.lock:
            self._resolver.black_holed.add(_key(name))

    def servfail(self, name: str) -> None:
        with self._resolver.lock:
            self._resolver.failing.add(_key(name))

    def restore(self, name: str) -> None:
        with self._resolver.lock:
            self._resolver.black_holed.discard(_key(name))
            self._resolver.failing.discard(_key(name))

    def start(self) -> DNSTestServer:
        quiet = DNSLogger(logf=lambda *_: None)
        handler = _handler(self._udp_limit)
        # UDP takes a free port first; TCP then binds the same number, retried if someone took it meanwhile.
        for _ in range(20):
            udp = DNSServer(self._resolver, address=self.host, port=0, logger=quiet, handler=handler, server=UDPServer)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(
                    self._resolver, address=self.host, port=port, logger=quiet, handler=handler, server=TCPServer
                )
            except OSError:
                udp.server.server_close()
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self._servers = [udp, tcp]
        for server in self._servers:
            # A short poll interval so that stop() returns at once rather than after half a second.
            thread = threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
            thread.start()
        self.port = port
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        self._servers = []
        self.port = 0

    def __enter__(self) -> DNSTestServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["DNSTestServer", "Record"]
