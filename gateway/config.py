"""Settings, read once from GATEWAY_* environment variables (and a `.env` file) into a frozen object.

No other module reads `os.environ`. Secrets are `SecretStr`, so they never print in a repr or a log.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore", frozen=True)

    data_dir: Path = Path("./gateway-data")
    database_url: str = ""  # empty: SQLite file in the data dir
    broker_url: str = ""  # empty: dramatiq with an in-process worker
    master_key: SecretStr | None = None

    mail_domain: str = "localhost"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_protocol: Literal["smtp", "lmtp"] = "smtp"
    smtp_tls_cert: Path | None = None
    smtp_tls_key: Path | None = None
    max_message_bytes: int = 25 * 1024 * 1024
    sender_rate_limit: int = 60  # messages per sender address per hour; 0 turns it off

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    public_url: str = ""  # base of login links; empty: http://HTTP_HOST:HTTP_PORT

    outbound_smtp_url: SecretStr | None = None
    notice_from: str = ""  # empty: notifications@MAIL_DOMAIN
    notice_dkim_selector: str = ""
    notice_dkim_key_file: Path | None = None
    notice_coalesce_minutes: int = 60
    login_link_ttl_hours: int = 72
    # Outbox and workers: a claimed row not finished within the lease is handed out again (a killed worker).
    notice_lease_seconds: float = 300.0
    notice_poll_seconds: float = 0.5
    notice_retry_base_seconds: float = 30.0
    notice_retry_max_seconds: float = 3600.0
    notice_max_attempts: int = 10
    worker_threads: int = 8
    broker_namespace: str = "gateway"  # prefixes the broker's queue names, so installations can share a broker
    emergency_numbers: str = "15, 112, 114"

    sender_auth: Literal["verify", "trust-header", "none"] = "verify"
    trusted_authserv_id: str = ""
    trusted_arc_signers: str = ""  # comma-separated forwarder domains whose ARC seal is trusted
    dns_resolver: str = ""  # host:port; empty: the system resolver
    dns_timeout: float = 5.0  # seconds per DNS lookup of the sender checks

    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr | None = None
    twilio_auth_token_secondary: SecretStr | None = None
    twilio_api_base: str = "https://api.twilio.com"

    default_locale: Literal["fr", "en"] = "fr"
    portal_second_factor: Literal["sms", "email", "off"] = "off"
    portal_session_idle_minutes: int = 30
    portal_session_max_hours: int = 12
    log_level: str = "INFO"

    @field_validator("database_url", "broker_url", "public_url", mode="after")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'gateway.db').resolve()}"

    @cached_property
    def key_file(self) -> Path:
        return self.data_dir / "master.key"

    @cached_property
    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    @cached_property
    def resolved_notice_from(self) -> str:
        return self.notice_from or f"notifications@{self.mail_domain}"

    @cached_property
    def arc_signers(self) -> tuple[str, ...]:
        return tuple(d.strip().lower() for d in self.trusted_arc_signers.split(",") if d.strip())


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; callers pass the result down instead of reading it again."""
    return Settings(**overrides)  # type: ignore[arg-type]


__all__ = ["Settings", "load_settings", "Field"]
