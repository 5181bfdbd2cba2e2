"""Which part of a long conversation the model reads, chosen so the KV cache stays useful.

The prefix cache re-uses the keys and values of a prompt's beginning as long as it is the
same as the previous turn's. Leaving out the oldest exchange one at a time changes that
beginning on every turn once the window is full, and the whole window is read again each
time. Instead, when the window overflows, the oldest exchanges are left out down to a
share of it (`cut_to`, half by default) at once, and the same cut is kept on the following
turns until the window overflows again: one long first token per cut, short ones between.

The cut is a function of the history alone: the turns are replayed in order, each making
the decision its own turn made (with the same system prompt and answer room), so the page,
an API client that sends the whole history, and any replica of the server all arrive at
the same cut. Token counts come from the engine's own counter, one exchange at a time,
cached, so a long chat costs a few counts per turn; the final prompt is rendered and
counted whole and more is left out if the estimate was short.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence

Message = dict[str, str]
Renderer = Callable[[list[Message]], str]
Counter = Callable[[str], int]

DEFAULT_CUT_TO = 0.5  # share of the window a cut keeps (prompt and answer room); 1.0 = fewest
PROBE = "?"  # a stand-in new message when measuring what an exchange adds


class ExchangeCosts:
    """Token counts of prompt pieces, by a digest of what was counted (bounded, LRU)."""

    def __init__(self, size: int = 16_384):
        self.size = size
        self._counts: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()
        self.misses = 0

    def get(self, parts: Sequence[str], compute: Callable[[], int]) -> int:
        digest = hashlib.blake2b("\x00".join(parts).encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._lock:
            if digest in self._counts:
                self._counts.move_to_end(digest)
                return self._counts[digest]
        value = compute()
        with self._lock:
            self.misses += 1
            self._counts[digest] = value
            while len(self._counts) > self.size:
                self._counts.popitem(last=False)
        return value


_COSTS: weakref.WeakKeyDictionary[object, ExchangeCosts] = weakref.WeakKeyDictionary()
_COSTS_LOCK = threading.Lock()


def costs_for(owner: object) -> ExchangeCosts:
    """The cache of counts for one engine (counts depend on its tokenizer); it goes with it."""
    with _COSTS_LOCK:
        if owner not in _COSTS:
            _COSTS[owner] = ExchangeCosts()
        return _COSTS[owner]


def replay(
    alone: Sequence[int],
    adds: Sequence[int],
    *,
    max_new_tokens: int,
    window: int,
    cut_to: float = DEFAULT_CUT_TO,
) -> int:
    """How many of the oldest exchanges the newest turn leaves out.

    `alone[j]` is turn j's prompt with no history (system prompt, its message, the
    assistant's cue); `adds[i]` is what exchange i adds when kept. There are one more
    `alone` than `adds`: the last is the new message's. Each turn keeps the previous
    turn's cut while prompt plus answer fit the window; when they do not, the oldest
    exchanges go until at most `cut_to` of the window is used, but the exchange right
    before the message stays whenever it fits. Never fewer are left out than on an earlier
    turn, so what is kept only changes at a cut.
    """
    if len(alone) != len(adds) + 1:
        raise ValueError("one more alone count than exchanges")
    target = cut_to * window
    start = 0
    for j, own in enumerate(alone):
        used = own + sum(adds[start:j]) + max_new_tokens
        if used <= window:
            continue
        while start < j and used > target:
            if start == j - 1 and used <= window:
                break  # the exchange just before the message is worth keeping
            used -= adds[start]
            start += 1
    return start


def first_kept_index(display: Sequence[dict], dropped: int) -> int | None:
    """Where the first exchange the model still reads starts in a page's chat (notes
    included), or None when nothing is left out. Exchanges are counted as
    `prompt.exchanges` groups them: each starts at a user message."""
    if dropped <= 0:
        return None
    groups = -1
    previous = None
    for index, message in enumerate(display):
        if (message.get("metadata") or {}).get("title"):
            continue
        if message.get("role") == "user" or previous is None:
            groups += 1
            if groups == dropped:
                return index
        previous = message
    return None


CUT_TITLE = "✂️ The model no longer sees the messages above"


def mark_cut(display: Sequence[dict], dropped: int) -> list[dict]:
    """The page's chat with one marker (a page note, which prompts leave out) right before
    the first exchange the model still reads; earlier markers are removed."""
    chat = [m for m in display if (m.get("metadata") or {}).get("title") != CUT_TITLE]
    index = first_kept_index(chat, dropped)
    if index is None:
        return chat
    marker = {"role": "assistant", "content": (
        f"The {dropped} oldest exchange(s) no longer fit the context window together with the newer ones; "
        "the model answers from what is below. The cut stays here until the window fills again, "
        "so the next answers start quickly."), "metadata": {"title": CUT_TITLE, "status": "done"}}
    return [*chat[:index], marker, *chat[index:]]
