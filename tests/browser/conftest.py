"""Browser tests: Debian's Chromium, driven by Playwright, against the site under daphne.

Playwright's async API runs in the test's own event loop, like every other
async test here. Every test in this folder is skipped when Chromium is missing
(``.ci/run`` installs it).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY
from tests.servers import PASSWORD, ROOT, USER, Site, daphne, prepare_site

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)
    if Path(CHROMIUM).exists():
        return
    skip = pytest.mark.skip(reason="needs Debian's chromium (.ci/run installs it)")
    for item in items:
        if Path(__file__).parent in Path(item.path).parents:
            item.add_marker(skip)


playwright_api: Any = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect


@pytest.fixture
async def page(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A fresh Chromium page; its picture is kept in test-artifacts/ if the test fails."""
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            context = await browser.new_context()
            page = await context.new_page()
            yield page
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=ARTIFACTS / f"{request.node.name}.png")
        finally:
            await browser.close()


def fake_model(upstream: Any) -> dict[str, str]:
    """The settings that send a site's questions to the test's fake upstream."""
    return {"OPENAI_BASE_URL": upstream.url, "OPENAI_API_KEY": API_KEY, "CHAT_MODEL": "fake-model"}


def start_site(tmp_path: Path, **extra: str) -> Iterator[Site]:
    # A small send window: the page must echo pings for any answer to arrive whole.
    defaults = {"CHAT_DEMO_TOKENS_PER_SECOND": "60", "CHAT_SEND_WINDOW": "2000"}
    with daphne(prepare_site(tmp_path, **{**defaults, **extra})) as site:
        yield site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from start_site(tmp_path_factory.mktemp("site"))


async def log_in(page: Any, site: Site) -> Any:
    await page.goto(site.url + "/chat/")
    await page.fill("#id_username", USER)
    await page.fill("#id_password", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page.locator("body[data-connected=true]")).to_be_attached()
    return page


@pytest.fixture
async def chat(page: Any, site: Site) -> Any:
    """A logged-in chat page, its socket open."""
    return await log_in(page, site)


async def ask(page: Any, text: str) -> None:
    await page.fill("#prompt", text)
    await page.press("#prompt", "Enter")


def last_answer(page: Any) -> Any:
    return page.locator(".chat-assistant").last


async def finished(page: Any, status: str = "complete") -> None:
    await expect(last_answer(page)).to_have_class(re.compile(f"chat-{status}"), timeout=15_000)
