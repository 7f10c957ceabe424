"""Settings from the environment, every name prefixed ``TXMAIL_``; the README lists them all."""

import ipaddress
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from txmail.core.durations import Duration, parse_duration
from txmail.core.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TXMAIL_", extra="ignore")

    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    # Prefix of every exchange and queue name, so several installations (or test runs)
    # can share one broker.
    namespace: str = "txmail"
    http_host: str = "0.0.0.0"  # noqa: S104 -- the ingress is meant to be reached from Braze.
    http_port: int = Field(default=8080, ge=0, le=65535)
    postback_token: SecretStr | None = None
    # Internal apps registering sends (POST /v1/sends) use their own token; it also
    # opens the message API.
    api_token: SecretStr | None = None
    # A token that opens the message API only (dashboards, people on call).
    api_read_token: SecretStr | None = None
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_events_per_request: int = Field(default=1000, ge=1)
    # Empty means every source may post; Braze documents no source IPs to put here.
    allowed_networks: Annotated[list[IPNetwork], NoDecode] = Field(default_factory=list)
    publish_timeout: Duration = timedelta(seconds=5)
    # Events the ingress may have waiting for RabbitMQ's confirms before it answers 503:
    # the rate to sustain times the confirm latency to accept (see the README).
    max_publishes_in_flight: int = Field(default=1000, ge=1)
    # Limits of every HTTP server (ingress and API), so that slow or idle clients
    # cannot hold connections: see txmail.core.http.
    http_header_timeout: Duration = timedelta(seconds=10)
    http_body_timeout: Duration = timedelta(seconds=30)
    http_keepalive_timeout: Duration = timedelta(seconds=75)
    http_max_connections: int = Field(default=1000, ge=1)
    # How long SIGTERM waits for requests in flight before closing.
    shutdown_timeout: Duration = timedelta(seconds=10)
    log_level: str = "info"
    # The rules file (TOML): delivery timeouts (read by the workers), fallback handlers
    # and the rules that pick them (read by the executor). Every process checks it.
    rules: Path | None = None

    # --- workers -----------------------------------------------------------------
    # sqlite:///path (one node, the default) or postgresql://... (many workers). The
    # fallback executor keeps its call ledger there too.
    database_url: str = "sqlite:///txmail.db"
    # How long after `sent` a message may take to be delivered; the rules file's
    # [tracking] section can override it per campaign.
    delivery_timeout: Duration = timedelta(minutes=10)
    # How often each worker looks for due deadlines and unpublished decisions.
    sweep_interval: Duration = timedelta(seconds=1)
    # The watermark (README "Deadlines on Braze's clock"): how far out of order Braze's
    # postbacks may come, and the most a deadline waits when they stop altogether.
    watermark_skew: Duration = timedelta(seconds=30)
    max_lateness: Duration = timedelta(minutes=2)
    # How long a decided fallback may stay unconfirmed before a sweeper publishes it again.
    republish_after: Duration = timedelta(seconds=10)
    # Messages older than this are purged with their events.
    retention: Duration = timedelta(days=30)
    # Deliveries applied in one store transaction: up to this many, or after this wait.
    # A batch's round trips cost the same for one delivery as for two hundred: at a
    # moderate rate, a 50 ms wait gathers several and costs a third less CPU per
    # postback than 5 ms did (bench/RESULTS.md), for a few tens of ms of latency.
    batch_size: int = Field(default=200, ge=1, le=10_000)
    batch_wait: Duration = timedelta(milliseconds=50)
    api_port: int = Field(default=8081, ge=0, le=65535)
    # Unset: all interfaces when a token guards the API, else 127.0.0.1 (see workers/api.py).
    api_host: str | None = None
    # /healthz, /readyz and /metrics of `txmail worker` and `txmail fallback` (0: any free port).
    metrics_port: int = Field(default=9464, ge=0, le=65535)

    # --- fallback executor (see the README's "Fallbacks" section) ---
    # How long a fallback waits before each retry of a transient failure; after the
    # last one it is parked. Comma-separated, e.g. "10s,1m,5m,30m,2h".
    fallback_retry_schedule: Annotated[list[Duration], NoDecode] = Field(
        default_factory=lambda: [parse_duration(d) for d in ("10s", "1m", "5m", "30m", "2h")]
    )
    # Fallback requests one executor runs at the same time.
    fallback_prefetch: int = Field(default=16, ge=1, le=1000)
    # A handler's circuit opens after this many transient failures in a row ...
    fallback_circuit_failures: int = Field(default=5, ge=1)
    # ... and stays open this long before one probe call may close it again.
    fallback_circuit_open_for: Duration = timedelta(seconds=30)

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", value):
            raise ValueError("use letters, digits, '.', '_' and '-' (at most 100 characters)")
        return value

    @field_validator("rules", "api_host", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("postback_token", "api_token", "api_read_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        # `TXMAIL_POSTBACK_TOKEN=` in a compose file means "not set", not "the empty token".
        return None if value == "" else value

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("fallback_retry_schedule", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("fallback_retry_schedule")
    @classmethod
    def _positive_delays(cls, value: list[timedelta]) -> list[timedelta]:
        if any(delay <= timedelta(0) for delay in value):
            raise ValueError("every delay must be longer than 0s")
        return value

    @field_validator(
        "publish_timeout",
        "http_header_timeout",
        "http_body_timeout",
        "http_keepalive_timeout",
        "sweep_interval",
        "delivery_timeout",
        "republish_after",
        "retention",
        "max_lateness",
    )
    @classmethod
    def _longer_than_zero(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value

    @field_validator("watermark_skew", "max_lateness")
    @classmethod
    def _at_most_a_day(cls, value: timedelta) -> timedelta:
        # Longer would hold every deadline back for days: a typo, not a choice.
        if value > timedelta(days=1):
            raise ValueError("must be at most 1d")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"debug", "info", "warning", "error"}:
            raise ValueError("use one of debug, info, warning, error")
        return level


def load_settings() -> Settings:
    """Read the environment; raise ConfigError naming each bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        problems = [
            f"TXMAIL_{str(e['loc'][0]).upper()}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        ]
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
