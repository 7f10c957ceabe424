"""Settings from TXMAIL_* variables, and durations as people write them."""

import ipaddress
from datetime import timedelta

import pytest

from txmail.core.durations import format_duration, parse_duration
from txmail.core.errors import ConfigError
from txmail.core.settings import load_settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5s", timedelta(milliseconds=1500)),
        (" 5m ", timedelta(minutes=5)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize(
    "text", ["", "10", "m", "10x", "-5m", "ten minutes", "5m!", "99999999999d"]
)
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 90s, 10m, 2h"):
        parse_duration(text)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TXMAIL_AMQP_URL", "TXMAIL_NAMESPACE", "TXMAIL_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert settings.namespace == "txmail"
    assert settings.http_port == 8080
    assert settings.postback_token is None


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXMAIL_POSTBACK_TOKEN", "t")
    monkeypatch.setenv("TXMAIL_ALLOWED_NETWORKS", "10.0.0.0/8, 192.168.1.0/24")
    monkeypatch.setenv("TXMAIL_PUBLISH_TIMEOUT", "2s")
    settings = load_settings()
    assert settings.postback_token is not None
    assert settings.postback_token.get_secret_value() == "t"
    assert settings.allowed_networks == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.0/24"),
    ]
    assert settings.publish_timeout == timedelta(seconds=2)


def test_an_empty_token_means_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXMAIL_POSTBACK_TOKEN", "")
    assert load_settings().postback_token is None


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("TXMAIL_HTTP_PORT", "eighty", "TXMAIL_HTTP_PORT"),
        ("TXMAIL_NAMESPACE", "has space", "TXMAIL_NAMESPACE"),
        ("TXMAIL_ALLOWED_NETWORKS", "10.0.0.0/33", "TXMAIL_ALLOWED_NETWORKS"),
        ("TXMAIL_PUBLISH_TIMEOUT", "5", "TXMAIL_PUBLISH_TIMEOUT"),
        ("TXMAIL_LOG_LEVEL", "loud", "TXMAIL_LOG_LEVEL"),
        # Zero would mean: never confirmed (every request 503), a sweeper spinning on the
        # store, every message late at once, republished at once, or purged at once.
        ("TXMAIL_PUBLISH_TIMEOUT", "0s", "TXMAIL_PUBLISH_TIMEOUT"),
        ("TXMAIL_SWEEP_INTERVAL", "0s", "TXMAIL_SWEEP_INTERVAL"),
        ("TXMAIL_DELIVERY_TIMEOUT", "0ms", "TXMAIL_DELIVERY_TIMEOUT"),
        ("TXMAIL_REPUBLISH_AFTER", "0s", "TXMAIL_REPUBLISH_AFTER"),
        ("TXMAIL_RETENTION", "0d", "TXMAIL_RETENTION"),
        ("TXMAIL_MAX_LATENESS", "0s", "TXMAIL_MAX_LATENESS"),
        # Longer than a day would hold every deadline back for days.
        ("TXMAIL_MAX_LATENESS", "2d", "TXMAIL_MAX_LATENESS"),
        ("TXMAIL_WATERMARK_SKEW", "25h", "TXMAIL_WATERMARK_SKEW"),
        # Zero would close every connection before its request could arrive.
        ("TXMAIL_HTTP_HEADER_TIMEOUT", "0s", "TXMAIL_HTTP_HEADER_TIMEOUT"),
        ("TXMAIL_HTTP_BODY_TIMEOUT", "0s", "TXMAIL_HTTP_BODY_TIMEOUT"),
        ("TXMAIL_HTTP_KEEPALIVE_TIMEOUT", "0s", "TXMAIL_HTTP_KEEPALIVE_TIMEOUT"),
        ("TXMAIL_HTTP_MAX_CONNECTIONS", "0", "TXMAIL_HTTP_MAX_CONNECTIONS"),
        ("TXMAIL_MAX_PUBLISHES_IN_FLIGHT", "0", "TXMAIL_MAX_PUBLISHES_IN_FLIGHT"),
    ],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, complaint: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=complaint):
        load_settings()
