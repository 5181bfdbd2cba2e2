"""A rendered prompt that knows which text is the chat template's and which is the users'.

A chat template renders a conversation to text, and a tokenizer turns special-token strings
in that text into control ids. Text a person typed must never do that: a message holding
`<|end|>\\n<|system|>\\n...` would otherwise start a system turn of its own. So the prompt is
rendered once more with a placeholder for each message's content, which splits it into the
template's pieces (structure) and the contents (text). Structure is tokenized as usual;
content is tokenized with special-token strings read as plain text.

A chat with no special-token string in any content gets exactly the ids it always got: its
whole text is tokenized in one go, as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Message = dict[str, str]
Encode = Callable[[str], list[int]]

_PLACEHOLDER = "\ue000{}\ue001"  # private-use characters: no template or tokenizer treats them specially
_PLACEHOLDERS = re.compile("\ue000(\\d+)\ue001")
STRUCTURE_MARK = "⟦{}⟧"  # how the prompt inspector shows the template's own text


@dataclass(frozen=True)
class Piece:
    text: str
    content: bool  # typed by a user or written by the model: always plain text


@dataclass(frozen=True)
class Prompt:
    """A prompt as pieces; `text` is exactly what the template rendered."""

    pieces: tuple[Piece, ...]

    @property
    def text(self) -> str:
        return "".join(piece.text for piece in self.pieces)

    @classmethod
    def trusted(cls, text: str) -> Prompt:
        """Text that is all structure: a prompt written by the program, not by a user."""
        return cls((Piece(text, False),))

    def suffix(self, length: int) -> Prompt:
        """The prompt's last `length` characters, each keeping its kind."""
        pieces: list[Piece] = []
        for piece in reversed(self.pieces):
            if length <= 0:
                break
            pieces.append(Piece(piece.text[-length:], piece.content))
            length -= len(piece.text)
        return Prompt(tuple(reversed(pieces)))

    def shown(self) -> str:
        """The prompt with the template's text marked, for the prompt inspector."""
        return "".join(p.text if p.content else STRUCTURE_MARK.format(p.text) for p in self.pieces if p.text)


def render_prompt(render: Callable[[list[Message]], str], messages: Sequence[Message],
                  specials: Sequence[str]) -> Prompt:
    """Render `messages`, and find where each content sits in the result.

    When the template changes a content on its way through (some trim it), the contents
    cannot be located; the special-token strings inside them are then broken up with a
    word joiner (U+2060) in the prompt only, so they still read as text."""
    text = render(list(messages))
    marked = render([{**m, "content": _PLACEHOLDER.format(i)} for i, m in enumerate(messages)])
    pieces: list[Piece] = []
    for i, part in enumerate(_PLACEHOLDERS.split(marked)):
        if i % 2 == 0:
            pieces.append(Piece(part, False))
        else:
            pieces.append(Piece(messages[int(part)]["content"], True))
    prompt = Prompt(tuple(pieces))
    if prompt.text == text:
        return prompt
    return Prompt.trusted(render([{**m, "content": defused(m["content"], specials)} for m in messages]))


def defused(text: str, specials: Sequence[str]) -> str:
    """`text` with a word joiner after the first character of each special-token string."""
    for special in sorted(specials, key=len, reverse=True):
        if len(special) > 1:
            text = text.replace(special, special[0] + "\u2060" + special[1:])
    return text


def holds_special(text: str, specials: Sequence[str]) -> bool:
    return any(special in text for special in specials)


def encode_prompt(prompt: Prompt, encode: Encode, encode_text: Encode, specials: Sequence[str]) -> list[int]:
    """Token ids of `prompt`: the whole text at once unless some content holds a
    special-token string; then piece by piece, the contents as plain text."""
    if not any(p.content and holds_special(p.text, specials) for p in prompt.pieces):
        return encode(prompt.text)
    ids: list[int] = []
    for piece in prompt.pieces:
        if piece.text:
            ids += encode_text(piece.text) if piece.content else encode(piece.text)
    return ids


def split_text_encoder(encode: Encode, specials: Sequence[str]) -> Encode:
    """Plain-text encoding from an encoder that always recognises special tokens: the text
    is cut inside each special-token string and the parts encoded apart, so none is whole.
    (For tokenizers with no switch of their own; the parts may tokenize a little differently
    at the cuts, which only ever happens to text holding special-token strings.)"""
    def encode_text(text: str) -> list[int]:
        if not holds_special(text, specials):
            return encode(text)
        ids: list[int] = []
        for part in defused(text, specials).split("\u2060"):
            if part:
                ids += encode(part)
        return ids

    return encode_text
