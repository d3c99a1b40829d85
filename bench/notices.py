#!/usr/bin/env python3
"""Outbound notice throughput: a message posted -> its notice accepted by a loopback SMTP sink, through
the whole path (outbox row, dispatcher, dramatiq, coalescing check, link issued, render, relay send,
outcome recorded), and beside it, on the same broker and sink with the same number of worker threads, the
bare rate of dramatiq with an actor that only sends one fixed message (the same relay sender).

Two layouts, as deployed:
- in-process (GATEWAY_BROKER_URL empty, `gateway run`): posting, dispatcher, dramatiq worker and the sink
  share this one process; the bare actor's worker runs in this process too.
- redis (`gateway run --no-worker` plus `gateway worker`): posting and the dispatcher run in this process,
  the notice actor in one `gateway worker` process (`--worker-processes K`: K of them); the bare actor
  likewise in as many worker processes of its own (`--bare-worker`). Each worker process is started and
  has sent a few messages before anything is timed; the `gateway worker` polls only hourly, so rows are
  handed out by this process's dispatcher, as the web process's would be. The sink stays in this process
  for both sides.
The sink (aiosmtpd, about 1.1-1.3 ms CPU a message here) is counted on both sides and by default runs in
this process, sharing its GIL with both sides; `--sink-process` runs it in a process of its own, as a relay
would be (one run: in-process 0.54 drain, 0.46 end to end; redis 0.59 and 0.54).

What bounds each side here (2 cores): in-process, both sides use about one core (the GIL), so the ratio is
about the ratio of CPU per notice (bare 1.7-2.0 ms: sink and SMTP client; whole path 3.2-3.5 ms: posting,
the actor's claim, link, render and outcome, the dispatcher). With Redis the bare rate is bound by the
sink and the enqueuing in this process; the whole path by the `gateway worker` process and, while the n
messages are posted, by the cores and the SQLite write lock it shares with the posting process, and by
how soon the sink, in that busy process, answers. The dispatcher hands a backlog out in runs of up to 8
rows whose emails go to the relay together (`gateway/workers/dispatcher.py`, `Notifier.__call__`).
Over 5 runs of 400 notices: in-process 0.51-0.74 drain (median 0.61), 0.52-0.64 end to end (0.55); redis
0.61-0.71 (0.68) and 0.46-0.61 (0.49; the bare rate swings from 900 to 1,050/s). With -n 1000, two runs:
in-process 0.62/0.63 and 0.57/0.58, redis 0.74/0.74 and 0.61/0.60. With --worker-processes 2, three
runs: redis 0.70-0.75 and 0.55-0.62.

Runs: "outbox drain" posts n messages first, then starts the dispatcher (and, in-process, the worker):
the notice path alone, what the bare actor is compared with; "end to end" posts and sends at once;
"paced" posts at a steady rate well below capacity (the latency a recipient sees on a normal day). The
bare run enqueues n messages to a worker already running. Each row prints notices/s, the post -> delivery
latency percentiles (drain and bare: from the start of the run), and the CPU time spent per notice by
every process of the run (this one, sink included, and the worker processes), user + system.

    .venv/bin/python bench/notices.py [-n 400] [--paced 120 --rate 20] [--threads 8] [--redis redis://127.0.0.1:6379/0]
                                      [--database-url URL] [--sink-process] [--repeat K] [--worker-processes K]
"""
from __future__ import annotations

import argparse
import base64
import gc
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.app import Gateway  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.delivery import RelayEmailSender, build_notice_email  # noqa: E402
from gateway.directory.patients import add_care, add_patient  # noqa: E402
from gateway.logs import configure  # noqa: E402
from gateway.directory.practices import add_practice, add_practitioner  # noqa: E402
from gateway.notices import NoticeContext, render  # noqa: E402
from gateway.threads.service import open_thread, post_message, thread_ref  # noqa: E402
from gateway.workers.broker import make_broker  # noqa: E402
from gateway.workers.senders import LoopThread  # noqa: E402
from gateway.workers.service import NoticeService  # noqa: E402

