"""What the page remembers about each browser session between events, guarded by one lock.

Gradio runs a session's events on several worker threads: Stop can arrive before the
answer it means has started, and Clear can land while an answer is still streaming. This
keeps each session's answer in flight, a Stop that came early, and which chat an answer
belongs to, so those races have one well-defined outcome.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from .answer import Answer


@dataclass
class _Session:
    chat: int = 0  # bumped each time the chat on screen is replaced (another conversation, Clear, Load JSON)
    shown: int = 0  # the chat the page shows: behind `chat` while the page goes to another one
    turn_chat: int | None = None  # the chat the latest answer was asked for in
    answer: Answer | None = None  # the answer in flight
    stop_early: bool = False  # Stop pressed before that answer existed


class Sessions:
    """Raw HTTP clients choose session ids and a Stop alone creates an entry, so at most
    `max_sessions` are kept, the least recently used forgotten first (as fairness.Gate does)."""

    def __init__(self, max_sessions: int = 10_000) -> None:
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently used first

    def _get(self, session: str) -> _Session:
        state = self._sessions.get(session)
        if state is not None:
            self._sessions.move_to_end(session)
            return state
        self._make_room()
        state = self._sessions[session] = _Session()
        return state

    def _make_room(self) -> None:
        """Forget the least recently used sessions until a new one fits. One with an answer
        in flight is kept, or its Stop, Clear and closed tab would no longer reach it."""
        while len(self._sessions) >= self.max_sessions:
            idle = next((key for key, state in self._sessions.items() if state.answer is None), None)
            if idle is None:
                return
            del self._sessions[idle]

    def tracked(self) -> int:
        """Sessions with state kept (for tests and the log)."""
        with self._lock:
            return len(self._sessions)

    def begin_turn(self, session: str) -> int:
        """An answer is being asked for in the chat on screen; returns that chat's number."""
        with self._lock:
            state = self._get(session)
            state.turn_chat = state.chat
            return state.chat

    def attach(self, session: str, answer: Answer) -> None:
        """`answer` is the session's answer in flight; a Stop pressed before it existed
        stops it now, before it starts."""
        with self._lock:
            state = self._get(session)
            state.answer = answer
            if state.stop_early:
                state.stop_early = False
                answer.stop("Stop")

    def detach(self, session: str, answer: Answer) -> None:
        with self._lock:
            state = self._sessions.get(session)
            if state is not None and state.answer is answer:
                state.answer = None

    def stop(self, session: str) -> bool:
        """Stop the session's answer; with none in flight yet, the next one to be attached
        never starts. True if an answer was running."""
        with self._lock:
            state = self._get(session)
            if state.answer is not None:
                state.answer.stop("Stop")
                return True
            state.stop_early = True
            return False

    def settle(self, session: str) -> None:
        """The chat is at rest: a Stop that came too late to matter is forgotten."""
        with self._lock:
            if session in self._sessions:
                self._sessions[session].stop_early = False

    def replace_chat(self, session: str) -> None:
        """The chat on screen is being replaced: its answer stops and writes nothing more."""
        with self._lock:
            state = self._get(session)
            state.chat += 1
            if state.answer is not None:
                state.answer.stop("the chat was replaced")

    def show(self, session: str) -> None:
        """The page now shows the chat it went to (or stayed on)."""
        with self._lock:
            state = self._get(session)
            state.shown = state.chat

    def saving_chat(self, session: str) -> int | None:
        """The number of the chat a save of the page's chat is for, for `is_current` later;
        None while the page goes to another chat: what it saves then is the chat it leaves."""
        with self._lock:
            state = self._get(session)
            return state.chat if state.shown == state.chat else None

    def is_current(self, session: str, chat: int) -> bool:
        """Whether chat number `chat` is still the one on screen."""
        with self._lock:
            return self._get(session).chat == chat

    def turn_is_current(self, session: str) -> bool:
        """Whether the chat the latest answer was asked for is still the one on screen."""
        with self._lock:
            state = self._get(session)
            return state.turn_chat in (None, state.chat)

    def forget(self, session: str) -> bool:
        """The page closed: stop its answer and drop what was kept. True if one was running."""
        with self._lock:
            state = self._sessions.pop(session, None)
        if state is not None and state.answer is not None:
            state.answer.stop("the tab closed")
            return True
        return False
