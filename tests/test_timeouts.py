"""The [tracking] section of the rules file; the rest of the file is not ours to judge."""

from datetime import timedelta
from pathlib import Path

import pytest

from txmail.core.errors import ConfigError
from txmail.workers.timeouts import load_timeouts

DEFAULT = timedelta(minutes=10)


def test_without_a_rules_file_the_default_applies() -> None:
    assert load_timeouts(DEFAULT, None).for_campaign("any") == DEFAULT


def test_tracking_section_overrides_per_campaign_and_other_sections_are_ignored(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        """
[tracking]
delivery_timeout = "15m"
[tracking.campaigns."417220e4-5a2a-b634-7f7d-9ec891532368"]
delivery_timeout = "2m"

[handlers.ops-hook]
type = "webhook"
url = "https://ops.example.com/email-fallback"

[[rules]]
on = ["bounced"]
handlers = ["ops-hook"]
"""
    )
    timeouts = load_timeouts(DEFAULT, rules)
    assert timeouts.for_campaign(None) == timedelta(minutes=15)
    assert timeouts.for_campaign("other") == timedelta(minutes=15)
    assert timeouts.for_campaign("417220e4-5a2a-b634-7f7d-9ec891532368") == timedelta(minutes=2)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[tracking]\ndelivery_timeout = "soon"', "tracking.delivery_timeout"),
        ('[tracking.campaigns.c1]\ndelivery_timout = "2m"', "tracking.campaigns.c1"),
        ("[tracking\n", "not valid TOML"),
        # Zero would time out every message the moment it is sent.
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
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_timeouts(DEFAULT, rules)
    assert str(rules) in str(error.value)
    assert problem in str(error.value)
    assert "Value error" not in str(error.value)


def test_a_missing_rules_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the rules file"):
        load_timeouts(DEFAULT, tmp_path / "missing.toml")
