"""Fixtures for the delivery tests: a loopback SMTP sink and a Twilio stand-in."""
from tests.support.smtp_sink import sink_tls, smtp_sink_factory  # noqa: F401 - fixtures
from tests.support.twilio_standin import twilio_standin  # noqa: F401 - fixture
