r"""How chat text is shown in the page and kept in the browser, and back.

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

Math (`$…$`, `$$…$$`, `\(…\)`, `\[…\]`) is found in prose, never in code, and drawn by the
page's KaTeX. Gradio cuts each `left…right` of the Chatbot's `latex_delimiters` out of the
raw text before Markdown reads it (a plain regex, across code and prose alike), puts it back
HTML-escaped where its placeholder (`%%%LATEX_BLOCK_n%%%`) ends up, and KaTeX's
auto-render then draws what it finds between the same delimiters in the page's text. With
the typed delimiters as `latex_delimiters`, a cut would run from a `$$` in code to one in
prose and take a fence's opening line or a span's backtick with it. So the delimiters
Gradio gets (`LATEX_DELIMITERS`) are the typed ones with an invisible character outside
them, `OPEN` before and `CLOSE` after (two, so that no text next to math makes a delimiter
with them), and those are nowhere else in the text: prose shows them as another invisible
character (so not even the page's text, which KaTeX reads, holds them), and code that holds
one is not code (a span stays prose; a fence leaves the message without code). Each cut is
then exactly one piece of math made here, inside a run of prose, and what Markdown reads of
the rest is a placeholder between prose. Prose also escapes a `%` that starts Gradio's
placeholder, and code holding one is not code, so no typed text stands in for a formula.

Math is what auto-render reads as one formula: the closing delimiter is the first one
after the opening, as auto-render counts (a backslash takes the next character with it),
and it must stand at brace depth 0 or less (auto-render would read on past it); math with
nothing but spaces inside, or a mark, is not math. `$…$` also keeps to one line, opens
before a non-space, closes after one, and not before a digit or an ASCII letter ("$5 and
$6", "$HOME/$USER" stay text). Inside math only what HTML and Markdown would read is
escaped (`& < > ` ~`, `\r`, `](`, `]:`): KaTeX gets the text as typed, backslashes and
all, the entities decoded by the browser. Every step is one-to-one here too.

The page gets that text as a text part (`shown`): a plain string would go through the
Chatbot's `inspect.cleandoc`, which reindents it (tabs expanded, common indentation and
blank first lines removed). The model would then read altered text on the next turn, and
the split above, which holds only for the text as it is, could be read differently: escaped
text must never reach the page as a plain string.

A file sent with a message (phi3ui/attachments.py) is shown under it as a user message of
its own, marked by a metadata id `file:<size in bytes>` (`file_message`): a closed box titled
with its name and size, holding its text, escaped like any other. `chat_messages` puts it
back into the message it follows, as the model reads it.
"""

from __future__ import annotations

import re
from bisect import bisect_left

from . import prompt as prompts
from .answer import Stats
from .attachments import Attachment, human_size, message_with

STOPPED = "⏹ Stopped"  # title prefix of the note under an answer the user stopped

# Before every opening math delimiter and after every closing one, and nowhere else:
# INVISIBLE SEPARATOR and INVISIBLE PLUS
OPEN, CLOSE = "\u2063", "\u2064"
MARKS = OPEN + CLOSE
_NO_MARKS = str.maketrans("", "", MARKS)
_PLACEHOLDER = "%%%LATEX_BLOCK_"  # what Gradio puts in math's place while Markdown reads the text
# typed opening delimiter: (closing one, KaTeX's display mode); `$$` before `$`, as auto-render
# takes the first delimiter in this order whose left side starts where it looks
_MATH = {"$$": ("$$", True), "\\[": ("\\]", True), "$": ("$", False), "\\(": ("\\)", False)}
# the Chatbot's latex_delimiters (phi3ui/ui/layout.py)
LATEX_DELIMITERS = [{"left": OPEN + left, "right": right + CLOSE, "display": display}
                    for left, (right, display) in _MATH.items()]

# A typed mark is shown as a WORD JOINER, as invisible, so that the page's text (entities
# decoded, which is what KaTeX reads) holds marks only around math too
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "`": "&#96;", "~": "&#126;", "\\": "&#92;",
            "\r": "&#13;", "]": "&#93;", OPEN: "&#8288;", CLOSE: "&#x2060;", "%": "&#37;"}