DOMAIN = "bench.example"
# One key for the run: with --database-url both layouts (and the worker processes) share the database.
MASTER_KEY = "kbench:" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
PUBLIC_URL = "https://portal.bench.example"
BODY = "Bonjour, vos résultats sont disponibles. Rien d'inquiétant, nous en parlerons au prochain rendez-vous.\n"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """A loopback SMTP server that notes when each recipient's message was accepted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: dict[str, float] = {}
        self.count = 0
        self._lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.perf_counter()
        with self._lock:
            for rcpt in envelope.rcpt_tos:
                self.received.setdefault(rcpt, now)
            self.count += 1
        return "250 2.0.0 OK"

    def wait(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {self.count} of {n} messages arrived in {timeout:.0f} s")
            time.sleep(0.005)


class SinkProcess(Sink):
    """`Sink` in a process of its own (as a relay would be): it reports each acceptance on its stdout."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received = {}
        self.count = 0
        self._lock = threading.Lock()
        self.controller = self  # type: ignore[assignment]

    def start(self) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--sink-serve", "--sink-port", str(self.port)]
        self.process = start_process(argv, dict(os.environ), Path.cwd(), stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            raise SystemExit("the sink process did not start")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            rcpts, _, when = line.decode().rstrip("\n").rpartition("\t")
            with self._lock:
                for rcpt in rcpts.split(","):
                    self.received.setdefault(rcpt, float(when))
                self.count += 1

    def stop(self) -> None:
        stop_process(self.process)


def sink_main(port: int) -> None:
    """`--sink-serve`: the sink in this process, each acceptance printed as `rcpt,rcpt<TAB>perf_counter`."""

    class Printing:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            sys.stdout.write(f"{','.join(envelope.rcpt_tos)}\t{time.perf_counter()!r}\n")
            sys.stdout.flush()
            return "250 2.0.0 OK"

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    controller = Controller(Printing(), hostname="127.0.0.1", port=port)
    controller.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    stopping.wait()
    controller.stop()


@dataclass(frozen=True)
class Result:
    label: str
    n: int
    seconds: float
    latencies: list[float]
    cpu: float = float("nan")  # seconds of CPU (user + system) of every process of the run

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Cpu:
    """CPU seconds (user + system) of this process and of the worker processes it started."""

    def __init__(self) -> None:
        self.children: list[int] = []

    def __call__(self) -> float:
        times = os.times()
        total = times.user + times.system
        ticks = os.sysconf("SC_CLK_TCK")
        for pid in self.children:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
        return total


CPU = Cpu()


def gateway_settings(data_dir: Path, sink: Sink, broker_url: str, namespace: str, threads: int,
                     database_url: str) -> dict[str, object]:
    return dict(
        data_dir=data_dir, database_url=database_url, broker_url=broker_url, broker_namespace=namespace,
        master_key=MASTER_KEY, mail_domain=DOMAIN, public_url=PUBLIC_URL,
        outbound_smtp_url=f"smtp://127.0.0.1:{sink.port}", notice_poll_seconds=0.25, worker_threads=threads,
        log_level="WARNING",
    )


def practice_slug(gw: Gateway) -> str:
    return "bench-" + gw.settings.broker_namespace.rpartition("-")[2]


def make_gateway(data_dir: Path, sink: Sink, broker_url: str, namespace: str, threads: int, database_url: str) -> Gateway:
    values = gateway_settings(data_dir, sink, broker_url, namespace, threads, database_url)
    settings = Settings(**values)  # type: ignore[arg-type]
    gw = Gateway(settings)
    gw.init()
    gw.start_checkpoints()  # as `gateway run` does (the worker process, `gateway worker`, starts its own)
    keys = gw.keys
    with gw.transaction() as s:
        # Slugs of their own per gateway: with --database-url both layouts share the database.
        add_practice(s, slug=practice_slug(gw), name="Cabinet du Parc")
        s.flush()
        add_practitioner(s, keys, practice_slug=practice_slug(gw), slug="dr-" + practice_slug(gw), name="Dr Bench",
                         email="dr@bench.example")
    return gw


def make_threads(gw: Gateway, n: int, prefix: str) -> list[tuple[str, str]]:
    """`n` patients, each with a verified email and one open thread: (thread id, address). Distinct
    recipients, so no notice is coalesced and every post costs one notice."""
    keys = gw.keys
    out: list[tuple[str, str]] = []
    with gw.transaction() as s:
        for i in range(n):
            address = f"{prefix}{i}@patient.example"
            patient = add_patient(s, keys, practice_slug=practice_slug(gw), name=f"Patient {i}", email=address,
                                  verified=True)
            s.flush()
            add_care(s, patient_id=patient.id, practitioner_slug="dr-" + practice_slug(gw))
            s.flush()
            thread = open_thread(s, keys, patient_id=patient.id, practitioner_slug="dr-" + practice_slug(gw),
                                 subject="Résultats")
            out.append((thread.id, address))
    return out


def post(gw: Gateway, thread_id: str) -> None:
    """A practitioner's message posted to the thread: read as inbound email and SMS read it (`thread_ref`)."""
    keys = gw.keys
    with gw.transaction() as s:
        post_message(s, keys, thread_ref(s, thread_id), author="practitioner", channel="portal", body=BODY)


def start_process(argv: list[str], env: dict[str, str], cwd: Path,
                  stdout: int | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout)
    CPU.children.append(process.pid)
    return process


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    CPU.children.remove(process.pid)


def gateway_worker(gw: Gateway, sink: Sink, threads: int) -> subprocess.Popen[bytes]:
    """`gateway worker` for the bench's gateway, in its own process. Its dispatcher polls hourly: rows are
    handed out by the dispatcher of this process (the web process's role), woken by its commits."""
    s = gw.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({
        "GATEWAY_DATA_DIR": str(s.data_dir), "GATEWAY_DATABASE_URL": s.database_url,
        "GATEWAY_BROKER_URL": s.broker_url, "GATEWAY_BROKER_NAMESPACE": s.broker_namespace,
        "GATEWAY_MASTER_KEY": MASTER_KEY, "GATEWAY_MAIL_DOMAIN": DOMAIN, "GATEWAY_PUBLIC_URL": PUBLIC_URL,
        "GATEWAY_OUTBOUND_SMTP_URL": f"smtp://127.0.0.1:{sink.port}", "GATEWAY_NOTICE_POLL_SECONDS": "3600",
        "GATEWAY_WORKER_THREADS": str(threads), "GATEWAY_LOG_LEVEL": "WARNING",
    })
    return start_process([sys.executable, "-m", "gateway.cli", "worker"], env, s.data_dir)


def whole_path(gw: Gateway, sink: Sink, label: str, n: int, paced: int, rate: float, timeout: float,
               own_process: bool, processes: int = 1) -> list[Result]:
    drain = make_threads(gw, n, f"d{uuid.uuid4().hex[:6]}-")
    saturate = make_threads(gw, n, f"s{uuid.uuid4().hex[:6]}-")
    calm = make_threads(gw, paced, f"p{uuid.uuid4().hex[:6]}-")
    results = []
    workers = []
    if own_process:
        # The worker processes start, and send a few notices, before anything is timed.
        warm = make_threads(gw, 4 * processes, f"w{uuid.uuid4().hex[:6]}-")
        workers = [gateway_worker(gw, sink, gw.settings.worker_threads) for _ in range(processes)]
        service = NoticeService(gw, worker=False).start()
        base = sink.count
        for warm_id, _ in warm:
            post(gw, warm_id)
        sink.wait(base + len(warm), timeout)
        service.stop()
    try:
        # 1. The notice path alone: n messages already posted, then the dispatcher (and in-process workers) start.
        posted: dict[str, float] = {}
        for thread_id, address in drain:
            post(gw, thread_id)
            posted[address] = time.perf_counter()
        base = sink.count
        cpu = CPU()
        start = time.perf_counter()
        service = NoticeService(gw, worker=not own_process).start()
        try:
            sink.wait(base + n, timeout)
            results.append(Result(f"{label} outbox drain", n, max(sink.received[a] for a in posted) - start,
                                  [sink.received[a] - start for a in posted], CPU() - cpu))

            # 2. End to end at saturation: posting and sending at once.
            base = sink.count
            posted = {}
            cpu = CPU()
            start = time.perf_counter()
            for thread_id, address in saturate:
                post(gw, thread_id)
                posted[address] = time.perf_counter()
            sink.wait(base + n, timeout)
            results.append(Result(f"{label} end to end", n, max(sink.received[a] for a in posted) - start,
                                  [sink.received[a] - t for a, t in posted.items()], CPU() - cpu))

            # 3. A normal day: posts at a steady rate well below capacity; the latency a recipient sees.
            base = sink.count
            posted = {}
            cpu = CPU()
            start = time.perf_counter()
            for i, (thread_id, address) in enumerate(calm):
                time.sleep(max(0.0, start + i / rate - time.perf_counter()))
                post(gw, thread_id)
                posted[address] = time.perf_counter()
            sink.wait(base + paced, timeout)
            results.append(Result(f"{label} paced {rate:g}/s", paced, max(sink.received[a] for a in posted) - start,
                                  [sink.received[a] - t for a, t in posted.items()], CPU() - cpu))
            return results
        finally:
            service.stop()
    finally:
        for worker in workers:
            stop_process(worker)


def bare_actor(sink_port: int, broker_url: str, namespace: str) -> tuple[dramatiq.Broker, dramatiq.Actor, LoopThread]:
    """dramatiq on the same broker kind: an actor that only sends one prebuilt message to the same sink."""
    settings = Settings(data_dir=Path("/nonexistent"), broker_url=broker_url, broker_namespace=namespace + "-bare")
    broker = make_broker(settings)
    loop = LoopThread()
    sender = RelayEmailSender(f"smtp://127.0.0.1:{sink_port}")
    rendered = render("new_message", NoticeContext(practice_name="Cabinet du Parc", locale="fr",
                                                   login_url=PUBLIC_URL + "/l/" + "k" * 43), public_url=PUBLIC_URL)
    fixed = build_notice_email(rendered, to="bare@patient.example", sender=f"notifications@{DOMAIN}",
                               reply_to=f"r-x@{DOMAIN}", message_id_domain=DOMAIN, auto_submitted="auto-generated")

    def send_fixed(i: int) -> None:
        loop.run(sender.send(fixed, mail_from=f"notifications@{DOMAIN}", to=f"bare-{namespace}-{i}@patient.example"),
                 timeout=60)

    actor = dramatiq.Actor(send_fixed, broker=broker, actor_name="bench_bare", queue_name=f"{namespace}-bare.q",
                           priority=0, options={"max_retries": 0})
    return broker, actor, loop


def bare_worker_main(sink_port: int, broker_url: str, namespace: str, threads: int) -> None:
    """`--bare-worker`: the bare actor's dramatiq worker in a process of its own, until SIGTERM."""
    configure("WARNING")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    broker, _actor, loop = bare_actor(sink_port, broker_url, namespace)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=250)
    worker.start()
    gc.freeze()  # as `gateway worker` does
    stopping.wait()
    worker.stop(timeout=30_000)
    loop.close()
    broker.close()


