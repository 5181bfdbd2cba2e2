"""What every engine shares (`AnswerEngine`): slots in arrival order, Stop before the start,
stop strings and stats, on a scripted engine (no model, no server)."""

from __future__ import annotations

import threading
from collections.abc import Generator

from phi3ui.engine import AnswerEngine, Outcome, Slots, StopText
from phi3ui.settings import ENGINES, GenerationSettings
from tests.waiting import wait_until

HANG_S = 120  # a hang guard for the waiters' threads, not a speed limit


class Scripted(AnswerEngine):
    """Yields the given pieces, one token each; notes whether it started and was closed."""

    kind = ENGINES["genai"]
    context_window = 100
    system_ok = True

    def __init__(self, pieces: list[str], concurrency: int = 1, text: str | None = None):
        super().__init__(concurrency)
        self.pieces, self.text = pieces, text
        self.started = self.closed = False

    def describe(self, where: bool = True) -> str:
        return "scripted"

    def window_text(self, cap: int = 0) -> str:
        return f"{self.context_window}-token window"

    def render(self, messages: list) -> str:
        return "".join(m["content"] for m in messages)

    def count_tokens(self, prompt: str) -> int:
        return len(prompt)

    def _pieces(self, prompt: str, settings: GenerationSettings, stop: threading.Event,
                cut: StopText) -> Generator[str, None, Outcome]:
        self.started = True
        try:
            for piece in self.pieces:
                if stop.is_set():
                    break
                yield piece
        except GeneratorExit:
            self.closed = True
            raise
        return Outcome(len(prompt), len(self.pieces), length=len(self.pieces) >= settings.max_new_tokens,
                       text=self.text)


def test_stop_strings_are_cut_across_pieces_and_finish_says_stop() -> None:
    answer = Scripted(["Par", "is. ST", "OP and more"]).answer("hi", GenerationSettings(max_new_tokens=3,
                                                                                       stop=("STOP",)))
    assert "".join(answer) == answer.stats.text == "Paris. "
    assert answer.stats.finish == "stop" and answer.stats.prompt_tokens == 2 and answer.stats.answer_tokens == 3


def test_max_new_tokens_is_length_and_the_whole_text_is_what_the_engine_decoded() -> None:
    """A local engine decodes its ids at once; what a streamer held back comes as a last chunk."""
    answer = Scripted(["Par", "is"], text="Paris!").answer("hi", GenerationSettings(max_new_tokens=2))
    assert list(answer) == ["Par", "is", "!"]
    assert answer.stats.text == "Paris!" and answer.stats.finish == "length"


def test_stopped_before_the_start_it_never_starts() -> None:
    engine = Scripted(["never"])
    answer = engine.answer("hi", GenerationSettings())
    answer.stop()
    assert list(answer) == [] and not engine.started
    assert answer.stats.stopped and answer.stats.finish == "stopped" and answer.stats.prompt_tokens == 2


def test_a_reader_that_leaves_closes_the_engine_and_frees_the_slot() -> None:
    engine = Scripted(["a", "b", "c"])
    answer = engine.answer("hi", GenerationSettings())
    next(iter(answer))
    answer.close()
    assert engine.closed and engine.slots.free == 1


def queue_up(slots: Slots, names: list[str], served: list[str]) -> dict[str, threading.Event]:
    """Start one waiter per name, in that order (each queued before the next comes)."""
    stops = {name: threading.Event() for name in names}
    for name in names:
        def wait(name: str = name) -> None:
            if slots.take(stops[name]):
                served.append(name)
                slots.release()
        before = slots.waiting
        threading.Thread(target=wait, daemon=True).start()
        wait_until(lambda before=before: slots.waiting > before, HANG_S, f"{name} to queue for the slot", every_s=0.005)
    return stops


def test_slots_serve_waiters_in_arrival_order_and_a_stopped_one_leaves_the_queue() -> None:
    slots, served, held = Slots(1), [], threading.Event()
    assert slots.take(held)
    stops = queue_up(slots, ["a", "b", "c", "d"], served)
    stops["c"].set()
    wait_until(lambda: slots.waiting == 3, HANG_S, "the stopped waiter to leave the queue", every_s=0.005)
    assert slots.waiting == 3 and served == []  # it left the queue without a slot
    slots.release()
    wait_until(lambda: len(served) == 3, HANG_S, lambda: f"three waiters served (served: {served})", every_s=0.005)
    assert served == ["a", "b", "d"] and slots.free == 1
