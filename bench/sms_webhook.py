#!/usr/bin/env python3
"""Signed Twilio SMS webhooks per second, over C concurrent keep-alive connections, through the whole path
(signature, routing to the patient's open thread, sealing, commit with the practitioner's outbox row) and,
in the same run, through a bare app of the same framework (FastAPI under uvicorn) that only validates the
signature and commits the raw form to the same database. Prints req/s for both, their ratio, and the
latency percentiles seen by the clients.

Each server runs alone in its own process (like `gateway run`); the load generator runs here.

    .venv/bin/python bench/sms_webhook.py [-n 3000] [-c 16] [--pg postgresql+psycopg://postgres@127.0.0.1/postgres]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI, Request, Response
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.app import Gateway  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.directory.patients import add_care, add_patient  # noqa: E402
from gateway.directory.practices import add_practice, add_practitioner  # noqa: E402
from gateway.threads.service import open_thread  # noqa: E402

PUBLIC_URL = "https://gw.bench.example"
PATH = "/webhooks/twilio/sms"
PRACTICE_NUMBER = "+33700000001"
ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "bench-auth-token"
MASTER_KEY = "kbench:" + base64.urlsafe_b64encode(b"\x42" * 32).decode().rstrip("=")
BODY = "Bonjour docteur, la tension est à 13/8 ce matin, je continue le traitement comme prévu. Merci !"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(data_dir: Path, database_url: str) -> dict[str, Any]:
    return dict(
        data_dir=data_dir, database_url=database_url, master_key=MASTER_KEY, public_url=PUBLIC_URL,
        twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
    )


def prepare(values: dict[str, Any], patients: int) -> list[str]:
    """A migrated database with one practice and `patients` patients, each with a verified phone and one
    open thread; returns their numbers."""
    gw = Gateway(Settings(**values))
    gw.init()
    keys = gw.keys
    numbers = [f"+3361{i:07d}" for i in range(patients)]
    with gw.transaction() as s:
        add_practice(s, slug="cab", name="Cabinet Bench", sms_number=PRACTICE_NUMBER)
        add_practitioner(s, keys, practice_slug="cab", slug="dr-bench", name="Dr Bench", email="dr@bench.example")
    with gw.transaction() as s:
        for number in numbers:
            p = add_patient(s, keys, practice_slug="cab", name="Patient Bench", phone=number, verified=True)
            add_care(s, patient_id=p.id, practitioner_slug="dr-bench")
            open_thread(s, keys, patient_id=p.id, practitioner_slug="dr-bench", subject="Suivi")
    gw.close()
    return numbers


# -- the two servers, each in its own process --------------------------------------------------


def _quiet() -> None:
    import os

    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the log lines are produced (and paid for), not shown


def serve_gateway(values: dict[str, Any], port: int) -> None:
    import uvicorn

    from gateway.logs import configure
    from gateway.web.app import create_app

    _quiet()
    configure("INFO")
    gw = Gateway(Settings(**values))
    uvicorn.run(create_app(gw), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_bare(values: dict[str, Any], port: int) -> None:
    """The baseline: FastAPI, request.form(), RequestValidator, one INSERT of the raw form, commit."""
    import uvicorn
    from starlette.concurrency import run_in_threadpool
    from twilio.request_validator import RequestValidator

    from gateway.db.engine import make_engine

    _quiet()
    engine = make_engine(Settings(**values).resolved_database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_raw_sms (id VARCHAR(32) PRIMARY KEY, form TEXT NOT NULL)"))
    validator = RequestValidator(AUTH_TOKEN)
    app = FastAPI()

    def commit(raw: str) -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO bench_raw_sms (id, form) VALUES (:id, :form)"),
                         {"id": uuid.uuid4().hex, "form": raw})

    @app.post(PATH)
    async def webhook(request: Request) -> Response:
        form = await request.form()
        if not validator.validate(PUBLIC_URL + PATH, form, request.headers.get("X-Twilio-Signature", "")):
            return Response(status_code=403)
        await run_in_threadpool(commit, urlencode(list(form.multi_items())))
        return Response('<?xml version="1.0" encoding="UTF-8"?><Response />', media_type="text/xml")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the load --------------------------------------------------------------------------------------


def signed_requests(numbers: list[str], n: int) -> list[tuple[bytes, str]]:
    """n distinct webhook bodies with their signatures, computed before the clock starts."""
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(AUTH_TOKEN)
    out = []
    for i in range(n):
        sid = "SM" + secrets.token_hex(16)
        form = {
            "ToCountry": "FR", "ToState": "", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "", "FromZip": "",
            "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "", "Body": BODY,
            "FromCountry": "FR", "To": PRACTICE_NUMBER, "ToZip": "", "NumSegments": "1", "MessageSid": sid,
            "AccountSid": ACCOUNT_SID, "From": numbers[i % len(numbers)], "ApiVersion": "2010-04-01",
        }
        out.append((urlencode(form).encode(), validator.compute_signature(PUBLIC_URL + PATH, form)))
    return out


async def drive(port: int, requests: list[tuple[bytes, str]], c: int) -> tuple[float, list[float]]:
    """c keep-alive connections, each posting its share of the requests one after the other.

    A bare asyncio HTTP/1.1 client: httpx's AsyncClient tops out near 110 req/s on this machine, so it
    would measure itself rather than the servers; this one costs a few microseconds per request."""
    latencies: list[float] = []
    pending = iter(requests)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for body, signature in pending:
                head = (
                    f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    f"X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                t0 = time.perf_counter()
                writer.write(head + body)
                await writer.drain()
                status, length = _response_head(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"unexpected status {status}")
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(c)))
    return time.perf_counter() - start, latencies


def _response_head(head: bytes) -> tuple[int, int]:
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return int(lines[0].split()[1]), length


def measure(target: Any, values: dict[str, Any], numbers: list[str], n: int, c: int, warmup: int) -> dict[str, float]:
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(target=target, args=(values, port), daemon=True)
    process.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or not process.is_alive():
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)
        asyncio.run(drive(port, signed_requests(numbers, warmup), c))
        elapsed, latencies = asyncio.run(drive(port, signed_requests(numbers, n), c))
    finally:
        process.terminate()
        process.join(10)
    latencies.sort()
    return {
        "rps": n / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def stored_messages(database_url: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM messages")).scalar_one()
    engine.dispose()
    return int(count)


def run(label: str, values: dict[str, Any], n: int, c: int, patients: int) -> None:
    numbers = prepare(values, patients)
    warmup = max(200, n // 10)
    bare = measure(serve_bare, values, numbers, n, c, warmup)
    full = measure(serve_gateway, values, numbers, n, c, warmup)
    url = Settings(**values).resolved_database_url
    assert stored_messages(url) == n + warmup, "every webhook of the whole path must have stored its message"
    print(f"{label}: {n} signed webhooks, {c} concurrent clients")
    print(f"  bare app (validate + commit raw form): {bare['rps']:7.0f} req/s   p50 {bare['p50']:5.1f} ms   p99 {bare['p99']:5.1f} ms")
    print(f"  whole path (route, seal, store)      : {full['rps']:7.0f} req/s   p50 {full['p50']:5.1f} ms   p99 {full['p99']:5.1f} ms")
    print(f"  ratio whole/bare: {full['rps'] / bare['rps']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=3000, help="measured requests per server")
    parser.add_argument("-c", type=int, default=16, help="concurrent clients")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--pg", help="PostgreSQL admin URL: also run on a throw-away database there")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sms-bench-") as tmp:
        data = Path(tmp)
        run("SQLite", settings(data, f"sqlite:///{data / 'bench.db'}"), args.n, args.c, args.patients)
    if args.pg:
        name = f"gw_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            with tempfile.TemporaryDirectory(prefix="sms-bench-") as tmp:
                url = args.pg.rsplit("/", 1)[0] + "/" + name
                run("PostgreSQL", settings(Path(tmp), url), args.n, args.c, args.patients)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
