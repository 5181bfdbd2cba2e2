"""One way in for every answer: the page, `/chat` and `/v1` all go through `ChatService`.

    with service.open(Caller("/chat", client, session), history, message, settings) as turn:
        for text in turn:
            send(text)
    turn.stats  # once it has ended

A `Turn` is taken when a request arrives, before it waits for anything, and holds in order:
a place in line (at most `concurrency + waiting` answers generate or wait at once), the
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
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import prompt as prompts
from .answer import Answer, Stats
from .chat import ChatBackend
from .errors import ServerBusy
from .fairness import Gate, LimitReached, Ticket
from .settings import GenerationSettings

log = logging.getLogger(__name__)
LEFT = "the client went away"


@dataclass(frozen=True)
class Caller:
    """Who asks: the door (for the log), the client's address and its browser session."""

    door: str
    client: str
    session: str | None = None


class Turn:
    """One request's answer, from the door to its release. Safe to close from any thread,
    more than once; iterate it (once) for the answer's text."""

    def __init__(self, caller: Caller, ticket: Ticket, line: threading.Semaphore):
        self.caller = caller
        self._ticket = ticket
        self._line = line
        self._lock = threading.Lock()
        self._closed = False
        self.fitted: prompts.Fitted | None = None
        self.answer: Answer | None = None
        self.failure: Exception | None = None
        self.text = ""  # the answer so far
        self._why = ""  # who stopped the answer, when this turn did

    def begin(self, backend: ChatBackend, history: object, message: object, settings: GenerationSettings) -> Answer:
        """Fit the conversation into the window and make its answer (it starts when read)."""
        self.fitted = backend.prepare(history, message, settings)
        self.answer = backend.start(self.fitted, settings)
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
        cores). A caller that shows the end itself with more says `end=False`."""
        last, shown = -math.inf, ""  # the first text goes at once
        for _ in self:
            if time.monotonic() - last >= every_s:
                last, shown = time.monotonic(), self.text
                yield shown
        if end and self.text != shown:
            yield self.text

    def stop(self, why: str = "stopped") -> None:
        """End the answer within about a token (or before it starts), keeping what came;
        `why` is for the log."""
        if self.answer is not None and not self.answer.done:
            self._why = self._why or why
            self.answer.stop()

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
            self._line.release()
            log.info("%s answer %s", self.caller.door, self.outcome())

    def outcome(self) -> str:
        """How the answer ended, for the log."""
        if self.failure is not None:
            return f"failed ({type(self.failure).__name__})"
        if self.answer is None:
            return "not started"
        stats = self.stats
        if stats is None:
            return f"stopped ({LEFT})"  # its reader left before the end
        if stats.stopped:
            return f"stopped ({self._why or 'Stop'}) after {stats.answer_tokens} tokens"
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
    _line: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self._line = threading.BoundedSemaphore(self.places)

    @property
    def places(self) -> int:
        """Answers generating or waiting at most."""
        return self.backend.concurrency + self.waiting

    def admit(self, caller: Caller) -> Turn:
        """A place in line and the client's fair-use ticket, taken now; `ServerBusy` or
        `LimitReached` when either is not to be had. Nothing is tokenized before this."""
        if not self._line.acquire(blocking=False):
            log.info("%s refused: every place in line is taken", caller.door)
            raise ServerBusy()
        try:
            ticket = self.gate.admit(caller.client, caller.session)
        except LimitReached as exc:
            self._line.release()
            log.info("%s refused (%s limit): retry in %s s", caller.door, exc.limit, exc.retry_after_s)
            raise
        return Turn(caller, ticket, self._line)

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