_INVERSE = {v: k for k, v in _ESCAPES.items()}
# `]` only where it would close a link or definition, `%` only where it starts a placeholder
_PROSE = re.compile(rf"[&<>`~\\\r{MARKS}]|\](?=[(:])|%(?=%%LATEX_BLOCK_)")
_IN_MATH = re.compile(r"[&<>`~\r]|\](?=[(:])")  # _PROSE less what KaTeX needs as typed
_NOT_CODE = re.compile(f"[{MARKS}]|{_PLACEHOLDER}")  # code that would reach into Gradio's math
# what auto-render's scan of math sees: a backslash with the character after it, dollars,
# braces, line breaks and the marks
_TOKEN = re.compile(rf"\\[\s\S]|\$\$?|[{{}}\n\r{MARKS}]")
_NONBLANK = re.compile(r"\S")
_SHOWN_MATH = re.compile(OPEN + "(?:" + "|".join(f"{re.escape(left)}([^{MARKS}]+?){re.escape(right)}"
                                                 for left, (right, _) in _MATH.items()) + ")" + CLOSE)
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
            if _NOT_CODE.search(line):
                raise _Unsure  # Gradio's math would reach into it
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
        if (start == 0 or line[start - 1] in " \t") and not _NOT_CODE.search(span[0]):
            pieces += [("prose", line[done:span.start()]), ("code", span[0])]
            done = span.end()
    return [*pieces, ("prose", line[done:])]


def _escape(text: str) -> str:
    return _PROSE.sub(lambda m: _ESCAPES[m[0]], text)


def _unescape(text: str) -> str:
    return _UNESCAPES.sub(lambda m: _INVERSE[m[0]], text)


