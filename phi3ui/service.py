"""One way in for every answer: the page, `/chat` and `/v1` all go through `ChatService`.

    with service.open(Caller("/chat", client, session), history, message, settings) as turn:
        for text in turn:
            send(text)
    turn.stats  # once it has ended

A `Turn` is taken when a request arrives, before it waits for anything, and holds in order:
a place in the queue (at most `concurrency + waiting` answers generate or wait at once), the
client's fair-use ticket (so a request queued behind another of the same client counts),
the prompt fitted to the window, and the `Answer`. Leaving it stops the answer if it still
runs, waits until its generation has ended, gives the ticket and the place back, and logs
how it ended: once, whichever door it came through. A refusal or failure is an exception;
`errors.problem` says how each door tells it.

Nothing here imports Gradio or a web framework.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import prompt as prompts
from .answer import READER_LEFT, Answer, Stats
from .chat import ChatBackend
from .errors import ServerBusy, problem
from .fairness import Gate, LimitReached, Ticket, client_address
from .metrics import Metrics
from .settings import GenerationSettings

log = logging.getLogger(__name__)
LEFT = "the client went away"
PACED_CHARS = 2000  # an answer this long or shorter is updated every `every_s`


@dataclass(frozen=True)
class Caller:
    """Who asks: the door (for the log), the client's address and its browser session."""

    door: str
    client: str
    session: str | None = None

    @classmethod
    def of(cls, door: str, request: Any, trust_proxy: bool) -> Caller:
        """The caller of a web request (Gradio's or Starlette's: both carry `client` and
        `headers`; Gradio's a browser session too), told apart by fairness.client_address."""
        client = getattr(request, "client", None)
        headers = getattr(request, "headers", None) or {}
        address = client_address(getattr(client, "host", None), headers.get("x-forwarded-for"), trust_proxy)
        return cls(door, address, getattr(request, "session_hash", None))


