"""How chat text is escaped for display and recovered for the model (no server, no model)."""

from __future__ import annotations

import gradio as gr
import pytest

from phi3ui.answer import Stats
from phi3ui.display import (
    STOPPED,
    chat_messages,
    from_display,
    note,
    shown,
    stats_title,
    to_display,
)

XSS = ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>"]
TEXTS = [
    "",
    "plain text",
    *XSS,
    "&lt; typed literally, and &amp; and &gt; too",
    "a < b && c > d",
    "inline `<b>code</b>` and <b>prose</b>",
    "```html\n<script>alert(1)</script>\n```\nafter the fence <i>",
    "```python\nif a < b and c > d:\n    pass\n```",
    "unclosed fence ```\n<b>still code</b>",
    "two spans `a<b` and `c>d` with <x> between",
    "`unclosed inline <b>",
    "中文、日本語、emoji 🎉 <tag> & more",
    "line one\n\n<p>line two</p>\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text: str) -> None:
    assert from_display(to_display(text)) == text


@pytest.mark.parametrize("text", XSS)
def test_markup_outside_code_is_escaped(text: str) -> None:
    escaped = to_display(text)
    assert "<" not in escaped and ">" not in escaped
    assert escaped.startswith("&lt;")


def test_literal_entity_is_not_unescaped_twice() -> None:
    assert to_display("&lt;") == "&amp;lt;"
    assert from_display("&amp;lt;") == "&lt;"


def test_code_is_left_alone() -> None:
    fence = "```html\n<b>x</b> & y\n```"
    assert to_display(fence) == fence
    assert to_display("say `<b>` now <b>") == "say `<b>` now &lt;b&gt;"


def test_chat_messages_drop_notes_and_unescape() -> None:
    display = [
        {"role": "user", "content": to_display(XSS[0])},
        {"role": "assistant", "content": to_display("a < b")},
        note("0.1 s to first token"),
        {"role": "user", "content": [{"type": "text", "text": to_display("&lt;")}]},
    ]
    assert chat_messages(display) == [
        {"role": "user", "content": XSS[0]},
        {"role": "assistant", "content": "a < b"},
        {"role": "user", "content": "&lt;"},
    ]


def test_stats_title_marks_stopped_answers_once() -> None:
    stats = Stats(prompt_tokens=10, answer_tokens=3, ttft_s=0.5, tokens_per_s=20.0, total_s=0.6, stopped=True)
    title = stats_title(stats)
    assert title.startswith(STOPPED) and title.count("topped") == 1
    assert "10 prompt + 3 answer tokens" in title
    assert not stats_title(Stats(10, 3, 0.5, 20.0, 0.6)).startswith(STOPPED)


@pytest.mark.parametrize("text", ["    indented\n        deeper\n\tand a tab", "\n\nblank lines first", *TEXTS])
def test_the_chatbot_gives_back_messages_exactly_as_typed(text: str) -> None:
    """Through Gradio's own Chatbot to the page and back: a plain string would come back
    reindented (inspect.cleandoc), a text part comes back as it went."""
    chatbot = gr.Chatbot()
    display = [{"role": "user", "content": shown(text)}, {"role": "assistant", "content": shown("ok")}]
    assert chat_messages(chatbot.preprocess(chatbot.postprocess(display)))[0] == {"role": "user", "content": text}