def _runs(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pieces with each run of prose joined: math may span lines, never code."""
    runs: list[tuple[str, str]] = []
    prose: list[str] = []
    for kind, piece in pieces:
        if kind == "prose":
            prose.append(piece)
            continue
        if prose:
            runs.append(("prose", "".join(prose)))
            prose = []
        runs.append((kind, piece))
    return [*runs, ("prose", "".join(prose))] if prose else runs


def _math(run: str) -> list[tuple[bool, str]]:
    """A run of prose as (is math, text) parts, math with its delimiters (the module's
    docstring says which). Linear in the run's length, bar a logarithm: each delimiter
    is looked at once, and its closing one looked up."""
    if "$" not in run and "\\" not in run:
        return [(False, run)]
    starts, kinds = [], []
    for found in _TOKEN.finditer(run):
        kind = found[0]
        if kind[0] == "\\" and kind[1] not in "()[]":
            if kind[1] not in "\n\r" + MARKS:
                continue  # an escaped character: neither a delimiter nor a brace
            kind = kind[1]
        starts.append(found.start())
        kinds.append("\n" if kind == "\r" else OPEN if kind in MARKS else kind)
    tokens = _Tokens(run, starts, kinds)
    parts: list[tuple[bool, str]] = []
    done = 0
    for k in tokens.openers:
        if starts[k] < done or (close := tokens.closing(k)) is None:
            continue
        end = starts[close] + len(_MATH[kinds[k]][0])
        parts += [(False, run[done:starts[k]]), (True, run[starts[k]:end])]
        done = end
    return [*parts, (False, run[done:])]


class _Tokens:
    """What KaTeX's auto-render reads of a run of prose, as `_TOKEN`s: their starts and
    kinds (a line break is "\\n", either mark OPEN), and the tokens of each kind."""

    def __init__(self, run: str, starts: list[int], kinds: list[str]) -> None:
        self.run, self.starts, self.kinds = run, starts, kinds
        self.of: dict[str, list[int]] = {kind: [] for kind in ("$$", "$", "\\]", "\\)", "\n", OPEN, "{", "}")}
        self.openers = [k for k, kind in enumerate(kinds) if kind in _MATH]
        for k, kind in enumerate(kinds):
            if kind in self.of:
                self.of[kind].append(k)
            if kind == "$$":
                self.of["$"].append(k)  # a `$` closes at the first dollar, `$$` included

    def next(self, kind: str, k: int) -> int:
        """The first token of `kind` at or after token k (len(kinds): none)."""
        tokens = self.of[kind]
        i = bisect_left(tokens, k)
        return tokens[i] if i < len(tokens) else len(self.kinds)

    def depth(self, k: int) -> int:
        """Braces opened less braces closed before token k."""
        return bisect_left(self.of["{"], k) - bisect_left(self.of["}"], k)

    def closing(self, k: int) -> int | None:
        """The token that closes the math token k opens, if that is math."""
        run, left = self.run, self.kinds[k]
        close = self.next(_MATH[left][0], k + 1)
        if close == len(self.kinds) or self.next(OPEN, k + 1) < close or self.depth(close) > self.depth(k):
            return None
        inside, end = self.starts[k] + len(left), self.starts[close]
        if not _NONBLANK.search(run, inside, end):
            return None
        if left == "$":
            follows = run[end + 1:end + 2]
            if (self.kinds[close] != "$" or self.next("\n", k + 1) < close or run[inside].isspace()
                    or run[end - 1].isspace() or (follows.isascii() and follows.isalnum())):
                return None
        return close


def _shown_math(math: str) -> str:
    left = "$$" if math.startswith("$$") else math[:2] if math[0] == "\\" else "$"
    right = _MATH[left][0]
    inside = math[len(left):len(math) - len(right)]
    return OPEN + left + _IN_MATH.sub(lambda m: _ESCAPES[m[0]], inside) + right + CLOSE


def _shown_prose(run: str) -> str:
    return "".join(_shown_math(part) if math else _escape(part) for math, part in _math(run))


def _typed_prose(run: str) -> str:
    """`_shown_prose`'s inverse. A mark that is not around math (an edit took its formula
    apart) goes: `to_display` leaves none."""
    typed, done = [], 0
    for math in _SHOWN_MATH.finditer(run):
        i = next(i for i, inside in enumerate(math.groups()) if inside is not None)
        left = list(_MATH)[i]
        typed += [_typed_text(run[done:math.start()]), left, _unescape(math[i + 1]), _MATH[left][0]]
        done = math.end()
    return "".join([*typed, _typed_text(run[done:])])


def _typed_text(shown: str) -> str:
    return _unescape(shown.translate(_NO_MARKS))


def to_display(text: str) -> str:
    """Escape everything outside code and math (see the module's docstring)."""
    def escaped(kind: str, piece: str) -> str:
        if kind == "info":
            return " " * bool(_MERMAID.match(piece)) + _escape(piece)
        return piece if kind == "code" else _shown_prose(piece)
    return "".join(escaped(*p) for p in _runs(_pieces(text)))


def shown(text: str) -> dict:
    """A message's content for the Chatbot: `to_display`'s text as a text part, which it
    passes to the page unchanged."""
    return {"type": "text", "text": to_display(text)}


def from_display(text: str) -> str:
    """The inverse of `to_display`: escaping keeps code and the backticks around it as they
    are and leaves no other backtick, and the marks only around math, so the split is the
    same on both sides."""
    def typed(kind: str, piece: str) -> str:
        if kind == "info":
            return _unescape(piece[1:] if piece.startswith(" ") and _MERMAID.match(piece) else piece)
        return piece if kind == "code" else _typed_prose(piece)
    return "".join(typed(*p) for p in _runs(_pieces(text)))


FILE_ID = "file:"  # a file's metadata id, with its size in bytes after it


def file_message(file: Attachment) -> dict:
    """A file under its user message: a closed box titled with its name and size (a chip),
    holding the text the model reads. Its metadata title keeps it out of `prompts.normalize`;
    `chat_messages` puts it back into the message it follows."""
    return {"role": "user", "content": shown(file.text),
            "metadata": {"title": to_display(f"📎 {file.name}"), "log": human_size(file.size),
                         "id": f"{FILE_ID}{file.size}", "status": "done"}}


def file_of(message: object) -> Attachment | None:
    """The file a `file_message` shows, or None for any other message."""
    if not isinstance(message, dict) or message.get("role") != "user":
        return None
    metadata = message.get("metadata")
    ident = metadata.get("id") if isinstance(metadata, dict) else None
    if not (isinstance(ident, str) and ident.startswith(FILE_ID) and ident[len(FILE_ID):].isdigit()):
        return None
    name = from_display(str(metadata.get("title") or "")).removeprefix("📎 ")
    try:
        text = from_display(prompts.message_text(message.get("content", "")))
    except prompts.PromptError:
        return None
    return Attachment(name, int(ident[len(FILE_ID):]), text)


def with_files(display: list) -> list[tuple[dict, list[Attachment]]]:
    """Each message other than a file's, with the files shown under it."""
    grouped: list[tuple[dict, list[Attachment]]] = []
    for m in display:
        file = file_of(m)
        if file is None:
            grouped.append((m, []))
        elif grouped and grouped[-1][0].get("role") == "user":
            grouped[-1][1].append(file)
    return grouped


def chat_messages(display: list) -> list[dict]:
    """The chat as the model sees it: page notes dropped, escaping undone, each user
    message's files inside it as delimited text (attachments.message_with)."""
    chat = []
    for m, files in with_files(display):
        if not prompts.normalize([m]):
            continue  # a page note
        text = from_display(prompts.message_text(m["content"]))
        chat.append({"role": m["role"], "content": message_with(text, files) if files else text})
    return chat


def note(title: str, body: str = "") -> dict:
    """A line the page shows under an answer; metadata marks it as not part of the chat."""
    return {"role": "assistant", "content": body, "metadata": {"title": title, "status": "done"}}


def stats_title(stats: Stats) -> str:
    """TTFT, speed and token counts; stopped answers say so first."""
    if stats.stopped:
        return f"{STOPPED} · {stats.summary()}"
    return stats.summary()
