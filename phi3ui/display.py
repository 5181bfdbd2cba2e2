"""How chat text is shown in the page and kept in the browser, and back.

The chat component renders Markdown with HTML allowed, so prose is escaped before it is
shown: nothing a user or the model writes runs as markup. What the page holds (and the
browser stores) is that escaped text; the model and the downloads get the text as typed.
"""

from __future__ import annotations

import re
from typing import Any

from . import prompt as prompts
from .answer import Stats

STOPPED = "⏹ Stopped"  # title prefix of the note under an answer the user stopped

# Split text into code (fenced blocks and inline spans, left alone) and prose (escaped).
_CODE = re.compile(r"(```.*?(?:```|$)|`[^`\n]*`)", re.S)
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_INVERSE = {v: k for k, v in _ESCAPES.items()}
_UNESCAPES = re.compile("|".join(map(re.escape, _ESCAPES.values())))


def to_display(text: str) -> str:
    """Escape HTML outside code. The mapping is one-to-one (every `&` is escaped too), so
    `from_display` gives back exactly what was typed; Markdown already shows code literally."""
    parts = _CODE.split(text)
    return "".join(p if i % 2 else re.sub("[&<>]", lambda m: _ESCAPES[m[0]], p) for i, p in enumerate(parts))


def from_display(text: str) -> str:
    """The inverse of `to_display`: escaping only touches prose, never backticks, so the
    split into code and prose is the same on both sides."""
    parts = _CODE.split(text)
    return "".join(p if i % 2 else _UNESCAPES.sub(lambda m: _INVERSE[m[0]], p) for i, p in enumerate(parts))


def chat_messages(display: list) -> list[dict]:
    """The chat as the model sees it: page notes dropped, escaping undone."""
    return [{"role": m["role"], "content": from_display(prompts.message_text(m["content"]))}
            for m in prompts.normalize(display)]


def shown_messages(messages: list[dict]) -> list[dict]:
    """Plain {role, content} messages as the page shows them."""
    return [{"role": m["role"], "content": to_display(m["content"])} for m in messages]


def note(title: str, body: str = "") -> dict:
    """A line the page shows under an answer; metadata marks it as not part of the chat."""
    return {"role": "assistant", "content": body, "metadata": {"title": title, "status": "done"}}


def stats_title(stats: Stats) -> str:
    """TTFT, speed and token counts; stopped answers say so first."""
    if stats.stopped:
        return f"{STOPPED} · {stats.summary()}"
    return stats.summary()


def stored_chat(stored: Any) -> list:
    """A chat kept in the browser, or an empty one if what is there is not a chat."""
    try:
        prompts.normalize(stored)
    except prompts.PromptError:
        return []
    return stored or []
