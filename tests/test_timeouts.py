"""Delivery timeouts: the environment's default and the rules file's [tracking] over it;
each a duration, or "auto" (learned, within bounds).

`txmail check-config` and the workers read [tracking] through the one schema
(txmail.core.rules_file), so they agree on every value: the workers start on exactly
the files check-config passes, and read the durations it read.
"""

from datetime import timedelta
from pathlib import Path

import pytest

from txmail.cli import main
from txmail.core.command import Configuration
from txmail.core.errors import ConfigError
from txmail.core.health_settings import AutoBounds
from txmail.core.rules_file import read_rules_file
from txmail.core.settings import Settings
from txmail.workers.health.monitor import health_rules
from txmail.workers.timeouts import DeliveryTimeouts, delivery_timeouts

DEFAULT = timedelta(minutes=10)
CAMPAIGN = "417220e4-5a2a-b634-7f7d-9ec891532368"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def test_without_a_rules_file_the_default_applies() -> None:
    timeouts = delivery_timeouts(Configuration(Settings(delivery_timeout=DEFAULT), None))
    assert timeouts == DeliveryTimeouts(DEFAULT)


# Each [tracking], and the timeouts it gives the workers (None: it is refused).
TRACKING: list[tuple[str, DeliveryTimeouts | None]] = [
    ("", DeliveryTimeouts(DEFAULT)),
    ("[tracking]\n", DeliveryTimeouts(DEFAULT)),
    ('[tracking]\ndelivery_timeout = "15m"\n', DeliveryTimeouts(timedelta(minutes=15))),
    ('[tracking]\ndelivery_timeout = "1h30m"\n', DeliveryTimeouts(timedelta(minutes=90))),
    ('[tracking]\ndelivery_timeout = "250ms"\n', DeliveryTimeouts(timedelta(milliseconds=250))),
    (
        f'[tracking]\ndelivery_timeout = "15m"\n[tracking.campaigns."{CAMPAIGN}"]\n'
        'delivery_timeout = "2m"\n',
        DeliveryTimeouts(timedelta(minutes=15), {CAMPAIGN: timedelta(minutes=2)}),
    ),
    (
        '[tracking.campaigns.c1]\ndelivery_timeout = "2h"\n',
        DeliveryTimeouts(DEFAULT, {"c1": timedelta(hours=2)}),
    ),
    # Learned: the default applies (within the bounds) until enough sends were seen.
    (
        '[tracking]\ndelivery_timeout = "auto"\n',
        DeliveryTimeouts(DEFAULT, auto={None: AutoBounds()}),
    ),
    (
        '[tracking]\ndelivery_timeout = "auto"\nmin_delivery_timeout = "30s"\n'
        'max_delivery_timeout = "5m"\n',
        DeliveryTimeouts(
            DEFAULT,
            auto={None: AutoBounds(min=timedelta(seconds=30), max=timedelta(minutes=5))},
        ),
    ),
    (
        '[tracking]\ndelivery_timeout = "15m"\n[tracking.campaigns.c1]\ndelivery_timeout = "auto"\n'
        'max_delivery_timeout = "2h"\n',
        DeliveryTimeouts(timedelta(minutes=15), auto={"c1": AutoBounds(max=timedelta(hours=2))}),
    ),
    ('[tracking]\ndelivery_timeout = "Auto"\n', None),
    ('[tracking]\ndelivery_timeout = "auto"\nmin_delivery_timeout = "2h"\n', None),  # > max
    ('[tracking]\ndelivery_timeout = "auto"\nmax_delivery_timeout = 600\n', None),
    ('[tracking]\ndelivery_timeout = "auto"\nmin_delivery_timeout = "0s"\n', None),
    ('[tracking]\ndelivery_timeout = "10m"\nmax_delivery_timeout = "2h"\n', None),
    ('[tracking]\nmin_delivery_timeout = "1m"\n', None),
    ('[tracking.campaigns.c1]\nmin_delivery_timeout = "1m"\n', None),
    # A bare number would be seconds to one reader and a slip to another: refused.
    ("[tracking]\ndelivery_timeout = 600\n", None),
    ("[tracking]\ndelivery_timeout = 2.5\n", None),
    ("[tracking.campaigns.c1]\ndelivery_timeout = 600\n", None),
    ("[tracking]\ndelivery_timeout = true\n", None),
    ('[tracking]\ndelivery_timeout = "soon"\n', None),
    ('[tracking]\ndelivery_timeout = "10 minutes"\n', None),
    # Zero would time out every message the moment it is sent.
    ('[tracking]\ndelivery_timeout = "0s"\n', None),
    ('[tracking.campaigns.c1]\ndelivery_timeout = "0ms"\n', None),
    ("[tracking.campaigns.c1]\n", None),
    ('[tracking]\ndelivery_timout = "15m"\n', None),
    ('[tracking.campaigns.c1]\ndelivery_timeout = "2m"\nsla = "1m"\n', None),
    ('tracking = "15m"\n', None),
    ('[tracking]\ncampaigns = "c1"\n', None),
]


