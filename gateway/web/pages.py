"""Render portal pages from `templates/portal/` (jinja2, autoescape, StrictUndefined) in French or English.

Templates are written in English and call `_("…")`; `templates/portal/locale/fr.json` maps each text to French.
Page titles are fixed texts: they never carry a name, a subject or any other personal data.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.app import Gateway
from gateway.errors import Conflict, GatewayError, NotFound
from gateway.resources import templates_dir
from gateway.web.security import CSRF_FIELD, CsrfRejected, csrf_token, finish

LOCALES = ("fr", "en")


@functools.cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(templates_dir() / "portal"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["size"] = _size
    return env


@functools.cache
def catalog(locale: str) -> dict[str, str]:
    if locale == "en":
        return {}
    path = templates_dir() / "portal" / "locale" / f"{locale}.json"
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def translator(locale: str) -> Callable[[str], str]:
    texts = catalog(locale)
    return lambda text: texts.get(text, text)


def _when(value: str | datetime | None) -> str:
    if value is None:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _size(value: int) -> str:
    if value < 1024:
        return f"{value} B"
    if value < 1024 * 1024:
        return f"{value / 1024:.0f} KB"
    return f"{value / (1024 * 1024):.1f} MB"


def pick_locale(request: Request, gw: Gateway, preferred: str | None = None) -> str:
    """The person's own locale when known, else the browser's first supported language, else the default."""
    if preferred in LOCALES:
        return preferred  # type: ignore[return-value]
    for part in request.headers.get("accept-language", "").split(","):
        lang = part.split(";")[0].strip().lower()[:2]
        if lang in LOCALES:
            return lang
    return gw.settings.default_locale


def render(
    request: Request,
    gw: Gateway,
    template: str,
    *,
    locale: str,
    status: int = 200,
    csrf_binding: str | None = None,
    **context: Any,
) -> HTMLResponse:
    values: dict[str, Any] = {
        "_": translator(locale),
        "locale": locale,
        "csrf_field": CSRF_FIELD,
        "csrf": csrf_token(request, gw, binding=csrf_binding),
        "emergency_numbers": gw.settings.emergency_numbers,
        "viewer_kind": None,
    }
    values.update(context)
    html = _environment().get_template(template).render(values)
    return finish(request, HTMLResponse(html, status_code=status), gw.settings)  # type: ignore[return-value]


# --- error pages -----------------------------------------------------------------------------------

PROBLEMS = {
    400: "invalid",
    401: "signed_out",
    403: "forbidden",
    404: "not_found",
    405: "not_found",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
}


def _portal_path(request: Request) -> bool:
    return request.url.path.startswith(("/portal/", "/l/"))


def error_page(request: Request, status: int) -> HTMLResponse:
    gw: Gateway = request.app.state.gateway
    problem = PROBLEMS.get(status, "server")
    return render(request, gw, "error.html", locale=pick_locale(request, gw), status=status, problem=problem)


def install_error_pages(app: FastAPI) -> None:
    """Portal paths answer errors with a page, API paths with JSON {"code", "message"}; other paths keep
    FastAPI's answers (the webhooks own theirs)."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith("/api/"):
            from gateway.web.api import http_problem

            return http_problem(exc)
        if _portal_path(request):
            return error_page(request, exc.status_code)
        return await http_exception_handler(request, exc)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if request.url.path.startswith("/api/"):
            from gateway.web.api import validation_problem

            return validation_problem(exc)
        if _portal_path(request):
            return error_page(request, 422)
        return await request_validation_exception_handler(request, exc)

    async def csrf_error(request: Request, exc: Exception) -> Response:
        return error_page(request, 403)

    async def gateway_error(request: Request, exc: Exception) -> Response:
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 422
        if request.url.path.startswith("/api/"):
            from gateway.web.api import gateway_problem

            return gateway_problem(exc)
        return error_page(request, status)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(CsrfRejected, csrf_error)
    app.add_exception_handler(GatewayError, gateway_error)