class Turn:
    """One request's answer, from the door to its release. Iterate it (once) for the answer's
    text; close it (more than once is safe) from the thread that read it, or once that reader
    has finished. `stop` works from any thread."""

    def __init__(self, caller: Caller, ticket: Ticket, leave: Callable[[Turn], None]):
        self.caller = caller
        self._ticket = ticket
        self._leave = leave  # gives the place in the queue back and reports how the turn ended
        self._lock = threading.Lock()
        self._closed = False
        self.fitted: prompts.Fitted | None = None
        self.answer: Answer | None = None
        self.failure: Exception | None = None
        self.text = ""  # the answer so far

    def begin(self, backend: ChatBackend, history: object, message: object, settings: GenerationSettings) -> Answer:
        """Fit the conversation into the window and make its answer (it starts when read)."""
        try:
            self.fitted = backend.prepare(history, message, settings)
            self.answer = backend.start(self.fitted, settings)
        except Exception as exc:
            self.failure = exc
            raise
        return self.answer

    @property
    def stats(self) -> Stats | None:
        return self.answer.stats if self.answer else None

    @property
    def prompt_tokens(self) -> int:
        return self.fitted.prompt_tokens if self.fitted else 0

    def __iter__(self) -> Iterator[str]:
        assert self.answer is not None, "begin() first"
        try:
            for chunk in self.answer:
                self.text += chunk
                yield chunk
        except Exception as exc:
            self.failure = exc
            raise

    def texts(self, every_s: float, end: bool = True) -> Iterator[str]:
        """The answer so far, at most once per `every_s` and (with `end`) at its end: as often
        as a screen can show it (per token, a fast model floods the browser and the server's
        cores). A page redraws the whole answer on each update, so past `PACED_CHARS`
        characters the updates come further apart in proportion: the characters redrawn a
        second stay bounded and a busy browser still acts on Stop during a long answer. A
        caller that shows the end itself with more says `end=False`."""
        last, shown = -math.inf, ""  # the first text goes at once
        for _ in self:
            if time.monotonic() - last >= every_s * max(1.0, len(shown) / PACED_CHARS):
                last, shown = time.monotonic(), self.text
                yield shown
        if end and self.text != shown:
            yield self.text

    def stop(self, why: str) -> None:
        """End the answer within about a token (or before it starts), keeping what came;
        `why` is for the log."""
        if self.answer is not None and not self.answer.done:
            self.answer.stop(why)

    def close(self) -> None:
        """Stop the answer, wait until its generation has ended, give the place back. Call it
        from the thread that read the answer, or once that reader has finished."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self.answer is not None:
                self.answer.close()
        finally:
            self._ticket.release()
            self._leave(self)

    @property
    def outcome(self) -> str:
        """How the request ended: one of metrics.OUTCOMES."""
        if self.failure is not None:
            return "refused" if self.answer is None and problem(self.failure, True).refused else "failed"
        stats = self.stats
        if self.answer is None:
            return "refused"
        if stats is None:  # its reader went before the end: on its own, or after a stop said why
            return "stopped" if self.answer.stopped_because not in ("", READER_LEFT) else "left"
        return "stopped" if stats.stopped else "done"

    def describe(self) -> str:
        """How the answer ended, for the log."""
        outcome, stats = self.outcome, self.stats
        if self.failure is not None:
            return f"{outcome} ({type(self.failure).__name__})"
        if outcome == "left":
            return f"stopped ({LEFT})"
        if outcome == "refused":
            return "not started"
        if outcome == "stopped":
            tokens = f" after {stats.answer_tokens} tokens" if stats else ""
            return f"stopped ({self.answer.stopped_because}){tokens}"
        return f"done after {stats.answer_tokens} tokens"

    def __enter__(self) -> Turn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class ChatService:
    """The loaded model's answers, shared fairly by every door."""

    backend: ChatBackend
    gate: Gate = field(default_factory=Gate)
    waiting: int = 64  # answers that may wait for a generation slot beyond those generating
    metrics: Metrics = field(default_factory=Metrics)
    _queued: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.metrics.watch(queued=lambda: self._queued, waiting=lambda: self._slots("waiting"),
                           slots=lambda: self._slots("count"), busy=lambda: self._slots("busy"))

    @property
    def places(self) -> int:
        """Answers generating or waiting at most."""
        return self.backend.concurrency + self.waiting

    def _slots(self, what: str) -> int:
        """The loaded engine's slots, for the gauges (0 while no model is loaded)."""
        loaded = self.backend.loaded
        if loaded is None:
            return 0
        slots = loaded.engine.slots
        return {"waiting": slots.waiting, "count": slots.count, "busy": slots.count - slots.free}[what]

    def admit(self, caller: Caller) -> Turn:
        """A place in the queue and the client's fair-use ticket, taken now; `ServerBusy` or
        `LimitReached` when either is not to be had. Nothing is tokenized before this."""
        with self._lock:
            if self._queued >= self.places:
                self.refused(caller.door, "queue_full")
                raise ServerBusy()
            self._queued += 1
        try:
            ticket = self.gate.admit(caller.client, caller.session)
        except LimitReached as exc:
            self._give_back()
            self.refused(caller.door, exc.limit, f"retry in {exc.retry_after_s} s")
            raise
        return Turn(caller, ticket, self._leave)

    def refused(self, door: str, limit: str, detail: str = "") -> None:
        """A request turned away at a door (also a web framework's own, before it reaches this)."""
        log.info("%s refused (%s limit)%s", door, limit, f": {detail}" if detail else "")
        self.metrics.refused(door, limit)

    def _give_back(self) -> None:
        with self._lock:
            self._queued -= 1

    def _leave(self, turn: Turn) -> None:
        self._give_back()
        log.info("%s answer %s", turn.caller.door, turn.describe())
        if turn.outcome == "refused":
            self.metrics.refused(turn.caller.door, "invalid")
        else:
            cut = bool(turn.fitted and turn.fitted.dropped_exchanges)
            self.metrics.ended(turn.caller.door, turn.outcome, turn.stats, cut)

    def open(self, caller: Caller, history: object, message: object, settings: GenerationSettings) -> Turn:
        """`admit`, then the answer to `message` after `history`; a request that cannot be
        answered (`PromptError`, `SettingsError`, ...) gives its place back before raising."""
        turn = self.admit(caller)
        try:
            turn.begin(self.backend, history, message, settings)
        except BaseException:
            turn.close()
            raise
        return turn
