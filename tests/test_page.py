"""The page's answer loop and its races (Stop, Clear, closing the tab), on a fake backend
whose answers are real `Answer` objects; no server, no model."""

from __future__ import annotations

import itertools
import threading
import time
from types import SimpleNamespace

import gradio as gr

from phi3ui import service
from phi3ui.answer import Answer, Stats
from phi3ui.chat import ChatBackend
from phi3ui.display import STOPPED, chat_messages, note, shown
from phi3ui.prompt import Fitted, message_text
from phi3ui.settings import Limits
from phi3ui.structured import Piece, Prompt
from phi3ui.ui import STREAM_INTERVAL_S, Page
from tests.waiting import wait_until

# --- the page's answer loop, on a fake backend -------------------------------------------

class FakeBackend:
    """Answers with given chunks, a delay before each; records whether an answer started and
    whether its reader left before the end. Like the engines, an answer stopped before it
    started never starts, and a Stop ends it before the next chunk."""

    limits = Limits()
    concurrency = 1
    engine = SimpleNamespace(render=lambda messages: "".join(m["content"] for m in messages), count_tokens=len,
                             context_window=100, system_ok=True, notices=())
    preparation = None  # nothing being prepared: the real backend's answers to "how far has it got?"
    preparing, not_ready = ChatBackend.preparing, ChatBackend.not_ready

    def __init__(self, chunks: list[str], delay: float = 0.0, error: Exception | None = None,
                 stopped: bool = False, dropped: int = 0):
        self.chunks, self.delay, self.error, self.stopped, self.dropped = chunks, delay, error, stopped, dropped
        self.closed = self.started = False

    def prepare(self, history, message, settings, draft=False) -> Fitted:
        prompt = Prompt((Piece("<|user|>\n", False), Piece("hi", True), Piece("<|end|>\n", False)))
        return Fitted(prompt, 5, self.dropped, 100, settings.max_new_tokens)

    def start(self, fitted, settings) -> Answer:
        return Answer(self.produce)

    def produce(self, stop: threading.Event):
        if stop.is_set():
            return Stats(5, 0, 0.0, 0.0, 0.0, stopped=True)
        self.started, finished = True, False
        try:
            for i, chunk in enumerate(self.chunks):
                time.sleep(self.delay)
                if stop.is_set():
                    finished = True
                    return Stats(5, i, 0.01, 100.0, 0.1, stopped=True, text="".join(self.chunks[:i]))
                yield chunk
            if self.error:
                raise self.error
            finished = True
            return Stats(5, len(self.chunks), 0.01, 100.0, 0.1, stopped=self.stopped, text="".join(self.chunks))
        finally:
            self.closed = not finished


GEN = (16, 0.0, 1.0, 50, 1.0, -1, "")
REQUEST = SimpleNamespace(session_hash="s1")
ASKED = [{"role": "user", "content": "hi"}]


def answer(backend: FakeBackend) -> list[list]:
    return list(Page(backend).respond(REQUEST, ASKED, *GEN))


class Clock:
    """A clock that moves `step_s` each time it is read, whatever the machine's speed: the
    time an answer takes on it is the same on every run."""

    def __init__(self, step_s: float):
        self.step_s, self.now = step_s, 0.0

    def monotonic(self) -> float:
        self.now += self.step_s
        return self.now


def test_updates_are_batched_by_time_and_end_with_stats(monkeypatch) -> None:
    """At most one update per STREAM_INTERVAL_S of the answer's time, plus the first text
    and the stats: not one per token. Timed by a `Clock` that the answer loop reads (about
    0.1 s of it for 100 tokens), so the count is the same on a loaded machine."""
    clock = Clock(step_s=STREAM_INTERVAL_S / 50)
    monkeypatch.setattr(service, "time", clock)
    chunks = [f"w{i} <" for i in range(100)]
    updates = answer(FakeBackend(chunks))
    assert 3 <= len(updates) <= clock.now / STREAM_INTERVAL_S + 2, "one update per token, or none while streaming"
    final = updates[-1]
    assert final[1] == {"role": "assistant", "content": shown("".join(chunks))}
    assert final[2]["metadata"]["title"].endswith("5 prompt + 100 answer tokens")
    assert chat_messages(final) == [*ASKED, {"role": "assistant", "content": "".join(chunks)}]


def test_stopped_answer_is_kept_and_marked() -> None:
    final = answer(FakeBackend(["partial"], stopped=True))[-1]
    assert final[1]["content"] == shown("partial")
    assert final[2]["metadata"]["title"].startswith(STOPPED)


def test_dropped_exchanges_are_reported_under_the_answer() -> None:
    final = answer(FakeBackend(["ok"], dropped=2))[-1]
    assert "2 oldest exchange(s)" in final[2]["content"]


def test_a_failing_model_is_shown_in_the_page() -> None:
    final = answer(FakeBackend(["par", "tial"], error=RuntimeError("device lost")))[-1]
    assert final[1]["content"] == shown("partial")
    assert final[2]["metadata"]["title"].startswith("⚠️") and "device lost" in final[2]["content"]


def test_closing_the_page_closes_the_stream() -> None:
    backend = FakeBackend(["a"] * 50, delay=0.01)
    updates = Page(backend).respond(REQUEST, ASKED, *GEN)
    next(updates)
    updates.close()  # what Gradio does when the tab goes away
    assert backend.closed


