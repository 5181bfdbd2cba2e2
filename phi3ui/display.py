"""How chat text is shown in the page and kept in the browser, and back.

The chat component renders Markdown (Gradio's `marked`) with HTML allowed, so text is
escaped before it is shown: nothing a user or the model writes runs as markup. What the
page holds (and the browser stores) is that escaped text; the model and the downloads get
the text as typed.

Code is left alone, since Markdown shows it literally, and that is only safe where
Markdown agrees it is code: otherwise raw `<div style=...>` in "code" would render. So
prose also loses every character that could open, close or swallow code in `marked`
(backticks, tildes, backslashes, `](` and `]:` of links and definitions), and code is
only what `marked` surely reads as code:

* fenced blocks whose opening line starts with at most 3 spaces (marked's own rule), each
  line indented at least as far as the opening one and closed at that same indentation;
  anything that a list item around it could read differently leaves the message without
  code, all of it escaped (it reads as text, with its backticks);
* `inline` spans on one line, after a space, the start of a line or only `(["'*_`, with
  no `|` (tables split cells first) and no `](`/`]:` inside.

`mermaid` fences get a space before the word, so Gradio shows them as code and does not
draw them (mermaid's labels take HTML). Every step is one-to-one, so `from_display`
gives back exactly what was typed.

The page gets that text as a text part (`shown`): a plain string would go through the
Chatbot's `inspect.cleandoc`, which reindents it (tabs expanded, common indentation and
blank first lines removed). The model would then read altered text on the next turn, and
the split above, which holds only for the text as it is, could be read differently: escaped
text must never reach the page as a plain string.
"""

from __future__ import annotations

import re

from . import prompt as prompts
from .answer import Stats

STOPPED = "⏹ Stopped"  # title prefix of the note under an answer the user stopped

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "`": "&#96;", "~": "&#126;", "\\": "&#92;",
            "\r": "&#13;", "]": "&#93;"}
_INVERSE = {v: k for k, v in _ESCAPES.items()}
_PROSE = re.compile(r"[&<>`~\\\r]|\](?=[(:])")  # `]` only where it would close a link or definition
_UNESCAPES = re.compile("|".join(map(re.escape, _ESCAPES.values())))
_OPENER = re.compile(r"( {0,3})(`{3,}(?=[^`]*\Z)|~{3,})(.*)", re.S)  # marked's fence, one line
_SPAN = re.compile(r"`(?:[^`\r\n|\]]|\](?![(:]))+`")
_BEFORE_SPAN = set("([\"'*_")  # what may stand between a space and an inline span: no URL, no link
_MERMAID = re.compile(r" *mermaid")


class _Unsure(Exception):
    """A fence that marked may read differently (inside a list item, say)."""


def _pieces(text: str) -> list[tuple[str, str]]:
    """Split into ("prose" | "code" | "info", piece): "info" is a fence's info string."""
    try:
        return _split(text)
    except _Unsure:
        return [("prose", text)]


def _split(text: str) -> list[tuple[str, str]]:
    lines = text.split("\n")
    pieces: list[tuple[str, str]] = []
    fence: tuple[re.Pattern, int] | None = None  # (its closing line, indentation)
    for n, line in enumerate(lines):
        if n:
            pieces.append(("code" if fence else "prose", "\n"))
        if fence is None and (opener := _OPENER.fullmatch(line)):
            indent, run, info = opener.groups()
            fence = re.compile(rf"( *){re.escape(run)}[~`]* *"), len(indent)
            pieces += [("code", indent + run), ("info", info)]
        elif fence is None:
            pieces += _spans(line)
        else:
            fence = _fence_line(line, *fence)
            pieces.append(("code", line))
        if "\r" in line and pieces[-1][0] == "code":
            raise _Unsure  # marked breaks lines at \r too
    return pieces


def _fence_line(line: str, closing: re.Pattern, indent: int) -> tuple[re.Pattern, int] | None:
    """The fence after this line of it (None: the line closed it). A fence inside a list
    item is read with the item's indentation (0 to `indent` spaces) taken off each line;
    lines where that changes the reading make the split unsure."""
    close = closing.fullmatch(line)
    at = len(line) - len(line.lstrip(" "))
    if close and (at <= 3 if indent == 0 else at == indent):
        return None
    if indent and ((close and at <= indent + 3) or (line.strip(" \t") and at < indent)):
        raise _Unsure
    return closing, indent


def _spans(line: str) -> list[tuple[str, str]]:
    pieces, done = [], 0
    for span in _SPAN.finditer(line):
        start = span.start()
        while start > 0 and line[start - 1] in _BEFORE_SPAN:
            start -= 1
        if start == 0 or line[start - 1] in " \t":
            pieces += [("prose", line[done:span.start()]), ("code", span[0])]
            done = span.end()
    return [*pieces, ("prose", line[done:])]


def _escape(text: str) -> str:
    return _PROSE.sub(lambda m: _ESCAPES[m[0]], text)


def _unescape(text: str) -> str:
    return _UNESCAPES.sub(lambda m: _INVERSE[m[0]], text)


def to_display(text: str) -> str:
    """Escape everything outside code (see the module's docstring)."""
    def escaped(kind: str, piece: str) -> str:
        if kind == "info":
            return " " * bool(_MERMAID.match(piece)) + _escape(piece)
        return piece if kind == "code" else _escape(piece)
    return "".join(escaped(*p) for p in _pieces(text))


def shown(text: str) -> dict:
    """A message's content for the Chatbot: `to_display`'s text as a text part, which it
    passes to the page unchanged."""
    return {"type": "text", "text": to_display(text)}


def from_display(text: str) -> str:
    """The inverse of `to_display`: escaping keeps code and the backticks around it as they
    are and leaves no other backtick, so the split is the same on both sides."""
    def typed(kind: str, piece: str) -> str:
        if kind == "info":
            return _unescape(piece[1:] if piece.startswith(" ") and _MERMAID.match(piece) else piece)
        return piece if kind == "code" else _unescape(piece)
    return "".join(typed(*p) for p in _pieces(text))


def chat_messages(display: list) -> list[dict]:
    """The chat as the model sees it: page notes dropped, escaping undone."""
    return [{"role": m["role"], "content": from_display(prompts.message_text(m["content"]))}
            for m in prompts.normalize(display)]


def note(title: str, body: str = "") -> dict:
    """A line the page shows under an answer; metadata marks it as not part of the chat."""
    return {"role": "assistant", "content": body, "metadata": {"title": title, "status": "done"}}


def stats_title(stats: Stats) -> str:
    """TTFT, speed and token counts; stopped answers say so first."""
    if stats.stopped:
        return f"{STOPPED} · {stats.summary()}"
    return stats.summary()
