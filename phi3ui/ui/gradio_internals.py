"""The one place the page reaches into Gradio's internals, for what Gradio offers no public way
to do. tests/test_gradio_internals.py pins the Gradio version this was checked against: after
an upgrade it fails, and says what to check again here.

- `set_validator`: /chat (a `gr.api` endpoint) needs a validator, a check that runs before
  Gradio queues the call. A call refused there costs nothing; a call refused inside the
  function has already made Gradio keep session state for it, so a flood of refused /chat
  calls would fill the server's memory (bench/NOTES.md, "Bursts from one client"). `gr.api` takes no `validator=`
  argument, so it is set on the event as Gradio keeps it (`Blocks.fns[id].validator`).
- `build_configs_when_asked`: Gradio builds the config of every component on the page for
  each new session (for deep links), on the server's event loop, and every API call without
  a session (each raw `/gradio_api/call/chat`) is a new session, twice: once when queued,
  once when run. A burst of such calls then holds up every other visitor's events
  (bench/NOTES.md, "Bursts from one client"). Sessions here build a component's config when
  something first asks for it; deep links still get every one, in the page's order.
- `poll_the_queue_less`: Gradio's queue looks for work every millisecond (and for progress to
  send every 10 ms; 50 and 100 ms on Windows), also when nobody uses the page, which keeps an
  idle app busy (bench/README.md, "An idle app"). `queue()` offers no setting for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

CHECKED_WITH = "6.31.0"  # the Gradio version the code below was checked against


def set_validator(demo: gr.Blocks, endpoint: Any, validator: Callable) -> None:
    """Give the `gr.api` endpoint `endpoint` (what `gr.api` returned) a validator."""
    demo.fns[endpoint["id"]].validator = validator


def poll_the_queue_less(demo: gr.Blocks, every_s: float = 0.01, progress_every_s: float = 0.1) -> None:
    """Once `demo.queue()` was called: the queue looks for new events every `every_s` (a
    queued event may wait that much longer to start) and for progress every `progress_every_s`,
    or less often where Gradio already does."""
    queue = demo._queue
    queue.sleep_when_free = max(queue.sleep_when_free, every_s)
    queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, progress_every_s)


def build_configs_when_asked() -> None:
    """Make `gradio.state_holder.SessionState` build component configs lazily (once per
    process; later calls do nothing)."""
    from gradio import state_holder

    if getattr(state_holder.SessionState.__init__, "phi3ui", False):
        return
    original = state_holder.SessionState.__init__

    class Configs(dict):
        """`SessionState.config_values`, each entry built on first use."""

        def __init__(self, blocks_config: Any, ids: list[int]):
            super().__init__()
            self._blocks_config, self._ids = blocks_config, ids

        def __missing__(self, key: int) -> dict:
            value = self[key] = self._blocks_config.config_for_block(key, [], self._blocks_config.blocks[key])
            return value

        def items(self) -> list[tuple[int, dict]]:  # what `SessionState.components` reads
            for key in self._ids:
                self[key]  # noqa: B018 - builds what is missing
            order = {key: i for i, key in enumerate(self._ids)}
            return sorted(super().items(), key=lambda item: order.get(item[0], len(order)))

    class WithoutComponents:
        """What `SessionState.__init__` reads of a Blocks, with no components to build."""

        def __init__(self, blocks: gr.Blocks):
            self.default_config, self.blocks = blocks.default_config, {}

    def __init__(self, blocks: gr.Blocks) -> None:
        original(self, WithoutComponents(blocks))
        self.config_values = Configs(self.blocks_config, [k for k in self.blocks_config.blocks if k in blocks.blocks])

    __init__.phi3ui = True
    state_holder.SessionState.__init__ = __init__