@pytest.mark.parametrize(("text", "expected"), TRACKING)
def test_check_config_and_the_workers_agree_on_every_tracking_value(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    expected: DeliveryTimeouts | None,
) -> None:
    path = write(tmp_path, text)
    passed = main(["check-config", str(path)]) == 0
    capsys.readouterr()
    try:
        # What `txmail worker` reads at start (txmail.cli reads the file the same way).
        settings = Settings(rules=path, delivery_timeout=DEFAULT)
        workers_read: DeliveryTimeouts | None = delivery_timeouts(
            Configuration(settings, read_rules_file(path))
        )
    except ConfigError:
        workers_read = None
    assert passed == (workers_read is not None)
    assert workers_read == expected


def test_other_sections_do_not_change_the_timeouts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[tracking]\ndelivery_timeout = "15m"\n'
        '[handlers.ops-hook]\ntype = "webhook"\nurl = "https://ops.example.com/x"\n'
        'secret_env = "TXMAIL_TEST_UNSET"\n'
        '[[rules]]\non = ["bounced"]\nhandlers = ["ops-hook"]\n',
    )
    config = Configuration(Settings(rules=path), read_rules_file(path))
    assert delivery_timeouts(config) == DeliveryTimeouts(timedelta(minutes=15))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[tracking]\ndelivery_timeout = "soon"', "tracking.delivery_timeout: 'soon'"),
        ('[tracking.campaigns.c1]\ndelivery_timout = "2m"', "tracking.campaigns.c1"),
        ("[tracking\n", "not valid TOML"),
        (
            '[tracking]\ndelivery_timeout = "0s"',
            "tracking.delivery_timeout: must be longer than 0s",
        ),
        (
            '[tracking.campaigns.c1]\ndelivery_timeout = "0ms"',
            "tracking.campaigns.c1.delivery_timeout: must be longer than 0s",
        ),
    ],
)
def test_a_bad_tracking_section_names_the_file_and_the_field(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        read_rules_file(path)
    assert str(path) in str(error.value)
    assert problem in str(error.value)
    assert "Value error" not in str(error.value)


def test_a_missing_rules_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        read_rules_file(tmp_path / "missing.toml")


def test_auto_timeouts_are_read_with_their_bounds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[tracking]\ndelivery_timeout = "auto"\nmax_delivery_timeout = "20m"\n'
        '[tracking.campaigns.f]\ndelivery_timeout = "2m"\n'
        '[tracking.campaigns.a]\ndelivery_timeout = "auto"\n'
        'min_delivery_timeout = "30s"\nmax_delivery_timeout = "5m"\n'
        "[health]\nmin_sends = 50\n",
    )
    config = Configuration(Settings(rules=path, delivery_timeout=DEFAULT), read_rules_file(path))
    timeouts = delivery_timeouts(config)
    assert timeouts.for_campaign("f") == timedelta(minutes=2)
    assert timeouts.auto_bounds("f") is None
    assert timeouts.for_campaign("a") == timedelta(minutes=5)  # the default, within 30s..5m
    assert timeouts.for_campaign("other") == timedelta(minutes=10)  # within 1m..20m
    timeouts.learned.replace({"a": timedelta(minutes=3)})
    assert timeouts.for_campaign("a") == timedelta(minutes=3)
    assert health_rules(config).min_sends == 50
