"""The README's screenshots, from the real page in headless Chromium on the bundled model:

    python -m tests.screenshots               # writes assets/screenshot.png, conversations-dark.png
                                              # and conversations-phone-dark.png
    python -m tests.screenshots --out /tmp/x  # somewhere else

A script, not a test (pytest does not collect it): it starts the app on the default engine,
has a short real conversation with the sidebar open, then three conversations in dark mode,
wide and phone-sized, and saves each view. tests/test_conversations_browser.py::test_dark_mode
checks the same dark views.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from phi3ui.settings import BUNDLED, DEFAULT_ENGINE
from tests.app_process import ROOT, AppProcess
from tests.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.test_browser import ANSWER, ready, send, set_max_new_tokens, wait_idle
from tests.test_conversations_browser import dark_conversations, dark_phone

TYPED = "And one that multiplies them?"


def open_page(context, url: str):
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    ready(page)
    return page


def chat_screenshot(browser, url: str, out: Path) -> None:
    """A short real conversation with the sidebar open, a next message typed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    page = open_page(context, url)
    set_max_new_tokens(page, 100)
    send(page, "What is the capital of France?")
    wait_idle(page)
    send(page, "Write a Python function that adds two numbers.")
    wait_idle(page)
    page.locator("#message textarea").fill(TYPED)
    expect(page.locator("#message textarea")).to_have_value(TYPED)
    expect(page.locator(ANSWER)).to_have_count(2)
    page.screenshot(path=str(out / "screenshot.png"))
    context.close()


def dark_screenshots(browser, url: str, out: Path) -> None:
    """Dark mode, wide and phone-sized (two tabs of one browser, so the same conversations)."""
    context = browser.new_context(color_scheme="dark", viewport={"width": 1400, "height": 900})
    wide = open_page(context, url)
    dark_conversations(wide)
    expect(wide.locator("#message textarea")).to_have_value(TYPED)
    wide.screenshot(path=str(out / "conversations-dark.png"))
    phone = open_page(context, url)
    dark_phone(phone)
    phone.screenshot(path=str(out / "conversations-phone-dark.png"))
    context.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "assets", help="folder for the PNGs (default: assets/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    app = AppProcess("--model", BUNDLED, "--engine", DEFAULT_ENGINE, "--max-message-chars", "200").wait_ready()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                chat_screenshot(browser, app.url, args.out)
                dark_screenshots(browser, app.url, args.out)
            finally:
                browser.close()
    finally:
        app.stop()
    for name in ("screenshot.png", "conversations-dark.png", "conversations-phone-dark.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
