"""The real page in headless Chromium against the app on the bundled model.

Each test gets a fresh browser context (so nothing is left in localStorage) and fails if
any JavaScript dialog opens. Answers are kept short with the sidebar's max-new-tokens,
except where a test needs one long enough to watch it stream or to stop it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import failed
from tests.waiting import wait_until

pytestmark = pytest.mark.browser
expect.set_options(timeout=60_000)  # a guard against a hang only: a loaded machine can take many seconds

ROOT = Path(__file__).resolve().parent.parent
LONG_PROMPT = "Write a long story about a dragon who learns to bake bread."
ANSWER = "#chat .bot-row .message:not(.thought) > [data-testid=bot]"
USER = "#chat .user-row [data-testid=user]"
NOTE = "#chat .thought-group .title"
SHOTS = Path("/tmp") / "phi3ui-browser-shots"  # the pages of failed tests, as they were at the end


@pytest.fixture
def open_page(browser: Browser, browser_app, request):
    """Opens the app in fresh contexts; each page fails its test if a dialog opens."""
    dialogs: list[str] = []
    contexts = []

    def open_() -> Page:
        context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(browser_app.url)
        ready(page)
        return page

    yield open_
    if failed(request) or dialogs:  # what the pages of a test that failed showed
        SHOTS.mkdir(exist_ok=True)
        for i, context in enumerate(contexts):
            for page in context.pages:
                page.screenshot(path=str(SHOTS / f"{request.node.name}-{i}.png"))
    for context in contexts:
        context.close()
    assert dialogs == [], f"a dialog opened: {dialogs}"


@pytest.fixture
def page(open_page) -> Page:
    return open_page()


def ready(page: Page) -> None:
    """The page has loaded its chat and list from storage and drawn the context budget."""
    page.wait_for_selector("#message textarea")
    page.wait_for_selector("body[data-phi3ui-loaded]", state="attached")
    expect(page.locator("#budget")).to_contain_text("Context", timeout=30_000)


def shown(page: Page) -> str | None:
    """The id of the conversation the page last settled on, with its settings on screen."""
    return page.evaluate("document.body.dataset.phi3uiShown || null")


def settled_elsewhere(page: Page, before: str | None) -> None:
    """Wait until the page has settled on a conversation other than `before`: a setting
    changed sooner would be replaced by the one the page puts on screen."""
    wait_until(lambda: shown(page) not in (None, before), 60, "the page to settle on another conversation",
               every_s=0.05)


def set_max_new_tokens(page: Page, n: int) -> None:
    box = page.locator("#max-new-tokens input[type=number]")
    box.fill(str(n))
    box.press("Enter")
    expect(page.locator("#budget")).to_contain_text(f"+ {n:,} for the answer")


def send(page: Page, text: str) -> None:
    """Send, and wait until the page has taken the message (so Send is hidden until done)."""
    before = page.locator(USER).count()
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()
    expect(page.locator(USER)).to_have_count(before + 1)


def wait_idle(page: Page, timeout: float = 180) -> None:
    """The answer is done and the page has settled: Send is back."""
    expect(page.locator("#send")).to_be_visible(timeout=timeout * 1000)
    expect(page.locator("#stop")).to_be_hidden()


def answer_text(page: Page) -> str:
    answers = page.locator(ANSWER)
    return answers.last.inner_text() if answers.count() else ""


def answer_tokens(page: Page) -> int:
    match = re.search(r"(\d+) answer tokens", page.locator(NOTE).last.inner_text())
    assert match, page.locator(NOTE).last.inner_text()
    return int(match[1])


def wait_growing(page: Page, min_chars: int = 20, timeout: float = 30) -> str:
    """The answer so far, once it has at least `min_chars` characters."""
    def grown() -> str:
        text = answer_text(page)
        return text if len(text) >= min_chars else ""

    return wait_until(grown, timeout, f"an answer of {min_chars} characters", every_s=0.1)


def ended_answers(app) -> list[str]:
    """How each of the page's answers ended, from the app's log: "done", "stopped (why)",
    "failed (what)"."""
    return re.findall(r"page answer (done|stopped \([^)]*\)|failed \([^)]*\)|not started)", app.output())


def wait_ended(app, before: int, timeout: float = 120) -> str:
    """Wait until the app has logged more than `before` ended page answers; the last one.
    The deadline only guards against a hang: what a test checks is how the answer ended."""
    def more_ended() -> list[str]:
        ended = ended_answers(app)
        return ended if len(ended) > before else []

    ended = wait_until(more_ended, timeout, lambda: f"a page answer to end (the log has {ended_answers(app)[-3:]})",
                       every_s=0.1)
    return ended[-1]


def last_answer_tokens(app) -> int:
    """How many tokens the last page answer had when it ended, from the app's log."""
    return int(re.findall(r"page answer (?:done|stopped \([^)]*\)) after (\d+) tokens", app.output())[-1])


