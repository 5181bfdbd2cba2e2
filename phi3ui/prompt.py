"""Turning a conversation into the exact prompt the model was trained on.

The model's own chat template renders the text (so Phi-3 gets
`<|user|>\\n...<|end|>\\n<|assistant|>\\n`); this module cleans the messages that reach it
and fits them into the context window, oldest exchanges first to go (in cuts that keep the
KV cache useful: `phi3ui.window`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import window as window_policy

Message = dict[str, str]
Renderer = Callable[[list[Message]], str]
Counter = Callable[[str], int]

# microsoft/Phi-3-mini-4k-instruct's current template. Early revisions dropped the system
# message (transformers issue 30545); a Phi-3 export that carries one of those gets this.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

_SENTINEL = "phi3ui-system-probe-7f3a"


class PromptError(ValueError):
    """A conversation that cannot be sent; the message is meant for the user as is."""


class MessageTooLong(PromptError):
    """The new message alone does not fit the context window."""


def message_text(content: Any) -> str:
    """Gradio may send content as a string or as a list of parts; only text is accepted."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and content.get("type") == "text":
        return message_text(content.get("text"))
    if isinstance(content, list) and content:
        return "".join(message_text(part) for part in content)
    raise PromptError("Message content must be text (a string or a list of text parts).")


def normalize(history: Any) -> list[Message]:
    """Validate a history from the page or the API into plain user/assistant messages.

    Messages with a metadata title are the page's own notes (stats, notices), not chat.
    """
    if history is None:
        return []
    if not isinstance(history, list):
        raise PromptError("History must be a list of {role, content} messages.")
    messages = []
    for item in history:
        if not isinstance(item, dict) or "role" not in item or "content" not in item:
            raise PromptError("Each history entry must be a {role, content} message.")
        metadata = item.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise PromptError("A message's metadata must be a {title, ...} object.")
        if metadata.get("title"):
            continue
        role = item["role"]
        if role not in ("user", "assistant"):
            raise PromptError(f"History roles must be 'user' or 'assistant', not {role!r}.")
        messages.append({"role": role, "content": message_text(item["content"])})
    return messages


def supports_system(render: Renderer) -> bool:
    """Whether the template keeps a system message (some drop or refuse it)."""
    try:
        text = render([{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "hi"}])
    except Exception:  # noqa: BLE001 - templates raise whatever they like
        return False
    return _SENTINEL in text


def build(system: str, history: Sequence[Message], message: str, system_ok: bool = True) -> list[Message]:
    """The full message list; where the template has no system role, it leads the first turn."""
    messages = [*history, {"role": "user", "content": message}]
    if not system:
        return list(messages)
    if system_ok:
        return [{"role": "system", "content": system}, *messages]
    first = next(i for i, m in enumerate(messages) if m["role"] == "user")
    merged = {"role": "user", "content": f"{system}\n\n{messages[first]['content']}"}
    return [*messages[:first], merged, *messages[first + 1:]]


def exchanges(history: Sequence[Message]) -> list[list[Message]]:
    """Group a history into exchanges, each starting with a user message."""
    groups: list[list[Message]] = []
    for msg in history:
        if msg["role"] == "user" or not groups:
            groups.append([msg])
        else:
            groups[-1].append(msg)
    return groups


def newest(history: Sequence[Message], max_messages: int, max_chars: int) -> tuple[list[Message], int]:
    """The newest whole exchanges within both limits, and how many older ones were left out."""
    groups = exchanges(history)
    first, messages, chars = len(groups), 0, 0
    while first > 0:
        messages += len(groups[first - 1])
        chars += sum(len(m["content"]) for m in groups[first - 1])
        if messages > max_messages or chars > max_chars:
            break
        first -= 1
    return [m for group in groups[first:] for m in group], first


@dataclass(frozen=True)
class Fitted:
    """A prompt that fits, and what was left out to make it fit."""

    prompt: str
    prompt_tokens: int
    dropped_exchanges: int
    window: int
    max_new_tokens: int

    @property
    def used_tokens(self) -> int:
        return self.prompt_tokens + self.max_new_tokens


def fit(
    render: Renderer,
    count: Counter,
    *,
    system: str,
    history: Sequence[Message],
    message: str,
    max_new_tokens: int,
    window: int,
    system_ok: bool = True,
    cut_to: float = window_policy.DEFAULT_CUT_TO,
    costs: window_policy.ExchangeCosts | None = None,
) -> Fitted:
    """Leave out the oldest exchanges so that prompt plus answer fit the window, keeping
    the KV cache useful (`phi3ui.window`): when the window overflows, enough go at once
    that at most `cut_to` of it is used, and later turns keep that cut until it overflows
    again. `cut_to=1.0` leaves out the fewest each turn (the old behaviour). The same
    history always gives the same cut.

    The system prompt and the new message always stay; if they alone do not fit,
    MessageTooLong says by how much. Exchanges are counted one at a time with `count`
    (cached in `costs`); the prompt that is sent is rendered and counted whole, and more
    is left out if that count does not fit.
    """
    if not 0.0 < cut_to <= 1.0:
        raise ValueError(f"cut_to must be in (0, 1], not {cut_to}")
    groups = exchanges(history)
    costs = costs or window_policy.ExchangeCosts()
    flag = "s" if system_ok else "m"

    def attempt(dropped: int) -> Fitted:
        kept = [m for group in groups[dropped:] for m in group]
        prompt = render(build(system, kept, message, system_ok))
        return Fitted(prompt, count(prompt), dropped, window, max_new_tokens)

    best = attempt(0)
    if best.used_tokens <= window:
        return best
    alone = attempt(len(groups))
    if alone.used_tokens > window:
        raise MessageTooLong(
            f"This message needs {alone.prompt_tokens} prompt tokens plus {max_new_tokens} for the answer, "
            f"more than the model's {window}-token context window. Shorten it by about "
            f"{alone.used_tokens - window} tokens or lower 'max new tokens'."
        )

    def alone_count(text: str) -> int:
        return costs.get(("alone", flag, system, text),
                         lambda: count(render(build(system, [], text, system_ok))))

    probe = alone_count(window_policy.PROBE)

    def adds(group: list[Message]) -> int:
        parts = [p for m in group for p in (m["role"], m["content"])]
        return costs.get(("adds", flag, system, *parts),
                         lambda: max(0, count(render(build(system, group, window_policy.PROBE, system_ok))) - probe))

    # Each earlier turn's own message: the first user message of an exchange (a leading
    # assistant greeting has none and is never a turn of its own).
    turns = [alone_count(g[0]["content"]) if g[0]["role"] == "user" else probe for g in groups]
    start = window_policy.replay([*turns, alone_count(message)], [adds(g) for g in groups],
                                 max_new_tokens=max_new_tokens, window=window, cut_to=cut_to)
    while start < len(groups):
        fitted = attempt(start)
        if fitted.used_tokens <= window:
            return fitted
        start += 1  # the estimate was short: the whole prompt counts a little more
    return alone
