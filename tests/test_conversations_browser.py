"""Many conversations in the real page, in headless Chromium against the app on the bundled
model: kept in the browser across reloads and app restarts, renamed, searched, deleted and
restored, exported and imported, switched mid-answer, a full storage, two tabs, a phone-sized
screen and dark mode. Answers are a few tokens long, except where one has to be streaming.

These tests run on the default engine only: what they check is the page, not the engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from playwright.sync_api import Browser, Page, expect

from phi3ui.settings import BUNDLED, DEFAULT_ENGINE
from tests.app_process import AppProcess
from tests.conftest import failed
from tests.json_cases import SCHEMAS
from tests.test_browser import (  # noqa: F401 - fixtures
    ANSWER,
    LONG_PROMPT,
    NOTE,
    SHOTS,
    USER,
    answer_text,
    ended_answers,
    last_answer_tokens,
    ready,
    send,
    set_max_new_tokens,
    settled_elsewhere,
    shown,
    wait_ended,
    wait_growing,
    wait_idle,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("engine_name", [DEFAULT_ENGINE], indirect=True)]

LIST = "#conv-list label"
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def new_page(browser: Browser, browser_app, request) -> Iterator:
    """Opens the app in a page of a given (or a fresh) browser context: contexts are browser
    profiles, pages of one context are tabs sharing its storage. Any dialog fails the test."""
    dialogs: list[str] = []
    contexts = []

    def open_(context=None, url: str | None = None, **options) -> Page:
        if context is None:
            context = browser.new_context(**{"viewport": {"width": 1400, "height": 900}, "accept_downloads": True,
                                             **options})
            contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url or browser_app.url)
        ready(page)
        return page

    yield open_
    if failed(request) or dialogs:  # what the pages of a test that failed showed
        SHOTS.mkdir(exist_ok=True)
        for i, context in enumerate(contexts):
            for j, page in enumerate(context.pages):
                page.screenshot(path=str(SHOTS / f"{request.node.name}-{i}-{j}.png"))
    for context in contexts:
        context.close()
    assert dialogs == [], f"a dialog opened: {dialogs}"


def titles(page: Page) -> list[str]:
    """The list's titles, top first, without "· when"."""
    return [re.sub(r" · [^·]+$", "", t.strip()) for t in page.locator(LIST).all_inner_texts()]


def expect_titles(page: Page, expected: list[str], timeout: float = 20) -> None:
    wait_until(lambda: titles(page) == expected, timeout, lambda: f"the list {expected} (it lists {titles(page)})",
               every_s=0.1)


def open_conversation(page: Page, title: str) -> None:
    """Click the conversation whose title starts with `title`; it is on screen."""
    page.locator(LIST, has_text=title).click()
    expect(page.locator("#conv-title input")).to_have_value(re.compile("^" + re.escape(title)))
    expect(page.locator(USER).first).to_be_visible()


def chat(page: Page) -> list[str]:
    return page.locator(USER).all_inner_texts()


def new_chat(page: Page) -> None:
    """Start a new chat and wait until the page has settled on it, with its settings on screen
    (a setting changed before that would be replaced)."""
    before = shown(page)
    page.locator("#new-chat").click()
    settled_elsewhere(page, before)
    expect(page.locator(USER)).to_have_count(0)
    expect(page.locator("#conv-title input")).to_have_value("")
    expect(page.locator("#conv-list label.selected")).to_have_count(0)


def ask(page: Page, text: str) -> None:
    """Send, and wait until the answer is in, kept in the browser and the list shows it
    (the last step after an answer: a click on the list before it could be lost)."""
    send(page, text)
    wait_idle(page)
    wait_until(lambda: any(answered(r, text) for r in stored(page)), 20, f"{text!r} and its answer to be kept",
               every_s=0.1)
    current = page.locator("#conv-title input").input_value() or text
    expect(page.locator("#conv-list label.selected", has_text=current[:40])).to_have_count(1)


def answered(record: dict, text: str) -> bool:
    """Whether a kept conversation ends with `text` and an answer to it."""
    users = [i for i, m in enumerate(record["messages"]) if m["role"] == "user"]
    return bool(users) and record["messages"][users[-1]]["content"] == text and users[-1] < len(record["messages"]) - 1


