"""Hostile text in the real page: markup from the model or the user never runs, never
restyles the page and never freezes it (issue #16, "Safe to share").

The real app on the bundled model in headless Chromium, as in test_browser.py, whose
fixtures and helpers this reuses (`open_page` fails a test if any JavaScript dialog opens,
so payloads that `alert` are caught too). Hostile *model output* comes in the way a shared
conversation does: a chat JSON loaded with the page's Load JSON button, whose assistant
messages then take the same path to the screen as a streamed answer (`display.shown`, Gradio's
Markdown, its sanitizer); a real answer is then streamed after them. Hostile *user* text is
typed and sent. Rendering does not depend on the engine, so this runs on the default one.

Every check looks at the whole page, not only the chat, so it also covers whatever else
shows the text (the list of conversations, notes, toasts).

Math (issue #28) is drawn by KaTeX, which Gradio runs on what it cuts out of the raw text
before Markdown: real formulas are drawn, formulas that carry markup or try to restyle stay
inert, and delimiters around or inside code take nothing out of it (display.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Error, Page, expect

from phi3ui.conversations import title_for
from phi3ui.display import OPEN
from phi3ui.settings import DEFAULT_ENGINE
from tests.test_browser import (  # noqa: F401 - open_page and page are fixtures
    ANSWER,
    NOTE,
    USER,
    answer_text,
    open_page,
    page,
    ready,
    send,
    set_max_new_tokens,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.server,
              pytest.mark.parametrize("engine_name", [DEFAULT_ENGINE], indirect=True)]

COVER = '<div title=pwned style="position:fixed;inset:0;z-index:9999;background:red">cover</div>'
# Each sets window.__pwned to its own number if it runs; the last two would restyle the page.
PAYLOADS = [
    "<script>window.__pwned=1;alert(1)</script>",
    '<img src=x onerror="window.__pwned=2;alert(2)">',
    '<iframe srcdoc="<script>parent.__pwned=3;alert(3)</script>"></iframe>',
    '<a href="javascript:window.__pwned=4">click-html</a>',
    "[click-md](javascript:window.__pwned=5)",
    '<svg onload="window.__pwned=6"></svg>',
    '<details open ontoggle="window.__pwned=7">x</details>',
    "<style>body{display:none!important} *{color:red!important}</style>",
    COVER,
]
# Markup in what a simpler escaping takes for code and Markdown reads otherwise (the first
# eight and the mermaid one rendered COVER before display.py knew them).
AROUND_CODE = [
    f"x ```\n\n{COVER}",  # a fence that does not start its line
    f"\\`{COVER}`",  # an escaped backtick
    f"see http://x`{COVER}`",  # a link that takes the backtick
    f"~`{COVER}~`",  # strikethrough that does
    f"| a | b |\n|---|---|\n| `x | {COVER}` |",  # a table that splits the span
    f'[a]: /u "\n```\n"\n{COVER}',  # a link definition whose title takes the fence
    f"[x]( `) {COVER}`",  # a link whose address does
    f"`$$` x\n```\n$$\n{COVER}\n```",  # LaTeX, cut out before Markdown
    f"- a\n  ```\n  x\n     ```\n  {COVER}\nend",  # a list item's fence, read with its indentation
    f"```\nx\r```\r{COVER}",  # Markdown breaks lines at \r too
    f'```mermaid\ngraph TD\nA["{COVER}"]\n```',  # mermaid draws labels as HTML
    f"```\n   x\n    ```\n   {COVER}\n   ```",  # what reindenting (cleandoc) would break
    # math delimiters that Gradio's cut would take code apart at, if they were the typed ones
    f"$$ `$$ {COVER}`",  # a span's opening backtick
    f"\\(x `\\) {COVER}`",
    f"$a `$ {COVER}`",
    f"\\[x\n```\n\\]\n{COVER}\n```",  # a fence's opening line
    f"`{OPEN}$x` $y$ `{COVER}`",  # with display.py's own mark in code
]
# Math that KaTeX draws as this many formulas, in user messages and answers alike.
MATH = [
    ("$e^{i\\pi}+1=0$, with \\(a^2+b^2=c^2\\)", 2),
    ("$$\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}$$ and \\[\\int_0^1 x\\,dx\\]", 2),
    ("$$\n\\begin{aligned} a &= b \\\\ c &< d \\end{aligned}\n$$", 1),
    ("`$HOME` costs $5 and $6; `\\(x\\)` is code, and \\(x_1 < x_2\\) is not", 1),
]
# Math that would run, plant or restyle if it reached the page as markup, or if KaTeX
# trusted it (\\href, \\htmlStyle…); sizes and shifts meant to cover the page.
HOSTILE_MATH = [
    '$<img src=x onerror="window.__pwned=20;alert(20)">$ $$<script>window.__pwned=21</script>$$',
    f"\\({COVER}\\) \\[<style>body{{display:none!important}}</style>\\]",
    "\\[\\href{javascript:window.__pwned=22}{click-tex} \\url{javascript:window.__pwned=23}\\]",
    ("$\\htmlStyle{position:fixed;inset:0;z-index:9999;background:red}{cover}\\htmlId{message}{x}"
     "\\htmlClass{x}{y}\\htmlData{pwned=1}{z}\\includegraphics{x.png}$"),
    ("$\\rule{1000em}{1em}$ $$\\hspace{-1000em}\\colorbox{red}{\\rule{40em}{40em}}"
     "\\raisebox{-60em}{\\rlap{\\colorbox{red}{\\rule{150em}{80em}}}}\\kern-150em\\llap{\\rule{150em}{150em}}$$"),
    "\\(\\def\\a{\\a\\a}\\a\\) $$\\gdef\\b{\\b x}\\b$$ $\\color{red;position:fixed}{x}\\colorbox{red;inset:0}{y}$",
    "$x\\smash{\\raisebox{-4em}{\\llap{\\colorbox{red}{\\rule{60em}{3em}}}}}$ draws below its message",
]
SPOOF = "draws below its message"  # the last one: a box drawn over the next messages, unless cut
# What only looks like math (unbalanced, escaped, open braces, prices): shown as typed.
NOT_MATH = [
    "$$x \\(y \\[z",
    "x$ $ y$ costs $5 and $6",
    "\\\\(x\\) and \\$x$",
    "${x$ \\[ {x \\] $\\frac{1}{2$",
]
TYPED_MATH = "Is $x^2 \\ge 0$ for every real \\(x\\)? `$x$` stays code."
# Common indentation, which Gradio's Chatbot takes off a message given as a plain string.
INDENTED = "    indented\n        deeper\n\tand a tab"
LINKS = ("click-html", "click-md")
BIG = "A" * 1_000_000 + "<b>big</b>" + "A" * 1_000_000  # a 2 MB line
HANG_MS = 120_000  # a hang guard for the page's round trips, not a speed limit (the machine is shared)

# What the page would show if anything ran or restyled it.
STATE = """() => ({
    pwned: window.__pwned,
    planted: [...document.querySelectorAll(
        'body [title=pwned], iframe[srcdoc], body [onerror], body [onload], body [ontoggle], a[href^="javascript:"]'
    )].map(e => e.outerHTML.slice(0, 120)),
    code: [...document.querySelectorAll('script, style')]
        .filter(e => /__pwned|color:red!important/.test(e.textContent)).length,
    body: getComputedStyle(document.body).display,
    color: getComputedStyle(document.querySelector('#message textarea')).color,
    overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
})"""

# The page's own controls that nothing in the chat may cover: the ones a cover would hide.
# (Each control is scrolled into view first: a point outside the window hits nothing.)
COVERED = """() => ['#message textarea', '#send', '#new-chat', '#page-title', '#budget'].filter(selector => {
    const element = document.querySelector(selector);
    element.scrollIntoView({block: 'nearest'});
    const box = element.getBoundingClientRect();
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    return !(hit && (element.contains(hit) || hit.contains(element)));
})"""

# KaTeX output seen outside the message that holds it, around the message holding `text`
# (a coarse grid: hit tests are slow with the hostile formulas' huge boxes on the page).
DRAWN_OUTSIDE = """(text) => {
    const wrap = document.querySelector('#chat .bubble-wrap'), outside = [];
    const holder = [...document.querySelectorAll('#chat .message-content')].find(e => e.textContent.includes(text));
    holder.scrollIntoView({block: 'center'});
    const box = wrap.getBoundingClientRect();
    for (let x = box.left + 1; x < box.right; x += 24) {
        for (let y = box.top + 1; y < box.bottom; y += 24) {
            const math = document.elementFromPoint(x, y)?.closest('.katex, .katex-error');
            const own = math?.closest('.message-content').getBoundingClientRect();
            if (own && (x < own.left - 1 || x > own.right + 1 || y < own.top - 1 || y > own.bottom + 1)) {
                outside.push(math.closest('.message-content').textContent.slice(0, 60));
            }
        }
    }
    return [...new Set(outside)];
}"""

# Whether what draws after the text has drawn (images, and the diagrams display.py keeps
# from being drawn at all).
SETTLED = """() => [...document.images].every(image => image.complete)
    && !document.querySelector('.mermaid:not([data-processed])')"""


def guard(page: Page) -> None:
    """`window.__pwned` is 0 now and after every reload: a payload that runs changes it."""
    page.context.add_init_script("window.__pwned = 0")
    page.evaluate("window.__pwned = 0")


def settle(page: Page) -> None:
    """Until what draws after the text has drawn: every image has loaded or failed (its
    `onerror` would have run) and every diagram is drawn (Gradio's Markdown marks them
    `data-processed`), then a frame and a task later, so events queued meanwhile (a
    `toggle`, a `load`) have run too. (Not timed: the deadline only guards against a hang.)"""
    page.wait_for_function(SETTLED, timeout=HANG_MS)
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => setTimeout(done)))")


def assert_inert(page: Page) -> None:
    """Nothing ran, nothing was planted in the page, nothing restyled or widened it."""
    settle(page)
    state = page.evaluate(STATE)
    assert state == {**state, "pwned": 0, "planted": [], "code": 0}, state
    assert state["body"] != "none" and state["color"] != "rgb(255, 0, 0)", state
    assert state["overflow"] <= 0, f"the page is {state['overflow']} px wider than the window"


def click_links(page: Page) -> None:
    """Click whatever the link payloads became: links would run their javascript: URL. A link
    that opens a tab leaves the chat's tab behind it, as in a browser; the user comes back to
    the chat (`bring_to_front`), as they would. (A tab left behind only slows the test: every
    later action waits out Playwright's checks in a tab whose frames Chromium holds back.)"""
    for link in page.locator("#chat a").all():
        link.click()
        page.bring_to_front()
    for text in LINKS:
        page.locator("#chat").get_by_text(text).first.click()
    assert page.evaluate("window.__pwned") == 0


def responsive(page: Page) -> None:
    """A round trip to the page's JavaScript that counts the chat's elements: a frozen page
    does not answer. (Not timed: the deadline only guards against a hang.)"""
    page.wait_for_function("() => document.querySelectorAll('#chat *').length > 0", timeout=HANG_MS)


def fill_big(page: Page) -> None:
    """Put BIG in the message box as a paste would. A failure's message is cut short
    (Playwright's would quote all 2 MB)."""
    try:
        page.locator("#message textarea").fill(BIG, timeout=HANG_MS)
    except Error as exc:
        raise AssertionError(f"filling the box failed: {str(exc)[:300]}") from None


def wait_for_big_answer(page: Page) -> None:
    """Until BIG shows in the chat as text (checked in the page: no 2 MB in the messages)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('#chat [data-testid=bot]')]"
        ".some(e => e.textContent.length > 2e6 && e.textContent.includes('<b>big</b>'))",
        timeout=HANG_MS, polling=250)


def load_chat(page: Page, path: Path, messages: list[dict]) -> None:
    """Load a chat JSON as a user would, with the Load JSON button."""
    path.write_text(json.dumps(messages))
    with page.expect_file_chooser() as chooser:
        page.locator("#load-json").click()
    chooser.value.set_files(str(path))


def download_json(page: Page) -> list[dict]:
    with page.expect_download() as download:
        page.locator("#download-json").click()
    return json.loads(Path(download.value.path()).read_text())


def hostile_chat() -> list[dict]:
    """A chat whose every message is a payload, user and assistant alike; the plain ones
    numbered (u0, a0, …), the others as they are (some must start their message)."""
    texts = [*(f"{{role}}{i}: {text}" for i, text in enumerate(PAYLOADS)), *AROUND_CODE]
    return [{"role": role, "content": text.replace("{role}", role[0])}
            for text in texts for role in ("user", "assistant")]


def assert_round_trip(page: Page, messages: list[dict]) -> None:
    """The JSON download gives the chat back exactly, indentation included (the page gets
    text parts, which Gradio's Chatbot does not reindent)."""
    assert download_json(page)[: len(messages)] == messages


def assert_shown_as_text(page: Page, messages: list[dict], more: int = 0) -> None:
    """The plain payloads read exactly as written; the rest at least show their markup.
    `more`: exchanges after them."""
    users, answers = page.locator(USER), page.locator(ANSWER)
    expect(users).to_have_count(len(messages) // 2 + more)
    for i, text in enumerate(PAYLOADS):
        expect(users.nth(i)).to_have_text(f"u{i}: {text}")
        expect(answers.nth(i)).to_have_text(f"a{i}: {text}")
    for i in range(len(PAYLOADS), len(messages) // 2):
        expect(users.nth(i)).to_contain_text("title=pwned")
        expect(answers.nth(i)).to_contain_text("title=pwned")


def assert_listed_as_text(page: Page, messages: list[dict]) -> None:
    """The list of conversations names the chat by its first message, a payload, as text."""
    expect(page.locator("#conv-list label", has_text=title_for(messages))).to_have_count(1)


def test_hostile_history_stays_text_in_chat_inspector_and_after_reload(page: Page, tmp_path: Path) -> None:
    guard(page)
    messages = hostile_chat()
    load_chat(page, tmp_path / "hostile.json", messages)
    assert_shown_as_text(page, messages)
    assert_listed_as_text(page, messages)
    assert_inert(page)
    click_links(page)

    set_max_new_tokens(page, 8)  # a real answer streams after it, through the same rendering
    send(page, "Say hello.")
    wait_idle(page)
    assert answer_text(page)
    expect(page.locator(NOTE).last).to_contain_text("answer tokens")  # the stats line
    expect(page.locator("#budget")).to_contain_text("Context")
    assert_inert(page)

    page.get_by_text("Prompt inspector").click()
    inspector = page.locator("#inspector")  # an editor that draws only the lines in view
    for text in PAYLOADS[:2]:
        expect(inspector).to_contain_text(text)
    assert_inert(page)

    page.reload()  # the chat comes back from the browser's storage
    ready(page)
    assert_shown_as_text(page, messages, more=1)
    assert_listed_as_text(page, messages)
    assert_inert(page)
    click_links(page)
    assert_round_trip(page, messages)


def test_hostile_user_text_goes_through_the_backend_and_downloads(page: Page, tmp_path: Path) -> None:
    """Typed and sent (the app's limit here is 200 characters), answered by the model, and
    downloaded: the JSON gives back the text exactly, the Markdown is a text file."""
    guard(page)
    set_max_new_tokens(page, 4)
    texts = [*PAYLOADS, AROUND_CODE[0], AROUND_CODE[1], INDENTED]
    for text in texts:
        send(page, text)
        wait_idle(page)
    users = page.locator(USER)
    for i, text in enumerate(texts[: len(PAYLOADS)]):
        expect(users.nth(i)).to_have_text(text)
    assert_inert(page)
    click_links(page)

    assert [m["content"] for m in download_json(page) if m["role"] == "user"] == texts

    with page.expect_download() as download:
        page.locator("#download-md").click()
    assert download.value.suggested_filename.endswith(".md")
    markdown = Path(download.value.path()).read_text()
    assert all(f"**User:**\n\n{text}" in markdown for text in texts)
    served = page.request.get(download.value.url)
    assert not served.headers.get("content-type", "").startswith("text/html"), served.headers
    assert_inert(page)


def test_two_megabyte_line_from_the_user_is_refused_and_kept(page: Page) -> None:
    guard(page)
    fill_big(page)
    responsive(page)
    too_long = "The message is 2,000,010 characters; the limit is 200."
    expect(page.locator("#budget")).to_contain_text(too_long)  # said before Send, and after
    page.locator("#send").click()
    expect(page.locator("#budget")).to_contain_text(too_long)
    kept = page.evaluate("() => document.querySelector('#message textarea').value")
    assert kept == BIG, f"the box holds {len(kept):,} characters"
    assert page.locator(USER).count() == 0
    responsive(page)
    assert_inert(page)

    page.locator("#message textarea").fill("")  # the user gives up on it: Send still works
    set_max_new_tokens(page, 4)
    send(page, "Say hello.")
    wait_idle(page)
    assert answer_text(page)
    # the later event: once this answer is in, the refused 2 MB message never joined the chat
    assert page.locator(USER).all_inner_texts() == ["Say hello."]


def test_two_megabyte_line_from_the_model_renders_without_freezing(page: Page, tmp_path: Path) -> None:
    """A loaded 2 MB answer shows as text, the page keeps answering, and the line wraps
    or scrolls inside the chat instead of widening the page."""
    guard(page)
    load_chat(page, tmp_path / "big.json",
              [{"role": "user", "content": "A long line?"}, {"role": "assistant", "content": BIG}])
    wait_for_big_answer(page)
    responsive(page)
    chat = page.locator("#chat").bounding_box()
    width = page.evaluate("() => document.documentElement.clientWidth")
    assert chat and chat["x"] + chat["width"] <= width, (chat, width)
    assert_inert(page)

    set_max_new_tokens(page, 4)  # the page still sends and streams an answer after it
    send(page, "Say hello.")
    wait_idle(page)
    responsive(page)
    assert page.locator(ANSWER).count() == 2
    assert_inert(page)


def test_a_chat_file_with_markup_in_its_roles_is_refused_as_text(page: Page, tmp_path: Path) -> None:
    """A file's errors quote it (roles are named in the message): still text."""
    guard(page)
    load_chat(page, tmp_path / "roles.json", [{"role": COVER + PAYLOADS[1], "content": "x"}])
    expect(page.locator("#conv-note")).to_contain_text("⚠️")  # the refusal, in a note under the chat
    assert page.locator(USER).count() == 0
    assert_inert(page)


def math_chat() -> list[dict]:
    """Each math text as a user message and as an answer."""
    texts = [*(text for text, _ in MATH), *HOSTILE_MATH, *NOT_MATH]
    return [{"role": role, "content": text} for text in texts for role in ("user", "assistant")]


def assert_math_drawn(page: Page) -> None:
    """Real formulas drawn, without errors; hostile ones drawn too (as errors, some: KaTeX
    does not trust them); what only looks like math shown as typed, nothing drawn."""
    users, answers = page.locator(USER), page.locator(ANSWER)
    for i, (_, formulas) in enumerate(MATH):
        for message in (users.nth(i), answers.nth(i)):
            expect(message.locator(".katex")).to_have_count(formulas)
            expect(message.locator(".katex-error")).to_have_count(0)
    for i in range(len(MATH), len(MATH) + len(HOSTILE_MATH)):
        for message in (users.nth(i), answers.nth(i)):
            expect(message.locator(".katex, .katex-error").first).to_be_attached()
    for i, text in enumerate(NOT_MATH, len(MATH) + len(HOSTILE_MATH)):
        for message in (users.nth(i), answers.nth(i)):
            expect(message).to_have_text(text)
            expect(message.locator(".katex")).to_have_count(0)


def assert_uncovered(page: Page) -> None:
    """Nothing drawn over the page's controls or outside its message, and nothing in the
    chat fixed to the window."""
    assert page.evaluate(COVERED) == []
    assert page.evaluate(DRAWN_OUTSIDE, SPOOF) == []
    assert page.evaluate("() => document.querySelectorAll('#chat [style*=fixed]').length") == 0


def test_math_is_drawn_and_stays_inert(page: Page, tmp_path: Path) -> None:
    """Loaded, typed and sent, and after a reload: real math is drawn by KaTeX, math that
    carries markup or tries to restyle is inert, and the JSON download gives it all back."""
    guard(page)
    messages = math_chat()
    load_chat(page, tmp_path / "math.json", messages)
    assert_math_drawn(page)
    assert_inert(page)
    assert_uncovered(page)
    for link in page.locator("#chat a").all():
        link.click()
    assert page.evaluate("window.__pwned") == 0

    set_max_new_tokens(page, 4)
    send(page, TYPED_MATH)
    wait_idle(page)
    typed = page.locator(USER).last
    expect(typed.locator(".katex")).to_have_count(2)
    expect(typed.locator("code")).to_have_text("$x$")
    assert_inert(page)

    page.reload()  # the chat comes back from the browser's storage
    ready(page)
    assert_math_drawn(page)
    expect(page.locator(USER).last.locator(".katex")).to_have_count(2)
    assert_inert(page)
    assert_uncovered(page)
    assert_round_trip(page, messages)
    assert [m["content"] for m in download_json(page) if m["role"] == "user"][-1] == TYPED_MATH


def test_a_refusal_quoting_dollars_around_code_stays_text(page: Page, tmp_path: Path) -> None:
    """A file's errors quote it, through to_display, in a note under the chat: `$$` in the
    quote's prose and in its code must not take the code apart."""
    guard(page)
    load_chat(page, tmp_path / "roles.json", [{"role": f"$$ `$$ {COVER}`", "content": "x"}])
    expect(page.locator("#conv-note")).to_contain_text("⚠️")
    assert_inert(page)
    expect(page.locator("#conv-note")).to_contain_text("title=pwned")
