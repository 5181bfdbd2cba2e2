"""Run blocking work in a thread and read what it reports, as it comes, from a generator."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def pump(work: Callable[[Callable[[T], None]], R], *, abandon: Callable[[], None] = lambda: None,
         name: str = "phi3ui-pump") -> Generator[T, None, R]:
    """Yield what `work(emit)` emits while it runs in a thread, then return its result or
    raise its error here. Closing the generator early calls `abandon` (which should make
    `work` end soon) and waits for the thread, so no work outlives its reader."""
    items: queue.Queue = queue.Queue()
    done = object()
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = work(items.put)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the reader's thread
            outcome["error"] = exc
        finally:
            items.put(done)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    finished = False
    try:
        while (item := items.get()) is not done:
            yield item
        finished = True
    finally:
        if not finished:
            abandon()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
