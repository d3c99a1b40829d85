#!/usr/bin/env python3
"""Inbound email throughput: N valid replies over C concurrent SMTP connections through the whole path
(parse, trust-header authentication, encrypt, commit) and, in the same run, through a bare aiosmtpd
handler that only commits the raw bytes to the same database. Prints msg/s for both, their ratio and the
DATA->250 latency percentiles, on SQLite and (when reachable) PostgreSQL.

    .venv/bin/python bench/smtp_ingest.py [-n 2000] [-c 8] [--pg postgresql+psycopg://postgres@127.0.0.1/postgres]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiosmtplib
from aiosmtpd.controller import Controller
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.app import Gateway  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.db.engine import make_engine  # noqa: E402
from gateway.directory.patients import add_care, add_patient  # noqa: E402
from gateway.directory.practices import add_practice, add_practitioner  # noqa: E402
from gateway.ingress.smtp import SmtpServer  # noqa: E402
from gateway.threads.service import open_thread, thread_reply_address  # noqa: E402

DOMAIN = "bench.example"
PATIENT = "patient@patient.example"
AUTHSERV = "mx.bench.example"
BODY = "Bonjour docteur, voici des nouvelles de mon traitement et de ma tension.\n" * 32  # about 2.4 KB


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def message(to: str) -> bytes:
    return (
        f"Authentication-Results: {AUTHSERV}; dmarc=pass header.from=patient.example\r\n"
        f"From: {PATIENT}\r\nTo: {to}\r\nSubject: Re: suivi\r\nMessage-ID: <{uuid.uuid4().hex}@patient.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + BODY.replace("\n", "\r\n")
        + "\r\nLe lun. 3 nov. 2025, Cabinet a écrit :\r\n> ancien message\r\n"
    ).encode()


async def drive(port: int, rcpt: str, n: int, c: int) -> tuple[float, list[float], float]:
    """(elapsed seconds, DATA->250 latencies, CPU seconds of this process meanwhile: client and server)."""
    latencies: list[float] = []
    per = n // c

    async def one_connection() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
        await client.connect()
        for _ in range(per):
            raw = message(rcpt)
            await client.mail(PATIENT)
            await client.rcpt(rcpt)
            t0 = time.perf_counter()
            reply = await client.data(raw)
            latencies.append(time.perf_counter() - t0)
            if reply.code != 250:
                raise RuntimeError(f"unexpected reply {reply.code}")
        await client.quit()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one_connection() for _ in range(c)))
    return time.perf_counter() - start, latencies, time.process_time() - cpu


def setup_gateway(url: str, data_dir: Path) -> tuple[Gateway, str]:
    settings = Settings(
        data_dir=data_dir, database_url=url, mail_domain=DOMAIN, sender_auth="trust-header",
        trusted_authserv_id=AUTHSERV, sender_rate_limit=0, smtp_port=free_port(),
    )
    gw = Gateway(settings)
    gw.init()
    keys = gw.keys
    with gw.transaction() as s:
        slug = "b" + uuid.uuid4().hex[:8]
        add_practice(s, slug=slug, name="Bench")
        add_practitioner(s, keys, practice_slug=slug, slug="dr-" + slug, name="Dr", email=f"dr@{slug}.example")
        p = add_patient(s, keys, practice_slug=slug, name="P", email=PATIENT, verified=True)
        add_care(s, patient_id=p.id, practitioner_slug="dr-" + slug)
        t = open_thread(s, keys, patient_id=p.id, practitioner_slug="dr-" + slug, subject="S")
        return gw, thread_reply_address(keys, t, "patient", DOMAIN)


class BareHandler:
    """The bare component: aiosmtpd + one INSERT of the raw bytes + commit, off the event loop."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        meta = MetaData()
        self.table = Table("bench_raw", meta, Column("id", String(32), primary_key=True), Column("raw", LargeBinary))
        meta.drop_all(self.engine)
        meta.create_all(self.engine)
        self.executor = ThreadPoolExecutor(8)

    def _commit(self, raw: bytes) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.insert().values(id=uuid.uuid4().hex, raw=raw))

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        await asyncio.get_running_loop().run_in_executor(self.executor, self._commit, envelope.original_content)
        return "250 OK"

    def close(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("DROP TABLE bench_raw"))
        self.engine.dispose()


def report(name: str, n: int, elapsed: float, lat: list[float], cpu: float) -> float:
    lat = sorted(lat)
    rate = n / elapsed
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    # CPU per message (client and server share this process) is steadier than msg/s on a busy machine.
    print(f"  {name:<12} {rate:8.0f} msg/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   CPU {cpu / n * 1000:5.2f} ms/msg")
    return rate


def run(db: str, url_for: callable, n: int, c: int) -> None:  # type: ignore[valid-type]
    tmp = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    url = url_for(tmp)
    gw, rcpt = setup_gateway(url, tmp / "data")
    server = SmtpServer(gw)
    server.start()
    bare = BareHandler(url)
    bare_port = free_port()
    controller = Controller(bare, hostname="127.0.0.1", port=bare_port)
    controller.start()
    try:
        asyncio.run(drive(server.port, rcpt, min(100, n), c))  # warm-up
        asyncio.run(drive(bare_port, rcpt, min(100, n), c))
        full_elapsed, full_lat, full_cpu = asyncio.run(drive(server.port, rcpt, n, c))
        bare_elapsed, bare_lat, bare_cpu = asyncio.run(drive(bare_port, rcpt, n, c))
    finally:
        server.stop(5)
        controller.stop()
        bare.close()
        gw.close()
    print(f"{db}: {n} messages of {len(message(rcpt))} bytes over {c} connections")
    full = report("whole path", n, full_elapsed, full_lat, full_cpu)
    base = report("bare", n, bare_elapsed, bare_lat, bare_cpu)
    print(f"  ratio whole/bare: {full / base:.2f}   (CPU per message bare/whole: {bare_cpu / full_cpu:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("-c", type=int, default=8)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)
    from gateway.logs import configure

    configure("WARNING")
    run("SQLite", lambda tmp: f"sqlite:///{tmp / 'data' / 'gateway.db'}", args.n, args.c)
    try:
        dbname = "bench_" + uuid.uuid4().hex[:8]
        admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    except Exception as exc:  # noqa: BLE001 - PostgreSQL is optional for the benchmark
        print(f"PostgreSQL: skipped ({type(exc).__name__})")
        return
    try:
        run("PostgreSQL", lambda tmp: args.pg.rsplit("/", 1)[0] + "/" + dbname, args.n, args.c)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
