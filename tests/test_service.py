"""The one way in for answers (`ChatService`, `Turn`) and the one table of errors, on a fake
backend whose answers are real `Answer` objects; no server, no model."""

from __future__ import annotations

import logging
import threading

import pytest

from phi3ui import errors
from phi3ui.errors import MODEL_FAILED, ModelNotLoaded, RemoteError, ServerBusy, SystemPromptLocked, problem
from phi3ui.export import ExportError
from phi3ui.fairness import FairUse, Gate, LimitReached
from phi3ui.prompt import MessageTooLong, PromptError
from phi3ui import service
from phi3ui.service import PACED_CHARS, Caller, ChatService
from phi3ui.settings import GenerationSettings, SettingsError
from tests.test_page import Clock, FakeBackend

SETTINGS = GenerationSettings(max_new_tokens=8)


class Held(FakeBackend):
    """Answers whose generation waits until `go` is set (an engine slot held by another)."""

    def __init__(self, chunks: list[str], **kwargs):
        super().__init__(chunks, **kwargs)
        self.go = threading.Event()

    def produce(self, stop: threading.Event):
        while not self.go.wait(0.01):
            if stop.is_set():
                return (yield from super().produce(stop))
        return (yield from super().produce(stop))


def public(backend: FakeBackend, waiting: int = 64) -> ChatService:
    return ChatService(backend, Gate(FairUse(rate_per_minute=100)), waiting=waiting)


def test_a_queued_request_counts_against_its_client() -> None:
    """A client whose first answer has not started yet (it waits for a slot) cannot queue a
    second one behind it; another client can."""
    backend = Held(["a", "b"])
    service = public(backend)
    first = service.open(Caller("/chat", "1.2.3.4"), [], "hi", SETTINGS)
    with pytest.raises(LimitReached) as refused:
        service.open(Caller("/chat", "1.2.3.4"), [], "hi again", SETTINGS)
    assert refused.value.limit == "busy" and "One answer at a time" in str(refused.value)
    other = service.open(Caller("/v1", "5.6.7.8"), [], "hello", SETTINGS)
    backend.go.set()
    with first, other:
        assert "".join(first) == "ab" and "".join(other) == "ab"
    service.open(Caller("/chat", "1.2.3.4"), [], "now", SETTINGS).close()  # the ticket came back


def test_a_full_line_is_refused_at_once_and_its_place_comes_back() -> None:
    backend = Held(["a"])
    service = ChatService(backend, Gate(), waiting=0)  # one place: the one slot
    turn = service.open(Caller("page", "1.2.3.4", "tab-a"), [], "hi", SETTINGS)
    with pytest.raises(ServerBusy):
        service.open(Caller("page", "5.6.7.8", "tab-b"), [], "hi", SETTINGS)
    turn.close()  # never read: stopped before it started
    assert not backend.started
    service.open(Caller("page", "5.6.7.8", "tab-b"), [], "hi", SETTINGS).close()


def test_a_request_that_cannot_be_answered_gives_its_place_back() -> None:
    class TooLong(FakeBackend):
        def prepare(self, history, message, settings, draft=False):
            raise MessageTooLong("The message alone is 5,000 tokens; the window holds 4,096.")

    service = ChatService(TooLong([]), Gate(FairUse(rate_per_minute=100)), waiting=0)
    for _ in range(3):  # the same client again and again: neither ticket nor place is kept
        with pytest.raises(MessageTooLong):
            service.open(Caller("/v1", "1.2.3.4"), [], "x" * 5000, SETTINGS)


def test_the_log_says_how_each_answer_ended(caplog) -> None:
    """A failure is logged as a failure, not as a client that went away."""
    caplog.set_level(logging.INFO, logger="phi3ui.service")
    service = ChatService(FakeBackend(["par"], error=RuntimeError("plugin.cpp:12 exploded")), Gate())
    with pytest.raises(RuntimeError), service.open(Caller("/v1", "1.2.3.4"), [], "hi", SETTINGS) as turn:
        list(turn)
    assert "/v1 answer failed (RuntimeError)" in caplog.text and "went away" not in caplog.text

    caplog.clear()
    with ChatService(FakeBackend(["a", "b", "c"]), Gate()).open(Caller("page", "1.2.3.4", "s"), [], "hi",
                                                                 SETTINGS) as turn:
        next(iter(turn))  # the reader leaves after one chunk
    assert "page answer stopped (the client went away)" in caplog.text

    caplog.clear()
    with ChatService(FakeBackend(["a"]), Gate()).open(Caller("/chat", "1.2.3.4"), [], "hi", SETTINGS) as turn:
        list(turn)
    assert "/chat answer done after 1 tokens" in caplog.text