def bare_dramatiq(sink: Sink, broker_url: str, namespace: str, threads: int, n: int, timeout: float,
                  own_process: bool, processes: int = 1) -> Result:
    broker, actor, loop = bare_actor(sink.port, broker_url, namespace)
    worker = None
    workers = []
    if own_process:
        argv = [sys.executable, str(Path(__file__).resolve()), "--bare-worker", "--redis", broker_url,
                "--namespace", namespace, "--threads", str(threads), "--sink-port", str(sink.port)]
        workers = [start_process(argv, dict(os.environ), Path.cwd()) for _ in range(processes)]
    else:
        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=250)
        worker.start()
    try:
        # A few messages first: the workers are up (and, in their own processes, have started) before timing.
        base = sink.count
        for k in range(4 * max(1, len(workers))):
            actor.send(-1 - k)
        sink.wait(base + 4 * max(1, len(workers)), timeout)
        base = sink.count
        cpu = CPU()
        start = time.perf_counter()
        enqueued: dict[str, float] = {}
        for i in range(n):
            actor.send(i)
            enqueued[f"bare-{namespace}-{i}@patient.example"] = time.perf_counter()
        sink.wait(base + n, timeout)
        seconds = max(sink.received[a] for a in enqueued) - start
        return Result("bare dramatiq", n, seconds, [sink.received[a] - t for a, t in enqueued.items()], CPU() - cpu)
    finally:
        if worker is not None:
            worker.stop(timeout=30_000)
        for process in workers:
            stop_process(process)
        loop.close()
        broker.close()


