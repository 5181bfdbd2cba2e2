"""OpenAI's chat completion wire format, both ways: the shapes this server's /v1 answers in
(`Completion`, `sse`, `DONE`, `usage`, `finish_reason`) and what the remote engine sends and
reads as a client (`chat_body`, `events`, `Tally`). One module, so both sides keep to the
same shapes.

Plain data in and out: nothing here imports FastAPI, Gradio or httpx.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from . import json_answers
from .answer import Stats
from .errors import RemoteError
from .settings import GenerationSettings

log = logging.getLogger(__name__)


# --- what /v1 answers with -------------------------------------------------------------------
def usage(stats: Stats | None, prompt_tokens: int) -> dict:
    prompt = stats.prompt_tokens if stats and stats.prompt_tokens else prompt_tokens
    answer = stats.answer_tokens if stats else 0
    return {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}


def finish_reason(stats: Stats | None) -> str:
    """OpenAI's reasons: "length" when max tokens cut the answer, "stop" otherwise."""
    return "length" if stats is not None and stats.finish == "length" else "stop"


@dataclass(frozen=True)
class Completion:
    """What every object of one answer carries, and those objects in OpenAI's shapes."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def whole(self, text: str, finish: str, counts: dict) -> dict:
        """The non-streamed answer."""
        message = {"role": "assistant", "content": text, "refusal": None}
        return {**self._head("chat.completion"), "usage": counts,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}

    def chunk(self, delta: dict, finish: str | None = None, with_usage: bool = False) -> dict:
        """One streamed piece; with `with_usage` it says `usage: null` as OpenAI's do then."""
        chunk = {**self._head("chat.completion.chunk"),
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return {**chunk, "usage": None} if with_usage else chunk

    def usage_chunk(self, counts: dict) -> dict:
        """The last chunk when `stream_options.include_usage`: no choices, the usage."""
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": counts}


def sse(data: dict | str) -> str:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


DONE = sse("[DONE]")


# --- what the remote engine sends and reads ----------------------------------------------------
def remote_message(body: str) -> str:
    """The error text of a remote's error body (OpenAI's shape, or plain text), shortened."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        text = error.get("message") if isinstance(error, dict) else error
        if text is None and isinstance(data.get("detail"), str):
            text = data["detail"]
        if text is not None:
            body = str(text)
    body = " ".join(body.split())
    return body[:300] + ("…" if len(body) > 300 else "")


def chat_body(messages: list[dict], settings: GenerationSettings, model: str) -> dict:
    """The streamed chat completion request for `settings` (OpenAI's fields only)."""
    body: dict = {"model": model, "messages": messages, "stream": True,
                  "stream_options": {"include_usage": True}, "max_tokens": settings.max_new_tokens,
                  "temperature": settings.temperature}
    if not settings.greedy:
        body["top_p"] = settings.top_p
        if settings.seed is not None:
            body["seed"] = settings.seed
    if settings.stop:
        body["stop"] = list(settings.stop)
    if response_format := json_answers.response_format(settings.json_schema):
        body["response_format"] = response_format
    return body


def events(lines: Iterable[str]) -> Iterator[dict]:
    """The JSON objects of a server-sent event stream's `data:` lines, up to `[DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments (": ping"), event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        if not data:
            continue
        try:
            event = json.loads(data)
        except ValueError:
            raise RemoteError("The remote engine sent something that is not an OpenAI stream.") from None
        if isinstance(event, dict):
            yield event


@dataclass
class Tally:
    """What a chat completion stream said besides its text: finish reason and usage."""

    finish: str = ""
    usage: dict | None = None
    pieces: int = 0  # content deltas: a count of tokens when the remote sends no usage (about one each)

    def feed(self, event: dict) -> str:
        """The text of one event; raises RemoteError for an error event."""
        if "error" in event:
            said = remote_message(json.dumps(event))
            log.warning("remote engine failed mid-answer: %s", said)
            raise RemoteError("The remote engine failed in the middle of the answer.", 502, "remote_failed",
                              detail=said)
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        text = ""
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                text += delta["content"]
                self.pieces += 1
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return text

    def tokens(self, prompt_estimate: int) -> tuple[int, int]:
        """Prompt and answer tokens: the remote's usage where it gives numbers, else the
        estimate and the count of text pieces (a count that is not a number is not used)."""
        counts = self.usage or {}
        prompt, answer = counts.get("prompt_tokens"), counts.get("completion_tokens")
        return (prompt if type(prompt) is int and prompt > 0 else prompt_estimate,
                answer if type(answer) is int and answer >= 0 else self.pieces)