@pytest.mark.parametrize("exc, status, code", [
    (LimitReached("busy", 2, "One answer at a time"), 429, "one_at_a_time"),
    (LimitReached("rate", 7, "Too many requests"), 429, "rate_limit_exceeded"),
    (ServerBusy(), 503, "server_busy"),
    (ModelNotLoaded("No model is loaded yet"), 503, "model_not_loaded"),
    (SystemPromptLocked("This server sets its own system prompt"), 400, "system_prompt_locked"),
    (MessageTooLong("too long"), 400, "context_length_exceeded"),
    (PromptError("The message is empty."), 400, None),
    (SettingsError("Temperature must be between 0 and 2."), 400, None),
    (ExportError("Group size 128 does not divide 576."), 400, None),
    (RemoteError("The remote engine is down.", 502, "remote_unreachable", detail="/srv/secret"), 502,
     "remote_unreachable"),
    (RuntimeError("/srv/models/plugin.cpp:12 exploded"), 500, "model_failed"),
])
def test_one_table_tells_every_door(exc, status, code) -> None:
    told, host = problem(exc, locked=True), problem(exc, locked=False)
    assert (told.status, told.code) == (status, code)
    assert told.refused == (status < 500 or status == 503)
    if status < 500 or status == 503:
        assert told.text == str(exc)  # a refusal is written for the visitor
    if status in (500, 502):
        assert "/srv" not in told.text and "/srv" in host.text  # the host reads it all; visitors do not
    if status == 500:
        assert told.text == MODEL_FAILED
    if told.status in (429, 503):
        assert told.retry_after_s


def test_a_remote_refusal_of_the_visitors_request_keeps_its_reason() -> None:
    told = errors.problem(RemoteError("The remote refused.", 400, "remote_refused",
                                      detail="maximum context length is 4096"), locked=True)
    assert told.status == 400 and "maximum context length" in told.text and told.kind == "invalid_request_error"


def test_a_long_answer_is_updated_less_often_in_proportion(monkeypatch) -> None:
    """Each update is redrawn whole: past PACED_CHARS the gap between updates grows with the
    text, so the characters redrawn a second stay bounded. Timed by a `Clock` that moves each
    time it is read, the same on any machine."""
    clock = Clock(step_s=0.01)
    monkeypatch.setattr(service, "time", clock)
    chunks = ["x" * 99 + " " for _ in range(400)]  # 40,000 characters
    with ChatService(FakeBackend(chunks), Gate()).open(Caller("/chat", "1.2.3.4"), [], "hi", SETTINGS) as turn:
        updates = [(clock.now, len(text)) for text in turn.texts(every_s=0.05)]
    gaps = [(now - before, shown) for (before, shown), (now, _) in zip(updates, updates[1:-1])]
    assert all(gap >= 0.05 * max(1, shown / PACED_CHARS) for gap, shown in gaps), gaps
    assert max(gap for gap, _ in gaps) >= 0.05 * 10, "a 20,000-character answer waits ten times longer"
    redrawn = sum(shown for _, shown in updates[:-1]) / (updates[-2][0] - updates[0][0])
    assert redrawn <= 2 * PACED_CHARS / 0.05, f"{redrawn:.0f} characters redrawn a second"


def test_texts_are_paced_and_end_with_the_whole_answer() -> None:
    chunks = [f"{i} " for i in range(200)]
    with ChatService(FakeBackend(chunks), Gate()).open(Caller("/chat", "1.2.3.4"), [], "hi", SETTINGS) as turn:
        texts = list(turn.texts(every_s=3600))
    assert texts == ["0 ", "".join(chunks)]  # the first at once, then only the end
    with ChatService(FakeBackend(chunks), Gate()).open(Caller("/chat", "1.2.3.4"), [], "hi", SETTINGS) as turn:
        assert list(turn.texts(every_s=0)) == ["".join(chunks[:i + 1]) for i in range(200)]