def three_conversations(page: Page) -> list[str]:
    set_max_new_tokens(page, 8)
    questions = ["What is the capital of France?", "Name a color.", "Say hello."]
    for i, question in enumerate(questions):
        if i:
            new_chat(page)
        ask(page, question)
    expect_titles(page, questions[::-1])
    return questions


def stored(page: Page) -> list[dict]:
    return page.evaluate("""() => Object.keys(localStorage).filter((k) => k.startsWith("phi3ui:conversation:"))
                                 .map((k) => JSON.parse(localStorage.getItem(k)))""")


def fill_storage(page: Page) -> None:
    """Fill the browser's storage for this site to the last byte."""
    page.evaluate("""() => { let n = 0;
        for (const size of [1 << 19, 1 << 16, 1 << 12, 256, 16, 1]) {
          const filler = "x".repeat(size);
          try { for (;;) localStorage.setItem("filler" + n++, filler); } catch (e) {}
        } }""")


def test_three_conversations_are_kept_across_a_reload(new_page) -> None:
    page = new_page()
    questions = three_conversations(page)
    assert page.locator(LIST).first.inner_text().endswith("· just now")
    page.reload()
    ready(page)
    expect_titles(page, questions[::-1])
    assert chat(page) == ["Say hello."], "the one in use comes back"
    expect(page.locator("#conv-list label.selected")).to_have_text(re.compile(r"^\s*Say hello"))
    for question in questions:
        open_conversation(page, question)
        assert chat(page) == [question]
        expect(page.locator(ANSWER)).to_have_count(1)
        expect(page.locator(NOTE)).to_have_count(1)  # its stats came back with it
    assert all(r["settings"]["max_new_tokens"] == 8 for r in stored(page))


def test_a_conversation_keeps_its_own_settings(new_page) -> None:
    page = new_page()
    set_max_new_tokens(page, 8)
    ask(page, "Name a color.")
    new_chat(page)
    set_max_new_tokens(page, 5)  # a new chat starts with the settings on screen; this one changes them
    ask(page, "Name a fruit.")
    open_conversation(page, "Name a color.")
    box = page.locator("#max-new-tokens input[type=number]")
    expect(box).to_have_value("8")
    open_conversation(page, "Name a fruit.")
    expect(box).to_have_value("5")
    page.locator("#max-new-tokens [data-testid=reset-button]").click()  # ↺ is a choice the conversation keeps
    expect(box).not_to_have_value("5")
    default = box.input_value()
    wait_until(lambda: next(r for r in stored(page) if answered(r, "Name a fruit."))["settings"]["max_new_tokens"]
               == int(default), 20, "the reset setting to be kept")  # kept at once, not only when leaving
    page.reload()
    ready(page)
    expect(box).to_have_value(default)


# Holds the page's storage step `name` until `window.release()`; `window.held` says it is held
# and `window.done` lists the steps done since.
HOLD_STEP = """(name) => { const step = window.phi3ui.step;
  let release; const held = new Promise((r) => { release = r; });
  Object.assign(window, {release, held: false, done: []});
  window.phi3ui.step = (n, names, values) => {
    const run = () => step(n, names, values).then((out) => { window.done.push(n); return out; });
    if (n !== name) return run();
    window.held = true;
    return held.then(run); }; }"""


def test_a_setting_changed_while_another_conversation_opens(new_page) -> None:
    """The change of conversation is held between working out where to go and going there,
    while the visitor changes a setting of the chat on screen, which saves it: each does its
    own job (one job for both opened a new chat instead)."""
    page = new_page()
    set_max_new_tokens(page, 8)
    ask(page, "Name a color.")
    new_chat(page)
    set_max_new_tokens(page, 5)
    ask(page, "Name a fruit.")
    page.evaluate(HOLD_STEP, "viewport")  # the step between the two (it closes a phone's sidebar)
    page.locator(LIST, has_text="Name a color.").click()
    wait_until(lambda: page.evaluate("window.held"), 20, "the change of conversation to be held")
    set_max_new_tokens(page, 7)
    wait_until(lambda: page.evaluate("window.done.includes('do_job')"), 20, "the setting to be saved")
    page.evaluate("window.release()")
    expect(page.locator("#conv-title input")).to_have_value("Name a color.")
    assert chat(page) == ["Name a color."]
    expect(page.locator("#max-new-tokens input[type=number]")).to_have_value("8")
    expect(page.locator("#conv-list label.selected")).to_have_text(re.compile(r"^\s*Name a color\."))
    open_conversation(page, "Name a fruit.")
    expect(page.locator("#max-new-tokens input[type=number]")).to_have_value("7")


