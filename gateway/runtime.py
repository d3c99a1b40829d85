"""`gateway run`: SMTP, HTTP and the outbound workers in one process; SIGTERM drains them all and exits 0.

Start order: workers (so a notice written by the first request finds a dispatcher), SMTP, HTTP.
Stop order: stop accepting HTTP and SMTP and drain both (an SMTP transaction that got its 250 has
committed its outbox rows), then stop dispatching, then let the actor runs in progress finish.
"""
from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

    from gateway.app import Gateway

# Only `register_cli` runs on every `gateway` command: the web, worker and logging stacks are imported by
# `run` alone, so this module's imports stay light.

DRAIN_SECONDS = 30.0


def _log() -> Any:
    from gateway.logs import get_logger

    return get_logger("gateway.runtime")


def _http_server(config: uvicorn.Config) -> uvicorn.Server:
    import uvicorn

    class HttpServer(uvicorn.Server):
        """uvicorn without its own signal handling: a signal stops every part of the runtime, not only HTTP
        (and uvicorn would re-raise it once done, turning a clean drain into a death by SIGTERM)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return HttpServer(config)


def _smtp_server(gw: Gateway) -> Any:
    try:
        from gateway.ingress.smtp import SmtpServer
    except ImportError as exc:
        _log().warning("smtp.unavailable", error=type(exc).__name__)
        return None
    return SmtpServer(gw)


class Runtime:
    def __init__(self, gw: Gateway, *, worker: bool = True) -> None:
        import uvicorn

        from gateway.web.app import create_app
        from gateway.workers.broker import EMBEDDED, broker_kind
        from gateway.workers.service import NoticeService

        settings = gw.settings
        self.gw = gw
        embedded = broker_kind(settings) == EMBEDDED
        # The embedded broker lives in this process, so its worker must too, whatever --no-worker says.
        self.notices = NoticeService(gw, worker=worker or embedded)
        self.smtp = _smtp_server(gw)
        app = create_app(gw, broker_check=self.notices.health())
        # No access log: login links carry their token in the path.
        config = uvicorn.Config(
            app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False,
            lifespan="auto", timeout_graceful_shutdown=DRAIN_SECONDS,
        )
        self.http = _http_server(config)
        self._http_thread = threading.Thread(target=self.http.run, name="gateway-http", daemon=True)

    def start(self) -> Runtime:
        if self.gw.settings.sender_auth == "none":
            _log().warning("sender_auth.none", detail="inbound senders are not authenticated: development only")
        self.gw.start_checkpoints()
        self.notices.start()
        if self.smtp is not None:
            self.smtp.start()
        self._http_thread.start()
        while not self.http.started:
            if not self._http_thread.is_alive():
                self.stop()
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        _log().info(
            "runtime.started", http_port=self.gw.settings.http_port,
            smtp_port=self.gw.settings.smtp_port if self.smtp is not None else None, broker=self.notices.kind,
            worker=self.notices.worker is not None,
        )
        return self

    def stop(self) -> None:
        started = time.monotonic()
        self.http.should_exit = True
        smtp_drained: list[bool] = []
        smtp_thread = None
        if self.smtp is not None:
            smtp_thread = threading.Thread(target=lambda: smtp_drained.append(self.smtp.stop(DRAIN_SECONDS)), daemon=True)
            smtp_thread.start()
        self._http_thread.join(DRAIN_SECONDS + 5)
        if smtp_thread is not None:
            smtp_thread.join(DRAIN_SECONDS + 5)
        self.notices.stop(timeout=DRAIN_SECONDS)
        _log().info(
            "runtime.stopped", seconds=round(time.monotonic() - started, 3),
            smtp_drained=smtp_drained[0] if smtp_drained else None,
        )


def cmd_run(args: argparse.Namespace) -> None:
    from gateway.app import Gateway
    from gateway.config import load_settings
    from gateway.logs import configure
    from gateway.workers.service import stop_signal

    settings = load_settings()
    configure(settings.log_level)
    gw = Gateway(settings)
    stopping = stop_signal()
    runtime = Runtime(gw, worker=not args.no_worker).start()
    stopping.wait()
    _log().info("runtime.stopping")
    runtime.stop()
    gw.close()


def register_cli(sub: Any, leaf: Any, group: Any) -> None:
    p = leaf(sub, "run", cmd_run, "run SMTP, HTTP and (unless --no-worker with an external broker) the notice worker")
    p.add_argument("--no-worker", action="store_true", help="with GATEWAY_BROKER_URL set: leave notices to `gateway worker`")
