"""Per-session state of the page: early Stops, replaced chats, closed tabs (no Gradio)."""

from __future__ import annotations

import threading

from phi3ui.answer import Answer, Stats
from phi3ui.sessions import Sessions


def idle_answer() -> Answer:
    def produce(stop: threading.Event):
        return Stats(0, 0, 0.0, 0.0, 0.0, stopped=stop.is_set())
        yield  # a generator that yields nothing

    return Answer(produce)


def test_stop_before_the_answer_exists_stops_it_when_attached() -> None:
    sessions, answer = Sessions(), idle_answer()
    assert sessions.stop("s") is False
    sessions.attach("s", answer)
    assert answer.stopped
    later = idle_answer()
    sessions.attach("s", later)
    assert not later.stopped, "an early Stop applies to one answer only"


def test_stop_reaches_the_running_answer_of_that_session_only() -> None:
    sessions, mine, theirs = Sessions(), idle_answer(), idle_answer()
    sessions.attach("mine", mine)
    sessions.attach("theirs", theirs)
    assert sessions.stop("mine") is True
    assert mine.stopped and not theirs.stopped


def test_saves_while_the_page_goes_to_another_chat_are_of_the_chat_it_leaves() -> None:
    sessions = Sessions()
    assert sessions.saving_chat("s") == 0
    sessions.replace_chat("s")
    assert sessions.saving_chat("s") is None
    sessions.show("s")
    assert sessions.saving_chat("s") == 1 and sessions.is_current("s", 1)


def test_a_late_stop_is_forgotten_when_the_chat_settles() -> None:
    sessions, answer = Sessions(), idle_answer()
    sessions.stop("s")
    sessions.settle("s")
    sessions.attach("s", answer)
    assert not answer.stopped


def test_detached_answers_are_not_stopped_later() -> None:
    sessions, answer = Sessions(), idle_answer()
    sessions.attach("s", answer)
    sessions.detach("s", answer)
    assert sessions.stop("s") is False and not answer.stopped


def test_replacing_the_chat_stops_its_answer_and_ends_its_turn() -> None:
    sessions, answer = Sessions(), idle_answer()
    chat = sessions.begin_turn("s")
    sessions.attach("s", answer)
    assert sessions.is_current("s", chat) and sessions.turn_is_current("s")
    sessions.replace_chat("s")
    assert answer.stopped and not sessions.is_current("s", chat) and not sessions.turn_is_current("s")
    sessions.begin_turn("s")
    assert sessions.turn_is_current("s")


def test_forgetting_a_session_stops_its_answer() -> None:
    sessions, answer = Sessions(), idle_answer()
    sessions.attach("s", answer)
    assert sessions.forget("s") is True and answer.stopped
    assert sessions.forget("s") is False


def test_many_threads_at_once_leave_consistent_state() -> None:
    sessions = Sessions()
    answers = [idle_answer() for _ in range(200)]

    def work(i: int) -> None:
        session = f"s{i % 10}"
        sessions.begin_turn(session)
        sessions.attach(session, answers[i])
        sessions.stop(session)
        sessions.detach(session, answers[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(sessions.stop(f"s{i}") is False for i in range(10))  # nothing left attached


def test_stops_from_many_ids_keep_at_most_max_sessions() -> None:
    sessions = Sessions(max_sessions=50)
    for i in range(100_000):
        sessions.stop(f"raw-{i}")
    assert sessions.tracked() <= 50
    assert Sessions().max_sessions == 10_000


def test_a_session_with_an_answer_in_flight_survives_eviction() -> None:
    sessions, answer = Sessions(max_sessions=3), idle_answer()
    sessions.begin_turn("busy")
    sessions.attach("busy", answer)
    for i in range(1_000):
        sessions.stop(f"raw-{i}")
    assert sessions.tracked() <= 3
    assert sessions.stop("busy") is True and answer.stopped
    sessions.detach("busy", answer)


def test_an_early_stop_for_a_recent_session_applies_when_its_answer_attaches() -> None:
    sessions, answer = Sessions(max_sessions=3), idle_answer()
    sessions.stop("old")
    sessions.stop("s")
    sessions.stop("other")
    sessions.stop("old")  # now the most recently used
    sessions.stop("newest")  # evicts "s"
    sessions.attach("old", answer)
    assert answer.stopped


def test_eviction_keeps_the_chat_number_of_recent_sessions() -> None:
    sessions = Sessions(max_sessions=2)
    sessions.replace_chat("s")
    chat = sessions.begin_turn("s")
    sessions.stop("raw-1")
    assert sessions.is_current("s", chat)
