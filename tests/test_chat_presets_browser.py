"""Chat presets in the real page, in headless Chromium against the app on the bundled model
with the host's presets in tests/data/chat_presets.json: one story, from picking the host's
preset to carrying one's own to another browser. On the default engine only: what it checks
is the page, not the engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from phi3ui.settings import DEFAULT_ENGINE
from tests.test_browser import ready
from tests.test_conversations_browser import (  # noqa: F401 - fixtures
    ask,
    expect_titles,
    new_chat,
    new_page,
    open_conversation,
    stored,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("engine_name", [DEFAULT_ENGINE], indirect=True)]

PRESET = "#chat-preset input"
MAX_NEW_TOKENS = "#max-new-tokens input[type=number]"
SYSTEM_PROMPT = "#system-prompt textarea"


def pick(page: Page, label: str) -> None:
    page.locator(PRESET).click()
    page.get_by_role("option", name=label, exact=True).click()
    expect(page.locator(PRESET)).to_have_value(label)


def offered(page: Page) -> list[str]:
    """The presets the list offers, by label."""
    page.locator(PRESET).click()
    options = page.get_by_role("option")
    expect(options.first).to_be_visible()
    labels = options.evaluate_all("(items) => items.map((item) => item.getAttribute('aria-label'))")
    page.locator(PRESET).blur()
    expect(options).to_have_count(0)
    return labels


def kept_preset(page: Page, question: str) -> str:
    return next(r.get("preset") for r in stored(page) if r["messages"][0]["content"] == question)


def test_pick_save_and_carry_chat_presets(new_page, tmp_path: Path) -> None:
    page = new_page()
    assert offered(page) == ["Brief · this server's", "Pirate · this server's"]
    pick(page, "Brief · this server's")  # the host's preset fills the settings
    expect(page.locator(MAX_NEW_TOKENS)).to_have_value("12")
    expect(page.locator(SYSTEM_PROMPT)).to_have_value("Answer in a few words.")
    expect(page.locator("#budget")).to_contain_text("+ 12 for the answer")
    ask(page, "Name a color.")
    assert kept_preset(page, "Name a color.") == "Brief", "the conversation remembers its preset"

    # one's own, from the settings on screen: the conversation then uses it
    max_new_tokens = page.locator(MAX_NEW_TOKENS)
    max_new_tokens.fill("9")
    max_new_tokens.press("Enter")
    page.locator(SYSTEM_PROMPT).fill("Be kind.")
    page.locator("#preset-name input, #preset-name textarea").first.fill("Mine")
    page.locator("#preset-save").click()
    expect(page.locator("#preset-note")).to_contain_text("Saved “Mine”")
    expect(page.locator(PRESET)).to_have_value("Mine")
    page.wait_for_function("() => Object.values(localStorage).some((v) => v.includes('\"preset\":\"Mine\"'))")

    page.reload()  # still there, and still this conversation's
    ready(page)
    expect(page.locator(PRESET)).to_have_value("Mine")
    assert offered(page) == ["Brief · this server's", "Pirate · this server's", "Mine"]

    new_chat(page)  # another conversation picks it, then the host's
    page.locator(SYSTEM_PROMPT).fill("")
    pick(page, "Mine")
    expect(page.locator(MAX_NEW_TOKENS)).to_have_value("9")
    expect(page.locator(SYSTEM_PROMPT)).to_have_value("Be kind.")
    pick(page, "Brief · this server's")
    expect(page.locator(MAX_NEW_TOKENS)).to_have_value("12")
    ask(page, "Name a fruit.")
    open_conversation(page, "Name a color.")
    expect(page.locator(PRESET)).to_have_value("Mine")
    expect(page.locator(MAX_NEW_TOKENS)).to_have_value("9")
    open_conversation(page, "Name a fruit.")
    expect(page.locator(PRESET)).to_have_value("Brief · this server's")

    # "Download all" carries one's own presets; importing it in another browser brings them
    with page.expect_download() as download:
        page.locator("#download-all").click()
    data = json.loads(Path(download.value.path()).read_text())
    assert [p["name"] for p in data["presets"]] == ["Mine"]
    assert data["presets"][0]["system_prompt"] == "Be kind." and data["presets"][0]["settings"]["max_new_tokens"] == 9
    everything = tmp_path / "all.json"
    everything.write_text(json.dumps(data))
    fresh = new_page()
    assert offered(fresh) == ["Brief · this server's", "Pirate · this server's"]
    with fresh.expect_file_chooser() as chooser:
        fresh.locator("#import-all").click()
    chooser.value.set_files(str(everything))
    expect(fresh.locator("#conv-note")).to_contain_text("1 chat preset(s): 1 added")
    expect_titles(fresh, ["Name a fruit.", "Name a color."])
    open_conversation(fresh, "Name a color.")
    expect(fresh.locator(PRESET)).to_have_value("Mine")
    expect(fresh.locator(MAX_NEW_TOKENS)).to_have_value("9")

    # deleting one's own: gone from the list, in this tab and another; the host's cannot be deleted
    other_tab = new_page(fresh.context)
    new_chat(other_tab)  # showing another conversation: only the presets changed for it
    assert offered(other_tab)[-1] == "Mine"
    fresh.locator("#preset-delete").click()
    expect(fresh.locator("#preset-note")).to_contain_text("Deleted “Mine”")
    wait_until(lambda: "Mine" not in offered(other_tab), 20, "the other tab's list follows")
    expect(fresh.locator(PRESET)).not_to_have_value("Mine")
    assert offered(fresh) == ["Brief · this server's", "Pirate · this server's"]
    pick(fresh, "Pirate · this server's")
    fresh.locator("#preset-delete").click()
    expect(fresh.locator("#preset-note")).to_contain_text(re.compile("only your own presets can be deleted"))
