"""Waiting for a condition in a test: poll until it holds, never sleep a fixed time and hope.

The timeout only guards against a hang: a loaded machine makes a test slower, never wrong,
so give generous values and check what happened, not how long it took. Playwright's own
`expect(...)` and `page.wait_for_function(...)` wait the same way in the browser tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float, what: str | Callable[[], str],
               every_s: float = 0.05) -> T:
    """The first truthy value of `condition()`, asked every `every_s`. After `timeout_s` an
    AssertionError says what was awaited: `what`, or what it returns when the wait fails (to
    show the state things were left in)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {what() if callable(what) else what}")
        time.sleep(every_s)
    return value