def test_answer_streams_with_stats(page: Page) -> None:
    set_max_new_tokens(page, 120)
    send(page, LONG_PROMPT)
    expect(page.locator("#stop")).to_be_visible()
    samples = []
    while page.locator("#stop").is_visible() and len(samples) < 200:
        samples.append(answer_text(page))
        time.sleep(0.15)
    wait_idle(page)
    final = answer_text(page)
    lengths = sorted({len(s) for s in samples if s})
    assert len(lengths) >= 3, f"the answer did not grow while streaming: {samples}"
    words = final.split()
    assert all(words[: len(s.split()) - 1] == s.split()[:-1] for s in samples if s), (samples, final)
    stats = page.locator(NOTE).last.inner_text()
    assert re.search(r"[\d.]+ s to first token · [\d.]+ tokens/s · \d+ prompt \+ \d+ answer tokens", stats), stats
    assert 0 < answer_tokens(page) <= 120


def test_stop_ends_generation_and_next_message_works(page: Page, browser_app) -> None:
    set_max_new_tokens(page, 1000)
    send(page, LONG_PROMPT)
    wait_growing(page)
    before = len(ended_answers(browser_app))
    page.locator("#stop").click()
    wait_idle(page)
    expect(page.locator(NOTE).last).to_contain_text("⏹ Stopped")
    assert page.locator(NOTE).last.inner_text().strip().startswith("⏹ Stopped")
    stopped = answer_text(page)
    assert wait_ended(browser_app, before) == "stopped (Stop)"
    assert answer_tokens(page) < 1000 and last_answer_tokens(browser_app) < 1000, "the Stop ended the generation"

    set_max_new_tokens(page, 16)
    send(page, "What is the capital of France?")
    wait_idle(page)
    assert page.locator(USER).count() == 2
    assert "Stopped" not in page.locator(NOTE).last.inner_text()
    # the next answer came after the stopped one ended, and nothing of that one came after it
    assert ended_answers(browser_app)[before:] == ["stopped (Stop)", "done"]
    assert page.locator(ANSWER).first.inner_text() == stopped, "the answer kept growing after Stop"


def test_retry_regenerates(page: Page, browser_app) -> None:
    set_max_new_tokens(page, 24)
    temperature = page.locator("#temperature input[type=number]")
    temperature.fill("1")
    temperature.press("Enter")
    seed = page.locator("#seed input")
    seed.fill("42")
    seed.press("Enter")
    send(page, "Tell me a fun fact about cats.")
    wait_idle(page)
    first, count = answer_text(page), len(ended_answers(browser_app))
    page.get_by_role("button", name="Retry").click()
    assert wait_ended(browser_app, count) == "done", "Retry did not generate again"
    wait_idle(page)
    assert page.locator(USER).count() == 1 and page.locator(ANSWER).count() == 1
    assert answer_text(page) == first, "the same seed should give the same answer"


def test_undo_gives_the_message_back(page: Page) -> None:
    set_max_new_tokens(page, 8)
    send(page, "Say hello.")
    wait_idle(page)
    send(page, "Say goodbye.")
    wait_idle(page)
    page.get_by_role("button", name="Undo").click()
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator("#message textarea")).to_have_value("Say goodbye.")
    assert page.locator(USER).first.inner_text() == "Say hello."


