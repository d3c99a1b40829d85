"""Prometheus metrics. Labels are closed sets (channel, outcome, state, kind): never personal data."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

MESSAGES_IN = Counter(
    "gateway_messages_in_total", "Inbound messages by channel and outcome", ["channel", "outcome"]
)
NOTICES = Counter("gateway_notices_total", "Notices by channel and resulting state", ["channel", "state"])
INTAKE_SECONDS = Histogram(
    "gateway_intake_seconds", "From end of DATA / webhook receipt to commit", ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
NOTICE_SECONDS = Histogram(
    "gateway_notice_delivery_seconds", "From outbox row creation to provider acceptance", ["channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
HTTP_REQUESTS = Counter("gateway_http_requests_total", "HTTP requests by route group and status class", ["group", "status"])
