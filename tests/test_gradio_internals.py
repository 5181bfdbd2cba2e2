"""phi3ui/ui/gradio_internals.py reaches into Gradio; these tests say when to check it again,
and that it still does what the page needs."""

from __future__ import annotations

import gradio as gr

from phi3ui.ui import gradio_internals
from phi3ui.ui.page import Page
from tests.test_conversations import Backend


def test_gradio_is_the_version_the_internals_were_checked_with() -> None:
    assert gr.__version__ == gradio_internals.CHECKED_WITH, (
        f"Gradio is {gr.__version__}, not {gradio_internals.CHECKED_WITH}. Check again, then update "
        "CHECKED_WITH: (1) phi3ui/ui/gradio_internals.py, set_validator: does gr.api take `validator=` now "
        "(then use it and drop set_validator)? If not, is `Blocks.fns[id].validator` still what runs before "
        "the queue and refuses there (tests/test_burst.py, test_one_client_bursting_chat and "
        "test_memory_stays_flat_over_bursts)? (2) build_configs_when_asked: does `SessionState.__init__` still "
        "build `config_values` for every block, and do `components`, `_update_config` and "
        "`_update_value_in_config` still use it as a dict (test_a_new_session_builds_component_configs_only_when_"
        "asked)? (3) phi3ui/ui/static/page.css's rules for the Radio's markup (#conv-list label, "
        ".wrap, input, span): the conversation list still looks like a list (tests/test_conversations_browser.py). "
        "(4) phi3ui/ui/static/attach.js: #message (the MultimodalTextbox) still holds its file input, and a "
        "file pasted into it is attached (tests/test_attachments_browser.py). (5) poll_the_queue_less: does "
        "`queue()` take a polling interval now (then use it)? If not, test_the_queue_polls_less_often.")


def test_the_validator_is_set_on_chat() -> None:
    page = Page(Backend([]))
    demo = page.build()
    (chat,) = [fn for fn in demo.fns.values() if fn.api_name == "chat"]
    assert chat.validator == page.api_door


def test_a_new_session_builds_component_configs_only_when_asked() -> None:
    """Deep links still get every component's config, in the page's order, as Gradio's own
    session builds them; a value an event writes lands in the config as before."""
    from gradio.state_holder import SessionState

    demo = Page(Backend([])).build()
    session = SessionState(demo)
    assert dict.__len__(session.config_values) == 0
    config = demo.default_config
    eager = [config.config_for_block(k, [], v) for k, v in config.blocks.items() if k in demo.blocks]
    assert list(session.components) == [c for c in eager if c]
    textbox = next(k for k, v in config.blocks.items() if isinstance(v, gr.Textbox))
    session._update_value_in_config(textbox, "typed")
    assert session.config_values[textbox]["props"]["value"] == "typed"


def test_no_markdown_showing_changing_text_cuts_math_out_of_it() -> None:
    """Gradio cuts `$$…$$` out of a Markdown component's raw text before Markdown runs,
    across the code spans display.py leaves unescaped, so `$$ `$$ <div …>` ` in a chat
    file's refusal note would render the div. Every Markdown component that shows text
    from a file, a conversation or the model has no math delimiters."""
    demo = Page(Backend([])).build()
    shown = {b.elem_id: b for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.elem_id}
    for elem_id in ("conv-note", "budget", "preparing", "model-info"):
        assert shown[elem_id].latex_delimiters == [], elem_id


def test_the_queue_polls_less_often() -> None:
    """The intervals are set on the queue `demo.queue()` made, and they are what its loops wait
    between looks for work and for progress."""
    import inspect

    from gradio import queueing

    demo = Page(Backend([])).build()
    demo.queue()
    before = dict(vars(demo._queue))
    assert {"sleep_when_free", "progress_update_sleep_when_free"} <= before.keys()
    gradio_internals.poll_the_queue_less(demo, every_s=0.02, progress_every_s=0.2)
    changed = {k: v for k, v in vars(demo._queue).items() if before[k] != v}
    assert changed == {"sleep_when_free": 0.02, "progress_update_sleep_when_free": 0.2}
    assert "asyncio.sleep(self.sleep_when_free)" in inspect.getsource(queueing.Queue.start_processing)
    assert "asyncio.sleep(self.progress_update_sleep_when_free)" in inspect.getsource(
        queueing.Queue.start_progress_updates)