def test_edit_continues_from_the_edited_message(page: Page) -> None:
    set_max_new_tokens(page, 8)
    send(page, "Say hello.")
    wait_idle(page)
    send(page, "Say goodbye.")
    wait_idle(page)
    send(page, "Say good night.")
    wait_idle(page)
    page.get_by_role("button", name="Edit").nth(1).click()  # the second of three, past a stats note
    page.locator("#chat textarea").fill("Say <thank you> & bye.")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator(USER)).to_have_count(2)
    expect(page.locator(USER).nth(1)).to_have_text("Say <thank you> & bye.")
    wait_idle(page)
    expect(page.locator(ANSWER)).to_have_count(2)
    assert page.locator(USER).first.inner_text() == "Say hello."


def test_example_prompt_sends(page: Page) -> None:
    set_max_new_tokens(page, 8)
    page.get_by_role("button", name=re.compile("What is the capital of France")).click()
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(USER).first).to_have_text("What is the capital of France?")
    wait_idle(page)
    assert answer_text(page)


def test_download_and_load_json(page: Page, tmp_path: Path) -> None:
    set_max_new_tokens(page, 8)
    send(page, "Is 2 < 3 & 3 > 2?")
    wait_idle(page)
    with page.expect_download() as download:
        page.locator("#download-json").click()
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved[0] == {"role": "user", "content": "Is 2 < 3 & 3 > 2?"}
    assert [m["role"] for m in saved] == ["user", "assistant"], "page notes must not be saved"
    with page.expect_download() as download:
        page.locator("#download-md").click()
    assert "**User:**\n\nIs 2 < 3 & 3 > 2?" in Path(download.value.path()).read_text()

    before = shown(page)
    page.locator("#clear").click()
    expect(page.locator(USER)).to_have_count(0)
    settled_elsewhere(page, before)
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps(saved))
    with page.expect_file_chooser() as chooser:
        page.locator("#load-json").click()
    chooser.value.set_files(str(chat))
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(USER).first).to_have_text("Is 2 < 3 & 3 > 2?")
    assert answer_text(page) == saved[1]["content"].strip()


def test_clear_mid_answer_empties_the_chat(page: Page, browser_app) -> None:
    set_max_new_tokens(page, 1000)
    send(page, LONG_PROMPT)
    wait_growing(page)
    before, chat = len(ended_answers(browser_app)), shown(page)
    page.locator("#clear").click()
    wait_idle(page)
    wait_ended(browser_app, before)  # the cancelled answer has ended: nothing of it may come after
    settled_elsewhere(page, chat)  # the new chat, with its settings on screen
    # the cleared chat is kept in the list, and none is selected
    expect(page.locator("#conv-list label", has_text="Write a long story")).to_have_count(1)
    expect(page.locator("#conv-list label.selected")).to_have_count(0)
    expect(page.locator(USER)).to_have_count(0)
    expect(page.locator(ANSWER)).to_have_count(0)
    set_max_new_tokens(page, 8)
    send(page, "Say hello.")
    wait_idle(page)
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(ANSWER)).to_have_count(1)
    page.reload()  # what the browser kept is the new chat, not the cleared one
    ready(page)
    expect(page.locator(USER)).to_have_text(["Say hello."])


def test_max_new_tokens_is_respected(page: Page) -> None:
    set_max_new_tokens(page, 5)
    send(page, LONG_PROMPT)
    wait_idle(page)
    assert 0 < answer_tokens(page) <= 5
    assert "+ 5 answer tokens" in page.locator(NOTE).last.inner_text()


def test_reload_keeps_the_chat(page: Page) -> None:
    set_max_new_tokens(page, 8)
    send(page, "What is the capital of France?")
    wait_idle(page)
    answer = answer_text(page)
    # The answer is written to the browser's storage by an event after it ends; reload once it is.
    page.wait_for_function("""() => Object.keys(localStorage).filter((k) => k.startsWith("phi3ui:conversation:"))
        .some((k) => (JSON.parse(localStorage.getItem(k)).messages || []).some((m) => m.role === "assistant"))""",
                           timeout=30_000)
    page.reload()
    ready(page)
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(USER).first).to_have_text("What is the capital of France?")
    assert answer_text(page) == answer