def test_answer_as_json_is_a_setting_each_conversation_keeps(new_page) -> None:
    page = new_page()
    set_max_new_tokens(page, 200)
    page.locator("#answer-json input[type=checkbox]").check()
    page.locator("#json-schema .cm-content").fill(json.dumps(SCHEMAS["person"]))
    question = "Describe a famous scientist."
    ask(page, question)
    record = next(r for r in stored(page) if answered(r, question))
    assert record["settings"]["answer_json"] is True
    assert json.loads(record["settings"]["json_schema"]) == SCHEMAS["person"]
    answer = [m for m in record["messages"] if m["role"] == "assistant" and not m.get("metadata")][-1]
    jsonschema.validate(json.loads(answer["content"]), SCHEMAS["person"])
    new_chat(page)
    page.locator("#answer-json input[type=checkbox]").uncheck()
    ask(page, "Name a fruit.")
    open_conversation(page, question)
    expect(page.locator("#answer-json input[type=checkbox]")).to_be_checked()
    open_conversation(page, "Name a fruit.")
    expect(page.locator("#answer-json input[type=checkbox]")).not_to_be_checked()


def test_rename_search_delete_and_restore(new_page) -> None:
    page = new_page()
    three_conversations(page)
    open_conversation(page, "Name a color.")
    title = page.locator("#conv-title input")
    title.fill("<img src=x onerror=alert(1)> Colours")
    title.press("Enter")
    expect_titles(page, ["Say hello.", "<img src=x onerror=alert(1)> Colours", "What is the capital of France?"])
    assert page.locator("#conv-list img").count() == 0, "a title is text"
    page.reload()
    ready(page)
    expect_titles(page, ["Say hello.", "<img src=x onerror=alert(1)> Colours", "What is the capital of France?"])

    search = page.locator("#conv-search textarea, #conv-search input").first
    search.fill("COLOURS")
    expect_titles(page, ["<img src=x onerror=alert(1)> Colours"])
    search.fill("capital france")  # words of the messages, in any order and case
    expect_titles(page, ["What is the capital of France?"])
    search.fill("no such words")
    expect_titles(page, [])
    search.fill("")
    expect_titles(page, ["Say hello.", "<img src=x onerror=alert(1)> Colours", "What is the capital of France?"])

    open_conversation(page, "What is the capital of France?")
    page.locator("#conv-delete").click()
    expect_titles(page, ["Say hello.", "<img src=x onerror=alert(1)> Colours"])
    expect(page.locator(USER)).to_have_count(0)
    restore = page.locator("#conv-restore")
    expect(restore).to_have_text("Restore “What is the capital of France?”")
    page.reload()  # a deleted conversation stays deleted
    ready(page)
    expect_titles(page, ["Say hello.", "<img src=x onerror=alert(1)> Colours"])
    open_conversation(page, "Say hello.")
    page.locator("#conv-delete").click()
    expect_titles(page, ["<img src=x onerror=alert(1)> Colours"])
    page.locator("#conv-restore").click()
    expect_titles(page, ["Say hello.", "<img src=x onerror=alert(1)> Colours"])
    assert chat(page) == ["Say hello."]
    expect(page.locator("#conv-restore")).to_be_hidden()


def test_switching_while_an_answer_streams_stops_it_in_its_own_conversation(new_page, browser_app) -> None:
    page = new_page()
    set_max_new_tokens(page, 8)
    ask(page, "Name a color.")
    color_answer = answer_text(page)
    new_chat(page)
    set_max_new_tokens(page, 1000)
    send(page, LONG_PROMPT)
    wait_growing(page)
    before = len(ended_answers(browser_app))
    page.locator(LIST, has_text="Name a color.").click()
    wait_idle(page)
    assert chat(page) == ["Name a color."]
    assert wait_ended(browser_app, before) == "stopped (the chat was replaced)"
    assert last_answer_tokens(browser_app) < 1000, "the answer went on after the switch"
    # the stopped answer has ended: nothing of it came (or may come) after
    assert chat(page) == ["Name a color."] and answer_text(page) == color_answer
    expect(page.locator(ANSWER)).to_have_count(1)

    open_conversation(page, "Write a long story")
    assert chat(page) == [LONG_PROMPT]
    assert len(answer_text(page)) >= 20, "the answer so far is kept in its own conversation"
    expect(page.locator(NOTE).last).to_have_text(re.compile(r"^\s*⏹ Stopped"))
    set_max_new_tokens(page, 8)  # and the conversation goes on
    send(page, "Thanks.")
    wait_idle(page)
    assert chat(page) == [LONG_PROMPT, "Thanks."]


