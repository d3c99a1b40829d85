"""The ASGI application: one FastAPI app; each area mounts its router here."""
from __future__ import annotations

import gc
import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from gateway.app import Gateway

# Areas that contribute routes, in the order they are mounted. Each module exposes `router`
# (a fastapi.APIRouter) and may expose `setup(app, gateway)`.
ROUTERS = ("gateway.ingress.sms", "gateway.web.login", "gateway.web.portal", "gateway.web.practitioner", "gateway.web.api")


@asynccontextmanager
async def _serving(app: FastAPI) -> AsyncIterator[None]:
    """While the server runs, what start-up built (modules, routes, metadata, caches: most of the heap, and
    alive as long as the process) is left out of the collector's full passes. Each of those walked the whole
    heap, about 90 ms in which every request in flight stood still: most of the webhooks' p99 latency."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def create_app(gw: Gateway, *, broker_check: Any = None) -> FastAPI:
    app = FastAPI(title="Secure messaging gateway", version="1", docs_url=None, redoc_url=None, lifespan=_serving)
    app.state.gateway = gw
    app.state.broker_check = broker_check

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with gw.readers() as s:
                s.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - health reports any failure as a state, not a crash
            checks["database"] = f"error: {type(exc).__name__}"
        if app.state.broker_check is not None:
            try:
                app.state.broker_check()
                checks["broker"] = "ok"
            except Exception as exc:  # noqa: BLE001
                checks["broker"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "degraded", **checks}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for name in ROUTERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that area is not built in this version
            raise
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(app, gw)
        app.include_router(module.router)
    return app


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]
