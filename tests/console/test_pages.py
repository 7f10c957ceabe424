"""The console in headless Chromium, over real postbacks through the real ingress, a
real worker and store, the real executor and RabbitMQ. These tests also take the
screenshots the README shows: into docs/console-*.png with TXMAIL_UPDATE_SCREENSHOTS=1."""

import os
import re
from pathlib import Path

from playwright.async_api import Browser, Page, expect
from pydantic import SecretStr

from tests.console.deployment import deployed
from tests.support.waiting import wait_until
from txmail.core.settings import Settings

DOCS = Path(__file__).parents[2] / "docs"
TOKEN, READ_TOKEN = "console-s3cret", "console-read"


async def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """Into the test's tmp dir, so a run leaves the working tree as it was; into docs/
    (the README's pictures) only when TXMAIL_UPDATE_SCREENSHOTS=1."""
    folder = DOCS if os.environ.get("TXMAIL_UPDATE_SCREENSHOTS") == "1" else tmp_path
    await page.screenshot(path=folder / f"console-{name}.png", full_page=True)


async def fits_a_phone(page: Page) -> None:
    await page.set_viewport_size({"width": 390, "height": 844})
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, "the page scrolls sideways at a phone's width"
    await page.set_viewport_size({"width": 1200, "height": 900})


async def sign_in(page: Page, url: str, token: str) -> None:
    await page.goto(url)
    await expect(page).to_have_url(re.compile(r"/sign-in"))
    await page.get_by_label(re.compile("API token")).fill(token)
    await page.keyboard.press("Enter")


async def test_a_message_found_by_its_external_send_id_shows_its_timeline(
    console_settings: Settings, tmp_path: Path, browser: Browser
) -> None:
    async with deployed(console_settings, tmp_path) as txmail:
        await txmail.send("order-1001", "sent", "processed", "delivered")
        await txmail.message("order-1001", "delivered")
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        await page.goto(txmail.console)
        # No token: the console says so on every page.
        await expect(page.get_by_role("note")).to_contain_text("No token is set")
        await page.get_by_role("link", name="Find a message").click()
        await page.get_by_label("External send id or dispatch id").fill("order-1001")
        await page.keyboard.press("Enter")

        await expect(page.get_by_role("heading", level=2).first).to_have_text("✓ delivered")
        facts = page.locator(".facts")
        await expect(facts.first).to_contain_text("a***@example.com, +1500***0006")
        assert "ada@example.com" not in await page.content()
        await expect(facts.nth(1)).to_contain_text("first_name")
        rows = page.locator("table.timeline tbody tr")
        await expect(rows).to_have_count(4)
        what = await rows.locator("td:nth-child(2)").all_inner_texts()
        assert [w.lower() for w in what] == [
            "registered registered",
            "postback sent",
            "postback processed",
            "postback delivered",
        ]
        # Braze's own time next to txmail's arrival, and the gap from the step before.
        processed = await rows.nth(2).locator("td").all_inner_texts()
        assert processed[0] == "+2 s"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", processed[2])
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", processed[3])
        await fits_a_phone(page)
        await screenshot(page, "message", tmp_path)


async def test_a_bounce_appears_under_recent_failures_and_links_to_its_timeline(
    console_settings: Settings, tmp_path: Path, browser: Browser
) -> None:
    async with deployed(console_settings, tmp_path) as txmail:
        await txmail.send("order-2001", "sent", "delivered", campaign="welcome")
        await txmail.send(
            "order-2002", "sent", "bounced", campaign="receipts", reason="550 5.1.1 no such user"
        )
        await txmail.send(
            "order-2003", "sent", "aborted", campaign="welcome", reason="User not emailable"
        )
        await txmail.message("order-2002", "bounced")
        await txmail.message("order-2003", "aborted")
        await wait_until(lambda: len(txmail.receiver.webhook.accepted) == 2, what="fallbacks")
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        await page.goto(f"{txmail.console}/failures")
        rows = page.locator("main table tbody tr")
        await expect(rows).to_have_count(2)
        await expect(rows.first).to_contain_text("order-2003")
        await expect(rows.first).to_contain_text("User not emailable")
        await expect(rows.nth(1)).to_contain_text("550 5.1.1 no such user")
        await screenshot(page, "failures", tmp_path)

        await page.get_by_label("Campaign").fill("receipts")
        await page.get_by_label("Trigger").select_option("bounced")
        await page.get_by_role("button", name="Filter").click()
        await expect(rows).to_have_count(1)
        await page.get_by_role("link", name="order-2002").click()
        await expect(page.get_by_role("heading", level=2).first).to_have_text("✗ bounced")
        timeline = page.locator("table.timeline")
        await expect(timeline).to_contain_text("fallback decided: bounced")
        await expect(timeline).to_contain_text("ops-hook: succeeded")