def test_download_all_and_import_into_a_fresh_profile(new_page, tmp_path: Path) -> None:
    page = new_page()
    questions = three_conversations(page)
    with page.expect_download() as download:
        page.locator("#download-all").click()
    assert download.value.suggested_filename == "phi3ui-conversations.json"
    data = json.loads(Path(download.value.path()).read_text())
    assert data["format"] == "phi3ui-conversations" and data["version"] == 1
    assert [c["title"] for c in data["conversations"]] == questions[::-1]
    assert data["conversations"][0]["messages"][0] == {"role": "user", "content": "Say hello."}
    everything = tmp_path / "all.json"
    everything.write_text(json.dumps(data))

    fresh = new_page()  # another browser profile: nothing kept
    expect_titles(fresh, [])
    fresh.locator("#message textarea").fill("unsent")  # importing leaves the page as it is
    for name in ("all.json", "again.json"):  # the second time, nothing is added
        file = tmp_path / name
        file.write_text(everything.read_text())
        with fresh.expect_file_chooser() as chooser:
            fresh.locator("#import-all").click()
        chooser.value.set_files(str(file))
        expect(fresh.locator("#conv-note")).to_contain_text("3 already here" if name == "again.json" else "3 added")
        expect_titles(fresh, questions[::-1])
    expect(fresh.locator("#message textarea")).to_have_value("unsent")
    for question in questions:
        open_conversation(fresh, question)
        assert chat(fresh) == [question]
        expect(fresh.locator(NOTE)).to_have_count(1)

    # a single chat's download loads as a conversation, once
    with fresh.expect_download() as download:
        fresh.locator("#download-json").click()
    one = Path(download.value.path())
    with fresh.expect_file_chooser() as chooser:
        fresh.locator("#load-json").click()
    chooser.value.set_files(str(one))
    expect_titles(fresh, questions[::-1])

    bad = tmp_path / "bad.json"  # a file that is neither is refused, in a note under the chat
    bad.write_text('{"format": "<b>something</b> else"}')
    with fresh.expect_file_chooser() as chooser:
        fresh.locator("#import-all").click()
    chooser.value.set_files(str(bad))
    expect(fresh.locator("#conv-note")).to_contain_text("neither a chat nor the conversations saved by phi3ui")
    expect_titles(fresh, questions[::-1])


def test_a_full_storage_is_reported_and_the_chat_stays(new_page) -> None:
    page = new_page()
    set_max_new_tokens(page, 8)
    ask(page, "Name a color.")
    new_chat(page)
    ask(page, "Name a fruit.")
    fill_storage(page)
    send(page, "Name a tree.")
    wait_idle(page)
    note = page.locator("#conv-note")
    expect(note).to_contain_text("Browser storage is full")
    assert chat(page) == ["Name a fruit.", "Name a tree."], "the chat on screen stays"
    page.locator(LIST, has_text="Name a color.").click()  # leaving it would lose it: the page stays
    # the list is drawn again with the chat on screen selected; "Name a bird." below, answered
    # in this conversation after it, is the later event that shows the click did not switch
    expect(page.locator("#conv-list label.selected", has_text="Name a fruit.")).to_have_count(1)
    assert chat(page) == ["Name a fruit.", "Name a tree."]
    expect(note).to_contain_text("Browser storage is full")
    assert [r["title"] for r in stored(page)].count("Name a fruit.") == 1, "what was kept is still there"

    page.evaluate("() => Object.keys(localStorage).filter((k) => k.startsWith('filler'))"
                  ".forEach((k) => localStorage.removeItem(k))")
    send(page, "Name a bird.")
    wait_idle(page)
    assert chat(page) == ["Name a fruit.", "Name a tree.", "Name a bird."]
    expect(page.locator("#conv-title input")).to_have_value(re.compile("^Name a fruit"))
    expect(note).to_have_text("")
    page.reload()
    ready(page)
    assert chat(page) == ["Name a fruit.", "Name a tree.", "Name a bird."]


