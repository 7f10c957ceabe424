"""Headless Chromium for the console's tests: Debian's /usr/bin/chromium, driven by
Playwright's async API in the test's own event loop (where txmail runs too). Nothing
downloads a browser: without /usr/bin/chromium these tests skip, saying so."""

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from txmail.core.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium chromium-driver)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium))
        yield launched
        await launched.close()


@pytest.fixture
def console_settings(settings: Settings, tmp_path: Path) -> Settings:
    """No retries: a handler that fails parks its request at once."""
    return settings.model_copy(
        update={
            "database_url": f"sqlite:///{tmp_path / 'txmail.db'}",
            "fallback_retry_schedule": [],
            "shutdown_timeout": timedelta(seconds=2),
            "sweep_interval": timedelta(milliseconds=200),
        }
    )
