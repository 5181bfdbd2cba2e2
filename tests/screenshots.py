"""The README's screenshots, from the real page in headless Chromium on the bundled model:

    python -m tests.screenshots               # writes assets/screenshot.png, features.png,
                                              # conversations-dark.png and conversations-phone-dark.png
    python -m tests.screenshots --out /tmp/x  # somewhere else

A script, not a test (pytest does not collect it): it starts the app on the default engine
with the host's chat presets of tests/data/chat_presets.json and saves four views: a short
real conversation with the sidebar open; a conversation loaded from a file whose answer holds
math (the file's, not the small model's), a chat preset of the host's picked, a question sent
with a file attached and answered twice (retry: two versions); and three conversations in
dark mode, wide and phone-sized (tests/test_conversations_browser.py::test_dark_mode checks
the same dark views). Headless Chromium draws 📎 only with an emoji font installed
(Debian: fonts-noto-color-emoji).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from phi3ui.settings import BUNDLED, DEFAULT_ENGINE
from phi3ui.ui.chat_presets import HOST_MARK
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


MATH_CHAT = [{"role": "user", "content": "What is the area of a circle of radius r?"},
             {"role": "assistant", "content": "The area is $A = \\pi r^2$. For $r = 2$:\n\n$$A = 4\\pi \\approx 12.57$$"}]
NOTES = "item,euros\nbread,3\ncheese,7\n"


def features_screenshot(browser, url: str, out: Path, work: Path) -> None:
    """A chat preset, math, a file attached and an answer's second version."""
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    page = open_page(context, url)
    chat = work / "circle.json"
    chat.write_text(json.dumps(MATH_CHAT))
    with page.expect_file_chooser() as chooser:
        page.locator("#load-json").click()
    chooser.value.set_files(str(chat))
    expect(page.locator("#chat .katex").first).to_be_visible()
    page.locator("#chat-preset input").click()  # the loaded conversation's preset
    page.get_by_role("option", name=f"Brief{HOST_MARK}", exact=True).click()
    expect(page.locator("#chat-preset input")).to_have_value(f"Brief{HOST_MARK}")
    notes = work / "groceries.csv"
    notes.write_text(NOTES)
    page.locator("#message input[type=file]").set_input_files([str(notes)])
    expect(page.locator("#budget")).to_contain_text("groceries.csv")
    page.locator("#message textarea").fill("What did I spend in total?")
    page.locator("#send").click()
    wait_idle(page)
    page.get_by_role("button", name="Retry").click()
    wait_idle(page)
    expect(page.locator("#version-info")).to_contain_text("version 2 of 2")
    page.screenshot(path=str(out / "features.png"))
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
    app = AppProcess("--model", BUNDLED, "--engine", DEFAULT_ENGINE, "--max-message-chars", "200",
                     "--chat-presets", str(ROOT / "tests" / "data" / "chat_presets.json")).wait_ready()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                chat_screenshot(browser, app.url, args.out)
                with tempfile.TemporaryDirectory() as work:
                    features_screenshot(browser, app.url, args.out, Path(work))
                dark_screenshots(browser, app.url, args.out)
            finally:
                browser.close()
    finally:
        app.stop()
    for name in ("screenshot.png", "features.png", "conversations-dark.png", "conversations-phone-dark.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
