"""Answer versions: retry and edit keep what was there as a sibling, and ‹ n/m › goes back to it.

A conversation is a tree; what the page shows (and the model reads) is one branch of it, the
visible one. The others hang off the visible branch where they part from it: at a *position*
(the place of a message in the branch, counting every message but the ✂️ cut marker, which
the page moves about as it answers), a *choice* holds the other versions of the branch from
there on, each a list of messages that may have choices of its own further down.

While a conversation is on screen, its choices are kept beside the chat as a plain JSON state
(the page's `versions`):

    {"choices": {"<position>": {"others": [branch, …], "version": n}}, "focus": position | null}

`version` is the visible branch's place among all versions (0-based); `others` are the rest,
in order. `focus` is the message the page's ‹ › and "Fork from here" act on (the last message
clicked), if any. A record keeps the same tree inside its messages (`nest`/`unnest`,
conversations.py documents the format). Messages here are a record's (text as typed); the page
converts its chat to them and back. No Gradio here.
"""

from __future__ import annotations

from typing import Any

from .window import CUT_TITLE


def empty() -> dict:
    return {"choices": {}, "focus": None}


def _choices(state: dict | None) -> dict[int, dict]:
    """The state's choices by position (JSON keys are text); the page sends the state back
    with each event, so anything that is not a choice is left out."""
    given = state.get("choices") if isinstance(state, dict) else None
    return {int(p): c for p, c in (given.items() if isinstance(given, dict) else ())
            if str(p).isdigit() and isinstance(c, dict) and isinstance(c.get("others"), list)
            and isinstance(c.get("version"), int) and 0 <= c["version"] <= len(c["others"])}


def _state(choices: dict[int, dict], focus: int | None) -> dict:
    return {"choices": {str(p): choices[p] for p in sorted(choices)}, "focus": focus}


def positions(messages: list[dict]) -> list[int]:
    """The index in `messages` of each position: the cut marker has none."""
    return [i for i, m in enumerate(messages) if (m.get("metadata") or {}).get("title") != CUT_TITLE]


def index_of(messages: list[dict], position: int) -> int:
    """Where the message at `position` is in `messages` (its length past the end)."""
    counted = positions(messages)
    return counted[position] if 0 <= position < len(counted) else len(messages)


def position_of(messages: list[dict], index: int) -> int:
    """The position of the message at `index` (or of the first counted one after it)."""
    return sum(1 for i in positions(messages) if i < index)


def focus(state: dict | None, messages: list[dict]) -> int | None:
    """The message ‹ › acts on: the one clicked if it is still there, else the last one
    that has versions; None when there is neither."""
    count = len(positions(messages))
    clicked = (state or {}).get("focus")
    if isinstance(clicked, int) and 0 <= clicked < count:
        return clicked
    return max((p for p in _choices(state) if p < count), default=None)


def counts(state: dict | None, position: int) -> tuple[int, int]:
    """(n, m): the visible version's number and how many there are at `position`."""
    choice = _choices(state).get(position)
    return (choice["version"] + 1, len(choice["others"]) + 1) if choice else (1, 1)


def _split(choices: dict[int, dict], position: int) -> tuple[dict[int, dict], dict[int, dict]]:
    """The choices before `position`, and those from it on counted from it."""
    before = {p: f for p, f in choices.items() if p < position}
    after = {p - position: f for p, f in choices.items() if p >= position}
    return before, after


def nest(messages: list[dict], state: dict | None) -> list[dict]:
    """The branch with its choices inside it, as a record keeps it: the message at a choice's
    position carries `versions` (the others) and `version` (its place)."""
    choices, counted = _choices(state), positions(messages)
    nested = [dict(m) for m in messages]
    for position, choice in choices.items():
        if position < len(counted):
            nested[counted[position]].update(versions=choice["others"], version=choice["version"])
    return nested


def unnest(messages: list[dict]) -> tuple[list[dict], dict]:
    """A record's branch as plain messages and the state of its choices (focus on none)."""
    plain = [{k: v for k, v in m.items() if k not in ("versions", "version")} for m in messages]
    choices = {p: {"others": messages[i]["versions"], "version": messages[i].get("version", 0)}
               for p, i in enumerate(positions(messages)) if messages[i].get("versions")}
    return plain, _state(choices, None)


def set_aside(messages: list[dict], state: dict | None, index: int) -> tuple[list[dict], dict]:
    """Retry and edit: the branch from `index` on becomes another version of it, and the chat
    goes back to before it (the new version comes next, and is the last one). A branch with
    nothing but the page's notes (a refusal, an answer stopped before it started) is not
    worth keeping and goes."""
    head, tail = messages[:index], messages[index:]
    position = position_of(messages, index)
    before, after = _split(_choices(state), position)
    if not any(not m.get("metadata") for m in tail):
        choice = after.get(0)
        return head, _state({**before, **({position: choice} if choice else {})}, position)
    choice = after.pop(0, {"others": [], "version": 0})
    others = list(choice["others"])
    others.insert(choice["version"], nest(tail, _state(after, None)))
    return head, _state({**before, position: {"others": others, "version": len(others)}}, position)


def switch(messages: list[dict], state: dict | None, position: int, step: int) -> tuple[list[dict], dict]:
    """‹ (step -1) or › (+1) at `position`: the visible branch from there is put back among
    the versions and the neighbouring one is shown, with its own choices."""
    choices = _choices(state)
    choice = choices.get(position)
    if choice is None:
        return messages, _state(choices, position)
    chosen = choice["version"] + step
    if not 0 <= chosen <= len(choice["others"]):
        return messages, _state(choices, position)
    index = index_of(messages, position)
    before, after = _split(choices, position)
    after.pop(0)
    versions = list(choice["others"])
    versions.insert(choice["version"], nest(messages[index:], _state(after, None)))
    shown, inner = unnest(versions.pop(chosen))
    moved = {position + p: f for p, f in _choices(inner).items() if p > 0}
    choices = {**before, position: {"others": versions, "version": chosen}, **moved}
    return messages[:index] + shown, _state(choices, position)


def up_to(messages: list[dict], position: int) -> list[dict]:
    """"Fork from here": the branch up to the message at `position`, with the page's notes
    right after it (an answer's stats), and no versions."""
    end = index_of(messages, position) + 1
    while end < len(messages) and (messages[end].get("metadata") or {}).get("title") not in (None, CUT_TITLE):
        end += 1
    return messages[:end]


def clicked(state: dict | None, messages: list[dict], index: Any) -> dict:
    """The state with the message clicked (its index in the chat) as the focus."""
    position = position_of(messages, index) if isinstance(index, int) else None
    return _state(_choices(state), position)


def cut_to(state: dict | None, messages: list[dict]) -> dict:
    """The choices of the messages still there (undo removed the rest)."""
    count = len(positions(messages))
    return _state({p: f for p, f in _choices(state).items() if p < count}, None)
