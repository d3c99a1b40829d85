"""An ASGI app served by a real uvicorn on a loopback port, in a thread, for tests that speak HTTP to it.

    with serve(app) as server:          # or the `http_server` factory fixture
        httpx.post(server.url + "/path", ...)
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from tests.support.services import free_port


class HttpServer:
    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int | None = None, **config: Any) -> None:
        self.host = host
        self.port = port or free_port()
        options: dict[str, Any] = {"log_level": "warning", "access_log": False, "lifespan": "off"}
        options.update(config)
        self._server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, **options))
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> HttpServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@contextmanager
def serve(app: Any, **config: Any) -> Iterator[HttpServer]:
    server = HttpServer(app, **config).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_server() -> Iterator[Callable[..., HttpServer]]:
    """A factory: `http_server(app)` starts a server that is stopped at the end of the test."""
    servers: list[HttpServer] = []

    def start(app: Any, **config: Any) -> HttpServer:
        server = HttpServer(app, **config).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