def test_budget_says_how_many_exchanges_were_left_out() -> None:
    budget, inspector = Page(FakeBackend([], dropped=3)).budget(ASKED, "next", *GEN)
    assert "21 of 100 tokens" in budget and "no longer sees the 3 oldest exchange(s)" in budget
    assert inspector.startswith("5 tokens") and "⟦<|user|>⏎\n⟧hi⟦<|end|>⏎\n⟧" in inspector


def test_stop_while_queued_means_the_answer_never_starts() -> None:
    backend = FakeBackend(["never"])
    page = Page(backend)
    page.stop(REQUEST)
    updates = list(page.respond(REQUEST, ASKED, *GEN))
    assert updates == [[*ASKED, note(f"{STOPPED} before it started")]]
    assert not backend.started and list(page.respond(REQUEST, ASKED, *GEN))[-1][1]["content"] == shown("never")


def test_a_late_stop_is_forgotten_after_the_change() -> None:
    backend = FakeBackend(["ok"])
    page = Page(backend)
    page.stop(REQUEST)  # pressed just as the answer ended
    page.after_change(REQUEST, [*ASKED, {"role": "assistant", "content": "ok"}], "", *GEN)
    assert list(page.respond(REQUEST, ASKED, *GEN))[-1][1]["content"] == shown("ok")


def test_after_clear_a_cancelled_answer_saves_nothing() -> None:
    """Clear races the cancelled answer's after_answer step, which may still read the old
    chat: it must not save it."""
    backend = FakeBackend(["partial"])
    page = Page(backend)
    old = [*ASKED, {"role": "assistant", "content": "partial"}]
    list(page.respond(REQUEST, ASKED, *GEN))
    assert page.after_answer(REQUEST, old, "", *GEN)[0] == old, "an answer that was not cleared is saved"
    page.replace_chat(REQUEST)  # Clear
    saved, *rest = page.after_answer(REQUEST, old, "", *GEN)
    assert saved == gr.skip() and all(value == gr.skip() for value in rest)
    # one value per output: the chat to save and its details (the controls come back after the save)
    assert len(rest) == len(page.changed(REQUEST, old, "", *GEN)) - 1


def test_stop_while_the_prompt_is_being_fitted_stops_before_the_answer_starts() -> None:
    """Stop can arrive after `respond` began but before its answer exists (fitting a long
    chat takes a moment): the answer must then never start."""
    page: Page

    class SlowFit(FakeBackend):
        def prepare(self, history, message, settings, draft=False) -> Fitted:
            page.stop(REQUEST)  # the user presses Stop while the prompt is being fitted
            return super().prepare(history, message, settings, draft)

    backend = SlowFit(["never"] * 5)
    page = Page(backend)
    updates = list(page.respond(REQUEST, ASKED, *GEN))
    assert not backend.started
    assert updates[-1] == [*ASKED, note(f"{STOPPED} before it started")]


def test_stop_as_the_answer_starts_stops_it() -> None:
    """A Stop landing the moment the answer begins reaches it: the answer ends at once."""
    page: Page

    class PressedAtStart(FakeBackend):
        def produce(self, stop):
            page.stop(REQUEST)  # the user presses Stop here
            return (yield from super().produce(stop))

    backend = PressedAtStart([f"w{i} " for i in range(50)])
    page = Page(backend)
    updates = list(page.respond(REQUEST, ASKED, *GEN))
    assert updates[-1][-1]["metadata"]["title"].startswith(STOPPED)
    assert "w2" not in str(updates[-1])


def test_stop_mid_answer_keeps_the_text_so_far() -> None:
    page: Page

    class PressedMidAnswer(FakeBackend):
        def produce(self, stop):
            inner = super().produce(stop)
            for sent in itertools.count(1):
                try:
                    chunk = next(inner)
                except StopIteration as end:
                    return end.value
                yield chunk
                if sent == 10:
                    page.stop(REQUEST)  # the user presses Stop mid-answer

    backend = PressedMidAnswer([f"w{i} " for i in range(200)])
    page = Page(backend)
    final = list(page.respond(REQUEST, ASKED, *GEN))[-1]
    text = message_text(final[1]["content"])
    assert text.startswith("w0 w1 ") and "w199" not in text
    assert final[2]["metadata"]["title"].startswith(STOPPED) and not backend.closed


def test_budgets_worked_out_at_once_are_bounded() -> None:
    """The budget runs outside the queue; a flood of calls must not all tokenise at once."""
    release = threading.Event()
    started: list[int] = []

    class Slow(FakeBackend):
        def prepare(self, history, message, settings, draft=False) -> Fitted:
            started.append(1)
            release.wait(120)
            return super().prepare(history, message, settings, draft)

    page = Page(Slow([]))
    results: list[tuple] = []
    threads = [threading.Thread(target=lambda: results.append(page.budget(ASKED, "hi", *GEN))) for _ in range(10)]
    for thread in threads:
        thread.start()
    # the calls beyond the slots come back at once, skipped...
    wait_until(lambda: len(results) >= 6, 120, lambda: f"6 calls back ({len(results)} back, {len(started)} started)",
               every_s=0.01)
    assert len(started) == 4  # ...so no more than the four holding a slot can be tokenising
    release.set()
    for thread in threads:
        thread.join(120)
    skipped = [r for r in results if r == (gr.skip(), gr.skip())]
    assert len(skipped) == 6 and all("**Context**" in r[0] for r in results if r not in skipped)
    assert "**Context**" in page.budget(ASKED, "hi", *GEN)[0], "the slots are given back"
