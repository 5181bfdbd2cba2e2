"""How chat text is escaped for display and recovered for the model (no server, no model)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import gradio as gr
import pytest

from phi3ui.engines import Stats
from phi3ui.prompt import Fitted
from phi3ui.settings import Limits
from phi3ui.ui import (
    STOPPED,
    STREAM_INTERVAL_S,
    Page,
    chat_messages,
    from_display,
    note,
    stats_title,
    stored_chat,
    to_display,
)

XSS = ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>"]
TEXTS = [
    "",
    "plain text",
    *XSS,
    "&lt; typed literally, and &amp; and &gt; too",
    "a < b && c > d",
    "inline `<b>code</b>` and <b>prose</b>",
    "```html\n<script>alert(1)</script>\n```\nafter the fence <i>",
    "```python\nif a < b and c > d:\n    pass\n```",
    "unclosed fence ```\n<b>still code</b>",
    "two spans `a<b` and `c>d` with <x> between",
    "`unclosed inline <b>",
    "中文、日本語、emoji 🎉 <tag> & more",
    "line one\n\n<p>line two</p>\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text: str) -> None:
    assert from_display(to_display(text)) == text


@pytest.mark.parametrize("text", XSS)
def test_markup_outside_code_is_escaped(text: str) -> None:
    shown = to_display(text)
    assert "<" not in shown and ">" not in shown
    assert shown.startswith("&lt;")


def test_literal_entity_is_not_unescaped_twice() -> None:
    assert to_display("&lt;") == "&amp;lt;"
    assert from_display("&amp;lt;") == "&lt;"


def test_code_is_left_alone() -> None:
    fence = "```html\n<b>x</b> & y\n```"
    assert to_display(fence) == fence
    assert to_display("say `<b>` now <b>") == "say `<b>` now &lt;b&gt;"


def test_chat_messages_drop_notes_and_unescape() -> None:
    display = [
        {"role": "user", "content": to_display(XSS[0])},
        {"role": "assistant", "content": to_display("a < b")},
        note("0.1 s to first token"),
        {"role": "user", "content": [{"type": "text", "text": to_display("&lt;")}]},
    ]
    assert chat_messages(display) == [
        {"role": "user", "content": XSS[0]},
        {"role": "assistant", "content": "a < b"},
        {"role": "user", "content": "&lt;"},
    ]


def test_stats_title_marks_stopped_answers_once() -> None:
    stats = Stats(prompt_tokens=10, answer_tokens=3, ttft_s=0.5, tokens_per_s=20.0, total_s=0.6, stopped=True)
    title = stats_title(stats)
    assert title.startswith(STOPPED) and title.count("topped") == 1
    assert "10 prompt + 3 answer tokens" in title
    assert not stats_title(Stats(10, 3, 0.5, 20.0, 0.6)).startswith(STOPPED)


@pytest.mark.parametrize("stored", [None, "text", [{"role": "robot", "content": "x"}], [1, 2]])
def test_stored_chat_ignores_what_is_not_a_chat(stored) -> None:
    assert stored_chat(stored) == []


# --- the page's answer loop, on a fake backend -------------------------------------------

class FakeBackend:
    """Streams given chunks with a delay; records whether the stream was closed early."""

    limits = Limits()
    engine = SimpleNamespace(render=lambda messages: "".join(m["content"] for m in messages), count_tokens=len,
                             context_window=100, system_ok=True)

    def __init__(self, chunks: list[str], delay: float = 0.0, error: Exception | None = None,
                 stopped: bool = False, dropped: int = 0):
        self.chunks, self.delay, self.error, self.stopped, self.dropped = chunks, delay, error, stopped, dropped
        self.closed = False

    def prepare(self, history, message, settings, draft=False) -> Fitted:
        return Fitted("<|user|>\nhi<|end|>\n", 5, self.dropped, 100, settings.max_new_tokens)

    def stream(self, fitted, settings, session=None):
        finished = False
        try:
            for chunk in self.chunks:
                time.sleep(self.delay)
                yield chunk
            if self.error:
                raise self.error
            finished = True
            yield Stats(5, len(self.chunks), 0.01, 100.0, 0.1, stopped=self.stopped, text="".join(self.chunks))
        finally:
            self.closed = not finished


GEN = (16, 0.0, 1.0, 50, 1.0, -1, "")
REQUEST = SimpleNamespace(session_hash="s1")
ASKED = [{"role": "user", "content": "hi"}]


def answer(backend: FakeBackend) -> list[list]:
    return list(Page(backend).respond(REQUEST, ASKED, *GEN))


def test_updates_are_batched_by_time_and_end_with_stats() -> None:
    chunks = [f"w{i} <" for i in range(100)]
    backend = FakeBackend(chunks, delay=0.002)  # 100 tokens in about 0.2 s or more
    started = time.monotonic()
    updates = answer(backend)
    elapsed = time.monotonic() - started
    assert len(updates) <= elapsed / STREAM_INTERVAL_S + 2, "one update per token"
    final = updates[-1]
    assert final[1] == {"role": "assistant", "content": to_display("".join(chunks))}
    assert final[2]["metadata"]["title"].endswith("5 prompt + 100 answer tokens")
    assert chat_messages(final) == [*ASKED, {"role": "assistant", "content": "".join(chunks)}]


def test_stopped_answer_is_kept_and_marked() -> None:
    final = answer(FakeBackend(["partial"], stopped=True))[-1]
    assert final[1]["content"] == "partial"
    assert final[2]["metadata"]["title"].startswith(STOPPED)


def test_dropped_exchanges_are_reported_under_the_answer() -> None:
    final = answer(FakeBackend(["ok"], dropped=2))[-1]
    assert "2 oldest exchange(s)" in final[2]["content"]


def test_a_failing_model_is_shown_in_the_page() -> None:
    final = answer(FakeBackend(["par", "tial"], error=RuntimeError("device lost")))[-1]
    assert final[1]["content"] == "partial"
    assert final[2]["metadata"]["title"].startswith("⚠️") and "device lost" in final[2]["content"]


def test_closing_the_page_closes_the_stream() -> None:
    backend = FakeBackend(["a"] * 50, delay=0.01)
    updates = Page(backend).respond(REQUEST, ASKED, *GEN)
    next(updates)
    updates.close()  # what Gradio does when the tab goes away
    assert backend.closed


def test_budget_says_how_many_exchanges_were_left_out() -> None:
    line, inspector = Page(FakeBackend([], dropped=3)).budget(ASKED, "next", *GEN)
    assert "21 of 100 tokens" in line and "3 oldest exchange(s) left out" in line
    assert inspector.startswith("5 tokens") and "<|end|>⏎" in inspector


def test_stop_while_queued_means_the_answer_never_starts() -> None:
    backend = FakeBackend(["never"])
    backend.stop = lambda session: False  # nothing of this session is generating yet
    page = Page(backend)
    page.stop(REQUEST)
    updates = list(page.respond(REQUEST, ASKED, *GEN))
    assert updates == [[*ASKED, note(f"{STOPPED} before it started")]]
    assert not backend.closed and list(page.respond(REQUEST, ASKED, *GEN))[-1][1]["content"] == "never"


def test_a_late_stop_is_forgotten_when_the_chat_settles() -> None:
    backend = FakeBackend(["ok"])
    backend.stop = lambda session: False
    page = Page(backend)
    page.stop(REQUEST)  # pressed just as the answer ended
    page.settle(REQUEST, [*ASKED, {"role": "assistant", "content": "ok"}], "", *GEN)
    assert list(page.respond(REQUEST, ASKED, *GEN))[-1][1]["content"] == "ok"


def test_after_clear_a_cancelled_answer_saves_nothing_and_nothing_refills_the_page() -> None:
    """Clear races the cancelled answer's settle step, which may still read the old chat:
    it must not save it, and the saved chat must not refill the cleared page."""
    backend = FakeBackend(["partial"])
    backend.stop = lambda session: True  # the answer was running
    page = Page(backend)
    old = [*ASKED, {"role": "assistant", "content": "partial"}]
    list(page.respond(REQUEST, ASKED, *GEN))
    assert page.settle_answer(REQUEST, old, "", *GEN)[0] == old, "an answer that was not cleared is saved"
    page.replace_chat(REQUEST)  # Clear
    saved, *rest = page.settle_answer(REQUEST, old, "", *GEN)
    assert saved == gr.skip() and rest[-3:] == list(page.busy(False))
    assert len(rest) == len(page.settle(REQUEST, old, "", *GEN)) - 1, "one value per output of settle"
    assert page.restore(REQUEST, old, []) == gr.skip()
    assert page.restore(SimpleNamespace(session_hash="a new page"), old, []) == old


def test_stop_while_the_prompt_is_being_fitted_stops_before_the_answer_starts() -> None:
    """Stop can arrive after `respond` began but before the answer registered its stop event
    (fitting a long chat takes a moment): the answer must then never start."""
    class SlowFit(FakeBackend):
        streamed = False

        def prepare(self, history, message, settings, draft=False) -> Fitted:
            time.sleep(0.3)
            return super().prepare(history, message, settings, draft)

        def stream(self, fitted, settings, session=None):
            self.streamed = True
            yield from super().stream(fitted, settings, session)

        def stop(self, session) -> bool:
            return False  # nothing streaming yet

    backend = SlowFit(["never"] * 5)
    page = Page(backend)
    stopper = threading.Timer(0.1, page.stop, [REQUEST])
    stopper.start()
    updates = list(page.respond(REQUEST, ASKED, *GEN))
    stopper.join()
    assert not backend.streamed
    assert updates[-1][-1]["metadata"]["title"].startswith(STOPPED)


def test_stop_just_before_the_stream_registers_still_stops_it() -> None:
    """The stream registers its stop event when it starts; a Stop landing between `respond`'s
    check and that moment is remembered by the page and passed on at the first token."""
    page: Page

    class LateRegistration(FakeBackend):
        registered = stop_seen = False

        def stream(self, fitted, settings, session=None):
            page.stop(REQUEST)  # the user presses Stop here
            self.registered = True
            for i, chunk in enumerate(self.chunks):
                if self.stop_seen:
                    yield Stats(5, i, 0.01, 100.0, 0.1, stopped=True, text="".join(self.chunks[:i]))
                    return
                yield chunk

        def stop(self, session) -> bool:
            self.stop_seen = self.registered
            return self.registered

    backend = LateRegistration([f"w{i} " for i in range(50)])
    page = Page(backend)
    updates = list(page.respond(REQUEST, ASKED, *GEN))
    assert backend.stop_seen
    assert updates[-1][-1]["metadata"]["title"].startswith(STOPPED)
    assert "w2" not in updates[-1][-2]["content"]


def test_budget_lines_worked_out_at_once_are_bounded() -> None:
    """The budget runs outside the queue; a flood of calls must not all tokenise at once."""
    release = threading.Event()
    started: list[int] = []

    class Slow(FakeBackend):
        def prepare(self, history, message, settings, draft=False) -> Fitted:
            started.append(1)
            release.wait(10)
            return super().prepare(history, message, settings, draft)

    page = Page(Slow([]))
    results: list[tuple] = []
    threads = [threading.Thread(target=lambda: results.append(page.budget(ASKED, "hi", *GEN))) for _ in range(10)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    assert len(started) == 4
    release.set()
    for thread in threads:
        thread.join(10)
    skipped = [r for r in results if r == (gr.skip(), gr.skip())]
    assert len(skipped) == 6 and all("**Context**" in r[0] for r in results if r not in skipped)
    assert "**Context**" in page.budget(ASKED, "hi", *GEN)[0], "the slots are given back"