def cleanup_redis(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"{namespace}*"):
        client.delete(key)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=400, help="notices at saturation (default 400)")
    parser.add_argument("--paced", type=int, default=120, help="notices at the paced rate (default 120)")
    parser.add_argument("--rate", type=float, default=20.0, help="paced posts per second (default 20)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL; empty to skip")
    parser.add_argument("--database-url", default="", help="default: a SQLite file in a temporary data dir")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--sink-process", action="store_true", help="run the SMTP sink in a process of its own")
    parser.add_argument("--repeat", type=int, default=1, help="runs in a row, then the median ratios (default 1)")
    parser.add_argument("--worker-processes", type=int, default=1,
                        help="redis: worker processes on each side (`gateway worker`, bare), default 1")
    parser.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sink-serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--sink-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_worker:
        bare_worker_main(args.sink_port, args.redis, args.namespace, args.threads)
        return
    if args.sink_serve:
        sink_main(args.sink_port)
        return

    configure("WARNING")
    sink = SinkProcess() if args.sink_process else Sink()
    sink.controller.start()
    ratios: list[dict[str, float]] = []
    try:
        for _ in range(args.repeat):
            rows = measure(args, sink)
            report(args, rows)
            ratios.append({
                f"{label} {kind}": run.rate / bare.rate
                for label, whole, bare in rows
                for kind, run in (("drain/bare", whole[0]), ("end-to-end/bare", whole[1]))
            })
    finally:
        sink.controller.stop()
    if args.repeat > 1:
        print(f"ratios over {args.repeat} runs (median, then each run)")
        for name in ratios[0]:
            values = [r[name] for r in ratios]
            print(f"{name:<32} {statistics.median(values):>10.2f}   " + " ".join(f"{v:.2f}" for v in values))
        print()


