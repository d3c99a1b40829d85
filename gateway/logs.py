"""Structured logging (structlog, JSON lines on stderr). Log events carry ids, outcomes and reasons only;
`redact()` is the one way an address or number may be mentioned (as a short keyed-hash-free mask)."""
from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "INFO") -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO), format="%(message)s")
    # Libraries that log addresses or headers at debug level stay at WARNING whatever our level is.
    for noisy in ("aiosmtpd", "mail.log", "dkim", "twilio", "twilio.http_client", "dramatiq", "pika", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        # The stream is looked up at each call (not bound once), so a redirected stderr is honoured.
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)


def redact(value: str | None) -> str:
    """`jeanne@example.org` -> `j***@***`, `+33612345678` -> `+33*******78`: enough to tell lines apart, not to identify."""
    if not value:
        return "-"
    if "@" in value:
        return value[:1] + "***@***"
    return value[:3] + "*" * max(len(value) - 5, 0) + value[-2:] if len(value) > 5 else "***"


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