def test_two_tabs_never_overwrite_each_other(new_page) -> None:
    first = new_page()
    second = new_page(first.context)  # a tab of the same browser
    for tab in (first, second):
        set_max_new_tokens(tab, 8)
    ask(first, "Name a color.")
    expect_titles(second, ["Name a color."])  # the other tab's list follows
    ask(second, "Name a fruit.")
    expect_titles(first, ["Name a fruit.", "Name a color."])
    assert chat(first) == ["Name a color."] and chat(second) == ["Name a fruit."]

    open_conversation(second, "Name a color.")
    ask(first, "Name another color.")
    expect(second.locator(USER)).to_have_count(2)  # an idle tab shows the other's change
    assert chat(second) == ["Name a color.", "Name another color."]

    # both answer in the same conversation at once: neither overwrites the other. The first
    # answer is long and still streaming when the second tab sends; then it is stopped.
    set_max_new_tokens(first, 1000)
    send(first, LONG_PROMPT)
    wait_growing(first)
    send(second, "Tell me about blue.")
    assert first.locator("#stop").is_visible(), "the first answer ended before the second was sent"
    first.locator("#stop").click()
    wait_idle(first)
    wait_idle(second)
    both = ["Name a color. (copy)", "Name a color."]
    for tab in (first, second):  # newest first: which of the two was saved last is up to the race
        wait_until(lambda: titles(tab) in ([*both, "Name a fruit."], [*both[::-1], "Name a fruit."]), 20,
                   lambda: f"both versions listed (it lists {titles(tab)})", every_s=0.1)
    versions = {tuple(m["content"] for m in r["messages"] if m["role"] == "user") for r in stored(first)}
    common = ("Name a color.", "Name another color.")
    assert {(*common, LONG_PROMPT), (*common, "Tell me about blue.")} <= versions
    copied = second if "(copy)" in second.locator("#conv-title input").input_value() else first
    expect(copied.locator("#conv-note")).to_contain_text("changed in another tab")


# Each tab saves the record it is sent, as the page saves a conversation it shows, with a copy
# to fall back on; a BroadcastChannel message reaches both tabs at the same moment.
SAVE_WHEN_TOLD = """() => { window.saves = [];
  new BroadcastChannel("save-now").onmessage = async ({data: rec}) => {
    const job = {write: [{record: {...rec, rev: crypto.randomUUID()}, copy: {id: crypto.randomUUID(), title: "copy"}}]};
    const [report] = await window.phi3ui.step("do_job", ["storage_report", "job"], [null, job]);
    window.saves.push(report); }; }"""
DO_JOB = """(job) => window.phi3ui.step("do_job", ["storage_report", "job"], [null, job])"""


def test_two_tabs_saving_one_conversation_at_the_same_moment_keep_both(new_page) -> None:
    """Each tab reads the storage through its own copy, which the other's write reaches a moment
    later: saves at the very same moment must still find each other."""
    first = new_page()
    second = new_page(first.context)
    for tab in (first, second):
        tab.evaluate(SAVE_WHEN_TOLD)
    rounds = 8  # without the storage's transaction every round saved both and copied neither
    for n in range(rounds):
        record = {"id": f"race-{n}", "title": "race", "renamed": False, "created": 1, "updated": 1, "rev": "0",
                  "messages": [{"role": "user", "content": "Name a color."}]}
        first.evaluate(DO_JOB, {"write": [{"record": record, "expect": None}]})
        key = json.dumps(f"phi3ui:conversation:{record['id']}")
        wait_until(lambda: second.evaluate(f"localStorage.getItem({key}) !== null"), 20, "the other tab sees it")
        second.evaluate(DO_JOB, {"open": record["id"]})  # both tabs show version "0"
        first.evaluate("(rec) => new BroadcastChannel('save-now').postMessage(rec)", record)
        def both_saved() -> tuple | None:
            saves = [tab.evaluate("window.saves") for tab in (first, second)]
            return tuple(s[n] for s in saves) if all(len(s) > n for s in saves) else None

        reports = wait_until(both_saved, 20, "both tabs saved")
        assert [len(r["saved"]) for r in reports] == [1, 1], reports
        assert sorted(len(r["copied"]) for r in reports) == [0, 1], f"round {n}: {reports}"
    wait_until(lambda: len(stored(first)) == 2 * rounds, 20,
               lambda: f"every round's conversation and its copy (this tab has {len(stored(first))})")


