"""One answer of a model: iterate it for text, read its stats once it is done, stop it any time.

    answer = backend.reply(history, "What is the capital of France?", settings)
    for text in answer:
        print(text, end="")
    print(answer.stats.summary())

Nothing runs until the answer is first iterated, and `stop()` works from any thread at any
moment, also before that: an answer stopped before it started never starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    """What the user sees under an answer."""

    prompt_tokens: int
    answer_tokens: int
    ttft_s: float
    tokens_per_s: float
    total_s: float
    stopped: bool = False
    text: str = ""  # the answer decoded at once from its token ids: what the chunks add up to
    # Why it ended: "stop" (the model finished, or wrote a stop string), "length" (it reached
    # max new tokens) or "stopped" (`Answer.stop`); "" where an engine does not say.
    finish: str = ""

    @classmethod
    def stopped_unstarted(cls, started: float, prompt_tokens: int = 0) -> Stats:
        """An answer stopped before its first token (`started`: its `time.perf_counter()`)."""
        return cls(prompt_tokens, 0, 0.0, 0.0, time.perf_counter() - started, stopped=True, finish="stopped")

    def summary(self) -> str:
        """Speed and size; whether the answer was stopped is the caller's to show."""
        return (
            f"{self.ttft_s:.2f} s to first token · {self.tokens_per_s:.1f} tokens/s · "
            f"{self.prompt_tokens} prompt + {self.answer_tokens} answer tokens"
        )


READER_LEFT = "its reader left"  # `stopped_because` of an answer closed before its end

# Makes an answer's text: given the answer's stop event, yields text chunks and returns Stats.
Producer = Callable[[threading.Event], Generator[str, None, Stats]]


class Answer:
    """An answer being generated. Read it once (later iterations replay its chunks)."""

    def __init__(self, produce: Producer):
        self._produce = produce
        self._stop = threading.Event()
        self._chunks: list[str] = []
        self._reader: Generator[str, None, None] | None = None
        self._guard = threading.Lock()
        self.stats: Stats | None = None  # set once the last chunk has come
        self.stopped_because = ""

    def stop(self, why: str = "Stop") -> None:
        """End the answer within about a token, keeping what was generated. `why` is for the
        log; the first reason given is kept."""
        if not self._stop.is_set():
            self.stopped_because = why
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def done(self) -> bool:
        return self.stats is not None

    def __iter__(self) -> Iterator[str]:
        with self._guard:
            if self.stats is not None:
                return iter(list(self._chunks))
            if self._reader is not None:
                raise RuntimeError("This answer is already being read.")
            self._reader = self._read()
            return self._reader

    def _read(self) -> Generator[str, None, None]:
        chunks = self._produce(self._stop)
        try:
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration as end:
                    self.stats = end.value
                    return
                self._chunks.append(chunk)
                yield chunk
        finally:
            chunks.close()  # a reader that left early: generation ends and its thread is joined

    def text(self) -> str:
        """The whole answer, reading it to the end first if need be."""
        for _ in self:
            pass
        return "".join(self._chunks)

    def close(self) -> None:
        """Stop the answer and wait until its generation has ended. Call it from the thread
        that reads the answer (a generator cannot be closed from another thread)."""
        self.stop(READER_LEFT)
        if self._reader is not None:
            self._reader.close()

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
