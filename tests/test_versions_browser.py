"""Answer versions and forks in the real page, in headless Chromium against the app on the
bundled model: retry and edit keep what was there, ‹ › moves between the versions (the chat
and the prompt inspector follow), they come back after a reload and are in the file of all
conversations, and "Fork from here" starts a new conversation. On the default engine only:
what this checks is the page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from phi3ui.settings import DEFAULT_ENGINE
from tests.test_browser import (
    ANSWER,
    USER,
    answer_text,
    ready,
    send,
    set_max_new_tokens,
    wait_idle,
)
from tests.test_conversations_browser import LIST, expect_titles, new_page, stored  # noqa: F401 - a fixture
from tests.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("engine_name", [DEFAULT_ENGINE], indirect=True)]

QUESTION = "Count to twenty in words, 1 < 2 & 2 > 1."  # escaped on the page
EDITED = "Name three colors."


def version(page: Page, text: str) -> None:
    expect(page.locator("#version-info")).to_contain_text(text)


def expect_read(page: Page, text: str) -> None:
    """The prompt inspector (open) shows `text`: the model reads the branch on screen."""
    first = text.strip().splitlines()[0]
    wait_until(lambda: first in page.locator("#inspector").inner_text(), 20, f"the inspector to show {first!r}",
               every_s=0.1)


def kept_answer(page: Page) -> str:
    """The answer on screen in the kept conversation (the only one)."""
    messages = stored(page)[0]["messages"] if stored(page) else []
    return next((m["content"] for m in messages if m["role"] == "assistant" and not m.get("metadata")), "")


def kept_versions(page: Page) -> list[int]:
    """How many versions each stored message has that has any, over all conversations."""
    def count(messages: list[dict]) -> list[int]:
        return [len(m["versions"]) + 1 for m in messages if m.get("versions")]
    return [n for record in stored(page) for n in count(record["messages"])]


def test_retry_edit_switch_reload_and_fork(new_page) -> None:
    page = new_page()
    page.locator("#inspector-box").get_by_text("Prompt inspector").click()
    set_max_new_tokens(page, 4)
    send(page, QUESTION)
    wait_idle(page)
    first = answer_text(page)
    set_max_new_tokens(page, 12)  # the retry's answer is longer: the two are told apart
    page.get_by_role("button", name="Retry").click()
    version(page, "Message 2 (answer) · version 2 of 2")
    wait_idle(page)
    second = answer_text(page)
    assert second != first and page.locator(ANSWER).count() == 1
    expect(page.locator("#next-version")).to_be_disabled()

    page.locator("#previous-version").click()  # ‹: the first answer, and the model reads it
    version(page, "version 1 of 2")
    expect(page.locator(ANSWER)).to_have_text(first)
    expect_read(page, first)
    page.locator("#next-version").click()
    version(page, "version 2 of 2")
    expect(page.locator(ANSWER)).to_have_text(second)

    page.get_by_role("button", name="Edit").first.click()  # a new branch from the question
    page.locator("#chat textarea").fill(EDITED)
    page.get_by_role("button", name="Submit").click()
    version(page, "Message 1 (message) · version 2 of 2")
    wait_idle(page)
    expect(page.locator(USER)).to_have_text([EDITED])
    expect_read(page, EDITED)

    page.locator("#previous-version").click()  # back to the question, with its two answers
    expect(page.locator(USER)).to_have_text([QUESTION])
    expect(page.locator(ANSWER)).to_have_text(second)
    expect_read(page, QUESTION)
    page.locator(ANSWER).click()  # the row now acts on the answer
    version(page, "Message 2 (answer) · version 2 of 2")
    page.locator("#previous-version").click()
    expect(page.locator(ANSWER)).to_have_text(first)
    wait_until(lambda: kept_answer(page).strip() == first, 20, "the answer on screen kept in the browser", every_s=0.1)
    assert sorted(kept_versions(page)) == [2, 2], "both forks kept"

    page.reload()
    ready(page)
    expect(page.locator(USER)).to_have_text([QUESTION])
    expect(page.locator(ANSWER)).to_have_text(first)
    version(page, "Message 2 (answer) · version 1 of 2")
    page.locator("#next-version").click()
    expect(page.locator(ANSWER)).to_have_text(second)
    page.locator(USER).click()
    version(page, "Message 1 (message) · version 1 of 2")
    page.locator("#next-version").click()
    expect(page.locator(USER)).to_have_text([EDITED])

    wait_until(lambda: stored(page)[0]["messages"][0]["content"] == EDITED, 20, "the edited branch kept",
               every_s=0.1)
    with page.expect_download() as download:  # the file of all conversations has them too
        page.locator("#download-all").click()
    exported = json.loads(Path(download.value.path()).read_text())["conversations"][0]["messages"]
    other = exported[0]["versions"][0]  # the question's branch, with the answer's two versions
    assert other[0]["content"] == QUESTION and len(other[1]["versions"]) == 1

    page.locator("#previous-version").click()  # fork from the question's answer
    expect(page.locator(USER)).to_have_text([QUESTION])
    page.locator(ANSWER).click()
    version(page, "Message 2 (answer)")
    page.locator("#fork").click()
    fork = f"{QUESTION} (fork)"
    expect(page.locator("#conv-title input")).to_have_value(fork)
    expect_titles(page, [fork, QUESTION])
    expect(page.locator(USER)).to_have_text([QUESTION])
    expect(page.locator(ANSWER)).to_have_text(second)
    expect(page.locator("#previous-version")).to_be_disabled()
    records = {r["title"]: r for r in stored(page)}
    assert [m["content"].strip() for m in records[fork]["messages"] if not m.get("metadata")] == [QUESTION, second]
    assert not any(m.get("versions") for m in records[fork]["messages"]), "a fork starts with one version"
    assert sorted(kept_versions(page)) == [2, 2], "the original is left as it was"
    page.locator(LIST, has_text=f"{QUESTION} ·").click()
    expect(page.locator("#conv-title input")).to_have_value(QUESTION)
    version(page, "version 2 of 2")