def test_a_phone_sized_screen(new_page) -> None:
    page = new_page(viewport=PHONE, is_mobile=True, has_touch=True)
    sidebar, toggle = page.locator(".sidebar").first, page.locator(".sidebar .toggle-button").first
    expect(sidebar).not_to_have_class(re.compile(r"\bopen\b"))  # the chat first
    toggle.click()
    set_max_new_tokens(page, 8)
    toggle.click()
    expect(sidebar).not_to_have_class(re.compile(r"\bopen\b"))
    send(page, "Name a color.")
    wait_idle(page)
    expect(page.locator(ANSWER)).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "nothing wider than the screen"
    box = page.locator("#message textarea").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    before = shown(page)
    page.locator("#clear").click()  # New chat, in the chat row
    expect(page.locator(USER)).to_have_count(0)
    settled_elsewhere(page, before)
    toggle.click()
    expect(sidebar).to_have_class(re.compile(r"\bopen\b"))
    page.locator(LIST, has_text="Name a color.").click()
    expect(page.locator(USER)).to_have_text(["Name a color."])
    expect(sidebar).not_to_have_class(re.compile(r"\bopen\b"))  # choosing one shows it


def brightness(page: Page, selector: str, prop: str) -> int:
    rgb = page.evaluate(f"getComputedStyle(document.querySelector('{selector}')).{prop}")
    return sum(map(int, re.findall(r"\d+", rgb)[:3]))


def dark_conversations(wide: Page) -> None:
    """Three short conversations in a dark, wide page, and a message being typed."""
    set_max_new_tokens(wide, 24)
    for i, question in enumerate(["What is the capital of France?", "Name three colors.",
                                  "Write a Python function that adds two numbers."]):
        if i:
            new_chat(wide)
        ask(wide, question)
    wide.locator("#message textarea").fill("And one that multiplies them?")


def dark_phone(phone: Page) -> None:
    """A phone-sized tab of the same browser, its list open."""
    phone.set_viewport_size(PHONE)
    phone.reload()
    ready(phone)
    phone.locator(".sidebar .toggle-button").first.click()
    expect(phone.locator(".sidebar.open")).to_be_visible()


def test_dark_mode(new_page) -> None:
    """The page in dark mode, wide and phone-sized (`python -m tests.screenshots` saves these
    views for the README)."""
    wide = new_page(color_scheme="dark", viewport={"width": 1400, "height": 900})
    dark_conversations(wide)
    assert brightness(wide, "body", "backgroundColor") < 3 * 80, "a dark page"
    assert brightness(wide, f"{LIST} span", "color") > 3 * 150, "light titles on it"

    phone = new_page(wide.context)
    dark_phone(phone)
    assert brightness(phone, f"{LIST} span", "color") > 3 * 150


def test_kept_across_an_app_restart(browser: Browser, bundled, engine_name: str) -> None:
    """The server keeps nothing: a restarted app (same address, so the same browser storage)
    lists what the browser kept."""
    first = AppProcess("--model", BUNDLED, "--engine", engine_name).wait_ready()
    port = first.port
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        page.goto(first.url)
        ready(page)
        set_max_new_tokens(page, 8)
        ask(page, "Name a color.")
        first.stop()
        again = AppProcess("--model", BUNDLED, "--engine", engine_name, "--port", str(port))  # the last --port wins
        again.url = first.url
        try:
            again.wait_ready()
            page.reload()
            ready(page)
            expect_titles(page, ["Name a color."])
            assert chat(page) == ["Name a color."]
        finally:
            again.stop()
    finally:
        context.close()
        if first.process.poll() is None:
            first.stop()


def test_the_api_is_unchanged(browser_app) -> None:
    from gradio_client import Client

    api = Client(browser_app.url, verbose=False).view_api(return_format="dict", print_info=False)
    assert list(api["named_endpoints"]) == ["/chat"]
    names = [p["parameter_name"] for p in api["named_endpoints"]["/chat"]["parameters"]]
    assert names[:2] == ["message", "history"]