def measure(args: argparse.Namespace, sink: Sink) -> list[tuple[str, list[Result], Result]]:
    """One run of both layouts: each side's results, whole path and bare, on fresh gateways."""
    rows: list[tuple[str, list[Result], Result]] = []
    for label, url in (("in-process", ""), ("redis", args.redis)):
        if label == "redis" and not url:
            continue
        namespace = f"gwbench-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
            gw = make_gateway(Path(tmp), sink, url, namespace, args.threads, args.database_url)
            try:
                whole = whole_path(gw, sink, label, args.n, args.paced, args.rate, args.timeout, bool(url),
                                   args.worker_processes)
            finally:
                gw.close()
        bare = bare_dramatiq(sink, url, namespace, args.threads, args.n, args.timeout, bool(url),
                             args.worker_processes)
        if url:
            cleanup_redis(url, namespace)
        rows.append((label, whole, bare))
    return rows


def report(args: argparse.Namespace, rows: list[tuple[str, list[Result], Result]]) -> None:
    print(f"\nnotices: {args.n} per saturated run, {args.paced} paced at {args.rate:g}/s; {args.threads} worker threads;"
          f" redis: {args.worker_processes} worker process(es) a side;"
          f" database: {args.database_url.split(':')[0] if args.database_url else 'sqlite'}")
    print(f"{'run':<32} {'notices/s':>10} {'p50 s':>8} {'p99 s':>8} {'cpu ms/notice':>14}")
    for label, whole, bare in rows:
        for r in (*whole, bare):
            name = r.label if r is not bare else f"{label} bare dramatiq"
            print(f"{name:<32} {r.rate:>10.1f} {r.pct(50):>8.3f} {r.pct(99):>8.3f} {1000 * r.cpu / r.n:>14.2f}")
        drain, end_to_end = whole[0], whole[1]
        print(f"{label + ' ratio drain/bare':<32} {drain.rate / bare.rate:>10.2f}")
        print(f"{label + ' ratio end-to-end/bare':<32} {end_to_end.rate / bare.rate:>10.2f}")
    print()

if __name__ == "__main__":
    main()