@pytest.mark.parametrize("text", ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>"])
def test_markup_is_shown_as_text(page: Page, text: str) -> None:
    set_max_new_tokens(page, 4)
    send(page, text)
    wait_idle(page)
    expect(page.locator(USER).first).to_have_text(text)
    assert page.locator("#chat .message-content img, #chat .message-content script").count() == 0
    page.reload()  # stored and restored, still text
    ready(page)
    expect(page.locator(USER).first).to_have_text(text)


def test_too_long_message_keeps_its_text(page: Page) -> None:
    text = "word " * 50  # 250 characters, over the app's 200
    page.locator("#message textarea").fill(text)
    expect(page.locator("#budget")).to_contain_text("the limit is 200")
    page.locator("#send").click()
    expect(page.get_by_text(re.compile("The message is 250 characters; the limit is 200"))).not_to_have_count(0)
    expect(page.locator("#message textarea")).to_have_value(text)
    assert page.locator(USER).count() == 0


def test_budget_and_inspector_follow_the_chat(page: Page) -> None:
    set_max_new_tokens(page, 8)

    def prompt_tokens() -> int:
        return int(re.search(r"\(([\d,]+) prompt", page.locator("#budget").inner_text())[1].replace(",", ""))

    empty = prompt_tokens()
    page.locator("#message textarea").fill("How many legs does a spider have? " * 3)
    expect(page.locator("#budget")).not_to_contain_text(f"({empty} prompt")
    typed = prompt_tokens()
    assert typed > empty
    page.locator("#send").click()
    wait_idle(page)
    assert prompt_tokens() > empty

    page.get_by_text("Prompt inspector").click()
    inspector = page.locator("#inspector")
    expect(inspector).to_contain_text("<|im_start|>user")
    text = inspector.inner_text()
    assert "<|im_end|>" in text and "<|im_start|>assistant" in text and "⏎" in text
    assert "How many legs does a spider have?" in text


def test_presets_fill_the_export_fields_and_impossible_settings_are_refused(page: Page) -> None:
    page.get_by_text("Export and load").first.click()
    group, ratio = page.locator("#export-group-size input"), page.locator("#export-ratio input[type=number]")
    sym, all_layers = page.locator("#export-sym input"), page.locator("#export-all-layers input")
    expect(group).to_have_value("64")  # the bundled model's seed export
    page.get_by_label("fastest decode").check()
    expect(group).to_have_value("-1")
    expect(ratio).to_have_value("1")
    expect(sym).not_to_be_checked()
    expect(all_layers).not_to_be_checked()
    page.get_by_label("most accurate").check()
    expect(group).to_have_value("64")
    expect(ratio).to_have_value("0.6")
    expect(sym).to_be_checked()

    all_layers.check()
    page.locator("#export-format input").click()
    page.get_by_role("option", name="int8").click()
    page.locator("#export-button").click()
    expect(page.get_by_text(re.compile("All layers applies to int4 only"))).not_to_have_count(0)
    expect(page.locator("#model-info")).to_contain_text("int4-sym-g64-r0.6")  # still the model it had


def test_closing_the_tab_ends_generation(open_page, browser_app) -> None:
    first = open_page()
    set_max_new_tokens(first, 1000)
    send(first, LONG_PROMPT)
    wait_growing(first)
    before = len(ended_answers(browser_app))
    first.close()
    assert wait_ended(browser_app, before) in ("stopped (the tab closed)", "stopped (the client went away)")
    assert last_answer_tokens(browser_app) < 1000, "generation went on after the tab closed"

    second = open_page()
    set_max_new_tokens(second, 8)
    send(second, "Say hello.")
    wait_idle(second)
    assert answer_text(second)
    assert ended_answers(browser_app)[before + 1:] == ["done"]  # answered after the closed tab's answer ended


def test_prompt_lookup_on_the_optimum_engine_is_refused_in_the_page(page: Page) -> None:
    page.get_by_text("Export and load").first.click()
    page.locator("#prompt-lookup input").check()
    page.get_by_label("optimum").check()
    page.locator("#export-button").click()
    expect(page.get_by_text(re.compile("Prompt lookup needs the genai engine"))).not_to_have_count(0)
    expect(page.locator("#model-info")).to_contain_text("int4-sym-g64-r0.6")  # still the model it had