async def test_a_parked_fallback_is_replayed_from_the_page_and_succeeds(
    console_settings: Settings, tmp_path: Path, browser: Browser
) -> None:
    settings = console_settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    async with deployed(settings, tmp_path) as txmail:
        txmail.receiver.webhook.default = 400  # refused for good: parked
        await txmail.send("order-3001", "sent", "bounced", reason="550 mailbox full")
        await txmail.send("order-3002", "sent", "delivered")
        await wait_until(lambda: len(txmail.receiver.webhook.calls) == 1, what="the call")
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        await sign_in(page, f"{txmail.console}/parked", TOKEN)
        await expect(page).to_have_url(re.compile(r"/parked$"))
        row = page.locator("main table tbody tr")
        for _ in range(50):  # parked once the executor's publish is confirmed
            if await row.count():
                break
            await page.reload()
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text("order-3001")
        await expect(row).to_contain_text("answered 400")
        await screenshot(page, "parked", tmp_path)

        txmail.receiver.webhook.default = 200  # the cause is fixed
        await page.get_by_role("button", name="Replay order-3001").focus()
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("status")).to_contain_text("Replayed 1")
        await expect(row).to_have_count(0)
        await wait_until(lambda: len(txmail.receiver.webhook.accepted) == 1, what="replay")

        await page.goto(f"{txmail.console}/messages?id=order-3001")
        timeline = page.locator("table.timeline")
        await expect(timeline).to_contain_text("ops-hook: parked")
        await expect(timeline).to_contain_text("ops-hook: succeeded")

        await page.goto(txmail.console)
        outcomes = page.get_by_role("region", name="Messages by outcome · Last hour")
        await expect(outcomes).to_contain_text("bounced")
        await expect(outcomes).to_contain_text("delivered")
        attempts = page.get_by_role("region", name=re.compile("Fallback attempts"))
        await expect(attempts.get_by_role("row", name=re.compile("ops-hook"))).to_contain_text(
            "parked 1, succeeded 1"
        )
        await expect(page.get_by_role("region", name="Parked fallbacks")).to_contain_text("0")
        await expect(page.locator("svg.chart path.line-p50")).to_have_count(1)
        await fits_a_phone(page)
        await screenshot(page, "now", tmp_path)


async def test_signing_in_and_out_and_nothing_but_the_sign_in_page_without_it(
    console_settings: Settings, tmp_path: Path, browser: Browser
) -> None:
    settings = console_settings.model_copy(
        update={"api_token": SecretStr(TOKEN), "api_read_token": SecretStr(READ_TOKEN)}
    )
    async with deployed(settings, tmp_path) as txmail:
        await txmail.send("order-4001", "sent", "bounced", reason="550 gone")
        await txmail.message("order-4001", "bounced")
        context = await browser.new_context()
        page = await context.new_page()
        for path in ("/", "/messages?id=order-4001", "/failures", "/parked", "/nowhere"):
            await page.goto(f"{txmail.console}{path}")
            await expect(page).to_have_url(re.compile(r"/sign-in"))
            await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
            assert "550 gone" not in await page.content()
            assert await page.get_by_role("navigation").count() == 0
        await page.goto(f"{txmail.console}/v1/failures")
        assert "550 gone" not in await page.content()

        await sign_in(page, f"{txmail.console}/messages?id=order-4001", "wrong")
        await expect(page.get_by_role("alert")).to_contain_text("not TXMAIL_API_TOKEN")

        # The read token sees, and is offered no replay.
        await sign_in(page, f"{txmail.console}/messages?id=order-4001", READ_TOKEN)
        await expect(page).to_have_url(re.compile(r"/messages\?id=order-4001$"))
        await expect(page.get_by_role("heading", level=2).first).to_contain_text("bounced")
        [cookie] = await context.cookies()
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
        assert READ_TOKEN not in cookie["value"]
        await page.goto(f"{txmail.console}/parked")
        await expect(page.locator("main")).to_contain_text("Your token reads only")
        assert await page.get_by_role("button", name=re.compile("Replay")).count() == 0

        await page.get_by_role("button", name="Sign out").click()
        await expect(page).to_have_url(re.compile(r"/sign-in$"))
        assert await context.cookies() == []
        await page.goto(txmail.console)
        await expect(page).to_have_url(re.compile(r"/sign-in"))

        await sign_in(page, txmail.console, TOKEN)
        await expect(page).to_have_url(f"{txmail.console}/")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Now")
        assert await page.get_by_role("note").count() == 0  # no "no token" banner
        await context.close()
