"""What a visitor's browser shows, for server tests that check one text of the page: the
page's config is built before the model is loaded, and each page fills in the model panel
when it opens."""

from __future__ import annotations

from playwright.sync_api import Browser, expect


def model_info(browser: Browser, url: str) -> str:
    """The model panel's text once the page has filled it in."""
    page = browser.new_page()
    try:
        page.goto(url)
        info = page.locator("#model-info")
        expect(info).to_contain_text("Loaded:", timeout=60_000)
        return info.inner_text()
    finally:
        page.close()
