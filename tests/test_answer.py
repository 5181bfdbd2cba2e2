"""The Answer object and the thread pump under it (no model)."""

from __future__ import annotations

import threading
import time

import pytest

from phi3ui.answer import Answer, Stats
from phi3ui.pump import pump


def counting(n: int, log: list[str]):
    """A producer of n chunks that logs how it started and ended."""
    def produce(stop: threading.Event):
        log.append("stopped before start" if stop.is_set() else "started")
        try:
            for i in range(n):
                if stop.is_set():
                    return Stats(1, i, 0.0, 0.0, 0.0, stopped=True)
                yield f"{i} "
            return Stats(1, n, 0.0, 0.0, 0.0, text="".join(f"{i} " for i in range(n)))
        finally:
            log.append("ended")
    return produce


def test_iterating_gives_the_text_then_the_stats() -> None:
    log: list[str] = []
    answer = Answer(counting(3, log))
    assert log == [] and answer.stats is None  # nothing runs before it is read
    assert list(answer) == ["0 ", "1 ", "2 "]
    assert answer.done and answer.stats.answer_tokens == 3 and answer.stats.text == "0 1 2 "
    assert list(answer) == ["0 ", "1 ", "2 "] and answer.text() == "0 1 2 "  # replayed, not regenerated
    assert log == ["started", "ended"]


def test_stop_before_reading_reaches_the_producer_at_once() -> None:
    log: list[str] = []
    answer = Answer(counting(3, log))
    answer.stop()
    assert list(answer) == [] and answer.stats.stopped
    assert log == ["stopped before start", "ended"]


def test_stop_while_reading_ends_it_and_keeps_what_came() -> None:
    answer = Answer(counting(100, []))
    seen = []
    for chunk in answer:
        seen.append(chunk)
        if len(seen) == 2:
            answer.stop()
    assert seen == ["0 ", "1 "] and answer.stats.stopped and answer.stats.answer_tokens == 2


def test_leaving_early_closes_the_producer() -> None:
    log: list[str] = []
    with Answer(counting(100, log)) as answer:
        next(iter(answer))
    assert log == ["started", "ended"] and answer.stopped and answer.stats is None


def test_an_answer_is_read_by_one_reader_at_a_time() -> None:
    answer = Answer(counting(5, []))
    reader = iter(answer)
    next(reader)
    with pytest.raises(RuntimeError, match="already being read"):
        iter(answer)


def test_pump_yields_as_the_work_emits_and_returns_its_result() -> None:
    def work(emit):
        for i in range(3):
            emit(i)
        return "done"

    stream = pump(work)
    got = []
    with pytest.raises(StopIteration) as end:
        while True:
            got.append(next(stream))
    assert got == [0, 1, 2] and end.value.value == "done"


def test_pump_raises_the_work_error_in_the_reader() -> None:
    def work(emit):
        emit("a")
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        list(pump(work))


def test_closing_the_pump_abandons_the_work_and_waits_for_it() -> None:
    stop, ended = threading.Event(), threading.Event()

    def work(emit):
        while not stop.is_set():
            emit("tick")
            time.sleep(0.01)
        ended.set()

    stream = pump(work, abandon=stop.set)
    next(stream)
    stream.close()
    assert ended.is_set()
