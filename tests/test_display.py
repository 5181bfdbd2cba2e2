"""How chat text is escaped for display and recovered for the model (no server, no model)."""

from __future__ import annotations

import html
import random
import re
import time

import gradio as gr
import pytest

from phi3ui.answer import Stats
from phi3ui.display import (
    CLOSE,
    LATEX_DELIMITERS,
    MARKS,
    OPEN,
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
# Math, and what only looks like it: delimiters in code, escaped, unbalanced, across code.
MATH_TEXTS = [
    "Euler: $e^{i\\pi}+1=0$, and \\(\\frac{a}{b} < 1\\) & \\[x^2\\]",
    "$$\n\\begin{aligned} a &= b \\\\ c &< d \\end{aligned}\n$$",
    "`$HOME` costs $5 and $6; `\\(x\\)` is a regex",
    "```\n$$\n```\n$$x$$ `$$` $$\n```\n$$",
    "$x `y` z$ \\(a `b` c\\)",
    "\\\\(x\\) \\$5 $x\\$$ $$a\\$$$ $$$x$$",
    "${x$ $}{$ \\[ {x \\] $\\frac{1}{2$ $$x \\(y",
    "$a<b>c$ $`$ $~x~$ $[a](b)$ $\\text{&amp;}$",
    f"{OPEN}$x${CLOSE} `{OPEN}` {CLOSE}$y$",
    f"```\n{OPEN}$x${CLOSE}\n```\n$y$",
    "%%%LATEX_BLOCK_0%%% `%%%LATEX_BLOCK_0%%%` $x$ %%%%LATEX_BLOCK_1%%%",
    "\\(a\r\nb\\) $a\nb$ $a\rb$ \\(x\\",
]


@pytest.mark.parametrize("text", TEXTS + MATH_TEXTS)
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


@pytest.mark.parametrize("text", ["    indented\n        deeper\n\tand a tab", "\n\nblank lines first", *TEXTS,
                                  *MATH_TEXTS])
def test_the_chatbot_gives_back_messages_exactly_as_typed(text: str) -> None:
    """Through Gradio's own Chatbot to the page and back: a plain string would come back
    reindented (inspect.cleandoc), a text part comes back as it went."""
    chatbot = gr.Chatbot()
    display = [{"role": "user", "content": shown(text)}, {"role": "assistant", "content": shown("ok")}]
    assert chat_messages(chatbot.preprocess(chatbot.postprocess(display)))[0] == {"role": "user", "content": text}


# --- math ---------------------------------------------------------------------------------
def math_in(text: str) -> list[str]:
    """The math `to_display` finds in `text`, as typed."""
    return [from_display(piece) for piece in re.findall(f"{OPEN}[^{MARKS}]*{CLOSE}", to_display(text))]


@pytest.mark.parametrize(("text", "math"), [
    ("Euler: $e^{i\\pi}+1=0$.", ["$e^{i\\pi}+1=0$"]),
    ("\\(\\frac{a}{b}\\) and \\[x^2\\]", ["\\(\\frac{a}{b}\\)", "\\[x^2\\]"]),
    ("$$\n\\sum_{k=1}^n k\n$$ and\n\\[\na\n\\]", ["$$\n\\sum_{k=1}^n k\n$$", "\\[\na\n\\]"]),
    ("$$a$$$$b$$ $x$, $y$: $z$'s", ["$$a$$", "$$b$$", "$x$", "$y$", "$z$"]),
    ("设$x$为实数", ["$x$"]),  # no space needed around it
    ("\\(a \\) b\\)", ["\\(a \\)"]),  # the first closing delimiter closes
    ("$\\{x$ \\(\\)\\)", ["$\\{x$"]),  # an escaped brace counts for nothing; `\(\)` is empty
    ("$x\\$$ $$a\\$$$", ["$x\\$$", "$$a\\$$$"]),  # an escaped dollar does not close
    ("$$\\text{if $x$}$$", ["$$\\text{if $x$}$$"]),  # dollars inside double dollars
    # what is not math
    ("$5 and $6", []), ("costs $5, or $6.", []), ("$HOME/$USER", []), ("a $x$b $y$2", []),
    ("$ x$ $x $ $$ $$ \\( \\)", []),  # blank, or a space inside the dollars
    ("$a\nb$", []),  # `$…$` keeps to one line
    ("\\\\(x\\) \\$x$", []),  # escaped delimiters
    ("${x$ \\[ {x \\] $$a{$$", []),  # auto-render would read on past an open brace
    ("$}$", ["$}$"]),  # a stray closing brace keeps nothing open (KaTeX shows its error)
    ("$x `y` z$ \\(a `b` c\\)", []),  # code between
    ("`$x$` and\n```\n$$y$$\n```", []),  # in code
    ("$$ a\n```\nb\n```\n$$", []),  # a fence between
    (f"$x{OPEN}$ \\(x{CLOSE}\\)", []),  # a mark inside
])
def test_math_is_found_in_prose_only(text: str, math: list[str]) -> None:
    assert math_in(text) == math
    assert from_display(to_display(text)) == text


def test_math_keeps_what_katex_needs_and_escapes_what_html_and_markdown_read() -> None:
    assert to_display("$a<b & \\frac{c}{d}$") == f"{OPEN}$a&lt;b &amp; \\frac{{c}}{{d}}${CLOSE}"
    assert to_display("$`x`~[a](b)$") == f"{OPEN}$&#96;x&#96;&#126;[a&#93;(b)${CLOSE}"
    assert to_display("\\(x\\) \\y") == f"{OPEN}\\(x\\){CLOSE} &#92;y"  # prose keeps escaping backslashes


def test_marks_and_gradios_placeholder_are_never_raw_outside_math() -> None:
    """A typed mark is escaped in prose, and code holding one is not code: a span is
    prose, a fence leaves the message without code. Typed placeholders are escaped."""
    assert to_display(f"a{OPEN}b{CLOSE}") == "a&#8288;b&#x2060;"  # WORD JOINER: the page never holds one
    assert to_display(f"`{OPEN}$x$` `y`") == f"&#96;&#8288;{OPEN}$x${CLOSE}&#96; `y`"
    assert "`" not in to_display(f"```\n{CLOSE}\n```\n`y`")
    assert "%%%LATEX_BLOCK_" not in to_display("%%%LATEX_BLOCK_0%%% %%%%LATEX_BLOCK_1%%%")
    assert "`" not in to_display("```\n%%%LATEX_BLOCK_0%%%\n```")


def test_an_edit_that_takes_a_formula_apart_leaves_no_marks() -> None:
    shown_text = to_display("$x$ and $y$")
    assert from_display(shown_text.replace("$y$", "$y")) == "$x$ and $y"


def test_the_delimiters_are_the_typed_ones_with_marks_outside() -> None:
    assert LATEX_DELIMITERS == [
        {"left": OPEN + "$$", "right": "$$" + CLOSE, "display": True},
        {"left": OPEN + "\\[", "right": "\\]" + CLOSE, "display": True},
        {"left": OPEN + "$", "right": "$" + CLOSE, "display": False},
        {"left": OPEN + "\\(", "right": "\\)" + CLOSE, "display": False},
    ]


def gradio_cuts(text: str) -> tuple[str, list[str]]:
    """What Gradio 6.31's chat Markdown cuts out before `marked` reads the text (its
    markdown-code module: `left([\\s\\S]+?)right` for each delimiter in turn, replaced by
    `%%%LATEX_BLOCK_n%%%`): the text left and the cuts."""
    cuts: list[str] = []

    def cut(found: re.Match) -> str:
        cuts.append(found[0])
        return f"%%%LATEX_BLOCK_{len(cuts) - 1}%%%"

    for delimiter in LATEX_DELIMITERS:
        text = re.sub(re.escape(delimiter["left"]) + r"([\s\S]+?)" + re.escape(delimiter["right"]), cut, text)
    return text, cuts


def auto_render(text: str) -> list[tuple[str, str]]:
    """KaTeX's auto-render (0.16, splitAtDelimiters with findEndOfMath) on a text node:
    ("text" | "math", text) parts."""
    parts: list[tuple[str, str]] = []
    lefts = re.compile("|".join(re.escape(d["left"]) for d in LATEX_DELIMITERS))
    while found := lefts.search(text):
        if found.start():
            parts.append(("text", text[:found.start()]))
            text = text[found.start():]
        delimiter = next(d for d in LATEX_DELIMITERS if text.startswith(d["left"]))
        right, i, depth = delimiter["right"], len(delimiter["left"]), 0
        while i < len(text) and not (depth <= 0 and text.startswith(right, i)):
            i, depth = i + 1 + (text[i] == "\\"), depth + (text[i] == "{") - (text[i] == "}")
        if i >= len(text):
            break
        parts.append(("math", text[len(delimiter["left"]):i]))
        text = text[i + len(right):]
    return [*parts, ("text", text)] if text else parts


def assert_gradio_cuts_only_math(text: str) -> None:
    """Gradio cuts out exactly the math pieces to_display made (nothing of code or
    prose, no mark left behind), and auto-render reads each as one formula, as typed."""
    shown_text = to_display(text)
    left, cuts = gradio_cuts(shown_text)
    assert sorted(cuts) == sorted(re.findall(f"{OPEN}[^{MARKS}]*{CLOSE}", shown_text)), (text, cuts)
    assert not set(MARKS) & set(left + html.unescape(left)), (text, left)  # nor in the page's text
    for piece in cuts:
        typed = from_display(piece)
        opening = next(d for d in ("$$", "\\[", "$", "\\(") if typed.startswith(d))
        closing = {"$$": "$$", "\\[": "\\]", "$": "$", "\\(": "\\)"}[opening]
        assert auto_render(html.unescape(piece)) == [("math", typed[len(opening):-len(closing)])], (text, piece)


@pytest.mark.parametrize("text", [*MATH_TEXTS,
                                  "$x$$$y$$ $z$`$`$w$", "a $$ b `$$ <b>` $$ c$$",
                                  "\\(x `\\) <div>`\n```\n\\)\n<div>\n```\n\\)"])
def test_gradio_cuts_only_math(text: str) -> None:
    assert_gradio_cuts_only_math(text)


def test_random_text_round_trips_and_gradio_cuts_only_math() -> None:
    """Random text from the characters that matter (a fixed seed: the same texts every run)."""
    alphabet = ["$", "$$", "\\", "\\(", "\\)", "\\[", "\\]", "{", "}", "`", "```", "~", " ", "\n", "\r", "\t",
                "x", "1", "<b>", "&", "&amp;", "](", "|", "- ", "  ", OPEN, CLOSE, "%%%LATEX_BLOCK_0%%%"]
    rng = random.Random(28)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert from_display(to_display(text)) == text, text
        assert_gradio_cuts_only_math(text)


@pytest.mark.parametrize("text", ["\\( {" * 250_000, "$a " * 330_000, "$${" * 330_000, "{" * 500_000 + "$x$"],
                         ids=["parens", "dollars", "double-dollars", "braces"])
def test_finding_math_takes_linear_time(text: str) -> None:
    """A megabyte of delimiters that never close (a quadratic search would take hours;
    the bound only guards against that, the machine is shared)."""
    start = time.monotonic()
    assert from_display(to_display(text)) == text
    assert time.monotonic() - start < 60
